"""Small shared helpers: snowflakes, JSON responses, timestamps, permission bits."""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
from typing import Any

from aiohttp import web

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_VAD = 1 << 25
MANAGE_GUILD = 1 << 5
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = (1 << 53) - 1

#: What ``@everyone`` and the bot get unless a test says otherwise.
DEFAULT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | CONNECT
    | SPEAK
    | USE_VAD
    | USE_APPLICATION_COMMANDS
)

# Channel types.
GUILD_TEXT = 0
DM = 1
GUILD_VOICE = 2

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

# Opus "silence" frame discord.py sends five times at the end of each playback.
OPUS_SILENCE = b"\xf8\xff\xfe"


class SnowflakeGenerator:
    """Thread-safe generator of realistic, strictly increasing snowflakes."""

    def __init__(self, worker: int = 1) -> None:
        self._worker = worker & 0x1F
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            value = (ms << 22) | (self._worker << 17) | (next(self._counter) & 0xFFF)
            if value <= self._last:
                value = self._last + 1
            self._last = value
            return value

    def for_shard(self, shard_id: int, shard_count: int) -> int:
        """A fresh snowflake ``s`` with ``(s >> 22) % shard_count == shard_id``."""
        base = self.next()
        ts = base >> 22
        ts += (shard_id - ts) % shard_count
        with self._lock:
            value = (ts << 22) | (base & ((1 << 22) - 1))
            self._last = max(self._last, value)
            return value


def shard_for(guild_id: int, shard_count: int) -> int:
    """The shard Discord routes a guild's events to."""
    return (guild_id >> 22) % shard_count


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json``.

    discord.py only decodes bodies whose Content-Type is exactly that string;
    ``aiohttp.web.json_response`` appends ``; charset=utf-8``.
    """
    return web.Response(
        body=dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def error_response(status: int, message: str, code: int = 0) -> web.Response:
    return json_response({"message": message, "code": code}, status=status)
