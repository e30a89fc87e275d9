"""Generate ``docs/messages.md`` and ``docs/asyncapi.yaml`` from the message catalogue.

Run ``conveyor contracts docs`` after changing a model; ``conveyor contracts docs
--check`` fails when the files on disk are not what would be generated (CI).
Both renderings are deterministic: the same catalogue gives byte-identical text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from conveyor.contracts.catalogue import CATALOGUE
from conveyor.contracts.docs._facts import COMMAND
from conveyor.contracts.docs.asyncapi import render_asyncapi
from conveyor.contracts.docs.markdown import render_markdown
from conveyor.contracts.envelope import Payload
from conveyor.contracts.examples import EXAMPLES
from conveyor.contracts.registry import Registry

__all__ = [
    "ASYNCAPI_FILE",
    "COMMAND",
    "MARKDOWN_FILE",
    "generate",
    "main",
    "render_asyncapi",
    "render_markdown",
]

MARKDOWN_FILE = "messages.md"
ASYNCAPI_FILE = "asyncapi.yaml"
DEFAULT_OUT = Path("docs")


def generate(registry: Registry = CATALOGUE, examples: Mapping[str, Payload] = EXAMPLES) -> dict[str, str]:
    """File name → the text it should have."""
    return {
        MARKDOWN_FILE: render_markdown(registry, examples),
        ASYNCAPI_FILE: render_asyncapi(registry, examples),
    }


def _regenerate_command(out: Path) -> str:
    return COMMAND if out == DEFAULT_OUT else f"{COMMAND} --out {out}"


def _check(out: Path, files: Mapping[str, str]) -> int:
    stale = []
    for name, text in files.items():
        path = out / name
        if not path.is_file():
            stale.append(f"{path} is missing")
        elif path.read_text(encoding="utf-8") != text:
            stale.append(f"{path} is stale")
    for line in stale:
        print(line, file=sys.stderr)
    if stale:
        print(f"run `{_regenerate_command(out)}` to regenerate", file=sys.stderr)
        return 1
    print(f"{', '.join(str(out / name) for name in files)} up to date")
    return 0


def _write(out: Path, files: Mapping[str, str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory to write to (default: docs)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the files differ from what would be generated",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    files = generate()
    return _check(out, files) if args.check else _write(out, files)
