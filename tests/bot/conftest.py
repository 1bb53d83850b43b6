from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.bot.harness import BotEnv, bot_env
from tests.dbutil import (
    PostgresTemplates,
    SqliteTemplates,
    fresh_database,
)


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
) -> AsyncIterator[BotEnv]:
    """One running bot per test module and database; tests use their own sounds and members."""
    url = await fresh_database(request.param, sqlite_templates, pg_templates)
    async with bot_env(tmp_path_factory.mktemp("bot"), url) as environment:
        yield environment


@pytest_asyncio.fixture(autouse=True)
async def _player_idle_after_each_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Tests share one bot per module: let a test's sounds finish before the next one starts."""
    yield
    if "env" in request.fixturenames:
        environment: BotEnv = request.getfixturevalue("env")
        await environment.wait_idle()
