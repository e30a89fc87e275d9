"""Composition root of the notifier service."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI

from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_notifier import __version__, consumers
from conveyor_notifier.api import api_router
from conveyor_notifier.config import Settings
from conveyor_notifier.db import create_engine, migrate, session_factory
from conveyor_notifier.receivers import AppriseReceiver, EmailReceiver, LogReceiver, Receiver, SmtpSettings
from conveyor_notifier.rules import RulesConfig, RulesError, load_rules
from conveyor_notifier.service import Notifier
from conveyor_notifier.templates import Templates

__all__ = ["build_receivers", "create_app", "node_labels"]


def build_receivers(rules: RulesConfig, settings: Settings) -> dict[str, Receiver]:
    """A receiver for every one the rules file defines, with the SMTP settings for email."""
    smtp = SmtpSettings(
        host=settings.smtp_host,
        port=settings.smtp_port,
        starttls=settings.smtp_starttls,
        use_tls=settings.smtp_tls,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        sender=settings.smtp_sender,
        validate_certs=settings.smtp_validate_certs,
    )
    receivers: dict[str, Receiver] = {}
    for name, config in rules.receivers.items():
        if config.kind == "email":
            receivers[name] = EmailReceiver(
                name,
                to=config.to,
                cc=config.cc,
                subject_prefix=config.subject_prefix,
                smtp=smtp,
                timeout_s=config.timeout_s,
            )
        elif config.kind == "apprise":
            receivers[name] = AppriseReceiver(
                name, urls=config.resolve_urls(os.environ), timeout_s=config.timeout_s
            )
        else:
            receivers[name] = LogReceiver(name)
    return receivers


def node_labels(inventory_file: Path | None) -> dict[str, dict[str, str]]:
    """node → labels from the deployer's inventory file (nothing when none is configured)."""
    if inventory_file is None:
        return {}
    data: Any = yaml.safe_load(inventory_file.read_text())
    labels: dict[str, dict[str, str]] = {}
    for env in data.get("environments", []) if isinstance(data, Mapping) else []:
        for cluster in env.get("clusters", []) or []:
            for node in cluster.get("nodes", []) or []:
                labels[str(node["name"])] = {str(k): str(v) for k, v in (node.get("labels") or {}).items()}
    return labels


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    rules = load_rules(settings.rules_file)  # RulesError: the service refuses to start, saying why
    try:
        receivers = build_receivers(rules, settings)
    except ValueError as exc:  # an Apprise URL it cannot parse, an URLS_ENV variable not set
        raise RulesError(f"{settings.rules_file}: {exc}") from None
    engine = create_engine(settings.db_url())
    sessions = session_factory(engine)
    notifier = Notifier(
        sessions,
        rules,
        receivers,
        Templates(settings.templates_dir, link_base=settings.link_base),
        node_labels=node_labels(settings.inventory_file),
        dedup_window_s=settings.dedup_window_s,
        retry_base_s=settings.retry_base_s,
        retention_s=settings.retention_days * 86_400,
    )
    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
        handlers={consumers.QUEUE: consumers.event_handlers(notifier)},
    )

    async def prepare() -> None:
        await migrate(engine)
        await notifier.start()

    app = create_service_app(runtime, startup=[prepare], shutdown=[notifier.stop, engine.dispose])
    app.state.notifier = notifier
    app.state.settings = settings
    app.include_router(api_router(sessions))
    return app
