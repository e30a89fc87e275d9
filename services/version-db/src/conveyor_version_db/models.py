"""The version database's tables (SQLAlchemy 2, typed), the same on MySQL/MariaDB and SQLite."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor.db import NAMING, UTCDateTime, utcnow

__all__ = [
    "AuditEntry",
    "Base",
    "BlockedVersion",
    "Changeset",
    "Deployment",
    "DeploymentNode",
    "DriftReport",
    "EnvVersion",
    "Environment",
    "InboxMessage",
    "Node",
    "NodeVersion",
    "Package",
    "utcnow",
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Name = String(128)
VersionText = String(128)


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    position: Mapped[int] = mapped_column(Integer, doc="promotion order: dev < qa < prod")


class Node(Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("env_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    name: Mapped[str] = mapped_column(String(63))
    address: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    agent_versions: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Package(Base):
    __tablename__ = "packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Changeset(Base):
    """A changeset: takes a package from ``parent_version`` to ``version``; its id is the archive's sha256."""

    __tablename__ = "changesets"
    __table_args__ = (Index("ix_changesets_package_version", "package_id", "version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    parent_version: Mapped[str | None] = mapped_column(VersionText)
    version: Mapped[str] = mapped_column(VersionText)
    author: Mapped[str] = mapped_column(String(2000))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    archive_size: Mapped[int] = mapped_column(BigInteger)
    files_added: Mapped[int] = mapped_column(Integer)
    files_modified: Mapped[int] = mapped_column(Integer)
    files_deleted: Mapped[int] = mapped_column(Integer)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        Index("ix_deployments_to_env_requested", "to_env_id", "requested_at"),
        Index("ix_deployments_requested_at_id", "requested_at", "id"),  # the newest-first listing
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    version: Mapped[str] = mapped_column(VersionText)
    from_env_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"))
    to_env_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    requested_by: Mapped[str | None] = mapped_column(String(2000))
    strategy: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), doc="requested, started, succeeded, failed")
    reason: Mapped[str | None] = mapped_column(Text)
    failure_budget: Mapped[int | None] = mapped_column(Integer)
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeploymentNode(Base):
    """One node's part of a deployment."""

    __tablename__ = "deployment_nodes"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    wave: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(
        String(16), doc="pending, applying, succeeded, failed, rolled_back, unreachable"
    )
    error: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EnvVersion(Base):
    """The version of a package an environment runs now."""

    __tablename__ = "env_versions"

    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    version: Mapped[str] = mapped_column(VersionText)
    deployment_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NodeVersion(Base):
    """The version of a package a node runs now."""

    __tablename__ = "node_versions"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    version: Mapped[str] = mapped_column(VersionText)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftReport(Base):
    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    expected_version: Mapped[str] = mapped_column(VersionText)
    files: Mapped[dict[str, list[str]]] = mapped_column(JSON, doc="added, modified, deleted")
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(36))


class BlockedVersion(Base):
    __tablename__ = "blocked_versions"

    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    version: Mapped[str] = mapped_column(VersionText, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    blocked_by: Mapped[str] = mapped_column(String(200))
    blocked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_actor", "actor"))

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(32))
    env: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class InboxMessage(Base):
    """Every message applied, by id: a redelivery finds itself here and changes nothing."""

    __tablename__ = "inbox"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
