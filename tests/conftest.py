from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.services.container import Services
from tests.dbutil import (
    PG_SKIP_REASON,
    PostgresTemplates,
    SqliteTemplates,
    fresh_database,
    pg_base_url,
)


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplates:
    return SqliteTemplates(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture(scope="session")
async def pg_templates() -> AsyncIterator[PostgresTemplates | None]:
    base = pg_base_url()
    if base is None:
        yield None
        return
    templates = PostgresTemplates(base)
    yield templates
    await templates.drop_all()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
) -> str:
    """A fresh, migrated database; every test that takes it runs on SQLite and PostgreSQL."""
    return await fresh_database(request.param, sqlite_templates, pg_templates)


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(
    request: pytest.FixtureRequest,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
) -> str:
    """An empty (unmigrated) database on SQLite and PostgreSQL, for migration tests."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{sqlite_templates.root / request.node.name}.db"
    if pg_templates is None:
        pytest.skip(PG_SKIP_REASON)
    return await pg_templates.empty_url()


@pytest.fixture
async def sqlite_url(sqlite_templates: SqliteTemplates) -> str:
    return await sqlite_templates.fresh_url()


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "sounds_dir": tmp_path / "sounds",
        "database_url": database_url,
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with Services.from_settings(settings) as svc:
        yield svc
