"""Package-relative paths (bytes, ``/``-separated) and their quoted forms.

Paths stay bytes end to end so names that are not valid UTF-8 survive.
"""

from __future__ import annotations

__all__ = ["check_relative", "ini_quote", "porcelain_quote", "unquote"]

_C_ESCAPES = {
    0x07: b"\\a",
    0x08: b"\\b",
    0x09: b"\\t",
    0x0A: b"\\n",
    0x0B: b"\\v",
    0x0C: b"\\f",
    0x0D: b"\\r",
    0x22: b'\\"',
    0x5C: b"\\\\",
}
_UNESCAPES = {v[1]: k for k, v in _C_ESCAPES.items()}


def _table(extra: bytes) -> list[bytes | None]:
    """Per byte: its escape, or None when it stands for itself."""
    table: list[bytes | None] = []
    for byte in range(256):
        if byte in _C_ESCAPES:
            table.append(_C_ESCAPES[byte])
        elif byte < 0x20 or byte >= 0x7F or byte in extra:
            table.append(b"\\%03o" % byte)
        else:
            table.append(None)
    return table


# git's quote_c_style with core.quotePath=true; porcelain also quotes names with spaces.
_GIT = _table(b"")
_INI = _table(b"=:")  # INI keys: no delimiter survives unescaped, for any INI reader


def _clean(table: list[bytes | None]) -> bytes:
    return bytes(byte for byte in range(256) if table[byte] is None)


_CLEAN = {id(_GIT): _clean(_GIT), id(_INI): _clean(_INI)}


def _quote(path: bytes, table: list[bytes | None], *, always: bool, space: bool) -> bytes:
    # Deleting every byte that stands for itself leaves those needing an escape: in C, not per byte.
    if not path.translate(None, _CLEAN[id(table)]):
        return b'"' + path + b'"' if always or (space and b" " in path) else path
    out = bytearray(b'"')
    for byte in path:
        escape = table[byte]
        if escape is None:
            out.append(byte)
        else:
            out += escape
    out += b'"'
    return bytes(out)


def porcelain_quote(path: bytes) -> str:
    """The path as ``git status --porcelain`` prints it (core.quotePath=true)."""
    return _quote(path, _GIT, always=False, space=True).decode("ascii")


def ini_quote(path: bytes) -> str:
    """The path as an INI key: always double-quoted, pure ASCII, no ``=`` or ``:``."""
    return _quote(path, _INI, always=True, space=False).decode("ascii")


def unquote(text: str) -> bytes:
    """Inverse of the quoting above; raises ValueError naming what is wrong."""
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        raise ValueError(f"expected a double-quoted string, got {text!r}")
    raw = text[1:-1].encode("ascii")
    if b"\\" not in raw and b'"' not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x22:
            raise ValueError("unescaped '\"' inside a quoted string")
        if byte != 0x5C:
            out.append(byte)
            i += 1
            continue
        if i + 1 >= len(raw):
            raise ValueError("quoted string ends with a lone backslash")
        code = raw[i + 1]
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            i += 2
        elif raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            value = int(raw[i + 1 : i + 4], 8)
            if value > 0xFF:
                raise ValueError(f"octal escape \\{raw[i + 1 : i + 4].decode()} is out of range")
            out.append(value)
            i += 4
        else:
            raise ValueError(f"unknown escape \\{chr(code)}")
    return bytes(out)


def check_relative(path: bytes) -> None:
    """Refuse a path that could leave the package or reach its metadata."""
    if not path:
        raise ValueError("empty path")
    if path.startswith(b"/"):
        raise ValueError(f"absolute path {path!r}")
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
        if b"\x00" in part:
            raise ValueError(f"path {path!r} contains a NUL byte")
    if parts[0] == b".conveyor":
        raise ValueError(f"path {path!r} is inside .conveyor/")
