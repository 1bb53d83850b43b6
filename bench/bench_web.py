"""Web benchmark: /credits and the JSON history with a 100,000-row ledger.

    uv run python bench/bench_web.py                       # SQLite in a temp dir
    uv run python bench/bench_web.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

1. Seeds one member with N ledger rows (bulk insert; each row's balance_before is the previous
   row's balance_after, and the ledger verifies).
2. Runs the web app in a child process (logging at INFO to a file, as in production).
3. Latency: sequential requests to the first, middle and last page of /credits (session cookie)
   and of /api/v1/credits/transactions (API token): median and p99.
4. Throughput: `wrk` (if installed, else a Python load generator in its own process) against
   the JSON history, rotating over the three depths: requests/s and latency percentiles.
Prints a markdown table; exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import insert, select, update

from core.config import Settings, load_settings
from core.logging_setup import configure_logging
from core.migrate import upgrade
from core.models import CreditTransaction, User, utcnow
from core.repositories.base import encode_cursor
from core.services.container import Services
from soundboard_cli.main import run_coroutine
from web.security import COOKIE_NAME, session_fernet

SECRET = "bench-session-secret"
PAGE_MEDIAN_TARGET_MS = 15.0
RPS_TARGET = 1000.0
P99_TARGET_MS = 50.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(args: argparse.Namespace, port: int) -> Settings:
    return load_settings(
        _env_file=None,
        data_dir=args.workdir / "data",
        sounds_dir=args.workdir / "sounds",
        database_url=args.database_url,
        web_host="127.0.0.1",
        web_port=port,
        web_base_url=f"http://127.0.0.1:{port}",
        session_secret=SECRET,
        api_rate_limit_per_minute=1_000_000_000,
        log_level="INFO",
        log_file=args.workdir / "web.log",
    )


async def seed(settings: Settings, rows: int) -> dict[str, Any]:
    """A member with `rows` ledger rows in a valid chain, a token and the page cursors."""
    await upgrade(settings.database_url)
    async with Services.from_settings(settings) as services:
        user = await services.users.create(display_name="Bench Member", discord_id=4242)
        uid = user.id or 0
        balance, start = user.credits, utcnow() - timedelta(minutes=5 * rows)
        batch: list[dict[str, Any]] = []
        started = time.perf_counter()
        for index in range(rows - 1):  # the signup row is the first
            if balance < 5:
                action, amount = "refill", 100
            elif index % 25 == 0:
                action, amount = "extraction", -5
            else:
                action, amount = "play", -1
            batch.append(
                {
                    "user_id": uid,
                    "action": action,
                    "amount": amount,
                    "balance_before": balance,
                    "balance_after": balance + amount,
                    "meta": {"sound": f"sound-{index % 300}"} if action == "play" else {},
                    "success": True,
                    "created_at": start + timedelta(minutes=5 * index),
                }
            )
            balance += amount
            if len(batch) == 5000:
                await _insert(services, batch)
                batch = []
        if batch:
            await _insert(services, batch)
        async with services.db.transaction() as session:
            await session.execute(update(User).where(User.id == uid).values(credits=balance))  # type: ignore[arg-type]
        seeded = time.perf_counter() - started
        problems = await services.credits.verify()
        assert problems == [], problems
        token = (await services.accounts.create_token(uid, "bench")).plaintext
        async with services.db.session() as session:
            ids = list(
                (
                    await session.scalars(
                        select(CreditTransaction.id)
                        .where(CreditTransaction.user_id == uid)  # type: ignore[arg-type]
                        .order_by(CreditTransaction.id.desc())  # type: ignore[union-attr]
                    )
                ).all()
            )
    cookie = session_fernet(SECRET).encrypt(
        json.dumps(
            {"created": int(time.time()), "session": {"uid": uid, "csrf": "x", "seen": 2**40}}
        ).encode()
    )
    return {
        "user_id": uid,
        "rows": len(ids),
        "seconds": seeded,
        "token": token,
        "cookie": cookie.decode(),
        "cursors": {
            "first": None,
            "middle": encode_cursor(ids[len(ids) // 2]),
            "last": encode_cursor(ids[-30]),
        },
    }


async def _insert(services: Services, batch: list[dict[str, Any]]) -> None:
    async with services.db.transaction() as session:
        await session.execute(insert(CreditTransaction), batch)


def serve(settings_json: str) -> None:
    """The child process: the web app, as `soundboard web` runs it."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings, console=False)

    async def main() -> None:
        from web.app import serve as serve_web

        async with Services.from_settings(settings) as services:
            await serve_web(settings, services)

    run_coroutine(main())


async def wait_ready(base: str) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            try:
                async with client.get(base + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the web app did not start")


async def latency(
    base: str, path: str, headers: dict[str, str], count: int
) -> tuple[float, float, int]:
    """Median and p99 in ms over `count` sequential requests (after a warm-up)."""
    timings: list[float] = []
    async with aiohttp.ClientSession(base_url=base, headers=headers) as client:
        for index in range(count + 20):
            started = time.perf_counter()
            async with client.get(path) as response:
                body = await response.read()
                assert response.status == 200, (path, response.status, body[:200])
            if index >= 20:
                timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.99) - 1], len(body)


def json_paths(cursors: dict[str, str | None]) -> list[str]:
    base = "/api/v1/credits/transactions"
    return [base + (f"?cursor={c}" if c else "") for c in cursors.values()]


def run_wrk(
    base: str, token: str, paths: list[str], seconds: int, connections: int
) -> dict[str, Any]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    quoted = ", ".join(json.dumps(p) for p in paths)
    script.write_text(
        f"local paths = {{{quoted}}}\n"
        "local i = 0\n"
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON {\\"requests\\": %d, \\"errors\\": %d, '
        '\\"non2xx\\": %d, \\"p50\\": %f, \\"p90\\": %f, \\"p99\\": %f, \\"duration\\": %f}\\n",'
        " summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write"
        " + summary.errors.timeout, summary.errors.status, latency:percentile(50),"
        " latency:percentile(90), latency:percentile(99), summary.duration))\n"
        "end\n"
    )
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    script.unlink()
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    data = json.loads(line[5:])
    return {
        "tool": f"wrk -t1 -c{connections} -d{seconds}s",
        "rps": data["requests"] / (data["duration"] / 1e6),
        "p50": data["p50"] / 1000,
        "p90": data["p90"] / 1000,
        "p99": data["p99"] / 1000,
        "errors": data["errors"] + data["non2xx"],
        "requests": data["requests"],
    }


def _python_load(
    base: str, token: str, paths: list[str], seconds: int, connections: int, out: Any
) -> None:
    async def main() -> None:
        timings: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds
        connector = aiohttp.TCPConnector(limit=connections)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, connector=connector, headers=headers) as client:

            async def worker(offset: int) -> None:
                nonlocal errors
                index = offset
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    async with client.get(paths[index % len(paths)]) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                    timings.append((time.perf_counter() - started) * 1000)
                    index += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(connections)))
            elapsed = time.perf_counter() - started
        timings.sort()
        out.put(
            {
                "tool": f"python aiohttp load generator, {connections} connections, {seconds}s",
                "rps": len(timings) / elapsed,
                "p50": timings[len(timings) // 2],
                "p90": timings[int(len(timings) * 0.9)],
                "p99": timings[int(len(timings) * 0.99)],
                "errors": errors,
                "requests": len(timings),
            }
        )

    asyncio.run(main())


def run_python_load(
    base: str, token: str, paths: list[str], seconds: int, connections: int
) -> dict[str, Any]:
    queue: Any = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=_python_load, args=(base, token, paths, seconds, connections, queue)
    )
    process.start()
    result = queue.get(timeout=seconds + 60)
    process.join()
    return dict(result)


async def measure(args: argparse.Namespace, seeded: dict[str, Any], base: str) -> dict[str, Any]:
    cookie = {"Cookie": f"{COOKIE_NAME}={seeded['cookie']}"}
    bearer = {"Authorization": f"Bearer {seeded['token']}"}
    pages: dict[str, Any] = {}
    for depth, cursor in seeded["cursors"].items():
        query = f"?cursor={cursor}" if cursor else ""
        pages[("/credits", depth)] = await latency(base, "/credits" + query, cookie, args.requests)
        pages[("/api/v1/credits/transactions", depth)] = await latency(
            base, "/api/v1/credits/transactions" + query, bearer, args.requests
        )
    return pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="per page and depth")
    parser.add_argument("--seconds", type=int, default=10, help="load test duration")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--python-load", action="store_true", help="do not use wrk")
    args = parser.parse_args()
    args.workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    if not args.database_url:
        args.database_url = f"sqlite+aiosqlite:///{args.workdir / 'bench.db'}"
    elif args.database_url.startswith("postgresql"):
        _recreate_pg_database(args.database_url)
    port = free_port()
    settings = make_settings(args, port)
    seeded = asyncio.run(seed(settings, args.rows))
    base = settings.web_base_url
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(settings.model_dump_json(),), daemon=True
    )
    server.start()
    try:
        asyncio.run(wait_ready(base))
        pages = asyncio.run(measure(args, seeded, base))
        paths = json_paths(seeded["cursors"])
        use_wrk = shutil.which("wrk") is not None and not args.python_load
        runner = run_wrk if use_wrk else run_python_load
        runs = {
            "first, middle and last page in turn": paths,
            "first page only (never cached)": paths[:1],
        }
        load = {}
        for label, run_paths in runs.items():
            cpu_before = process_cpu_seconds(server.pid)
            result = runner(base, seeded["token"], run_paths, args.seconds, args.connections)
            cpu = process_cpu_seconds(server.pid) - cpu_before
            result["cpu_ms"] = cpu * 1000 / max(1, result["requests"])
            load[label] = result
    finally:
        server.terminate()
        server.join(10)
        shutil.rmtree(args.workdir, ignore_errors=True)
    return report(args, seeded, pages, load)


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _recreate_pg_database(url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = parsed.database

    async def run() -> None:
        admin = parsed.set(drivername="postgresql", database="postgres")
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())


def report(
    args: argparse.Namespace,
    seeded: dict[str, Any],
    pages: dict[Any, Any],
    loads: dict[str, dict[str, Any]],
) -> int:
    database = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    failures = []
    print(f"\n### Web benchmark ({database}, {seeded['rows']:,} ledger rows for one member)\n")
    print(f"Seeded in {seeded['seconds']:.1f} s (bulk insert, chain verified).\n")
    print("| Endpoint | Page | Median (ms) | p99 (ms) | Target |")
    print("| --- | --- | ---: | ---: | --- |")
    for (path, depth), (median, p99, _) in pages.items():
        ok = median <= PAGE_MEDIAN_TARGET_MS
        failures += [] if ok else [f"{path} {depth} median {median:.1f} ms"]
        mark = "ok" if ok else "MISSED"
        print(f"| `{path}` | {depth} | {median:.2f} | {p99:.2f} | median ≤ 15 ms: {mark} |")
    tool = next(iter(loads.values()))["tool"]
    print(f"\nLoad on `/api/v1/credits/transactions`, {tool}:\n")
    print(
        "| Pages | Requests | Errors | Requests/s | p50 (ms) | p90 (ms) | p99 (ms) "
        "| Server CPU per request (ms) | Target |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, load in loads.items():
        rps_ok = load["rps"] >= RPS_TARGET and load["errors"] == 0
        p99_ok = load["p99"] <= P99_TARGET_MS
        if not rps_ok:
            failures.append(f"{label}: {load['rps']:.0f} req/s, {load['errors']} errors")
        if not p99_ok:
            failures.append(f"{label}: p99 {load['p99']:.1f} ms")
        target = "ok" if rps_ok and p99_ok else "MISSED"
        print(
            f"| {label} | {load['requests']:,} | {load['errors']} | {load['rps']:,.0f} | "
            f"{load['p50']:.2f} | {load['p90']:.2f} | {load['p99']:.2f} | "
            f"{load['cpu_ms']:.2f} | ≥ 1,000 req/s, p99 ≤ 50 ms: {target} |"
        )
    load_average = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nLoad average (1, 5, 15 min) after the run: {load_average}.")
    print(
        f"\nMachine: {os.cpu_count()} cores; command: `uv run python bench/bench_web.py"
        + (f" --database-url {args.database_url}" if database == "PostgreSQL" else "")
        + "`"
    )
    if failures:
        print("\nMISSED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
