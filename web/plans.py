"""Plans change rarely: pages look them up here instead of querying on every request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from core.errors import NotFound
from core.models import Plan, User
from core.services.credits import next_refill_at
from core.services.users import UserSummary

PLAN_CACHE_SECONDS = 60.0


class PlanCache:
    def __init__(
        self,
        load: Callable[[], Awaitable[list[Plan]]],
        *,
        ttl: float = PLAN_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._plans: dict[int, Plan] = {}
        self._expires = 0.0

    async def get(self, plan_id: int) -> Plan:
        if plan_id not in self._plans or self._clock() >= self._expires:
            self._plans = {plan.id or 0: plan for plan in await self._load()}
            self._expires = self._clock() + self._ttl
        plan = self._plans.get(plan_id)
        if plan is None:
            raise NotFound(f"There is no plan with id {plan_id}.")
        return plan

    async def summary(self, user: User) -> UserSummary:
        """What the pages show about a user's credits, from an already loaded user."""
        plan = await self.get(user.plan_id)
        return UserSummary(user=user, plan=plan, next_refill_at=next_refill_at(user, plan))
