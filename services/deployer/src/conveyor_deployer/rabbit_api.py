"""The deployer's RabbitMQ routes (``conveyor rabbit …``): plan, apply, export, status, config, rolling
restart and user rotation of each environment's cluster. Reading needs a reader; changing, an admin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from conveyor_deployer.api import Admin, Reader
from conveyor_deployer.rabbit.cluster import RestartFailed
from conveyor_deployer.rabbit.control import RabbitControl, RabbitNotConfigured
from conveyor_deployer.rabbit.desired import DesiredError
from conveyor_deployer.rabbit.plan import ManagementError, Refused

__all__ = ["install_rabbit_error_handlers", "rabbit_router"]


class ApplyRequest(BaseModel):
    allow_destructive: bool = False


def rabbit_router(rabbit: RabbitControl) -> APIRouter:
    router = APIRouter(prefix="/rabbit")

    @router.get("/envs")
    async def envs(_: Reader) -> list[str]:
        """The environments with a desired-state file."""
        return rabbit.envs()

    @router.get("/{env}/plan")
    async def plan(env: str, _: Reader) -> dict[str, Any]:
        """What apply would create, change and delete (destructive changes marked)."""
        return (await rabbit.plan(env)).as_dict()

    @router.post("/{env}/apply")
    async def apply(env: str, body: ApplyRequest, _: Admin) -> dict[str, Any]:
        """Make the cluster what the file says; refused with destructive changes unless allowed."""
        planned, done = await rabbit.apply(env, allow_destructive=body.allow_destructive)
        return planned.as_dict() | {"applied": len(done)}

    @router.get("/{env}/export", response_class=PlainTextResponse)
    async def export(env: str, _: Reader) -> str:
        """The live state in the desired-state format (YAML; no passwords)."""
        return await rabbit.export(env)

    @router.get("/{env}/status")
    async def status(env: str, _: Reader) -> dict[str, Any]:
        """Nodes, versions, alarms, partitions and quorum queue members."""
        return await rabbit.status(env)

    @router.get("/{env}/config", response_class=PlainTextResponse)
    async def config(env: str, _: Reader) -> str:
        """rabbitmq.conf for the cluster's nodes, from its profile."""
        return rabbit.config(env)

    @router.post("/{env}/restart")
    async def restart(env: str, _: Admin) -> dict[str, Any]:
        """A rolling restart, one node at a time, each only when the rest keep every quorum."""
        return await rabbit.restart(env)

    @router.post("/{env}/users/{user}/rotate")
    async def rotate(env: str, user: str, _: Admin) -> dict[str, Any]:
        """A new password for a user, written to its password file and set in the cluster."""
        return await rabbit.rotate(env, user)

    return router


def install_rabbit_error_handlers(app: FastAPI) -> None:
    statuses: dict[type[Exception], int] = {
        RabbitNotConfigured: 404,
        DesiredError: 422,
        Refused: 409,
        RestartFailed: 500,
        ManagementError: 502,
    }
    for kind, code in statuses.items():

        async def handler(_: Request, exc: Exception, code: int = code) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=code)

        app.add_exception_handler(kind, handler)
