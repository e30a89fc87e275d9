"""Why a changeset could not be built, read or applied; each names what was wrong."""

from __future__ import annotations

__all__ = [
    "ApplyError",
    "ChangesetError",
    "HostileArchive",
    "NoRelease",
    "ParentMismatch",
]


class ChangesetError(Exception):
    """Base of every changeset error."""


class HostileArchive(ChangesetError):
    """The archive is malformed or unsafe; nothing was written outside a fresh staging directory."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"{entry}: {reason}")
        self.entry = entry
        self.reason = reason


class ParentMismatch(ChangesetError):
    """The target does not run the changeset's parent version, or its files were edited."""

    def __init__(self, message: str, *, running: str | None, differing: list[str]) -> None:
        shown = "".join(f"\n  {line}" for line in differing[:50])
        more = f"\n  … and {len(differing) - 50} more" if len(differing) > 50 else ""
        super().__init__(message + shown + more)
        self.running = running
        self.differing = differing


class NoRelease(ChangesetError):
    """There is no release to switch back to."""


class ApplyError(ChangesetError):
    """Building or switching the release failed (disk full, permissions…); the current release is intact."""
