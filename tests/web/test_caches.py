"""The web app's small caches: immutable ledger pages and plans."""

from __future__ import annotations

import pytest

from core.errors import NotFound
from core.models import Plan
from core.services.container import Services
from tests.core.helpers import make_user
from web.pagecache import PageCache, etag_for
from web.plans import PlanCache


def test_page_cache_lru_eviction_and_ttl() -> None:
    now = [0.0]
    cache = PageCache(max_entries=2, ttl=10, clock=lambda: now[0])
    a = cache.put("a", b"A")
    cache.put("b", b"B")
    assert cache.get("a") == a  # "a" is now the most recent
    cache.put("c", b"C")
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    now[0] = 10.0
    assert cache.get("a") is None and cache.get("c") is None and len(cache) == 0


def test_etag_depends_on_the_body() -> None:
    assert etag_for(b"x") == etag_for(b"x") != etag_for(b"y")
    assert etag_for(b"x").startswith('"') and etag_for(b"x").endswith('"')


async def test_plan_cache_reloads_after_its_ttl_or_for_an_unknown_plan() -> None:
    now = [0.0]
    loads: list[int] = []
    plans = [
        Plan(
            id=1,
            code="free",
            name="Free",
            credits_per_refill=1,
            max_credits=2,
            refill_period_hours=24,
        )
    ]

    async def load() -> list[Plan]:
        loads.append(1)
        return list(plans)

    cache = PlanCache(load, ttl=60, clock=lambda: now[0])
    assert (await cache.get(1)).name == "Free"
    assert (await cache.get(1)).name == "Free" and len(loads) == 1
    plans.append(
        Plan(
            id=2,
            code="plus",
            name="Plus",
            credits_per_refill=5,
            max_credits=9,
            refill_period_hours=24,
        )
    )
    assert (await cache.get(2)).name == "Plus" and len(loads) == 2  # unknown id: reload
    plans[0] = Plan(
        id=1,
        code="free",
        name="Free v2",
        credits_per_refill=1,
        max_credits=2,
        refill_period_hours=24,
    )
    assert (await cache.get(1)).name == "Free"
    now[0] = 61
    assert (await cache.get(1)).name == "Free v2"
    with pytest.raises(NotFound):
        await cache.get(99)


async def test_plan_cache_summary_matches_the_service(services: Services) -> None:
    user = await make_user(services)
    cache = PlanCache(services.users.list_plans)
    ours = await cache.summary(user)
    theirs = await services.users.summary(user.id or 0)
    assert (ours.plan.code, ours.next_refill_at) == (theirs.plan.code, theirs.next_refill_at)
