"""Package version control: status like git, versions and changelogs in INI files.

The names below are imported on first use, so ``conveyor vcs status`` loads
only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.pkgvcs.diffs import diff
    from conveyor.pkgvcs.errors import (
        CorruptFile,
        LockHeld,
        NotAPackage,
        NothingToCommit,
        UncommittedChanges,
        UnknownVersion,
        VcsError,
    )
    from conveyor.pkgvcs.integrity import fsck
    from conveyor.pkgvcs.manifest import Changes, FileEntry, Tree, VersionInfo, version_id
    from conveyor.pkgvcs.package import Package, Status
    from conveyor.pkgvcs.paths import porcelain_quote
    from conveyor.pkgvcs.worktree import checkout

_HOME = {
    "checkout": "worktree",
    "diff": "diffs",
    "fsck": "integrity",
    "Package": "package",
    "Status": "package",
    "porcelain_quote": "paths",
    **dict.fromkeys(["Changes", "FileEntry", "Tree", "VersionInfo", "version_id"], "manifest"),
    **dict.fromkeys(
        [
            "CorruptFile",
            "LockHeld",
            "NotAPackage",
            "NothingToCommit",
            "UncommittedChanges",
            "UnknownVersion",
            "VcsError",
        ],
        "errors",
    ),
}

__all__ = [
    "Changes",
    "CorruptFile",
    "FileEntry",
    "LockHeld",
    "NotAPackage",
    "NothingToCommit",
    "Package",
    "Status",
    "Tree",
    "UncommittedChanges",
    "UnknownVersion",
    "VcsError",
    "VersionInfo",
    "checkout",
    "diff",
    "fsck",
    "porcelain_quote",
    "version_id",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor.pkgvcs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"conveyor.pkgvcs.{module}"), name)
