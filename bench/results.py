"""Shared by the benchmarks: each owns one ``## `` section of bench/RESULTS.md."""

from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["cpu_model", "write_section"]


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section headed ``title`` in ``path`` (or append it), leaving the rest alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
