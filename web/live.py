"""Server-Sent Events: the signed-in member's balance and newest ledger rows, live.

The stream is fed by the core event bus (`user_credits_changed`) and, because events are
hints and the ledger is the record, by reading the ledger back now and then (every few seconds
when the bus is in-process only, as on SQLite, where the bot may be another process). Each
event carries the transaction id as its SSE id, so a browser that reconnects (Last-Event-ID)
or a page that connects a moment after rendering (`?after=`) first gets the rows it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from core.events import Event, LocalEventBus, UserCreditsChanged
from core.models import CreditTransaction
from web.context import current_user
from web.keys import LIVE_CLOSING, SERVICES
from web.ledger_view import row_view

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 3.0
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
    last_id = await _send_newer(request, response, user_id, after, send=after > 0)
    balance = (await services.users.get(user_id)).credits
    await response.write(_sse("credits", _payload(balance, None)))
    # The ledger is the record and events are hints: read it back now and then, and often when
    # the bus cannot hear other processes (SQLite: the bot may run in a process of its own).
    interval = POLL_SECONDS if isinstance(services.events, LocalEventBus) else KEEPALIVE_SECONDS
    pending: asyncio.Task[Event] | None = None
    closing = asyncio.ensure_future(request.config_dict[LIVE_CLOSING].wait())
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait(
                {pending, closing}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                return  # the app is shutting down: end the stream cleanly
            if not done:
                last_id = await _send_newer(request, response, user_id, last_id, send=True)
                await response.write(b": keep-alive\n\n")
                continue
            event, pending = pending.result(), None
            if isinstance(event, UserCreditsChanged) and event.user_id == user_id:
                last_id = await _send_event(response, event, last_id)
    finally:
        for task in (pending, closing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _send_event(response: web.StreamResponse, event: UserCreditsChanged, last_id: int) -> int:
    tx_id = int(event.transaction.get("id") or 0)
    if tx_id and tx_id <= last_id:
        return last_id  # already sent (read back from the ledger)
    row = _row_from_event(event)
    await response.write(_sse("credits", {"balance": event.new_balance, "row": row}, tx_id or None))
    # Without a usable row, leave last_id alone: the next read-back sends the row.
    return max(last_id, tx_id) if row is not None else last_id


async def _send_newer(
    request: web.Request, response: web.StreamResponse, user_id: int, after: int, *, send: bool
) -> int:
    """Send the ledger rows newer than `after`, oldest first (when `send`); returns the newest
    id now known, which is where the next read-back starts."""
    page = await request.config_dict[SERVICES].credits.history(user_id, limit=CATCH_UP_LIMIT)
    newer = sorted((row for row in page.items if (row.id or 0) > after), key=lambda r: r.id or 0)
    if send:
        for row in newer:
            await response.write(_sse("credits", _payload(row.balance_after, row), row.id))
    return max([after, *(row.id or 0 for row in newer)])


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
