"""The deployer's HTTP API: promotions, approvals, retries, rollbacks, blocked versions, nodes.

Every route needs ``Authorization: Bearer <token>`` of a configured user; the
user's name is the actor of what they ask for (an approval must come from
someone other than the requester).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conveyor_deployer import __version__
from conveyor_deployer.bootstrap import (
    AgentPlan,
    BootstrapReport,
    bootstrap,
    bootstrap_env,
    trusted_key_lines,
)
from conveyor_deployer.config import Role, Settings
from conveyor_deployer.ctlcheck import plan_from_settings, provision, remove, status
from conveyor_deployer.ctluser import CtlError, CtlReport
from conveyor_deployer.firewall import FirewallRefused
from conveyor_deployer.nodes import TrustRefused
from conveyor_deployer.promotions import Promotion
from conveyor_deployer.service import Deployer, Refused
from conveyor_deployer.ssh import HostKeyChanged, NodeUnreachable

__all__ = ["api_router", "install_error_handlers"]


class Caller(BaseModel):
    name: str
    role: Role


class PromotionRequest(BaseModel):
    package: str
    to_env: str
    version: str | None = None
    canary: int = Field(default=1, ge=0)
    wave_size: str = "25%"
    max_failures: str = "0"
    reason: str | None = Field(default=None, max_length=2000)


class RollbackRequest(BaseModel):
    package: str
    env: str
    to_version: str | None = None
    reason: str | None = Field(default=None, max_length=2000)


class RejectRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


class CtlUserRequest(BaseModel):
    env: str
    node: str | None = None


class UnblockRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


def _authenticate(request: Request) -> Caller:
    settings: Settings = request.app.state.deployer.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    for name, user in settings.users.items():
        if hmac.compare_digest(user.token.get_secret_value().encode(), token.encode()):
            return Caller(name=name, role=user.role)
    raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})


def _need(role: Role) -> Callable[[Caller], Caller]:
    def check(caller: Annotated[Caller, Depends(_authenticate)]) -> Caller:
        if caller.role.rank < role.rank:
            raise HTTPException(403, f"{caller.name} is a {caller.role}; this needs {role}")
        return caller

    return check


Reader = Annotated[Caller, Depends(_need(Role.READER))]
Deploying = Annotated[Caller, Depends(_need(Role.DEPLOYER))]
Admin = Annotated[Caller, Depends(_need(Role.ADMIN))]


class BootstrapRequest(BaseModel):
    env: str
    node: str | None = None


class FirewallRequestBody(BaseModel):
    action: Literal["disable", "enable"]
    servers: list[str] | None = Field(default=None, description="inventory names; unknown ones are reported")
    env: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    lease_s: int | None = Field(default=None, gt=0, description="disable: how long the firewall stays open")
    reason: str = Field(min_length=1, max_length=2000)
    dry_run: bool = False


class TrustRequest(BaseModel):
    fingerprint: str = Field(description="the SHA256:… fingerprint a person confirmed")
    replace: bool = Field(default=False, description="replace a different key trusted before")


def api_router(deployer: Deployer, settings: Settings) -> APIRouter:
    router = APIRouter()

    @router.post("/promotions", status_code=201)
    async def promote(body: PromotionRequest, caller: Deploying) -> Promotion:
        """Check the gates and start the promotion (or park it for approval)."""
        return deployer.request(
            package=body.package,
            to_env=body.to_env,
            version=body.version,
            user=caller.name,
            canary=body.canary,
            wave_size=body.wave_size,
            max_failures=body.max_failures,
            reason=body.reason,
        )

    @router.get("/promotions")
    async def promotions(caller: Reader, limit: int = 50) -> list[Promotion]:
        del caller
        return deployer.promotions.all()[: max(1, min(limit, 500))]

    @router.get("/promotions/{promotion_id}")
    async def promotion(promotion_id: UUID, caller: Reader) -> Promotion:
        del caller
        found = deployer.promotions.get(promotion_id)
        if found is None:
            raise HTTPException(404, f"no promotion {promotion_id}")
        return found

    @router.post("/promotions/{promotion_id}/approve")
    async def approve(promotion_id: UUID, caller: Deploying) -> Promotion:
        return deployer.approve(promotion_id, caller.name)

    @router.post("/promotions/{promotion_id}/reject")
    async def reject(promotion_id: UUID, body: RejectRequest, caller: Deploying) -> Promotion:
        """Turn down (or, as its requester, withdraw) a promotion awaiting approval."""
        return deployer.reject(promotion_id, caller.name, body.reason)

    @router.post("/promotions/{promotion_id}/retry")
    async def retry(promotion_id: UUID, caller: Deploying) -> Promotion:
        return deployer.retry(promotion_id, caller.name)

    @router.post("/rollbacks", status_code=201)
    async def rollback(body: RollbackRequest, caller: Deploying) -> Promotion:
        return deployer.rollback(
            package=body.package,
            env=body.env,
            to_version=body.to_version,
            user=caller.name,
            reason=body.reason,
        )

    @router.get("/blocked")
    async def blocked(caller: Reader) -> dict[str, dict[str, dict[str, str]]]:
        del caller
        return deployer.promotions.blocked()

    @router.post("/blocked/{package}/{version}/unblock")
    async def unblock(package: str, version: str, body: UnblockRequest, caller: Deploying) -> dict[str, str]:
        deployer.unblock(package, version, caller.name, body.reason)
        return {"package": package, "version": version, "state": "unblocked"}

    @router.get("/nodes")
    async def nodes(caller: Reader, env: str | None = None, label: str | None = None) -> list[dict[str, Any]]:
        """The inventory's nodes with what they run, as they last reported."""
        del caller
        pairs = [item.split("=", 1) for item in label.split(",")] if label else []
        if any(len(pair) != 2 for pair in pairs):
            raise HTTPException(422, f"label {label!r}: give key=value pairs, separated by commas")
        wanted: dict[str, str] = dict(pairs)  # pairs of two, checked above
        rows = []
        for env_name, node in deployer.inventory.all_nodes():
            if (env and env_name != env) or not node.matches(wanted):
                continue
            record = deployer.fleet.nodes.get(node.name)
            rows.append(
                {
                    "env": env_name,
                    "name": node.name,
                    "address": node.address,
                    "ssh": f"{node.ssh_user}@{node.address}:{node.ssh_port}",
                    "agent": node.agent.value,
                    "labels": node.labels,
                    "packages": {p: (record.versions.get(p) if record else None) for p in node.packages},
                    "last_heartbeat": record.last_heartbeat if record else None,
                    "alive": deployer.fleet.alive(node.name, settings.heartbeat_stale_s),
                }
            )
        return rows

    _node_routes(router, deployer, settings)
    _ctl_routes(router, deployer, settings)
    _firewall_routes(router, deployer)
    return router


def _node_routes(router: APIRouter, deployer: Deployer, settings: Settings) -> None:
    """Reaching the nodes over SSH: host keys, trust, bootstrap, checks."""

    @router.get("/nodes/host-keys")
    async def host_keys(
        caller: Reader, env: str | None = None, node: str | None = None
    ) -> list[dict[str, Any]]:
        """What each node presents against what is trusted: trusted, unknown, changed or unreachable."""
        del caller
        return await deployer.nodes.host_keys(env, node)

    @router.post("/nodes/{node}/trust")
    async def trust(node: str, body: TrustRequest, caller: Admin) -> dict[str, str]:
        """Trust the host key the node presents, if it has the fingerprint the caller confirmed."""
        try:
            trusted = await deployer.nodes.trust(node, body.fingerprint, replace=body.replace)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except (TrustRefused, HostKeyChanged, NodeUnreachable) as exc:
            raise HTTPException(409, str(exc)) from None
        return {"node": node, "fingerprint": trusted, "trusted_by": caller.name}

    @router.post("/nodes/bootstrap")
    async def bootstrap_nodes(body: BootstrapRequest, caller: Admin) -> list[dict[str, Any]]:
        """Provision the system-control user (``CTL_IN_BOOTSTRAP``), then install or update the node
        agents over SSH, write their configuration and the trusted keys, start them; nothing changes on a
        node that already has all of it."""
        try:
            plan = AgentPlan(
                envs={body.env: settings.agent_envs[body.env]},
                artifact_store_url=settings.agent_artifact_store_url or settings.artifact_store_url,
                artifact_store_token=(
                    settings.agent_artifact_store_token.get_secret_value()
                    if settings.agent_artifact_store_token
                    else None
                ),
                trusted_keys=trusted_key_lines(
                    settings.signing_key_file, command_ttl_s=settings.command_ttl_s
                ),
                prefix=settings.agent_prefix,
                python=settings.agent_python,
                index_url=settings.agent_index_url,
                from_index=__version__ if settings.agent_from_index else None,
                listener_http_port=settings.listener_http_port,
                firewall_http_port=settings.firewall_http_port,
                install_firewall_agent=settings.install_firewall_agent,
                supervisor_conf=settings.supervisor_conf,
                supervisor_include=settings.supervisor_include,
                systemctl=settings.ctl_systemctl,
                supervisorctl=settings.ctl_supervisorctl,
                control_user=settings.ctl_account if settings.ctl_in_bootstrap else None,
                install_timeout_s=settings.bootstrap_install_timeout_s,
                health_timeout_s=settings.bootstrap_health_timeout_s,
            )
            wheels = [] if settings.agent_from_index else sorted(settings.bootstrap_wheels_dir.glob("*.whl"))
            if not settings.ctl_in_bootstrap:
                reports = await bootstrap_env(
                    deployer.nodes, body.env, wheels=wheels, plan=plan, node=body.node
                )
                return [{"env": body.env, **asdict(report), "ctl_user": None} for report in reports]
            # The system-control user first: the listener is configured to restart units through it.
            ctl = await provision(
                deployer.nodes,
                body.env,
                plan_from_settings(settings),
                node=body.node,
                actor=caller.name,
                remote_check=settings.ctl_remote,
            )
        except KeyError as exc:
            missing = str(exc.args[0])
            hint = "" if missing.startswith("no node") else " (AGENT_ENVS must name every environment)"
            raise HTTPException(404, missing + hint) from None
        except (ValueError, FileNotFoundError, CtlError) as exc:
            raise HTTPException(409, str(exc)) from None

        async def one(report: CtlReport) -> dict[str, Any]:
            _, node = deployer.inventory.node(report.node)
            summary = {"changed": report.changed, "self_test_passed": report.self_test_passed}
            if report.error is not None or report.self_test_passed is False:
                failed = BootstrapReport(
                    node.name, error=f"system-control user: {report.error or 'self-test failed'}"
                )
                return {"env": body.env, **asdict(failed), "ctl_user": summary}
            done = await bootstrap(deployer.nodes, node, body.env, wheels=wheels, plan=plan)
            return {"env": body.env, **asdict(done), "ctl_user": summary}

        return list(await asyncio.gather(*(one(r) for r in ctl)))

    @router.get("/nodes/check")
    async def check(caller: Reader, env: str | None = None) -> list[dict[str, Any]]:
        """Each node over SSH: reachable, latency, OS, kernel, free disk, agents' versions and state, and
        whether the system-control user is there and passes its self-test."""
        del caller
        rows = await deployer.nodes.check(env)
        try:
            plan = plan_from_settings(settings)
        except CtlError as exc:
            for row in rows:
                row["ctl_user"] = {"account": settings.ctl_account, "present": None, "error": str(exc)}
            return rows

        async def ctl(row: dict[str, Any]) -> None:
            if row["reachable"]:
                _, node = deployer.inventory.node(row["node"])
                row["ctl_user"] = await status(deployer.nodes, node, plan, remote=settings.ctl_remote)
            else:
                row["ctl_user"] = None

        await asyncio.gather(*(ctl(row) for row in rows))
        return rows


def _ctl_routes(router: APIRouter, deployer: Deployer, settings: Settings) -> None:
    """The system-control user on the nodes: provisioned (and self-tested) or removed, by an admin."""

    @router.post("/nodes/ctl-user")
    async def provision_ctl_user(body: CtlUserRequest, caller: Admin) -> list[dict[str, Any]]:
        """Create or update the system-control user on the env's nodes (or one), then self-test it."""
        try:
            plan = plan_from_settings(settings)
            reports = await provision(
                deployer.nodes,
                body.env,
                plan,
                node=body.node,
                actor=caller.name,
                remote_check=settings.ctl_remote,
            )
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except CtlError as exc:
            raise HTTPException(409, str(exc)) from None
        return [{"env": body.env, **asdict(r), "self_test_passed": r.self_test_passed} for r in reports]

    @router.delete("/nodes/ctl-user")
    async def remove_ctl_user(caller: Admin, env: str, node: str | None = None) -> list[dict[str, Any]]:
        """Remove the system-control user, its sudo rules, keys and polkit rule from the env's nodes."""
        try:
            reports = await remove(
                deployer.nodes, env, plan_from_settings(settings), node=node, actor=caller.name
            )
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except CtlError as exc:
            raise HTTPException(409, str(exc)) from None
        return [{"env": env, **asdict(r)} for r in reports]


def _firewall_routes(router: APIRouter, deployer: Deployer) -> None:
    """Disabling and restoring node firewalls under the firewall policy; status; audit verification."""
    control = deployer.firewall

    @router.post("/firewall/requests")
    async def firewall_request(body: FirewallRequestBody, caller: Reader) -> dict[str, Any]:
        """Apply the policy, then (unless it is a dry run or awaits approval) send one signed command per
        node and wait for the answers: a row per server."""
        return await control.request(
            caller=caller.name,
            role=caller.role,
            action=body.action,
            servers=body.servers,
            env=body.env,
            labels=body.labels,
            lease_s=body.lease_s,
            reason=body.reason,
            dry_run=body.dry_run,
        )

    @router.post("/firewall/requests/{request_id}/approve")
    async def firewall_approve(request_id: str, caller: Reader) -> dict[str, Any]:
        """A second person approves a request the policy holds for approval; it is carried out now."""
        return await control.approve(request_id, caller=caller.name, role=caller.role)

    @router.get("/firewall/requests/{request_id}")
    async def firewall_get(request_id: str, caller: Reader) -> dict[str, Any]:
        del caller
        return control.get(request_id)

    @router.get("/firewall/status")
    async def firewall_status(caller: Reader, env: str | None = None) -> list[dict[str, Any]]:
        """Each node's firewall as its agent last reported it: state, backend, lease, who and why."""
        del caller
        return control.status(env)

    @router.get("/firewall/audit/{node}")
    async def firewall_audit(node: str, caller: Reader) -> dict[str, Any]:
        """The node's audit log, read over SSH, checked as a chain and against version-db's records."""
        del caller
        return await control.verify_audit(node)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FirewallRefused)
    async def firewall_refused(_: Request, exc: FirewallRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)
