"""Credits benchmark: deductions per second with 1, 2 and 4 OS processes.

    uv run python bench/bench_credits.py                    # 5 seconds per run
    uv run python bench/bench_credits.py --count 2000       # 2000 deductions per process
    uv run python bench/bench_credits.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Every run gets a fresh, migrated database (PostgreSQL: a new database next to the one in
--pg-url, dropped afterwards; SQLite: a file in a temporary directory). Each worker process
opens `Services` as the bot and the web app do (so on PostgreSQL every deduction also goes out
as a NOTIFY on the event bus), then runs --concurrency deduction loops of 1 credit each on its
own users; the contended run has every process deducting from one shared user. Afterwards
`services.credits.verify()` must come back empty and the balances must add up. On PostgreSQL
the parent process listens on the bus during the run and counts the `user_credits_changed`
events it received ("events" column: seen / deductions).

Workers log at WARNING (no per-deduction INFO lines), so this measures the ledger and the bus,
not log I/O. Prints a markdown table and the command line; exits non-zero when a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.config import Settings, load_settings
from core.db import Database
from core.events import Event, ExtractionUpdated, UserCreditsChanged
from core.events_pg import asyncpg_dsn
from core.migrate import upgrade
from core.services.container import Services

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
START_CREDITS = 1_000_000_000


@dataclass
class Result:
    setup: str
    processes: int
    deductions: int
    seconds: float
    verify_ok: bool
    events: str
    failures: int

    @property
    def rate(self) -> float:
        return self.deductions / self.seconds if self.seconds else 0.0


def settings_for(url: str, workdir: Path) -> Settings:
    return load_settings(
        _env_file=None,
        database_url=url,
        data_dir=workdir / "data",
        sounds_dir=workdir / "sounds",
        log_level="WARNING",
    )


# ----- the worker process -------------------------------------------------------------------


async def worker(config: dict[str, Any]) -> None:
    """Open Services, say ready, wait for go, deduct, print a JSON result line."""
    settings = settings_for(config["url"], Path(config["workdir"]))
    user_ids: list[int] = config["user_ids"]
    concurrency: int = config["concurrency"]
    count: int | None = config["count"]
    seconds: float | None = config["seconds"]
    if config["notify"]:
        services = Services.from_settings(settings)
    else:  # the in-process bus on PostgreSQL too: what the NOTIFY costs
        services = Services(settings, Database.from_url(settings.database_url))
    async with services:
        # Warm up: open (about) the connections the loops will use, and the event publisher.
        async def select_one() -> None:
            async with services.db.session() as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(0.05)

        await asyncio.gather(*(select_one() for _ in range(concurrency)))
        await services.events.publish(ExtractionUpdated(extraction_id=0, status="bench-warmup"))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go", line
        done = failures = taken = 0
        started = time.perf_counter()
        deadline = started + seconds if seconds else None

        async def loop(index: int) -> None:
            nonlocal done, failures, taken
            n = index
            while True:
                if count is not None:
                    if taken >= count:
                        return
                    taken += 1
                elif deadline is not None and time.perf_counter() >= deadline:
                    return
                try:
                    await services.credits.deduct(user_ids[n % len(user_ids)], 1)
                    done += 1
                except Exception as exc:  # counted and reported; the run then fails
                    failures += 1
                    logging.getLogger("bench").warning("deduction failed: %r", exc)
                n += concurrency

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        print(json.dumps({"done": done, "failures": failures, "seconds": elapsed}), flush=True)


# ----- the parent ---------------------------------------------------------------------------


@asynccontextmanager
async def fresh_database(kind: str, pg_url: str, workdir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'{uuid.uuid4().hex}.db'}"
        await upgrade(url)
        yield url
        return
    name = f"bench_credits_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(pg_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def seed_users(services: Services, n: int) -> list[int]:
    ids = []
    for _ in range(n):
        user = await services.users.create(display_name="bench")
        uid = user.id or 0
        await services.credits.grant(uid, START_CREDITS - user.credits, reason="bench")
        ids.append(uid)
    return ids


@dataclass(frozen=True)
class Run:
    kind: str
    processes: int
    contended: bool = False
    notify: bool = True

    @property
    def setup(self) -> str:
        setup = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[self.kind]
        setup += ", one shared user (contended)" if self.contended else ", own users per process"
        if self.kind == "postgres" and not self.notify:
            setup += ", in-process bus (no NOTIFY)"
        return setup


async def run_once(args: argparse.Namespace, run: Run, workdir: Path) -> Result:
    kind, processes, contended = run.kind, run.processes, run.contended
    async with fresh_database(kind, args.pg_url, workdir) as url:
        settings = settings_for(url, workdir)
        async with Services.from_settings(settings) as services:
            if contended:
                shared = await seed_users(services, 1)
                users = [shared] * processes
            else:
                users = [await seed_users(services, args.users) for _ in range(processes)]
            all_ids = sorted({uid for ids in users for uid in ids})
            seen: list[Event] = []
            marker = f"bench-done-{uuid.uuid4().hex}"
            got_marker = asyncio.Event()

            async def on_event(event: Event) -> None:
                if isinstance(event, UserCreditsChanged):
                    if event.transaction.get("action") == "play":
                        seen.append(event)
                elif isinstance(event, ExtractionUpdated) and event.status == marker:
                    got_marker.set()

            unsubscribe = services.events.subscribe(on_event)

            procs = []
            for ids in users:
                config = {
                    "url": url,
                    "workdir": str(workdir),
                    "user_ids": ids,
                    "concurrency": args.concurrency,
                    "count": args.count,
                    "seconds": None if args.count else args.seconds,
                    "notify": run.notify,
                }
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.bench_credits",
                        "--worker",
                        json.dumps(config),
                        cwd=ROOT,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
                if line.strip() != b"ready":
                    raise RuntimeError(f"worker did not start: {line!r}")
            started = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            outcomes = []
            for proc in procs:
                assert proc.stdout is not None
                outcomes.append(json.loads(await proc.stdout.readline()))
            wall = time.perf_counter() - started
            for proc in procs:
                if await proc.wait() != 0:
                    raise RuntimeError(f"worker exited with {proc.returncode}")

            deductions = sum(o["done"] for o in outcomes)
            failures = sum(o["failures"] for o in outcomes)
            problems = await services.credits.verify()
            balances = [(await services.users.get(uid)).credits for uid in all_ids]
            balanced = sum(balances) == START_CREDITS * len(all_ids) - deductions
            if kind == "postgres" and run.notify:
                await services.events.publish(ExtractionUpdated(extraction_id=0, status=marker))
                with suppress(TimeoutError):
                    await asyncio.wait_for(got_marker.wait(), timeout=120)
                events = f"{len(seen)}/{deductions}"
            else:
                events = "n/a (in-process bus)" if kind == "sqlite" else "n/a (not published)"
            unsubscribe()
    for problem in problems[:5]:
        print(f"  verify: {problem}", file=sys.stderr)
    return Result(
        setup=run.setup,
        processes=processes,
        deductions=deductions,
        seconds=wall,
        verify_ok=not problems and balanced and failures == 0,
        events=events,
        failures=failures,
    )


def table(results: list[Result]) -> str:
    lines = [
        "| setup | processes | deductions | seconds | deductions/s | verify ok | events |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.processes} | {r.deductions} | {r.seconds:.2f} | {r.rate:,.0f} "
            f"| {'yes' if r.verify_ok else f'NO ({r.failures} failed)'} | {r.events} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    if not args.skip_sqlite:
        runs.append(Run("sqlite", 1))
    if not args.skip_postgres:
        runs += [Run("postgres", n) for n in args.processes]
        runs.append(Run("postgres", max(args.processes), contended=True))
        if not args.no_compare:
            runs.append(Run("postgres", max(args.processes), notify=False))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-credits-") as tmp:
        for run in runs:
            result = await run_once(args, run, Path(tmp))
            print(
                f"{result.setup}, {run.processes} process(es): {result.rate:,.0f}/s",
                file=sys.stderr,
            )
            results.append(result)
    print(table(results))
    print()
    print(f"Command: `{shlex.join(['uv', 'run', 'python', *sys.argv])}`")
    print(
        f"Per process: {args.concurrency} concurrent deduction loops"
        + ("" if args.count else f", {args.seconds:g} s")
        + (f", {args.count} deductions" if args.count else "")
        + (", contended: all on one user" if not args.skip_postgres else "")
        + f"; own-user runs use {args.users} users per process; {os.cpu_count()} CPUs."
    )
    return 0 if all(r.verify_ok for r in results) else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    amount.add_argument("--count", type=int, help="deductions per process instead of --seconds")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    # 4 processes x (16 engine connections + publish pool + listener) stays well under
    # PostgreSQL's default max_connections of 100.
    parser.add_argument("--concurrency", type=int, default=16, help="loops per process")
    parser.add_argument("--users", type=int, default=8, help="users per process (own-user runs)")
    parser.add_argument(
        "--processes",
        type=lambda s: [int(p) for p in s.split(",")],
        default=[1, 2, 4],
        help="process counts on PostgreSQL (default 1,2,4)",
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the PostgreSQL run without NOTIFY (the in-process bus), for comparison",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.worker:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(worker(json.loads(arguments.worker)))
    else:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        sys.exit(asyncio.run(main(arguments)))
