"""Message contracts: the envelope, the typed catalogue and the type registry."""

from conveyor.contracts.catalogue import *  # noqa: F403 - the catalogue's __all__ is the public surface
from conveyor.contracts.catalogue import CATALOGUE
from conveyor.contracts.catalogue import __all__ as _catalogue_all
from conveyor.contracts.common import CommandAuthorization
from conveyor.contracts.envelope import (
    ContractError,
    Envelope,
    InvalidPayload,
    MalformedMessage,
    MessageKind,
    Payload,
    UnknownMessageType,
    UnsupportedSchemaVersion,
)
from conveyor.contracts.registry import Registry

__all__ = [  # noqa: PLE0604 - extended from the catalogue
    *_catalogue_all,
    "CATALOGUE",
    "CommandAuthorization",
    "ContractError",
    "Envelope",
    "InvalidPayload",
    "MalformedMessage",
    "MessageKind",
    "Payload",
    "Registry",
    "UnknownMessageType",
    "UnsupportedSchemaVersion",
]
