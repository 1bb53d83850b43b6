from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from core.config import ConfigError, Settings
from core.migrate import upgrade
from core.services.container import open_services
from soundboard_cli.output import out

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the Discord bot and the web app in one process")
    run.set_defaults(handler=serve_run, log_console=True)
    bot = sub.add_parser("bot", help="run only the Discord bot")
    bot.set_defaults(handler=serve_bot, log_console=True)
    web = sub.add_parser("web", help="run only the web app")
    web.set_defaults(handler=serve_web, log_console=True)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", metavar="ACTION", required=True
    )
    db.add_parser("upgrade", help="apply pending migrations").set_defaults(handler=db_upgrade)


def _require_token(settings: Settings) -> None:
    if not settings.discord_token:
        raise ConfigError(
            "invalid setting DISCORD_TOKEN: missing; put your bot token in .env "
            "(see README, 'Create the Discord application')"
        )


async def serve_run(args: argparse.Namespace, settings: Settings) -> int:
    _require_token(settings)
    from bot.runner import run_bot
    from web.app import serve

    async with open_services(settings) as services:
        log.info("starting bot and web app web=%s", settings.web_base_url)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run_bot(settings, services))
            tasks.create_task(serve(settings, services))
    return 0


async def serve_bot(args: argparse.Namespace, settings: Settings) -> int:
    _require_token(settings)
    from bot.runner import run_bot

    async with open_services(settings) as services:
        await run_bot(settings, services)
    return 0


async def serve_web(args: argparse.Namespace, settings: Settings) -> int:
    from web.app import serve

    async with open_services(settings) as services:
        await serve(settings, services)
    return 0


async def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    await upgrade(settings.database_url)
    out("Database is up to date.")
    return 0
