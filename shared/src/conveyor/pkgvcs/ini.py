"""The small INI dialect of Conveyor's metadata files: strict to read, exact to write.

``[section]`` headers, ``key = value`` lines, ``;`` or ``#`` comment lines.
Keys in file sections are double-quoted paths (see ``paths.ini_quote``); text
values that need it are double-quoted with the same escapes. Every reading
error names the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from conveyor.pkgvcs.errors import CorruptFile
from conveyor.pkgvcs.paths import ini_quote, unquote

__all__ = ["Section", "parse", "quote_text", "render", "unquote_text"]


class Section(NamedTuple):
    name: str
    line: int
    entries: list[tuple[str, str, int]]  # key, value, line

    def values(self, source: str) -> dict[str, str]:
        """Plain ``key = value`` pairs; a repeated key is an error."""
        result: dict[str, str] = {}
        for key, value, line in self.entries:
            if key in result:
                raise CorruptFile(f"{source}:{line}: [{self.name}] repeats {key!r}")
            result[key] = value
        return result


def parse(text: str, source: str) -> list[Section]:
    sections: list[Section] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line[0] == "[":
            if line[-1] != "]" or len(line) < 3:
                raise CorruptFile(f"{source}:{number}: malformed section header {raw!r}")
            sections.append(Section(line[1:-1].strip(), number, []))
            continue
        if not sections:
            raise CorruptFile(f"{source}:{number}: a setting before any [section]")
        key, value = _split(line, source, number)
        sections[-1].entries.append((key, value, number))
    return sections


def _split(line: str, source: str, number: int) -> tuple[str, str]:
    if line[0] == '"':
        end = _closing_quote(line)
        if end < 0:
            raise CorruptFile(f"{source}:{number}: unterminated quoted key")
        key, rest = line[: end + 1], line[end + 1 :].lstrip()
        if not rest.startswith("="):
            raise CorruptFile(f"{source}:{number}: expected '=' after the quoted key")
        return key, rest[1:].strip()
    key, sep, value = line.partition("=")
    if not sep:
        raise CorruptFile(f"{source}:{number}: expected 'key = value', got {line!r}")
    return key.strip(), value.strip()


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _closing_quote(line: str) -> int:
    """Index of the quote closing the one at ``line[0]``, skipping escapes; -1 if there is none."""
    match = _QUOTED.match(line)
    return match.end() - 1 if match else -1


def quote_text(text: str) -> str:
    """A text value: quoted (ASCII, escaped) unless it is plain and safe as is."""
    if text and text.isprintable() and text.isascii() and text == text.strip() and '"' not in text[:1]:
        return text
    return ini_quote(text.encode("utf-8"))


def unquote_text(value: str, source: str, line: int) -> str:
    if not value.startswith('"'):
        return value
    try:
        return unquote(value).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{source}:{line}: bad quoted value: {exc}") from None


def render(sections: Iterable[tuple[str, Iterable[tuple[str, str]]]], *, comment: str = "") -> str:
    out: list[str] = [f"; {comment}"] if comment else []
    for name, items in sections:
        if out:
            out.append("")
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in items)
    return "\n".join(out) + "\n"
