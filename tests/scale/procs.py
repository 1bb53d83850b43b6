"""Start soundboard processes (bot shards, web apps) the way an operator does, for scale tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakediscord import FakeDiscord
from web.security import COOKIE_NAME, session_fernet

EXE = Path(sys.executable).with_name("soundboard")
SESSION_SECRET = "scale-test-session-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(tmp: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp / "data"),
        "SOUNDS_DIR": str(tmp / "sounds"),
        "SESSION_SECRET": SESSION_SECRET,
        "LOG_LEVEL": "INFO",
        "PLAY_COOLDOWN_SECONDS": "0",
        "DISCORD_GUILD_READY_TIMEOUT": "0.2",
    }
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def process(
    args: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `soundboard ARGS` until the block ends, then stop it with SIGTERM."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(EXE), *args, env=env, cwd=env["HOME"], stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def stop_all(procs: list[asyncio.subprocess.Process], timeout: float = 20.0) -> None:
    """SIGTERM every process still running at once, then wait for them together (SIGKILL for
    any still running after `timeout`): quicker than stopping them one by one."""
    running = [proc for proc in procs if proc.returncode is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)

    async def reap(proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    await asyncio.gather(*(reap(proc) for proc in running))


def bot_env(fake: FakeDiscord, env: dict[str, str], *, shard: int, shards: int) -> dict[str, str]:
    return fake.client_env({**env, "SHARD_COUNT": str(shards), "SHARD_IDS": str(shard)})


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} did not answer")
            await asyncio.sleep(0.2)


def web_env(env: dict[str, str], port: int) -> dict[str, str]:
    """A web process on 127.0.0.1:`port` (its public address is the same)."""
    return {
        **env,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "WEB_BASE_URL": f"http://127.0.0.1:{port}",
    }


def session_cookie(user_id: int, secret: str = SESSION_SECRET) -> dict[str, str]:
    """A `Cookie` header signing `user_id` in, as web.context.start_session writes it: any web
    process sharing SESSION_SECRET accepts it."""
    now = int(time.time())
    data = {"created": now, "session": {"uid": user_id, "at": now, "seen": now, "csrf": "x"}}
    token = session_fernet(secret).encrypt(json.dumps(data).encode()).decode()
    return {"Cookie": f"{COOKIE_NAME}={token}"}


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """The Server-Sent Events of a streaming response: (event name, parsed JSON data)."""
    name, data = "message", ""
    while True:
        raw = await response.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
