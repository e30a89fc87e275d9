"""Errors the bus raises to its callers, each naming the environment and target."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "BusError",
    "PublishFailed",
    "PublishRefused",
    "UnroutableMessage",
]


class BusError(Exception):
    """Base of the bus's own errors."""


class BrokerUnavailable(BusError):
    """The environment's broker could not be reached (or refused our login)."""


class UnroutableMessage(BusError):
    """The broker returned a ``mandatory`` message: no queue is bound for it."""


class PublishRefused(BusError):
    """The broker refused the publish for good: missing exchange or no permission."""


class PublishFailed(BusError):
    """The broker did not confirm the message before the publish timeout."""
