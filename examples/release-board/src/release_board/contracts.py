"""The release board's own messages, and the registry that reads them next to Conveyor's.

A payload class declares its wire identity with class keywords, exactly like Conveyor's own
catalogue does; the board's consumer decodes with ``REGISTRY`` (Conveyor's catalogue plus
these), so one queue can carry both.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from conveyor.contracts import CATALOGUE, Payload, Registry
from conveyor.contracts.common import PackageName, VersionId

__all__ = ["REGISTRY", "ReleaseAnnounced"]


class ReleaseAnnounced(Payload, message_type="release_board.announced"):
    """Someone announced a release on the board: what ships, and what it brings."""

    package: PackageName
    version: VersionId
    summary: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    announced_by: Annotated[str, StringConstraints(min_length=1, max_length=200)]


REGISTRY = Registry([*CATALOGUE, ReleaseAnnounced])
