"""Package version control: status like git, versions and changelogs in INI files."""

from conveyor.pkgvcs.checkout import checkout
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
from conveyor.pkgvcs.fsck import fsck
from conveyor.pkgvcs.manifest import Changes, FileEntry, Tree, VersionInfo, version_id
from conveyor.pkgvcs.package import Package, Status
from conveyor.pkgvcs.paths import porcelain_quote

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
