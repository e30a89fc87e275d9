"""Errors of the package version control, each saying what to do next."""

from __future__ import annotations

__all__ = [
    "CorruptFile",
    "LockHeld",
    "NotAPackage",
    "NothingToCommit",
    "UncommittedChanges",
    "UnknownVersion",
    "VcsError",
]


class VcsError(Exception):
    """Base of every error ``conveyor vcs`` reports as one line."""


class NotAPackage(VcsError):
    pass


class CorruptFile(VcsError):
    """A metadata file or object that does not read back as written (names the file and line)."""


class LockHeld(VcsError):
    pass


class NothingToCommit(VcsError):
    pass


class UncommittedChanges(VcsError):
    pass


class UnknownVersion(VcsError):
    pass
