"""Fresh, migrated databases for tests: SQLite files copied from a migrated template, and
PostgreSQL databases cloned from a migrated template database."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from core.migrate import upgrade

PG_SKIP_REASON = "TEST_DATABASE_URL is not set (a PostgreSQL server is needed; .ci/run sets it)"


SQLITE_SKIP_REASON = (
    "TEST_DATABASE_URL is set, so this run covers PostgreSQL; SQLite runs without it "
    "(set TEST_BOTH_DATABASES=1 to run both at once)"
)


def skip_sqlite() -> bool:
    """CI runs the suite twice, once per database: don't repeat the SQLite cases."""
    return bool(os.environ.get("TEST_DATABASE_URL")) and not os.environ.get("TEST_BOTH_DATABASES")


def pg_base_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


def _dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


class SqliteTemplates:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._template: Path | None = None
        self._lock = asyncio.Lock()

    async def fresh_url(self) -> str:
        async with self._lock:
            if self._template is None:
                template = self.root / "template.db"
                await upgrade(f"sqlite+aiosqlite:///{template}")
                self._template = template
        target = self.root / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(self._template, target)
        return f"sqlite+aiosqlite:///{target}"


class PostgresTemplates:
    """A template database migrated once per test session; each test clones it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.prefix = f"sbtest_{uuid.uuid4().hex[:8]}"
        self._template: str | None = None
        self._created: list[str] = []
        self._lock = asyncio.Lock()

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(_dsn(self.base_url))

    async def fresh_url(self) -> str:
        async with self._lock:
            if self._template is None:
                name = f"{self.prefix}_template"
                conn = await self._admin()
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()
                self._created.append(name)
                await upgrade(make_url(self.base_url).set(database=name).render_as_string(False))
                self._template = name
            name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
            conn = await self._admin()
            try:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
            finally:
                await conn.close()
            self._created.append(name)
        return make_url(self.base_url).set(database=name).render_as_string(False)

    async def empty_url(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._created.append(name)
        return make_url(self.base_url).set(database=name).render_as_string(False)

    async def drop_all(self) -> None:
        conn = await self._admin()
        try:
            for name in reversed(self._created):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def fresh_database(
    kind: str, sqlite: SqliteTemplates, postgres: PostgresTemplates | None
) -> str:
    """A fresh migrated database of `kind` ("sqlite" or "postgres"), or a skip saying why."""
    import pytest

    if kind == "sqlite":
        if skip_sqlite():
            pytest.skip(SQLITE_SKIP_REASON)
        return await sqlite.fresh_url()
    if postgres is None:
        pytest.skip(PG_SKIP_REASON)
    return await postgres.fresh_url()
