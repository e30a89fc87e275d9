"""Changesets: a package's change from one version to the next as a deterministic zip with an
INI changelog, and applying it on a node atomically (verify, stage, switch)."""

from __future__ import annotations

from conveyor.changeset.archive import (
    CHANGELOG_NAME,
    Built,
    ChangesetArchive,
    Limits,
    build_between_releases,
    build_changeset,
    changes_between,
    sha256_file,
)
from conveyor.changeset.errors import ApplyError, ChangesetError, HostileArchive, NoRelease, ParentMismatch
from conveyor.changeset.releases import ApplyResult, ReleaseRoot, ReleaseState
from conveyor.changeset.store import ArtifactStore, StoreRefused, StoreUnavailable

__all__ = [
    "CHANGELOG_NAME",
    "ApplyError",
    "ApplyResult",
    "ArtifactStore",
    "Built",
    "ChangesetArchive",
    "ChangesetError",
    "HostileArchive",
    "Limits",
    "NoRelease",
    "ParentMismatch",
    "ReleaseRoot",
    "ReleaseState",
    "StoreRefused",
    "StoreUnavailable",
    "build_between_releases",
    "build_changeset",
    "changes_between",
    "sha256_file",
]
