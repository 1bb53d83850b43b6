"""Starts the bot: points discord.py at the configured REST and gateway URLs, then runs."""

from __future__ import annotations

import logging

import discord.gateway
import discord.http
import yarl

from bot.client import make_bot
from core.config import Settings
from core.services.container import Services

log = logging.getLogger(__name__)


def point_discord_py(settings: Settings) -> None:
    """REST and gateway proxies (and the tests' fake Discord) are reached through these."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run_bot(settings: Settings, services: Services) -> None:
    point_discord_py(settings)
    bot = make_bot(settings, services)
    async with bot:
        log.info("bot starting shards=%s", settings.shard_ids or settings.shard_count or "single")
        await bot.start(settings.discord_token)
