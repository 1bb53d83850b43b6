"""Async engine and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, event
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.dml import UpdateBase

log = logging.getLogger(__name__)

R = TypeVar("R")

SQLITE_BUSY_TIMEOUT_MS = 30_000
WAL_AUTOCHECKPOINT_PAGES = 20_000
CHECKPOINT_INTERVAL_SECONDS = 10.0


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_file(url: str | URL) -> str | None:
    """The database file of a plain file URL; None for memory and URI forms, whose data a
    second, independent connection might not see."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or parsed.query:
        return None
    return database


def create_engine(
    url: str, *, echo: bool = False, pool_size: int = 10, max_overflow: int = 10
) -> AsyncEngine:
    """Create the engine; on SQLite every connection gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        _prepare_sqlite_path(url)
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    # Size the pool for the concurrency you expect (DATABASE_POOL_SIZE): overflow connections
    # are opened and closed per use, which costs more than the query; but every process takes
    # its pool from PostgreSQL's max_connections (100 by default). Connections are recycled
    # rather than pinged before every use (a ping is a round trip on every request).
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints fsync the database file; on a slow disk that stalls whichever commit
        # triggers one. Make them rare here and run them in the background (Database.checkpoint).
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front: a deferred transaction that reads
        # first and writes later fails at once with SQLITE_BUSY instead of waiting its turn.
        if conn.get_execution_options().get("sqlite_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@dataclass(frozen=True)
class ReadQuery:
    """A SELECT (or an INSERT/UPDATE with RETURNING) compiled once for one dialect: its SQL,
    how to turn named values into the driver's positional parameters, and how to turn the
    driver's values into Python ones (the column types' own processors, as SQLAlchemy applies
    them)."""

    sql: str
    params: tuple[tuple[str, bool, Any, Callable[[Any], Any] | None], ...]
    results: tuple[tuple[int, Callable[[Any], Any]], ...]

    @classmethod
    def compile(cls, stmt: Select[Any] | UpdateBase, dialect: Dialect) -> ReadQuery:
        compiled = stmt.compile(dialect=dialect)
        if compiled.positiontup is None or "POSTCOMPILE" in compiled.string:
            raise ValueError(f"{dialect.name}: only plain positional parameters are supported")
        params = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding or bind.callable is not None:
                raise ValueError(f"bind parameter {name!r} cannot be precompiled")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            params.append((name, bool(bind.required), bind.value, processor))
        results = []
        columns = stmt.selected_columns if isinstance(stmt, Select) else stmt.exported_columns
        for index, column in enumerate(columns):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None:
                results.append((index, processor))
        return cls(compiled.string, tuple(params), tuple(results))

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, required, default, processor in self.params:
            if required and name not in values:
                raise KeyError(f"no value for the query parameter {name!r}")
            value = values.get(name, default)
            out.append(value if processor is None else processor(value))
        return tuple(out)

    def convert(self, rows: Sequence[Sequence[Any]], make: Callable[[Sequence[Any]], R]) -> list[R]:
        """Each row's values through the column types' processors, then `make`."""
        if not self.results:
            return [make(row) for row in rows]
        converted = []
        for row in rows:
            values = list(row)
            for index, processor in self.results:
                values[index] = processor(values[index])
            converted.append(make(values))
        return converted


class _InlineSqliteReader:
    """A query-only SQLite connection used straight from the event loop's thread, for small
    indexed reads.

    Why not the pool: aiosqlite gives every pooled connection a thread and hops to it several
    times per query (cursor, execute, fetch, close, BEGIN, ROLLBACK); under concurrent requests
    those threads fight the event loop for the GIL, which cost several times more CPU than the
    query itself. Even a single hop to one reader thread per query cost about as much again as
    the query (bench/bench_web.py). A ledger page read through its index is ~0.1 ms of work on
    pages the OS has cached, the same kind of blocking as the file write of the request's log
    line on this thread.

    It never waits for a lock: the busy timeout is 0, and a read that finds the database busy
    (rare in WAL mode, where readers do not wait for writers) returns None, so the caller takes
    the pooled path, which waits. In autocommit mode each SELECT is its own snapshot: it sees
    every commit made before it started, from any connection or process."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = 0  # the thread that opened the connection, the only one that uses it

    def fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
        """The rows, or None when the database is busy or this is not the connection's thread."""
        conn = self._conn
        if conn is None:
            conn = self._conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=ON")
            self._thread = threading.get_ident()
        elif self._thread != threading.get_ident():
            return None
        try:
            cursor = conn.execute(sql, params)
            try:
                return cursor.fetchall()
            finally:
                cursor.close()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class InlineWrite:
    """The statements of one inline write transaction (see Database.write_inline)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def fetch(self, query: ReadQuery, values: Mapping[str, Any]) -> list[list[Any]]:
        cursor = self._conn.execute(query.sql, query.parameters(values))
        try:
            return query.convert(cursor.fetchall(), list)
        finally:
            cursor.close()


class _InlineSqliteWriter:
    """A read-write SQLite connection used straight from the event loop's thread for one
    short write transaction at a time: BEGIN IMMEDIATE, a few indexed statements, COMMIT.

    Why: through aiosqlite a play's charge (conditional UPDATE and a ledger row) took six thread
    hops and about 3-4 ms, the largest part of a play's start latency; here it is about 0.2 ms
    of work on this thread (WAL, synchronous=NORMAL: a commit does not wait for the disk).
    The caller holds the process's write lock, so it never meets a writer of this process; a
    writer of another process makes BEGIN fail at once (busy timeout 0) and the caller takes
    the pooled path, which waits its turn."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = 0

    def run(self, work: Callable[[InlineWrite], R]) -> tuple[R] | None:
        """(work's result,) committed; None when busy, on another thread, or when `work`
        raises NotApplied (rolled back). Any other exception rolls back and propagates."""
        conn = self._conn
        if conn is None:
            conn = self._conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
            with contextlib.suppress(sqlite3.OperationalError):  # already WAL: a no-op
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._thread = threading.get_ident()
        elif self._thread != threading.get_ident():
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise
        try:
            result = work(InlineWrite(conn))
            conn.execute("COMMIT")
        except NotApplied:
            conn.execute("ROLLBACK")
            return None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return (result,)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class NotApplied(Exception):
    """Raised by an inline write's work to roll back and let the caller take its usual path
    (for example to build a detailed error there)."""


def _lane_count(engine: AsyncEngine) -> int:
    """A quarter of the pool (1 to 4): the rest stays for sessions."""
    size = getattr(engine.pool, "size", None)
    return max(1, min(4, size() // 4)) if callable(size) else 1


@dataclass(frozen=True, eq=False)
class _Lane:
    conn: AsyncConnection
    driver: Any  # the asyncpg connection behind `conn`


class _PostgresReadLanes:
    """A few connections taken from the pool and kept for hot reads, each used straight
    through asyncpg (no BEGIN/ROLLBACK round trips; asyncpg's statement cache skips the
    prepare).

    Checking a connection out of SQLAlchemy's pool and back for every read (an
    AsyncConnection, greenlet switches, the pool's bookkeeping and reset) cost as much CPU as
    the query. A lane is checked out once and kept, so the process stays within
    DATABASE_POOL_SIZE and its overflow. Lanes open as concurrent reads need them, up to
    `size`; further reads wait for a free lane (a fraction of a millisecond) instead of opening
    connections. A lane whose query fails is dropped and its connection invalidated: the next
    read opens a fresh one, as the pool does with a broken connection."""

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self._engine = engine
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[_Lane] = []
        self._lanes: set[_Lane] = set()

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> Sequence[Any] | None:
        """The rows, or None when called from another event loop than the lanes' own."""
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._loop, self._slots = loop, asyncio.Semaphore(self._size)
        elif loop is not self._loop:
            return None  # asyncpg connections belong to the loop that opened them
        async with self._slots:
            lane = self._idle.pop() if self._idle else await self._open()
            try:
                rows: Sequence[Any] = await lane.driver.fetch(sql, *params)
            except BaseException:
                await self._drop(lane)
                raise
            self._idle.append(lane)
            return rows

    async def _open(self) -> _Lane:
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        lane = _Lane(conn, raw.driver_connection)
        self._lanes.add(lane)
        return lane

    async def _drop(self, lane: _Lane) -> None:
        self._lanes.discard(lane)
        with contextlib.suppress(Exception):
            await lane.conn.invalidate()
            await lane.conn.close()

    async def close(self) -> None:
        """Hand every lane back to the pool (which the engine's dispose then closes)."""
        lanes, self._lanes, self._idle = list(self._lanes), set(), []
        for lane in lanes:
            with contextlib.suppress(Exception):
                await lane.conn.close()


class Database:
    """Owns the engine and hands out sessions. `write()` sessions serialize on SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._read = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        write_engine = engine.execution_options(sqlite_immediate=True) if self.is_sqlite else engine
        self._write = async_sessionmaker(write_engine, class_=AsyncSession, expire_on_commit=False)
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._queries: dict[Hashable, ReadQuery] = {}
        sqlite_file = _sqlite_file(engine.url) if self.is_sqlite else None
        self._inline = _InlineSqliteReader(sqlite_file) if sqlite_file else None
        self._inline_writer = _InlineSqliteWriter(sqlite_file) if sqlite_file else None
        self._lanes = (
            _PostgresReadLanes(engine, _lane_count(engine))
            if engine.dialect.driver == "asyncpg"
            else None
        )

    @classmethod
    def from_url(
        cls, url: str, *, echo: bool = False, pool_size: int = 10, max_overflow: int = 10
    ) -> Database:
        return cls(create_engine(url, echo=echo, pool_size=pool_size, max_overflow=max_overflow))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (and writes that do not race); the caller commits."""
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on success, rolled back on any error."""
        if not self.is_sqlite:
            async with self._write() as session, session.begin():
                yield session
            return
        # SQLite has one writer at a time. Writers of this process queue here in order; left to
        # SQLite's busy handler they would poll with sleeps of up to 100 ms, and a burst of
        # hundreds of plays took tens of seconds. Other processes still meet the busy timeout.
        async with self._sqlite_write_lock(), self._write() as session, session.begin():
            yield session

    def _sqlite_write_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock[0] is not loop:
            self._write_lock = (loop, asyncio.Lock())
        return self._write_lock[1]

    def read_query(self, key: Hashable, build: Callable[[], Select[Any]]) -> ReadQuery:
        """The statement `build` returns, compiled for this database once per `key`."""
        query = self._queries.get(key)
        if query is None:
            query = self._queries[key] = ReadQuery.compile(build(), self.engine.dialect)
        return query

    async def fetch(
        self, query: ReadQuery, values: Mapping[str, Any], make: Callable[[Sequence[Any]], R]
    ) -> list[R]:
        """Run one SELECT outside any transaction, as cheaply as the driver allows, and build
        each row with `make` (`tuple`, a NamedTuple's `_make`). For hot, small, indexed reads:
        the ORM and sessions cost several times more per query. On SQLite the statement runs
        on the calling thread (_InlineSqliteReader), on PostgreSQL on a connection kept for
        such reads (_PostgresReadLanes); elsewhere, or when those cannot serve, on a pooled
        connection."""
        params = query.parameters(values)
        rows: Sequence[Sequence[Any]] | None = None
        if self._inline is not None:
            rows = self._inline.fetch(query.sql, params)
        elif self._lanes is not None:
            rows = await self._lanes.fetch(query.sql, params)
        if rows is None:
            async with self.engine.connect() as conn:
                rows = (await conn.exec_driver_sql(query.sql, params)).all()
        return query.convert(rows, make)

    def write_query(self, key: Hashable, build: Callable[[], UpdateBase]) -> ReadQuery:
        """An INSERT/UPDATE (with RETURNING) compiled once per `key`, for write_inline."""
        query = self._queries.get(key)
        if query is None:
            query = self._queries[key] = ReadQuery.compile(build(), self.engine.dialect)
        return query

    async def write_inline(self, work: Callable[[InlineWrite], R]) -> tuple[R] | None:
        """On a SQLite file database, run `work` as one write transaction on this thread, in
        this process's writer queue: `(result,)` once committed. None when it cannot run here
        (PostgreSQL, another process writing, `work` raised NotApplied): use `transaction()`.
        `work` must be a few indexed statements: the event loop waits for it."""
        if self._inline_writer is None:
            return None
        async with self._sqlite_write_lock():
            return self._inline_writer.run(work)

    async def checkpoint(self) -> None:
        """Copy the SQLite write-ahead log into the database without blocking writers."""
        if self.is_sqlite:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def run_checkpoints(self, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        """Checkpoint every `interval` seconds until cancelled (long-running processes)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except Exception:
                log.warning("SQLite checkpoint failed", exc_info=True)

    async def dispose(self) -> None:
        if self._inline is not None:
            self._inline.close()
        if self._inline_writer is not None:
            self._inline_writer.close()
        if self._lanes is not None:
            await self._lanes.close()
        await self.engine.dispose()
