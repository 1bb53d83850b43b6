"""Normalization workers: sounds left unnormalized are claimed with leases and normalized once,
by any number of workers (in this process and in other processes); a dead worker's sounds are
taken over when its lease runs out; a file that cannot be normalized fails once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from core.config import Settings
from core.db import create_engine
from core.migrate import upgrade
from core.models import Sound
from core.repositories import sounds as repo
from core.services.container import Services
from core.services.normalize_worker import NormalizeWorker
from tests.conftest import make_settings
from tests.core import audiogen

ROOT = Path(__file__).resolve().parents[2]
DEAD = "elsewhere/1/deadbeef"


def tone(path: Path, freq: int, seconds: float = 0.4, suffix: str = ".wav") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.render(path.with_suffix(suffix), f"sine=frequency={freq}", seconds=seconds)


async def add_raw(
    services: Services,
    tmp: Path,
    count: int,
    *,
    first_freq: int = 300,
    seconds: float = 0.4,
    suffix: str = ".wav",
) -> list[Sound]:
    """Sounds added without normalizing: what the workers are for."""
    added = []
    for n in range(count):
        freq = first_freq + 37 * n
        path = await asyncio.to_thread(tone, tmp / "in" / f"s{freq}", freq, seconds, suffix)
        result = await services.sounds.add_file(path, name=f"raw {freq}", normalize=False)
        assert not result.sound.is_normalized
        added.append(result.sound)
    return added


async def fresh(services: Services, sound_id: int | None) -> Sound:
    return await services.sounds.get(sound_id or 0)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 60, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def all_normalized(services: Services, ids: list[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await services.sounds.list_all(all_guilds=True)
        done = {s.id for s in rows if s.is_normalized}
        return set(ids) <= done

    return check


def assert_playable(services: Services, sound: Sound) -> None:
    assert sound.is_normalized and sound.normalize_error is None
    assert sound.normalize_lease_owner is None and sound.normalize_lease_until is None
    path, is_ogg = services.sounds.playback_file(sound)
    assert is_ogg and path.exists() and path.stat().st_size > 0


@pytest.fixture
async def worker_factory(services: Services) -> AsyncIterator[Callable[..., NormalizeWorker]]:
    made: list[NormalizeWorker] = []

    def make(**options: object) -> NormalizeWorker:
        options.setdefault("poll_seconds", 0.2)
        worker = NormalizeWorker(services.db, services.sounds, **options)  # type: ignore[arg-type]
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.stop()


async def test_worker_normalizes_waiting_sounds(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    sounds = await add_raw(services, tmp_path, 3)
    worker = worker_factory(concurrency=2)
    await worker.start()
    ids = [s.id or 0 for s in sounds]
    await eventually(all_normalized(services, ids), what="the worker")
    for ident in ids:
        assert_playable(services, await fresh(services, ident))
    assert worker.runs == Counter(ids) and sorted(worker.stored) == sorted(ids)

    # A sound added later wakes the worker at once (its poll interval is far longer).
    slow = worker_factory(poll_seconds=600)
    await worker.stop()
    await slow.start()
    [late] = await add_raw(services, tmp_path, 1, first_freq=900)
    await eventually(all_normalized(services, [late.id or 0]), timeout=30, what="the wake-up")
    assert slow.runs == Counter([late.id])


async def test_two_workers_normalize_each_sound_exactly_once(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    sounds = await add_raw(services, tmp_path, 10)
    ids = [s.id or 0 for s in sounds]
    first = worker_factory(concurrency=2, poll_seconds=0.05)
    second = worker_factory(concurrency=2, poll_seconds=0.05)
    assert first.owner != second.owner
    await asyncio.gather(first.start(), second.start())
    await eventually(all_normalized(services, ids), what="two workers")
    runs = first.runs + second.runs
    assert runs == Counter(ids), runs  # every sound once, none twice
    assert not set(first.stored) & set(second.stored)
    assert sorted(first.stored + second.stored) == sorted(ids)
    for ident in ids:
        assert_playable(services, await fresh(services, ident))


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NORMALIZE", "TEST_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        DATA_DIR=str(settings.data_dir),
        SOUNDS_DIR=str(settings.sounds_dir),
        **extra,
    )
    return env


async def start_cli_worker(settings: Settings, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from soundboard_cli.main import entrypoint; entrypoint()",
        "normalize",
        "--worker",
        "--json",
        "--concurrency",
        "2",
        cwd=settings.data_dir.parent,
        env=worker_env(settings, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def leased_by_pid(services: Services, pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with services.db.session() as session:
            leases = await repo.normalize_leases(session)
        return any(f"/{pid}/" in owner for _, owner in leases)

    return check


async def test_a_worker_process_and_an_in_process_worker_share_the_work(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    sounds = await add_raw(services, tmp_path, 10, seconds=1.5)
    ids = [s.id or 0 for s in sounds]
    proc = await start_cli_worker(services.settings)
    here = worker_factory(concurrency=2, poll_seconds=0.05)
    problem: AssertionError | None = None
    try:
        await eventually(leased_by_pid(services, proc.pid), what="the worker process")
        await here.start()
        await eventually(all_normalized(services, ids), what="both workers")
    except AssertionError as exc:
        problem = exc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert problem is None, f"{problem}; worker process said: {stdout.decode()[-3000:]}"
    assert proc.returncode == 0, stderr.decode()[-3000:]
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    there = Counter(line["id"] for line in lines)
    assert all(line["ok"] and line["stored"] for line in lines), lines
    assert there + here.runs == Counter(ids), (there, here.runs)  # once each, none twice
    assert there and here.runs  # both took part
    for ident in ids:
        assert_playable(services, await fresh(services, ident))


async def test_a_dead_workers_sounds_are_taken_over_when_its_lease_runs_out(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    [sound] = await add_raw(services, tmp_path, 1)
    # A worker on another machine claims the sound, then dies: its lease is never renewed.
    async with services.db.transaction() as session:
        claimed = await repo.claim_for_normalizing(session, owner=DEAD, limit=5, lease_seconds=1.5)
    assert [s.id for s in claimed] == [sound.id]
    worker = worker_factory()
    await worker.start()  # recovery leaves other machines' leases alone
    await asyncio.sleep(0.6)
    assert worker.runs == Counter()  # the lease is live: hands off
    held = await fresh(services, sound.id)
    assert held.normalize_lease_owner == DEAD and not held.is_normalized
    await eventually(all_normalized(services, [sound.id or 0]), what="the take-over")
    assert worker.runs == Counter([sound.id])
    assert_playable(services, await fresh(services, sound.id))

    # The dead worker comes back to life with its late result: it is not recorded.
    late = await services.sounds.normalize_claimed([held], DEAD)
    assert late[0].sound is None and late[0].error == "another worker took this sound over"
    assert_playable(services, await fresh(services, sound.id))


async def test_a_killed_worker_process_is_replaced_at_once(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    """SIGKILL a worker process mid-normalization; a worker starting on the same machine sees
    the process is gone and takes its sounds without waiting for the lease to run out."""
    sounds = await add_raw(services, tmp_path, 2, seconds=120)
    ids = [s.id or 0 for s in sounds]
    proc = await start_cli_worker(services.settings, NORMALIZE_LEASE_SECONDS="3600")
    try:
        await eventually(leased_by_pid(services, proc.pid), what="the worker process")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    async with services.db.session() as session:
        leases = await repo.normalize_leases(session)
    assert leases and all(f"/{proc.pid}/" in owner for _, owner in leases)
    worker = worker_factory(concurrency=2)
    await worker.start()
    await eventually(all_normalized(services, ids), timeout=90, what="the replacement")
    assert worker.runs == Counter(ids)
    for ident in ids:
        assert_playable(services, await fresh(services, ident))


async def test_a_stopped_worker_hands_its_sounds_back_at_once(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    [sound] = await add_raw(services, tmp_path, 1, seconds=300, suffix=".flac")
    worker = worker_factory()
    await worker.start()

    async def leased() -> bool:
        return (await fresh(services, sound.id)).normalize_lease_owner == worker.owner

    await eventually(leased, what="the claim")
    await worker.stop()  # mid-normalization: cancelled, the lease is given back
    back = await fresh(services, sound.id)
    assert back.normalize_lease_owner is None and back.normalize_lease_until is None
    assert not back.is_normalized and back.normalize_error is None
    assert worker.runs == Counter()
    folder = services.storage.normalized_path(back.sound_type, back.original_filename).parent
    assert not folder.exists() or list(folder.iterdir()) == []  # no half-written file
    async with services.db.session() as session:
        assert await repo.any_needs_normalizing(session)


async def test_lease_is_renewed_while_a_long_sound_is_normalized(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, normalize_lease_seconds=1)
    async with Services.from_settings(settings) as services:
        # About 2-3 s of ffmpeg work: longer than two lease periods.
        path = await asyncio.to_thread(
            tone, tmp_path / "in" / "long", 220, seconds=300, suffix=".flac"
        )
        sound = (await services.sounds.add_file(path, name="long", normalize=False)).sound
        workers = [
            NormalizeWorker(services.db, services.sounds, poll_seconds=0.05) for _ in range(2)
        ]
        try:
            for worker in workers:
                await worker.start()
            await eventually(all_normalized(services, [sound.id or 0]), what="the long sound")
        finally:
            for worker in workers:
                await worker.stop()
        assert workers[0].runs + workers[1].runs == Counter([sound.id])
        assert_playable(services, await fresh(services, sound.id))


async def test_a_corrupt_file_fails_once_and_is_not_claimed_again(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    bad, good = await add_raw(services, tmp_path, 2)
    original = services.storage.original_path(bad.sound_type, bad.original_filename)
    original.write_bytes(b"this stopped being audio after it was added")
    worker = worker_factory(concurrency=2, poll_seconds=0.05)
    await worker.start()

    async def both_settled() -> bool:
        b, g = await fresh(services, bad.id), await fresh(services, good.id)
        return b.normalize_error is not None and g.is_normalized

    await eventually(both_settled, what="the outcomes")
    await asyncio.sleep(0.5)  # a few more polls: nothing is retried
    failed = await fresh(services, bad.id)
    assert failed.normalize_error and not failed.is_normalized
    assert failed.normalize_lease_owner is None
    assert worker.runs == Counter([bad.id, good.id]) and worker.failed == [bad.id]
    assert await worker.claim() == []
    async with services.db.session() as session:
        assert not await repo.any_needs_normalizing(session)

    # `soundboard normalize --force` (and a plain retry) still tries again, once.
    [again] = await services.sounds.normalize_selection(ids=[bad.id or 0], force=True)
    assert again.error and again.sound is not None
    assert worker.runs == Counter([bad.id, good.id])


async def test_inline_normalization_is_never_taken_by_a_worker(
    services: Services, tmp_path: Path, worker_factory: Callable[..., NormalizeWorker]
) -> None:
    worker = worker_factory(concurrency=2, poll_seconds=0.01)
    await worker.start()
    for n in range(3):
        path = await asyncio.to_thread(tone, tmp_path / "in" / f"up{n}", 500 + 50 * n)
        result = await services.sounds.add_file(path, name=f"upload {n}")
        assert result.normalize_error is None
        assert_playable(services, await fresh(services, result.sound.id))
    assert worker.runs == Counter()


async def test_normalizing_here_waits_for_a_worker_holding_the_sound(
    services: Services, tmp_path: Path
) -> None:
    """`soundboard normalize`, /admin normalize and the scanner never redo a sound a worker is
    normalizing: they wait for it and report what it ended with."""
    [sound] = await add_raw(services, tmp_path, 1)
    async with services.db.transaction() as session:
        [held] = await repo.claim_for_normalizing(
            session, owner="worker/2/aaaa", limit=1, lease_seconds=60
        )
    waiting = asyncio.create_task(services.sounds.normalize_selection(ids=[sound.id or 0]))
    await asyncio.sleep(0.8)
    assert not waiting.done()
    [done] = await services.sounds.normalize_claimed([held], "worker/2/aaaa")
    assert done.ok and done.sound is not None
    [reported] = await asyncio.wait_for(waiting, timeout=30)
    assert reported.ok and reported.result is None  # not redone here
    assert reported.sound is not None and reported.sound.is_normalized


async def test_claim_query_uses_the_partial_index(services: Services) -> None:
    async with services.db.session() as session:
        stmt = repo.claim_query(session, limit=4)
        compiled = stmt.compile(
            dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
        )
        if services.db.is_sqlite:
            plan = (await session.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))).all()
        else:
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = (await session.execute(text(f"EXPLAIN {compiled}"))).all()
    assert "ix_sound_needs_normalizing" in " ".join(str(row) for row in plan), plan


async def test_upgrade_to_0003_keeps_sounds(empty_url: str) -> None:
    await upgrade(empty_url, "0002")
    engine = create_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sound (name, sound_type, original_filename, duration_ms, "
                    "size_bytes, file_hash, file_mtime_ns, is_normalized, is_silent, "
                    "play_count, created_at) VALUES ('old', 'SDB', 'old.mp3', 1000, 10, 'ab', "
                    "1, false, false, 3, CURRENT_TIMESTAMP)"
                )
            )
        await upgrade(empty_url)

        def read(conn: Connection) -> list[tuple[object, ...]]:
            rows = conn.execute(
                text(
                    "SELECT name, play_count, normalize_lease_owner, normalize_lease_until "
                    "FROM sound"
                )
            ).all()
            return [tuple(r) for r in rows]

        async with engine.connect() as conn:
            assert await conn.run_sync(read) == [("old", 3, None, None)]
    finally:
        await engine.dispose()


async def test_the_bot_runs_a_worker_and_stops_it(tmp_path: Path, database_url: str) -> None:
    from tests.bot.harness import bot_env

    async with bot_env(tmp_path, database_url, normalize_worker_in_bot=True) as env:
        worker = env.services.normalize_worker
        assert worker.started
        [sound] = await add_raw(env.services, tmp_path, 1)
        await eventually(all_normalized(env.services, [sound.id or 0]), what="the bot's worker")
        assert worker.runs == Counter([sound.id])
        await env.bot.close()
        assert not worker.started
