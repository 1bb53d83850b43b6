"""PostgresEventBus: events cross processes through LISTEN/NOTIFY, exactly once per subscriber,
and the listener comes back after its connection is killed."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from core.events import Event, ExtractionUpdated, LocalEventBus, UserCreditsChanged
from core.events_pg import (
    CHANNEL,
    LISTENER_APPLICATION_NAME,
    MAX_PAYLOAD_BYTES,
    PUBLISHER_APPLICATION_NAME,
    PostgresEventBus,
    asyncpg_dsn,
    decode_event,
    encode_event,
)
from core.services.container import Services
from core.services.credits import transaction_dict
from tests.conftest import make_settings
from tests.core.helpers import make_user
from tests.dbutil import PG_SKIP_REASON, PostgresTemplates

ROOT = Path(__file__).resolve().parents[2]
_markers = itertools.count(1)


class Seen:
    """What one subscriber (a handler or a stream) received, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, match: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def credits(self, tx_ids: list[int]) -> list[UserCreditsChanged]:
        return [
            e
            for e in self.events
            if isinstance(e, UserCreditsChanged) and e.transaction.get("id") in tx_ids
        ]


async def barrier(publisher: Services, *seen: Seen) -> ExtractionUpdated:
    """Publish a marker and wait until every subscriber has it. Notifications reach a listener
    in commit order, so whatever was published before the marker has arrived by then."""
    marker = ExtractionUpdated(extraction_id=-next(_markers), status="barrier")
    await publisher.events.publish(marker)
    for s in seen:
        await s.wait_for(lambda e: e == marker)
    return marker


@asynccontextmanager
async def streamed(services: Services) -> AsyncIterator[Seen]:
    seen = Seen()
    async with services.events.stream() as events:

        async def pump() -> None:
            async for event in events:
                await seen.add(event)

        task = asyncio.create_task(pump())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.wait([task])


@pytest.fixture
async def pg_url(pg_templates: PostgresTemplates | None) -> str:
    if pg_templates is None:
        pytest.skip(PG_SKIP_REASON)
    return await pg_templates.fresh_url()


@asynccontextmanager
async def opened(tmp_path: Path, url: str, name: str) -> AsyncIterator[Services]:
    settings = make_settings(tmp_path / name, url)
    async with Services.from_settings(settings) as services:
        assert isinstance(services.events, PostgresEventBus)
        yield services


@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Services, Services]]:
    """Two Services on one database: two buses, two listeners, like two processes."""
    async with opened(tmp_path, pg_url, "a") as a, opened(tmp_path, pg_url, "b") as b:
        yield a, b


async def admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(make_url(url).set(database="postgres")))


async def backends(url: str, application_name: str) -> list[int]:
    conn = await admin(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            make_url(url).database,
            application_name,
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


# ----- without PostgreSQL -------------------------------------------------------------------


def test_dsn_is_derived_from_the_sqlalchemy_url() -> None:
    assert (
        asyncpg_dsn("postgresql+asyncpg://bot:s%40cret@db.example:6432/sb?sslmode=require")
        == "postgresql://bot:s%40cret@db.example:6432/sb?sslmode=require"
    )
    assert (
        asyncpg_dsn("postgresql+asyncpg://postgres@127.0.0.1/test?prepared_statement_cache_size=0")
        == "postgresql://postgres@127.0.0.1/test"
    )
    with pytest.raises(ValueError):
        asyncpg_dsn("sqlite+aiosqlite:///x.db")


async def test_sqlite_keeps_the_in_process_bus(tmp_path: Path, sqlite_url: str) -> None:
    async with Services.from_settings(make_settings(tmp_path, sqlite_url)) as services:
        assert isinstance(services.events, LocalEventBus)


def test_payloads_round_trip_and_oversized_transactions_shrink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tx = {"id": 7, "action": "grant", "amount": 5, "balance_before": 1, "balance_after": 6}
    small = UserCreditsChanged(1, 2, 1, 6, {**tx, "metadata": {"reason": "ok"}})
    payload = encode_event(small)
    assert payload is not None and decode_event(payload) == small

    big = UserCreditsChanged(1, 2, 1, 6, {**tx, "metadata": {"reason": "é" * 9000}})
    payload = encode_event(big)
    assert payload is not None and len(payload.encode()) <= MAX_PAYLOAD_BYTES
    assert decode_event(payload) == UserCreditsChanged(1, 2, 1, 6, tx)
    assert "transaction details dropped" in caplog.text

    huge = UserCreditsChanged(1, 2, 1, 6, {**tx, "action": "x" * 9000})
    payload = encode_event(huge)
    assert payload is not None and decode_event(payload) == UserCreditsChanged(1, 2, 1, 6, {})

    hopeless = ExtractionUpdated(extraction_id=1, status="x" * 9000)
    assert encode_event(hopeless) is None
    assert "dropped event=extraction_updated" in caplog.text

    for bad in ("not json", "[]", '{"name": "nope"}', '{"name": "extraction_updated"}'):
        with pytest.raises(ValueError):
            decode_event(bad)


async def test_publish_never_raises_when_postgres_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = PostgresEventBus("postgresql://postgres@127.0.0.1:1/nowhere", connect_timeout=2)
    try:
        await bus.publish(ExtractionUpdated(extraction_id=1, status="pending"))
    finally:
        await bus.close()
    assert "event publish failed, event dropped event=extraction_updated" in caplog.text
    with pytest.raises(OSError):
        await PostgresEventBus("postgresql://postgres@127.0.0.1:1/nowhere").start()


# ----- on PostgreSQL ------------------------------------------------------------------------


async def test_a_deduction_reaches_every_subscriber_of_both_processes_exactly_once(
    pair: tuple[Services, Services],
) -> None:
    a, b = pair
    a_seen, b_seen = Seen(), Seen()
    a.events.subscribe(a_seen.add)
    b.events.subscribe(b_seen.add)
    async with streamed(a) as a_stream, streamed(b) as b_stream:
        user = await make_user(a, credits=10)
        uid = user.id or 0
        tx = await a.credits.deduct(uid, 1, meta={"sound": "airhorn"})
        marker = await barrier(a, a_seen, b_seen, a_stream, b_stream)
        # A second marker from the other bus: nothing is still in flight after it.
        await barrier(b, a_seen, b_seen, a_stream, b_stream)
    expected = UserCreditsChanged(
        user_id=uid,
        discord_id=user.discord_id,
        old_balance=10,
        new_balance=9,
        transaction=transaction_dict(tx),
    )
    for seen in (a_seen, b_seen, a_stream, b_stream):
        assert seen.credits([tx.id or 0]) == [expected]
        assert seen.events.count(marker) == 1


async def test_an_event_from_another_os_process_arrives(
    pair: tuple[Services, Services], pg_url: str
) -> None:
    a, _ = pair
    seen = Seen()
    a.events.subscribe(seen.add)
    user = await make_user(a, credits=10)
    uid = user.id or 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.core.events_pg_worker",
        pg_url,
        str(uid),
        "3",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    ids: list[int] = json.loads(stdout)
    assert len(ids) == 3
    await barrier(a, seen)
    changes = seen.credits(ids)
    assert [(c.transaction["id"], c.user_id, c.old_balance, c.new_balance) for c in changes] == [
        (ids[0], uid, 10, 9),
        (ids[1], uid, 9, 8),
        (ids[2], uid, 8, 7),
    ]
    assert (await a.users.get(uid)).credits == 7


async def test_the_listener_reconnects_after_its_backend_is_terminated(
    pair: tuple[Services, Services], pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    bus = a.events
    assert isinstance(bus, PostgresEventBus)
    seen = Seen()
    a.events.subscribe(seen.add)
    async with streamed(a) as stream:
        old_pid = bus.listener_pid
        assert old_pid is not None and old_pid in await backends(pg_url, LISTENER_APPLICATION_NAME)
        conn = await admin(pg_url)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", old_pid) is True
        finally:
            await conn.close()
        async with asyncio.timeout(15):
            while bus.listener_pid in (None, old_pid):
                await asyncio.sleep(0.02)
        assert bus.connects == 2
        user = await make_user(b, credits=5)
        tx = await b.credits.deduct(user.id or 0, 2)
        await barrier(b, seen, stream)
        for s in (seen, stream):
            assert [(c.old_balance, c.new_balance) for c in s.credits([tx.id or 0])] == [(5, 3)]
    assert "event listener connection lost" in caplog.text
    assert "event listener reconnected" in caplog.text


async def test_the_listener_keeps_retrying_until_the_database_takes_connections_again(
    pair: tuple[Services, Services], pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    bus = a.events
    assert isinstance(bus, PostgresEventBus)
    seen = Seen()
    a.events.subscribe(seen.add)
    database = make_url(pg_url).database
    old_pid = bus.listener_pid
    conn = await admin(pg_url)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", old_pid) is True
            async with asyncio.timeout(15):
                while caplog.text.count("event listener reconnect failed") < 2:
                    await asyncio.sleep(0.05)
            assert bus.listener_pid is None
        finally:
            await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await conn.close()
    async with asyncio.timeout(30):
        while bus.listener_pid is None:
            await asyncio.sleep(0.05)
    assert bus.listener_pid != old_pid
    user = await make_user(b, credits=5)
    tx = await b.credits.deduct(user.id or 0, 1)
    await barrier(b, seen)
    assert [(c.old_balance, c.new_balance) for c in seen.credits([tx.id or 0])] == [(5, 4)]


async def test_oversized_events_arrive_without_their_metadata(
    pair: tuple[Services, Services], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    seen = Seen()
    b.events.subscribe(seen.add)
    user = await make_user(a, credits=5)
    tx = await a.credits.grant(user.id or 0, 3, reason="r" * 10_000)
    assert tx.meta is not None and len(tx.meta["reason"]) == 10_000
    await barrier(a, seen)
    [change] = seen.credits([tx.id or 0])
    full = transaction_dict(tx)
    assert change.transaction == {k: v for k, v in full.items() if k != "metadata"}
    assert (change.old_balance, change.new_balance) == (5, 8)
    assert "transaction details dropped" in caplog.text


async def test_notifications_that_are_not_events_are_ignored(
    pair: tuple[Services, Services], pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    seen = Seen()
    a.events.subscribe(seen.add)
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        for junk in ("not json", '{"name": "from_the_future", "x": 1}'):
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, junk)
    finally:
        await conn.close()
    marker = await barrier(a, seen)
    assert seen.events == [marker]
    # Both listeners (a's and b's) heard both, and each logged them.
    assert caplog.text.count("ignoring a notification that is not an event") == 4


async def test_connections_are_opened_on_start_and_closed_on_close(
    tmp_path: Path, pg_url: str
) -> None:
    async with opened(tmp_path, pg_url, "a") as a, opened(tmp_path, pg_url, "b") as b:
        listeners = await backends(pg_url, LISTENER_APPLICATION_NAME)
        assert sorted(listeners) == sorted(
            [a.events.listener_pid, b.events.listener_pid]  # type: ignore[attr-defined]
        )
        await barrier(a)
        assert len(await backends(pg_url, PUBLISHER_APPLICATION_NAME)) >= 1
    async with asyncio.timeout(10):
        while await backends(pg_url, LISTENER_APPLICATION_NAME) or await backends(
            pg_url, PUBLISHER_APPLICATION_NAME
        ):
            await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="core.events_pg")
