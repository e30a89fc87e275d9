"""The read API: versions per environment, history, diffs, deployments, nodes and the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor_version_db.auth import TokenAuth
from conveyor_version_db.models import (
    AuditEntry,
    Changeset,
    Deployment,
    DeploymentNode,
    DriftReport,
    Environment,
    EnvVersion,
    Node,
    NodeVersion,
    Package,
)

__all__ = ["api_router"]

T = TypeVar("T")
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]


class MatrixRow(BaseModel):
    package: str
    versions: dict[str, str | None]


class Matrix(BaseModel):
    envs: list[str]
    packages: list[MatrixRow]


class ChangesetOut(BaseModel):
    id: str
    version: str
    parent_version: str | None
    author: str
    message: str
    created_at: datetime
    archive_size: int
    files_added: int
    files_modified: int
    files_deleted: int


class DeploymentOut(BaseModel):
    id: str
    package: str
    version: str
    from_env: str | None
    to_env: str
    state: str
    requested_by: str | None
    requested_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    rolled_back: bool
    reason: str | None


class History(BaseModel):
    package: str
    changesets: list[ChangesetOut]
    deployments: list[DeploymentOut]


class PackageDiff(BaseModel):
    package: str
    from_version: str | None
    to_version: str | None
    versions_only_in_from: list[str]


class EnvDiff(BaseModel):
    from_env: str
    to_env: str
    packages: list[PackageDiff]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    next_offset: int | None


class NodeResult(BaseModel):
    node: str
    wave: int | None
    state: str
    error: str | None
    duration_s: float | None


class DeploymentDetail(DeploymentOut):
    nodes: list[NodeResult]


class DriftOut(BaseModel):
    package: str
    expected_version: str
    files: dict[str, list[str]]
    detected_at: datetime


class NodeOut(BaseModel):
    env: str
    name: str
    address: str | None
    labels: dict[str, str]
    last_heartbeat_at: datetime | None
    agent_versions: dict[str, str]
    versions: dict[str, str]
    drift: list[DriftOut]


class AuditOut(BaseModel):
    at: datetime
    actor: str | None
    action: str
    target: str | None
    outcome: str
    env: str | None
    message_id: str | None
    detail: dict[str, Any]


def _page(items: list[T], total: int, offset: int) -> Page[T]:
    following = offset + len(items)
    return Page[T](items=items, total=total, next_offset=following if following < total else None)


async def _count(session: AsyncSession, query: Select[Any]) -> int:
    return (
        await session.execute(select(func.count()).select_from(query.order_by(None).subquery()))
    ).scalar_one()


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


Db = Annotated[AsyncSession, Depends(_session)]
_routes = APIRouter()


class Problem(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an unknown one"},
    403: {"model": Problem, "description": "the token's role may not do this"},
    404: {"model": Problem, "description": "no such package, deployment or environment"},
}


def api_router(auth: TokenAuth) -> APIRouter:
    """Every route below, for readers and up; sessions come from ``app.state.sessions``."""
    router = APIRouter(dependencies=[Depends(auth.require("reader"))], responses=_ERRORS)
    router.include_router(_routes)
    return router


@_routes.get("/versions", response_model=Matrix, summary="Current version of every package per environment")
async def versions(*, db: Db, env: str | None = None, package: str | None = None) -> Matrix:
    envs = (await db.scalars(select(Environment).order_by(Environment.position))).all()
    shown = [e for e in envs if env is None or e.name == env]
    query = (
        select(Package.name, Environment.name, EnvVersion.version)
        .join(EnvVersion, EnvVersion.package_id == Package.id)
        .join(Environment, Environment.id == EnvVersion.env_id)
    )
    packages = select(Package.name).order_by(Package.name)
    if package is not None:
        query, packages = query.where(Package.name == package), packages.where(Package.name == package)
    current: dict[str, dict[str, str]] = {}
    for pkg, env_name, version in (await db.execute(query)).all():
        current.setdefault(pkg, {})[env_name] = version
    rows = [
        MatrixRow(package=name, versions={e.name: current.get(name, {}).get(e.name) for e in shown})
        for name in (await db.scalars(packages)).all()
    ]
    return Matrix(envs=[e.name for e in shown], packages=rows)


@_routes.get(
    "/packages/{name}/history", response_model=History, summary="A package's changesets and deployments"
)
async def history(*, db: Db, name: str, limit: Limit = 100) -> History:
    package = await db.scalar(select(Package).where(Package.name == name))
    if package is None:
        raise HTTPException(404, f"no package {name!r} has been recorded")
    changesets = (
        await db.scalars(
            select(Changeset)
            .where(Changeset.package_id == package.id)
            .order_by(Changeset.created_at.desc())
            .limit(limit)
        )
    ).all()
    deployments = await _deployments(
        db, _deployment_query().where(Deployment.package_id == package.id), limit, 0
    )
    return History(
        package=name,
        changesets=[ChangesetOut.model_validate(c, from_attributes=True) for c in changesets],
        deployments=deployments,
    )


@_routes.get(
    "/diff", response_model=EnvDiff, summary="Packages whose versions differ between two environments"
)
async def diff(
    *, db: Db, from_env: Annotated[str, Query(alias="from")], to_env: Annotated[str, Query(alias="to")]
) -> EnvDiff:
    matrix = await versions(db=db)
    for name in (from_env, to_env):
        if name not in matrix.envs:
            raise HTTPException(404, f"no environment {name!r}; known: {', '.join(matrix.envs)}")
    deployed = await _succeeded_versions(db)
    packages = [
        PackageDiff(
            package=row.package,
            from_version=row.versions[from_env],
            to_version=row.versions[to_env],
            versions_only_in_from=sorted(
                deployed.get((row.package, from_env), set()) - deployed.get((row.package, to_env), set())
            ),
        )
        for row in matrix.packages
        if row.versions[from_env] != row.versions[to_env]
    ]
    return EnvDiff(from_env=from_env, to_env=to_env, packages=packages)


@_routes.get("/deployments", response_model=Page[DeploymentOut], summary="Deployments, newest first")
async def deployments(
    *,
    db: Db,
    env: str | None = None,
    package: str | None = None,
    state: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DeploymentOut]:
    # Filters on the deployments table alone: the count then needs no join, and the
    # page walks ix_deployments_requested_at_id instead of sorting every row.
    conditions: list[ColumnElement[bool]] = []
    if env is not None:
        conditions.append(Deployment.to_env_id.in_(select(Environment.id).where(Environment.name == env)))
    if package is not None:
        conditions.append(Deployment.package_id.in_(select(Package.id).where(Package.name == package)))
    if state is not None:
        conditions.append(Deployment.state == state)
    # The page's ids first, from the deployments table and its index alone; then their details.
    newest_first = (Deployment.requested_at.desc(), Deployment.id.desc())
    page_ids = (
        await db.scalars(
            select(Deployment.id).where(*conditions).order_by(*newest_first).offset(offset).limit(limit)
        )
    ).all()
    items = (
        await _deployments(db, _deployment_query().where(Deployment.id.in_(page_ids)), limit, 0)
        if page_ids
        else []
    )
    total = (await db.execute(select(func.count()).select_from(Deployment).where(*conditions))).scalar_one()
    return _page(items, total, offset)


@_routes.get(
    "/deployments/{deployment_id}", response_model=DeploymentDetail, summary="A deployment, node by node"
)
async def deployment(*, db: Db, deployment_id: str) -> DeploymentDetail:
    matches = await _deployments(db, _deployment_query().where(Deployment.id == deployment_id), 1, 0)
    if not matches:
        raise HTTPException(404, f"no deployment {deployment_id}")
    found = matches[0]
    rows = await db.execute(
        select(Node.name, DeploymentNode)
        .join(Node, Node.id == DeploymentNode.node_id)
        .where(DeploymentNode.deployment_id == deployment_id)
        .order_by(DeploymentNode.wave, Node.name)
    )
    nodes = [
        NodeResult(node=name, wave=r.wave, state=r.state, error=r.error, duration_s=r.duration_s)
        for name, r in rows.all()
    ]
    return DeploymentDetail(**found.model_dump(), nodes=nodes)


@_routes.get("/nodes", response_model=list[NodeOut], summary="Nodes: heartbeat, versions and drift")
async def nodes(*, db: Db, env: str | None = None) -> list[NodeOut]:
    query = (
        select(Node, Environment.name)
        .join(Environment, Environment.id == Node.env_id)
        .order_by(Environment.position, Node.name)
    )
    if env is not None:
        query = query.where(Environment.name == env)
    result = []
    for node, env_name in (await db.execute(query)).all():
        versions = await db.execute(
            select(Package.name, NodeVersion.version)
            .join(NodeVersion, NodeVersion.package_id == Package.id)
            .where(NodeVersion.node_id == node.id)
        )
        drift = await db.execute(
            select(Package.name, DriftReport)
            .join(DriftReport, DriftReport.package_id == Package.id)
            .where(DriftReport.node_id == node.id)
            .order_by(DriftReport.detected_at.desc())
            .limit(5)
        )
        result.append(
            NodeOut(
                env=env_name,
                name=node.name,
                address=node.address,
                labels=node.labels,
                last_heartbeat_at=node.last_heartbeat_at,
                agent_versions=node.agent_versions,
                versions=dict(versions.all()),
                drift=[
                    DriftOut(
                        package=p,
                        expected_version=d.expected_version,
                        files=d.files,
                        detected_at=d.detected_at,
                    )
                    for p, d in drift.all()
                ],
            )
        )
    return result


@_routes.get("/audit", response_model=Page[AuditOut], summary="The audit log, newest first")
async def audit(
    *,
    db: Db,
    actor: str | None = None,
    action: str | None = None,
    env: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditOut]:
    query = select(AuditEntry)
    filters = (
        (AuditEntry.actor, actor),
        (AuditEntry.action, action),
        (AuditEntry.env, env),
        (AuditEntry.target, target),
    )
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    rows = (
        await db.scalars(
            query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).offset(offset).limit(limit)
        )
    ).all()
    items = [AuditOut.model_validate(r, from_attributes=True) for r in rows]
    return _page(items, await _count(db, query), offset)


def _deployment_query() -> Select[Any]:
    target = Environment.__table__.alias("target")
    source = Environment.__table__.alias("source")
    return (
        select(Deployment, Package.name, target.c.name, source.c.name)
        .join(Package, Package.id == Deployment.package_id)
        .join(target, target.c.id == Deployment.to_env_id)
        .outerjoin(source, source.c.id == Deployment.from_env_id)
        .order_by(Deployment.requested_at.desc(), Deployment.id.desc())
    )


async def _deployments(db: AsyncSession, query: Select[Any], limit: int, offset: int) -> list[DeploymentOut]:
    rows = await db.execute(query.offset(offset).limit(limit))
    return [
        DeploymentOut(
            id=d.id,
            package=package,
            version=d.version,
            from_env=source,
            to_env=target,
            state=d.state,
            requested_by=d.requested_by,
            requested_at=d.requested_at,
            started_at=d.started_at,
            finished_at=d.finished_at,
            rolled_back=d.rolled_back,
            reason=d.reason,
        )
        for d, package, target, source in rows.all()
    ]


async def _succeeded_versions(db: AsyncSession) -> dict[tuple[str, str], set[str]]:
    rows = await db.execute(
        select(Package.name, Environment.name, Deployment.version)
        .join(Package, Package.id == Deployment.package_id)
        .join(Environment, Environment.id == Deployment.to_env_id)
        .where(Deployment.state == "succeeded")
        .distinct()
    )
    found: dict[tuple[str, str], set[str]] = {}
    for package, env, version in rows.all():
        found.setdefault((package, env), set()).add(version)
    return found
