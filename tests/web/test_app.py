"""Starting and stopping the web app the way the CLI does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import aiohttp
import pytest

from core.config import Settings
from core.services.container import Services
from tests.web.oauth_provider import free_port
from web.app import serve, start_web


async def _healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as client, client.get(url + "/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_start_web_listens_until_cleanup(settings: Settings, services: Services) -> None:
    port = free_port()
    runner = await start_web(settings, services, host="127.0.0.1", port=port)
    try:
        assert await _healthy(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert not await _healthy(f"http://127.0.0.1:{port}")


async def test_serve_runs_until_cancelled_and_warns_without_a_secret(
    settings: Settings, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    local = settings.model_copy(update={"web_port": port, "session_secret": ""})
    frozen_before = gc.get_freeze_count()
    with caplog.at_level(logging.WARNING, logger="web.security"):
        task = asyncio.create_task(serve(local, services))
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if await _healthy(base):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the web app did not start")
    assert any("SESSION_SECRET is not set" in r.getMessage() for r in caplog.records)
    # What the app holds from its start is kept out of the collector's full passes.
    assert gc.get_freeze_count() > frozen_before
    gc.unfreeze()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not await _healthy(base)
