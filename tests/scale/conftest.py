from __future__ import annotations

import pytest

from tests.dbutil import PG_SKIP_REASON, PostgresTemplates


@pytest.fixture
async def pg_url(pg_templates: PostgresTemplates | None) -> str:
    """Scale-out runs on PostgreSQL only: that is what several processes share."""
    if pg_templates is None:
        pytest.skip(PG_SKIP_REASON)
    return await pg_templates.fresh_url()
