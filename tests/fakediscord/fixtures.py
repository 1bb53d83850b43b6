"""pytest fixtures and helpers to run discord.py against :class:`FakeDiscord`.

Make the fixtures visible to a test module by binding them to module names (this
avoids ruff's F811 on fixture parameters and pytest's assertion-rewrite warning that
``pytest_plugins`` gives once the module was imported)::

    from tests.fakediscord import fixtures as fakediscord_fixtures

    fake_discord = fakediscord_fixtures.fake_discord
    fake_discord_in_process = fakediscord_fixtures.fake_discord_in_process

A ``conftest.py`` may instead list ``pytest_plugins = ["tests.fakediscord.fixtures"]``
(root conftest only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import discord
import discord.gateway
import discord.http
import pytest_asyncio
import yarl

from .server import FakeDiscord
from .tls import trust_cert_in_process

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def discord_py_pointed_at(fake: FakeDiscord) -> Iterator[FakeDiscord]:
    """Point this process's discord.py at ``fake`` (REST, gateway, voice TLS); restore after.

    Sets ``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` and adds
    the fake's certificate to aiohttp's shared verified SSL context (which is what
    discord.py's default connector uses), see :func:`trust_cert_in_process`.
    """
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    trust_cert_in_process(fake.cert_path)
    try:
        yield fake
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def running_client(
    client: discord.Client,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    ready_timeout: float = 10.0,
) -> AsyncIterator[discord.Client]:
    """Log ``client`` in to ``fake``, connect it, wait for ``on_ready``; close it on exit.

    discord.py must already point at the fake (:func:`discord_py_pointed_at`).
    Pass ``guild_ready_timeout=0.1`` (or similar) to the client to keep startup fast.
    """
    await client.login(token or fake.token or "fake-token")
    task = asyncio.create_task(client.connect(reconnect=True), name="fakediscord client")
    ready = asyncio.create_task(client.wait_until_ready())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # raises the connection error, if any
            raise RuntimeError("client.connect() returned before the client was ready")
        if ready not in done:
            raise TimeoutError(f"client not ready after {ready_timeout}s")
        yield client
    finally:
        ready.cancel()
        await client.close()
        try:
            await asyncio.wait_for(task, timeout=5.0)
        except (asyncio.CancelledError, TimeoutError):
            task.cancel()
        except Exception:
            _log.exception("client task failed")


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started :class:`FakeDiscord` (not wired to discord.py; use for subprocess bots)."""
    async with FakeDiscord() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_discord_in_process(fake_discord: FakeDiscord) -> AsyncIterator[FakeDiscord]:
    """``fake_discord`` with this process's discord.py pointed at it."""
    with discord_py_pointed_at(fake_discord):
        yield fake_discord
