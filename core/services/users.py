"""Users: created on first use with the default plan's credits as their first ledger row."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from core.db import Database
from core.errors import Conflict, InvalidInput, NotFound
from core.events import EventBus, UserCreditsChanged
from core.models import Plan, Role, User, utcnow
from core.repositories import ledger, plans, users
from core.repositories.base import Page
from core.services.credits import Action, CreditsService, next_refill_at, transaction_dict

log = logging.getLogger(__name__)

PLAN_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class UserSummary:
    user: User
    plan: Plan
    next_refill_at: datetime


class UserService:
    def __init__(
        self, db: Database, events: EventBus, credits: CreditsService, default_plan: str
    ) -> None:
        self._db = db
        self._events = events
        self._credits = credits
        self._default_plan = default_plan
        self._plans: dict[int, tuple[float, Plan]] = {}

    async def ensure_discord_user(
        self, discord_id: int, display_name: str, avatar_url: str | None = None
    ) -> User:
        """The user behind a Discord id, created on first sight and refilled when due."""
        async with self._db.session() as session:
            user = await users.get_by_discord_id(session, discord_id=discord_id)
        if user is None:
            try:
                user = await self.create(
                    display_name=display_name, discord_id=discord_id, avatar_url=avatar_url
                )
            except Conflict:
                # Another process created the same user a moment ago: use theirs.
                async with self._db.session() as session:
                    user = await users.get_by_discord_id(session, discord_id=discord_id)
                assert user is not None
            return user
        plan = await self.plan(user.plan_id)
        # The refill is a write; only take it when a period has passed (checked again inside).
        if (
            next_refill_at(user, plan) <= utcnow()
            and await self._credits.refill_if_due(user.id or 0) is not None
        ):
            return await self.get(user.id or 0)
        return user

    async def plan(self, plan_id: int) -> Plan:
        """Plans change only by migration or an operator: cache them for a minute."""
        cached = self._plans.get(plan_id)
        if cached is not None and time.monotonic() - cached[0] < PLAN_CACHE_SECONDS:
            return cached[1]
        async with self._db.session() as session:
            plan = await session.get(Plan, plan_id)
        if plan is None:
            raise NotFound(f"No plan with id {plan_id}.")
        self._plans[plan_id] = (time.monotonic(), plan)
        return plan

    async def create(
        self,
        *,
        display_name: str,
        discord_id: int | None = None,
        avatar_url: str | None = None,
        role: Role = Role.USER,
    ) -> User:
        name = display_name.strip()
        if not name:
            raise InvalidInput("A user needs a name.")
        try:
            async with self._db.transaction() as session:
                plan = await plans.get_by_code(session, code=self._default_plan)
                if plan is None:
                    raise NotFound(f"The default plan {self._default_plan!r} does not exist.")
                start = min(plan.credits_per_refill, plan.max_credits)
                user = await users.create(
                    session,
                    display_name=name,
                    plan=plan,
                    credits=start,
                    discord_id=discord_id,
                    avatar_url=avatar_url,
                    role=role.value,
                )
                row = await ledger.add(
                    session,
                    user_id=user.id or 0,
                    action=Action.SIGNUP,
                    amount=start,
                    balance_before=0,
                    balance_after=start,
                    meta={"plan": plan.code},
                )
        except IntegrityError as exc:
            raise Conflict(f"A user with Discord id {discord_id} already exists.") from exc
        log.info("user created user=%s discord_id=%s credits=%s", user.id, discord_id, start)
        await self._events.publish(
            UserCreditsChanged(
                user_id=user.id or 0,
                discord_id=discord_id,
                old_balance=0,
                new_balance=start,
                transaction=transaction_dict(row),
            )
        )
        return user

    async def get(self, user_id: int) -> User:
        async with self._db.session() as session:
            user = await users.get(session, user_id=user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}.")
        return user

    async def get_by_discord_id(self, discord_id: int) -> User:
        async with self._db.session() as session:
            user = await users.get_by_discord_id(session, discord_id=discord_id)
        if user is None:
            raise NotFound(f"No user with Discord id {discord_id}.")
        return user

    async def summary(self, user_id: int) -> UserSummary:
        async with self._db.session() as session:
            user = await users.get(session, user_id=user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}.")
            plan = await session.get(Plan, user.plan_id)
        assert plan is not None
        return UserSummary(user=user, plan=plan, next_refill_at=next_refill_at(user, plan))

    async def list_page(self, *, cursor: str | None = None, limit: int = 50) -> Page[User]:
        async with self._db.session() as session:
            return await users.list_page(session, cursor=cursor, limit=limit)

    async def list_plans(self) -> list[Plan]:
        async with self._db.session() as session:
            return await plans.list_all(session)

    async def set_plan(self, user_id: int, plan_code: str) -> User:
        async with self._db.transaction() as session:
            plan = await plans.get_by_code(session, code=plan_code)
            if plan is None:
                raise NotFound(f"There is no plan called {plan_code!r}.")
            user = await users.get(session, user_id=user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}.")
            await users.update_fields(session, user=user, plan_id=plan.id)
        log.info("plan changed user=%s plan=%s", user_id, plan_code)
        return user

    async def set_role(self, user_id: int, role: Role) -> User:
        async with self._db.transaction() as session:
            user = await users.get(session, user_id=user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}.")
            await users.update_fields(session, user=user, role=role)
        return user

    async def update_profile(
        self, user_id: int, *, display_name: str | None = None, avatar_url: str | None = None
    ) -> User:
        async with self._db.transaction() as session:
            user = await users.get(session, user_id=user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}.")
            values: dict[str, object] = {}
            if display_name:
                values["display_name"] = display_name[:100]
            if avatar_url is not None:
                values["avatar_url"] = avatar_url
            if values:
                await users.update_fields(session, user=user, **values)
        return user
