"""Async engine and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
WAL_AUTOCHECKPOINT_PAGES = 20_000
CHECKPOINT_INTERVAL_SECONDS = 10.0


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


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


class Database:
    """Owns the engine and hands out sessions. `write()` sessions serialize on SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._read = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        write_engine = engine.execution_options(sqlite_immediate=True) if self.is_sqlite else engine
        self._write = async_sessionmaker(write_engine, class_=AsyncSession, expire_on_commit=False)
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

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
        await self.engine.dispose()
