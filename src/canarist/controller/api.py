"""The controller's HTTP API, on 127.0.0.1 only, behind a bearer token."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from canarist.controller.engine import Engine
from canarist.errors import BadInput, CanaristError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    engine: Engine, token: str, stop: asyncio.Event, reload: Callable[[], None]
) -> web.Application:
    """The API application over one engine."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "Unauthorized", "missing or wrong token")
        try:
            return await handler(request)
        except BadInput as exc:
            return _error(400, type(exc).__name__, str(exc))
        except CanaristError as exc:
            return _error(500, type(exc).__name__, str(exc))

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except json.JSONDecodeError as exc:
            raise BadInput("request body is not JSON") from exc
        if not isinstance(data, dict):
            raise BadInput("request body must be a JSON object")
        return data

    def service_of(data: dict[str, Any]) -> str:
        service = data.get("service")
        if not isinstance(service, str):
            raise BadInput("'service' is required")
        return service

    async def status(request: web.Request) -> web.Response:
        return web.json_response(engine.status(request.query.get("service") or None))

    async def deploy(request: web.Request) -> web.Response:
        data = await body(request)
        release = data.get("release")
        if not isinstance(release, str):
            raise BadInput("'release' is required")
        strategy = data.get("strategy")
        rollout = await engine.deploy(service_of(data), release, strategy or None)
        return web.json_response(engine.rollout(rollout.id))

    async def promote(request: web.Request) -> web.Response:
        data = await body(request)
        rollout = await engine.promote(service_of(data), full=bool(data.get("full")))
        return web.json_response(engine.rollout(rollout.id))

    async def abort(request: web.Request) -> web.Response:
        rollout = await engine.abort(service_of(await body(request)))
        return web.json_response(engine.rollout(rollout.id))

    async def rollback(request: web.Request) -> web.Response:
        rollout = await engine.rollback(service_of(await body(request)))
        return web.json_response(engine.rollout(rollout.id))

    async def history(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        return web.json_response(engine.history(request.match_info["service"], limit))

    async def audit_log(request: web.Request) -> web.Response:
        broken = engine.verify_log()
        return web.json_response({"intact": broken is None, "first_broken": broken})

    async def rollout(request: web.Request) -> web.Response:
        found = engine.rollout(int(request.match_info["id"]))
        if found is None:
            return _error(404, "NotFound", "no such rollout")
        return web.json_response(found)

    async def reload_spec(request: web.Request) -> web.Response:
        reload()
        return web.json_response({"services": sorted(engine.spec.services)})

    async def shutdown(request: web.Request) -> web.Response:
        data = await body(request)
        if data.get("everything", True):
            await engine.shutdown()
        stop.set()
        return web.json_response({"stopping": True})

    app = web.Application(middlewares=[guard])
    app.add_routes(
        [
            web.get("/v1/status", status),
            web.post("/v1/deploy", deploy),
            web.post("/v1/promote", promote),
            web.post("/v1/abort", abort),
            web.post("/v1/rollback", rollback),
            web.get("/v1/history/{service}", history),
            web.get("/v1/rollouts/{id}", rollout),
            web.get("/v1/audit-log", audit_log),
            web.post("/v1/reload", reload_spec),
            web.post("/v1/shutdown", shutdown),
        ]
    )
    return app


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)
