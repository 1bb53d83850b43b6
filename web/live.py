"""Server-Sent Events: the signed-in member's balance and newest ledger rows, live.

The stream is fed by the core event bus (`user_credits_changed`). Each event carries the
transaction id as its SSE id, so a browser that reconnects (Last-Event-ID) or a page that
connects a moment after rendering (`?after=`) first gets the rows it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from core.events import Event, UserCreditsChanged
from core.models import CreditTransaction
from web.context import current_user
from web.keys import LIVE_CLOSING, SERVICES
from web.ledger_view import row_view

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

KEEPALIVE_SECONDS = 15.0
# X-Accel-Buffering: a reverse proxy (nginx) must pass events on at once.
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}
CATCH_UP_LIMIT = 50


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _payload(balance: int, row: CreditTransaction | None) -> dict[str, Any]:
    return {"balance": balance, "row": row_view(row) if row is not None else None}


def _after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


@routes.get("/credits/live", name="credits_live")
async def credits_live(request: web.Request) -> web.StreamResponse:
    user = await current_user(request)
    if user is None:
        raise web.HTTPUnauthorized(reason="Sign in to follow your credits live.")
    services = request.config_dict[SERVICES]
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    services.metrics.sse_clients.inc()
    try:
        async with services.events.stream(maxsize=200) as events:
            await _run(request, response, user.id or 0, _after(request), events)
    except ConnectionResetError:
        log.debug("live: client went away user=%s", user.id)
    finally:
        services.metrics.sse_clients.dec()
    return response


async def _run(
    request: web.Request,
    response: web.StreamResponse,
    user_id: int,
    after: int,
    events: AsyncIterator[Event],
) -> None:
    services = request.config_dict[SERVICES]
    await response.write(b"retry: 3000\n\n")
    last_id = await _catch_up(request, response, user_id, after)
    balance = (await services.users.get(user_id)).credits
    await response.write(_sse("credits", _payload(balance, None)))
    pending: asyncio.Task[Event] | None = None
    closing = asyncio.ensure_future(request.config_dict[LIVE_CLOSING].wait())
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait(
                {pending, closing}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                return  # the app is shutting down: end the stream cleanly
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            event, pending = pending.result(), None
            if not isinstance(event, UserCreditsChanged) or event.user_id != user_id:
                continue
            tx_id = int(event.transaction.get("id") or 0)
            if tx_id and tx_id <= last_id:
                continue  # already sent while catching up
            last_id = max(last_id, tx_id)
            data = {"balance": event.new_balance, "row": _row_from_event(event)}
            await response.write(_sse("credits", data, tx_id or None))
    finally:
        for task in (pending, closing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _catch_up(
    request: web.Request, response: web.StreamResponse, user_id: int, after: int
) -> int:
    """Send the rows newer than `after` (oldest first); returns the newest id sent."""
    if after <= 0:
        return 0
    page = await request.config_dict[SERVICES].credits.history(user_id, limit=CATCH_UP_LIMIT)
    missed = sorted((row for row in page.items if (row.id or 0) > after), key=lambda r: r.id or 0)
    for row in missed:
        await response.write(_sse("credits", _payload(row.balance_after, row), row.id))
    return max([after, *(row.id or 0 for row in missed)])


def _row_from_event(event: UserCreditsChanged) -> dict[str, Any] | None:
    tx = event.transaction
    if not tx:
        return None
    try:
        row = CreditTransaction.model_validate(
            {
                "id": tx["id"],
                "user_id": event.user_id,
                "action": tx["action"],
                "amount": tx["amount"],
                "balance_before": tx["balance_before"],
                "balance_after": tx["balance_after"],
                "meta": tx.get("metadata") or {},
                "success": tx.get("success", True),
                "created_at": tx["created_at"],
            }
        )
    except (KeyError, ValueError) as exc:
        log.warning("live: unexpected transaction payload error=%s", exc)
        return None
    return row_view(row)
