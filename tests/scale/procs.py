"""Start soundboard processes (bot shards, web apps) the way an operator does, for scale tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.fakediscord import FakeDiscord

EXE = Path(sys.executable).with_name("soundboard")


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
        "SESSION_SECRET": "scale-test-session-secret-0123456789abcdef",
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


def bot_env(fake: FakeDiscord, env: dict[str, str], *, shard: int, shards: int) -> dict[str, str]:
    return fake.client_env({**env, "SHARD_COUNT": str(shards), "SHARD_IDS": str(shard)})


async def wait_http(url: str, timeout: float = 30.0) -> None:
    import aiohttp

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
