"""The migrated schema matches the models, and upgrading keeps existing rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.models  # noqa: F401
from core.db import create_engine
from core.migrate import current_revision, head_revision, upgrade


async def _run(url: str, fn: Callable[[Connection], object]) -> object:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_models(empty_url: str) -> None:
    await upgrade(empty_url)
    assert await current_revision(empty_url) == head_revision()

    def diff(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))

    assert await _run(empty_url, diff) == []


async def test_upgrade_keeps_existing_rows(empty_url: str) -> None:
    await upgrade(empty_url, "0001")

    def seed(conn: Connection) -> None:
        conn.execute(
            text(
                "INSERT INTO plan (code, name, credits_per_refill, max_credits, "
                "refill_period_hours) "
                "VALUES ('free', 'Free', 100, 200, 24)"
            )
        )
        conn.execute(
            text(
                'INSERT INTO "user" (discord_id, display_name, role, plan_id, credits, '
                "last_refill_at, created_at, updated_at) VALUES (42, 'Old Timer', 'user', "
                "(SELECT id FROM plan WHERE code = 'free'), 7, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )

    await _run(empty_url, seed)
    await upgrade(empty_url)
    assert await current_revision(empty_url) == head_revision()

    def read(conn: Connection) -> object:
        return conn.execute(text('SELECT display_name, credits FROM "user"')).all()

    assert [tuple(r) for r in await _run(empty_url, read)] == [("Old Timer", 7)]  # type: ignore[attr-defined]
    await upgrade(empty_url)  # a second upgrade is a no-op


async def test_upgrade_from_several_tasks_at_once(empty_url: str) -> None:
    """Processes starting together must not race each other's migrations."""
    import asyncio

    jobs: list[Awaitable[None]] = [upgrade(empty_url) for _ in range(3)]
    if empty_url.startswith("sqlite"):
        for job in jobs:  # SQLite serializes on its own file lock: run them in turn
            await job
    else:
        await asyncio.gather(*jobs)
    assert await current_revision(empty_url) == head_revision()
