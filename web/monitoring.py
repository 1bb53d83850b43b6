"""/healthz, /metrics, one log line per request and the HTTP/credits metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import text

from core.events import Event, UserCreditsChanged
from core.metrics import CONTENT_TYPE
from web.keys import SERVICES, STARTED_AT

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

STREAMING_ROUTES = frozenset({"/credits/live"})


def _route_label(request: web.Request) -> str:
    """The route template (/admin/users/{user_id}), never the raw path: bounded cardinality."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request, record it, and log it on one line (path only: queries may hold
    OAuth codes)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _route_label(request)
        if route not in STREAMING_ROUTES:
            request.config_dict[SERVICES].metrics.http_request_duration.observe(
                elapsed, method=request.method, route=route, status=status
            )
        log.info("%s %s %s %.1fms", request.method, request.path, status, elapsed * 1000)


async def count_credits_spent(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: count spent credits from the event bus while the app runs."""
    services = app[SERVICES]

    async def on_event(event: Event) -> None:
        if isinstance(event, UserCreditsChanged):
            amount = int(event.transaction.get("amount") or 0)
            if amount < 0:
                action = str(event.transaction.get("action") or "unknown")
                services.metrics.credits_spent.inc(-amount, action=action)

    unsubscribe = services.events.subscribe(on_event)
    yield
    unsubscribe()


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.Response:
    services = request.config_dict[SERVICES]
    uptime = round(time.monotonic() - request.config_dict[STARTED_AT], 1)
    try:
        async with services.db.session() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("healthz: database check failed error=%s", exc)
        body = {"status": "error", "database": "unreachable", "uptime_seconds": uptime}
        return web.json_response(body, status=503, headers={"Cache-Control": "no-store"})
    body = {"status": "ok", "database": "ok", "uptime_seconds": uptime}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


@routes.get("/metrics", name="metrics")
async def metrics(request: web.Request) -> web.Response:
    text_body = request.config_dict[SERVICES].metrics.render()
    return web.Response(
        body=text_body.encode(),
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )
