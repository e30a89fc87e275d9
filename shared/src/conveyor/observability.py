"""Structured logging and the Prometheus metrics every Conveyor process exports."""

from __future__ import annotations

import logging
import sys
from typing import Any, Generic, TypeVar

import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "HANDLER_SECONDS",
    "MESSAGES_CONSUMED",
    "MESSAGES_DEAD_LETTERED",
    "MESSAGES_PUBLISHED",
    "MESSAGES_RETRIED",
    "LabelCache",
    "configure_logging",
    "get_logger",
]

_SECRET_KEYS = frozenset({"password", "secret", "token", "authorization", "signature", "private_key"})


def _redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


def configure_logging(*, service: str, level: str = "info", fmt: str = "auto") -> None:
    """JSON lines on stderr (console rendering on a TTY), with ``service`` bound.

    Standard-library loggers (aio-pika, uvicorn) go through the same renderer.
    """
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika narrates every reconnect attempt at INFO; our own events say it once.
    logging.getLogger("aio_pika").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("aiormq").setLevel(max(root.level, logging.WARNING))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


MESSAGES_PUBLISHED = Counter(
    "conveyor_messages_published_total",
    "Messages confirmed by the broker",
    ["env", "type"],
)
MESSAGES_CONSUMED = Counter(
    "conveyor_messages_consumed_total",
    "Messages taken off a queue, by outcome",
    ["env", "queue", "type", "outcome"],
)
MESSAGES_RETRIED = Counter(
    "conveyor_messages_retried_total",
    "Failed handler runs sent to a delay queue for another attempt",
    ["env", "queue", "type"],
)
MESSAGES_DEAD_LETTERED = Counter(
    "conveyor_messages_dead_lettered_total",
    "Messages parked in a dead-letter queue",
    ["env", "queue", "reason"],
)
HANDLER_SECONDS = Histogram(
    "conveyor_handler_duration_seconds",
    "Time a handler took, successful or not",
    ["env", "queue", "type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


M = TypeVar("M", bound=MetricWrapperBase)


class LabelCache(Generic[M]):
    """A metric's labelled children, looked up once: ``labels()`` is costly per message."""

    def __init__(self, metric: M, *fixed: str) -> None:
        self._metric = metric
        self._fixed = fixed
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*self._fixed, *labels)
        return child
