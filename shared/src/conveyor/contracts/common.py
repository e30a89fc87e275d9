"""Field types shared by several messages."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "CommandAuthorization",
    "FilePath",
    "PackageName",
    "Sha256",
    "VersionId",
]

PackageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
VersionId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class CommandAuthorization(BaseModel):
    """What the deployment server signs on a privileged command.

    The actor is the envelope's ``actor``; agents check the signature, the
    role, that ``expires_at`` is in the future and that ``nonce`` is unused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    expires_at: AwareDatetime
    nonce: Annotated[str, StringConstraints(min_length=16, max_length=128)]
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    signature: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="Ed25519 signature, base64, over the canonical command"
    )
