"""The precompiled read path (Database.fetch) behind the JSON ledger: same rows and values as
the ORM, on SQLite and PostgreSQL; on SQLite it never makes the event loop wait for a lock, on
PostgreSQL it keeps a few pooled connections and replaces a broken one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, null, text
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.types import TypeDecorator

from core.config import Settings
from core.db import _InlineSqliteReader
from core.models import CreditTransaction
from core.models.common import UTCDateTime
from core.repositories import ledger
from core.services.container import Services
from tests.conftest import make_settings
from tests.core.helpers import make_user
from tests.dbutil import PG_SKIP_REASON, PostgresTemplates


async def _ledger_with_variety(services: Services) -> int:
    """A member whose ledger holds plays, an extraction, a grant with nested and non-ASCII
    metadata, a row without metadata and one whose time has no fraction of a second."""
    user = await make_user(services, credits=60)
    uid = user.id or 0
    for index in range(5):
        await services.credits.deduct(uid, 1, meta={"sound": f"s{index}"})
    await services.credits.deduct(uid, 4, action="extraction", meta={"url": "https://x/y"})
    await services.credits.grant(uid, 3, reason="Grüße ✓", actor="admin")
    balance = (await services.users.get(uid)).credits
    async with services.db.transaction() as session:
        await session.execute(
            insert(CreditTransaction),
            [
                {
                    "user_id": uid,
                    "action": "refund",
                    "amount": 0,
                    "balance_before": balance,
                    "balance_after": balance,
                    "meta": null(),
                    "success": False,
                    "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                },
                {
                    "user_id": uid,
                    "action": "refund",
                    "amount": 0,
                    "balance_before": balance,
                    "balance_after": balance,
                    "meta": {"nested": {"list": [1, 2.5, None, True]}},
                    "success": True,
                    "created_at": datetime.now(UTC),
                },
            ],
        )
    return uid


def _as_orm(entry: ledger.LedgerEntry) -> tuple[Any, ...]:
    meta = None if entry.metadata_json is None else json.loads(entry.metadata_json)
    return (entry.id, entry.action, entry.amount, entry.balance_before, entry.balance_after, meta)


async def test_entries_pages_match_the_orm_pages(services: Services) -> None:
    uid = await _ledger_with_variety(services)
    now = datetime.now(UTC)
    filters: list[dict[str, Any]] = [
        {},
        {"action": "play"},
        {"action": "refund"},
        {"since": now - timedelta(hours=1)},
        {"until": now - timedelta(days=1)},
        {"since": now - timedelta(hours=1), "until": now + timedelta(hours=1), "action": "play"},
    ]
    for options in filters:
        cursor: str | None = None
        pages = 0
        while True:
            fast = await services.credits.history_entries(uid, cursor=cursor, limit=3, **options)
            orm = await services.credits.history(uid, cursor=cursor, limit=3, **options)
            assert [_as_orm(e) for e in fast.items] == [
                (r.id, r.action, r.amount, r.balance_before, r.balance_after, r.meta)
                for r in orm.items
            ], options
            for entry, row in zip(fast.items, orm.items, strict=True):
                assert entry.success is row.success
                assert entry.created_at == row.created_at and entry.created_at.tzinfo is not None
            assert fast.next_cursor == orm.next_cursor
            pages += 1
            cursor = fast.next_cursor
            if cursor is None:
                break
        assert pages >= 1
    everything = await services.credits.history_entries(uid, limit=200)
    assert len(everything.items) == 11 and everything.next_cursor is None
    assert [e.metadata_json for e in everything.items if e.action == "refund"][1] is None


async def test_entries_page_stays_stable_while_rows_arrive(services: Services) -> None:
    user = await make_user(services, credits=50)
    uid = user.id or 0
    for _ in range(6):
        await services.credits.deduct(uid, 1)
    first = await services.credits.history_entries(uid, limit=4)
    assert first.next_cursor is not None
    older = await services.credits.history_entries(uid, cursor=first.next_cursor, limit=4)
    await services.credits.deduct(uid, 2)  # newer than every page above
    again = await services.credits.history_entries(uid, cursor=first.next_cursor, limit=4)
    assert again == older
    newest = await services.credits.history_entries(uid, limit=1)
    assert newest.items[0].amount == -2  # and a read sees the commit at once


async def test_a_burst_of_reads_opens_no_extra_connections(services: Services) -> None:
    user = await make_user(services, credits=10)
    await services.credits.history_entries(user.id or 0)  # the pool (or reader) is warm
    opened: list[int] = []
    engine = services.db.engine.sync_engine
    pool_size = services.db.engine.pool.size()  # type: ignore[attr-defined]

    def on_connect(*_: Any) -> None:
        opened.append(1)

    event.listen(engine, "connect", on_connect)
    try:
        pages = await asyncio.gather(
            *(services.credits.history_entries(user.id or 0) for _ in range(4 * pool_size))
        )
    finally:
        event.remove(engine, "connect", on_connect)
    assert all(page == pages[0] for page in pages)
    # SQLite reads on its own connection; PostgreSQL waits for pooled ones rather than opening
    # an overflow connection per request.
    assert len(opened) <= (0 if services.db.is_sqlite else pool_size)


@pytest.fixture
async def sqlite_services(tmp_path: Any, sqlite_url: str) -> Any:
    settings: Settings = make_settings(tmp_path, sqlite_url)
    async with Services.from_settings(settings) as services:
        yield services


async def test_a_busy_sqlite_read_takes_the_pooled_path(
    sqlite_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = sqlite_services
    user = await make_user(services, credits=10)
    await services.credits.deduct(user.id or 0, 3, meta={"sound": "x"})
    inline = await services.credits.history_entries(user.id or 0)
    reader = services.db._inline
    assert reader is not None
    monkeypatch.setattr(reader, "fetch", lambda sql, params: None)  # as when the file is locked
    pooled = await services.credits.history_entries(user.id or 0)
    assert pooled == inline and len(inline.items) == 3


def test_the_inline_reader_never_waits_for_a_lock(tmp_path: Any) -> None:
    path = str(tmp_path / "locked.db")
    with sqlite3.connect(path) as setup:  # a rollback journal: a writer locks readers out
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.execute("INSERT INTO t VALUES (7)")
    reader = _InlineSqliteReader(path)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        assert reader.fetch("SELECT x FROM t", ()) is None
        assert time.monotonic() - started < 0.5  # no busy timeout on the event loop's thread
        locker.execute("COMMIT")
        assert reader.fetch("SELECT x FROM t", ()) == [(7,)]
    finally:
        locker.close()
        reader.close()


def test_the_inline_reader_answers_only_on_its_own_thread(tmp_path: Any) -> None:
    path = str(tmp_path / "inline.db")
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.execute("INSERT INTO t VALUES (7)")
    reader = _InlineSqliteReader(path)
    try:
        assert reader.fetch("SELECT x FROM t", ()) == [(7,)]
        elsewhere: list[Any] = []
        thread = threading.Thread(target=lambda: elsewhere.append(reader.fetch("SELECT x", ())))
        thread.start()
        thread.join()
        assert elsewhere == [None]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.fetch("INSERT INTO t VALUES (8)", ())
    finally:
        reader.close()


@pytest.mark.parametrize(
    "stored",
    [
        "2026-11-26 10:22:23.813464",
        "2026-11-26 10:22:23.000000",
        "2026-11-26 10:22:23",
        "2026-11-26T10:22:23.5",
        "2026-11-26 10:22:23.813464+02:00",
        "2026-11-26",
        "2026-11-26T10",
        None,
    ],
)
def test_utc_datetime_reads_sqlite_text_as_sqlalchemy_does(stored: str | None) -> None:
    dialect = aiosqlite.dialect()
    impl = UTCDateTime().dialect_impl(dialect)
    fast = impl.result_processor(dialect, None)
    generic = TypeDecorator.result_processor(impl, dialect, None)
    assert fast is not None and generic is not None
    value, expected = fast(stored), generic(stored)
    assert value == expected
    if expected is not None:
        assert value is not None and value.utcoffset() == expected.utcoffset()
        assert value.isoformat() == expected.isoformat()


@pytest.fixture
async def pg_services(tmp_path: Any, pg_templates: PostgresTemplates | None) -> Any:
    if pg_templates is None:
        pytest.skip(PG_SKIP_REASON)
    settings = make_settings(tmp_path, await pg_templates.fresh_url())
    async with Services.from_settings(settings) as services:
        yield services


async def test_postgres_reads_keep_a_few_connections_and_hand_them_back(
    pg_services: Services,
) -> None:
    services = pg_services
    user = await make_user(services, credits=10)
    lanes = services.db._lanes
    assert lanes is not None
    pool = services.db.engine.pool
    before = pool.checkedout()  # type: ignore[attr-defined]
    await asyncio.gather(*(services.credits.history_entries(user.id or 0) for _ in range(50)))
    kept = len(lanes._lanes)
    assert 1 <= kept <= lanes._size == 2  # a quarter of the default pool of 10
    assert pool.checkedout() == before + kept  # type: ignore[attr-defined]
    await lanes.close()
    assert pool.checkedout() == before  # type: ignore[attr-defined]


async def test_a_broken_postgres_lane_is_replaced(pg_services: Services) -> None:
    services = pg_services
    user = await make_user(services, credits=10)
    await services.credits.history_entries(user.id or 0)
    lanes = services.db._lanes
    assert lanes is not None and len(lanes._lanes) == 1
    (lane,) = lanes._lanes
    async with services.db.session() as session:  # the server ends the lane's session
        await session.execute(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": lane.driver.get_server_pid()}
        )
    # Which exception depends on when asyncpg notices (InterfaceError, InternalClientError...).
    with pytest.raises(Exception):  # noqa: B017
        for _ in range(20):  # the termination reaches the connection within a moment
            await services.credits.history_entries(user.id or 0)
            await asyncio.sleep(0.05)
    assert lane not in lanes._lanes
    page = await services.credits.history_entries(user.id or 0)
    assert [e.action for e in page.items] == ["take", "signup"]


async def test_postgres_lanes_serve_only_their_own_event_loop(pg_services: Services) -> None:
    services = pg_services
    user = await make_user(services, credits=10)
    await services.credits.history_entries(user.id or 0)
    lanes = services.db._lanes
    assert lanes is not None
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(asyncio.run(lanes.fetch("SELECT 1", ())))
    )
    thread.start()
    thread.join()
    assert answers == [None]  # Database.fetch then takes a pooled connection of that loop
