"""The credits ledger. Every balance change and its ledger row commit together or not at all."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.db import Database
from core.errors import InsufficientCredits, InvalidInput, NotFound
from core.events import EventBus, UserCreditsChanged
from core.models import CreditTransaction, Plan, User, utcnow
from core.repositories import ledger, plans, users
from core.repositories.base import Page

log = logging.getLogger(__name__)


class Action:
    SIGNUP = "signup"
    REFILL = "refill"
    PLAY = "play"
    EXTRACTION = "extraction"
    REFUND = "refund"
    GRANT = "grant"
    TAKE = "take"


@dataclass(frozen=True)
class LedgerProblem:
    user_id: int
    transaction_id: int | None
    reason: str

    def __str__(self) -> str:
        where = f"transaction {self.transaction_id}" if self.transaction_id else "balance"
        return f"user {self.user_id}, {where}: {self.reason}"


def next_refill_at(user: User, plan: Plan) -> datetime:
    return user.last_refill_at + timedelta(hours=plan.refill_period_hours)


def transaction_dict(row: CreditTransaction) -> dict[str, Any]:
    return {
        "id": row.id,
        "action": row.action,
        "amount": row.amount,
        "balance_before": row.balance_before,
        "balance_after": row.balance_after,
        "metadata": row.meta,
        "success": row.success,
        "created_at": row.created_at.isoformat(),
    }


class CreditsService:
    def __init__(self, db: Database, events: EventBus) -> None:
        self._db = db
        self._events = events

    async def deduct(
        self,
        user_id: int,
        amount: int,
        *,
        action: str = Action.PLAY,
        meta: dict[str, Any] | None = None,
    ) -> CreditTransaction:
        """Spend credits; raises InsufficientCredits and changes nothing if the balance is short."""
        return await self._change(user_id, -self._positive(amount), action=action, meta=meta)

    async def refund(
        self, user_id: int, amount: int, *, of_transaction: int | None = None, reason: str = ""
    ) -> CreditTransaction:
        meta: dict[str, Any] = {"reason": reason}
        if of_transaction is not None:
            meta["refund_of"] = of_transaction
        return await self._change(user_id, self._positive(amount), action=Action.REFUND, meta=meta)

    async def grant(
        self, user_id: int, amount: int, *, reason: str, actor: str | None = None
    ) -> CreditTransaction:
        meta = {"reason": reason, "actor": actor}
        return await self._change(user_id, self._positive(amount), action=Action.GRANT, meta=meta)

    async def take(
        self, user_id: int, amount: int, *, reason: str, actor: str | None = None
    ) -> CreditTransaction:
        meta = {"reason": reason, "actor": actor}
        return await self._change(user_id, -self._positive(amount), action=Action.TAKE, meta=meta)

    @staticmethod
    def _positive(amount: int) -> int:
        if amount <= 0:
            raise InvalidInput("The amount must be a positive whole number.")
        return amount

    async def _change(
        self, user_id: int, delta: int, *, action: str, meta: dict[str, Any] | None
    ) -> CreditTransaction:
        # One conditional UPDATE: concurrent spenders can never take the balance below zero.
        at_least = -delta if delta < 0 else None
        # On SQLite, first as one inline write (a play's charge is on its start-latency path);
        # PostgreSQL, a writer in another process, or a refusal take the session path below.
        inline = await ledger.change_and_add_inline(
            self._db, user_id=user_id, delta=delta, at_least=at_least, action=action, meta=meta
        )
        if inline is not None:
            row, discord_id = inline
            return await self._changed(discord_id, row)
        async with self._db.transaction() as session:
            changed = await users.change_credits(
                session, user_id=user_id, delta=delta, at_least=at_least
            )
            if changed is None:
                user = await users.get(session, user_id=user_id)
                if user is None:
                    raise NotFound(f"No user with id {user_id}.")
                plan = await session.get(Plan, user.plan_id)
                refill = next_refill_at(user, plan) if plan else None
                raise InsufficientCredits(
                    balance=user.credits, needed=-delta, next_refill_at=refill
                )
            new_balance, discord_id = changed
            row = await ledger.add(
                session,
                user_id=user_id,
                action=action,
                amount=delta,
                balance_before=new_balance - delta,
                balance_after=new_balance,
                meta=meta,
            )
        return await self._changed(discord_id, row)

    async def _changed(self, discord_id: int | None, row: CreditTransaction) -> CreditTransaction:
        log.info(
            "credits %s user=%s amount=%s balance=%s tx=%s",
            row.action,
            row.user_id,
            row.amount,
            row.balance_after,
            row.id,
        )
        await self._publish(row.user_id, discord_id, row)
        return row

    async def refill_if_due(
        self, user_id: int, *, now: datetime | None = None
    ) -> CreditTransaction | None:
        """Apply every refill period that has passed, up to the plan's maximum (one ledger row)."""
        now = now or utcnow()
        async with self._db.transaction() as session:
            user = await users.get_for_update(session, user_id=user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}.")
            plan = await session.get(Plan, user.plan_id)
            assert plan is not None
            period = timedelta(hours=plan.refill_period_hours)
            periods = int((now - user.last_refill_at) / period)
            if periods < 1:
                return None
            refilled_at = user.last_refill_at + periods * period
            target = max(
                user.credits,
                min(plan.max_credits, user.credits + periods * plan.credits_per_refill),
            )
            amount = target - user.credits
            before = user.credits
            await users.set_refilled(
                session, user_id=user_id, credits=target, refilled_at=refilled_at
            )
            if amount == 0:
                return None
            row = await ledger.add(
                session,
                user_id=user_id,
                action=Action.REFILL,
                amount=amount,
                balance_before=before,
                balance_after=target,
                meta={"plan": plan.code, "periods": periods},
            )
            discord_id = user.discord_id
        log.info("credits refill user=%s amount=%s balance=%s", user_id, amount, target)
        await self._publish(user_id, discord_id, row)
        return row

    async def history(
        self,
        user_id: int,
        *,
        cursor: str | None = None,
        limit: int = 50,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page[CreditTransaction]:
        async with self._db.session() as session:
            return await ledger.page_for_user(
                session,
                user_id=user_id,
                cursor=cursor,
                limit=limit,
                action=action,
                since=since,
                until=until,
            )

    async def history_entries(
        self,
        user_id: int,
        *,
        cursor: str | None = None,
        limit: int = 50,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page[ledger.LedgerEntry]:
        """The page `history` returns, as plain values (see ledger.entries_page_for_user)."""
        return await ledger.entries_page_for_user(
            self._db,
            user_id=user_id,
            cursor=cursor,
            limit=limit,
            action=action,
            since=since,
            until=until,
        )

    async def verify(self) -> list[LedgerProblem]:
        """Check every user's chain; returns the first broken row of each broken ledger."""
        problems: list[LedgerProblem] = []
        async with self._db.session() as session:
            for user_id in await users.all_ids(session):
                problem = await self._verify_user(session, user_id)
                if problem is not None:
                    problems.append(problem)
        return problems

    async def _verify_user(self, session: Any, user_id: int) -> LedgerProblem | None:
        expected_before = 0
        async for row in ledger.iter_for_user(session, user_id=user_id):
            if row.balance_before != expected_before:
                return LedgerProblem(
                    user_id,
                    row.id,
                    f"balance before is {row.balance_before}, previous row left {expected_before}",
                )
            if row.balance_after != row.balance_before + row.amount:
                return LedgerProblem(
                    user_id,
                    row.id,
                    f"{row.balance_before} + {row.amount} != balance after {row.balance_after}",
                )
            if row.balance_after < 0:
                return LedgerProblem(user_id, row.id, "balance went below zero")
            expected_before = row.balance_after
        user = await users.get(session, user_id=user_id)
        assert user is not None
        if user.credits != expected_before:
            return LedgerProblem(
                user_id, None, f"balance is {user.credits} but the ledger sums to {expected_before}"
            )
        return None

    async def _publish(self, user_id: int, discord_id: int | None, row: CreditTransaction) -> None:
        await self._events.publish(
            UserCreditsChanged(
                user_id=user_id,
                discord_id=discord_id,
                old_balance=row.balance_before,
                new_balance=row.balance_after,
                transaction=transaction_dict(row),
            )
        )


async def default_plan(session: Any, code: str) -> Plan:
    plan = await plans.get_by_code(session, code=code)
    if plan is None:
        raise NotFound(f"The default plan {code!r} does not exist.")
    return plan
