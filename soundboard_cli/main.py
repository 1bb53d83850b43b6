"""The `soundboard` command line: runs the bot and the web app, and the operator's tools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import uvloop

from core.config import ConfigError, Settings, load_settings
from core.errors import SoundboardError
from core.logging_setup import configure_logging
from soundboard_cli import commands_credits, commands_serve, commands_users
from soundboard_cli.output import err

log = logging.getLogger(__name__)
T = TypeVar("T")

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

# Command groups register themselves here; each adds its subcommands and handlers.
COMMAND_MODULES = [commands_serve, commands_users, commands_credits]


def _optional_modules() -> list[object]:
    modules: list[object] = []
    for name in ("soundboard_cli.commands_sounds", "soundboard_cli.commands_extract"):
        try:
            modules.append(__import__(name, fromlist=["register"]))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundboard",
        description="A self-hosted Discord soundboard bot with a credits ledger and a web app.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in [*COMMAND_MODULES, *_optional_modules()]:
        module.register(sub)  # type: ignore[attr-defined]
    return parser


# Enough for a bot in thousands of voice channels (a TLS websocket and a UDP socket each) or a web
# app with thousands of live pages, without asking the operator to tune `ulimit -n`.
OPEN_FILES_WANTED = 65536


def raise_open_file_limit() -> None:
    """Lift the soft open-files limit (often 1,024) towards the hard limit, which needs no
    privilege."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        log.debug("open files limit raised from %s to %s", soft, wanted)


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop, the event loop every soundboard process uses."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _until_signalled(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM or SIGINT cancel it, so the bot and web app shut down cleanly
    (service managers send SIGTERM, and a background shell ignores SIGINT)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop() -> None:
        log.info("shutting down on signal")
        stop.set()
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    try:
        return await command
    except asyncio.CancelledError:
        if stop.is_set():
            return 0
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        err(f"error: {exc}")
        return 2
    configure_logging(settings, console=getattr(args, "log_console", False))
    raise_open_file_limit()
    handler: Handler = args.handler
    try:
        return run_coroutine(_until_signalled(handler(args, settings)))
    except KeyboardInterrupt:
        return 130
    except (SoundboardError, ConfigError) as exc:
        err(f"error: {exc}")
        return 1
    except Exception as exc:
        log.exception("command %s failed", args.command)
        err(f"error: {type(exc).__name__}: {exc} (details in {settings.log_file})")
        return 1


def entrypoint() -> None:
    sys.exit(main())
