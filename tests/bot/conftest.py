from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.bot.harness import BotEnv, bot_env
from tests.dbutil import (
    PG_SKIP_REASON,
    SQLITE_SKIP_REASON,
    PostgresTemplates,
    SqliteTemplates,
    skip_sqlite,
)


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
) -> AsyncIterator[BotEnv]:
    """One running bot per test module and database; tests use their own sounds and members."""
    if request.param == "sqlite":
        if skip_sqlite():
            pytest.skip(SQLITE_SKIP_REASON)
        url = await sqlite_templates.fresh_url()
    else:
        if pg_templates is None:
            pytest.skip(PG_SKIP_REASON)
        url = await pg_templates.fresh_url()
    async with bot_env(tmp_path_factory.mktemp("bot"), url) as environment:
        yield environment
