"""/credits/live: Server-Sent Events fed by the core event bus."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from core.services.container import Services
from tests.core.helpers import make_user
from tests.web.conftest import Web
from web import live


async def _next_event(response: aiohttp.ClientResponse, timeout: float = 5.0) -> dict[str, Any]:
    """The next SSE event (comments and retry lines skipped) as {event, id, data}."""
    event: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            line = (await response.content.readline()).decode()
            if line == "":
                raise EOFError("stream closed")
            line = line.rstrip("\n")
            if not line:
                if "data" in event:
                    return event
                event = {}
                continue
            if line.startswith(":") or line.startswith("retry:"):
                continue
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value


async def test_balance_and_rows_arrive_live(web: Web) -> None:
    user = await web.login("discord")
    async with web.client.get("/credits/live") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        hello = await _next_event(stream)
        assert hello["data"] == {"balance": user.credits, "row": None}
        spent = await web.services.credits.deduct(user.id or 0, 4, meta={"sound": "bruh"})
        event = await _next_event(stream)
        assert event["event"] == "credits" and event["id"] == str(spent.id)
        row = event["data"]["row"]
        assert event["data"]["balance"] == user.credits - 4
        assert (row["id"], row["action_label"], row["amount_text"]) == (spent.id, "Play", "\u22124")
        assert row["details"] == "sound: bruh" and row["time"].endswith("UTC")


async def test_other_users_changes_are_not_sent(web: Web) -> None:
    user = await web.login("discord")
    stranger = await make_user(web.services)
    async with web.client.get("/credits/live") as stream:
        await _next_event(stream)
        await web.services.credits.deduct(stranger.id or 0, 1)
        mine = await web.services.credits.deduct(user.id or 0, 1)
        event = await _next_event(stream)
        assert event["data"]["row"]["id"] == mine.id


async def test_reconnect_catches_up_on_missed_rows(web: Web) -> None:
    user = await web.login("discord")
    seen = (await web.services.credits.history(user.id or 0)).items[0].id or 0
    missed = [await web.services.credits.deduct(user.id or 0, 1) for _ in range(3)]
    async with web.client.get("/credits/live", headers={"Last-Event-ID": str(seen)}) as stream:
        events = [await _next_event(stream) for _ in range(4)]
    assert [e["data"]["row"]["id"] for e in events[:3]] == [m.id for m in missed]
    assert events[3]["data"] == {"balance": user.credits - 3, "row": None}
    async with web.client.get(f"/credits/live?after={missed[1].id}") as stream:
        first = await _next_event(stream)
        assert first["data"]["row"]["id"] == missed[2].id


async def test_stream_needs_sign_in(web: Web) -> None:
    response = await web.client.get("/credits/live")
    assert response.status == 401


async def test_shutdown_ends_open_streams(web: Web) -> None:
    await web.login("discord")
    stream = await web.client.get("/credits/live")
    await _next_event(stream)
    async with asyncio.timeout(5):
        await web.client.server.close()
        remainder = await stream.content.read()
    assert b"event:" not in remainder
    stream.release()


async def test_changes_from_another_process_arrive(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot may run in a process of its own: on SQLite its events never reach us, so the
    stream reads the ledger back; on PostgreSQL they come over LISTEN/NOTIFY."""
    monkeypatch.setattr(live, "POLL_SECONDS", 0.2)
    user = await web.login("discord")
    async with (
        Services.from_settings(web.settings) as bot_process,
        web.client.get("/credits/live") as stream,
    ):
        await _next_event(stream)
        spent = await bot_process.credits.deduct(user.id or 0, 2, meta={"sound": "elsewhere"})
        event = await _next_event(stream)
        assert event["data"]["row"]["id"] == spent.id
        assert event["data"]["balance"] == user.credits - 2
        assert event["data"]["row"]["details"] == "sound: elsewhere"
