from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from core.errors import InsufficientCredits, InvalidInput, NotFound
from core.events import Event, UserCreditsChanged
from core.models import CreditTransaction, User, utcnow
from core.services.container import Services
from tests.core.helpers import make_user


async def test_new_user_starts_with_plan_credits_as_first_ledger_row(services: Services) -> None:
    user = await make_user(services)
    summary = await services.users.summary(user.id or 0)
    assert user.credits == summary.plan.credits_per_refill > 0
    page = await services.credits.history(user.id or 0)
    assert [(t.action, t.amount, t.balance_before, t.balance_after) for t in page.items] == [
        ("signup", user.credits, 0, user.credits)
    ]


async def test_deduct_and_refund_chain(services: Services) -> None:
    user = await make_user(services, credits=10)
    uid = user.id or 0
    spent = await services.credits.deduct(uid, 3, meta={"sound": "airhorn"})
    assert (spent.balance_before, spent.balance_after, spent.amount) == (10, 7, -3)
    refund = await services.credits.refund(uid, 3, of_transaction=spent.id, reason="not in voice")
    assert refund.balance_after == 10 and refund.meta["refund_of"] == spent.id
    assert (await services.users.get(uid)).credits == 10
    assert await services.credits.verify() == []


async def test_insufficient_credits_changes_nothing(services: Services) -> None:
    user = await make_user(services, credits=2)
    uid = user.id or 0
    before = await services.credits.history(uid, limit=200)
    with pytest.raises(InsufficientCredits) as info:
        await services.credits.deduct(uid, 3)
    assert info.value.balance == 2 and info.value.needed == 3
    assert info.value.next_refill_at is not None and "next refill" in str(info.value)
    after = await services.credits.history(uid, limit=200)
    assert [t.id for t in after.items] == [t.id for t in before.items]
    assert (await services.users.get(uid)).credits == 2


async def test_take_refuses_below_zero_and_bad_amounts(services: Services) -> None:
    user = await make_user(services, credits=5)
    with pytest.raises(InsufficientCredits):
        await services.credits.take(user.id or 0, 6, reason="too much")
    for amount in (0, -5):
        with pytest.raises(InvalidInput):
            await services.credits.grant(user.id or 0, amount, reason="bad")
    with pytest.raises(NotFound):
        await services.credits.deduct(999_999, 1)


async def test_concurrent_deductions_never_double_spend(services: Services) -> None:
    """200 deductions of 1 race against a balance of 100: exactly 100 succeed."""
    user = await make_user(services, credits=100)
    uid = user.id or 0

    async def one() -> bool:
        try:
            await services.credits.deduct(uid, 1)
        except InsufficientCredits:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert results.count(True) == 100
    assert (await services.users.get(uid)).credits == 0
    assert await services.credits.verify() == []


async def test_refill_is_lazy_capped_and_ledgered(services: Services) -> None:
    user = await make_user(services, credits=0)
    uid = user.id or 0
    summary = await services.users.summary(uid)
    plan = summary.plan
    assert await services.credits.refill_if_due(uid) is None  # not due yet
    # Ten periods later: refilled up to the plan's maximum, in one row.
    later = utcnow() + timedelta(hours=plan.refill_period_hours * 10)
    row = await services.credits.refill_if_due(uid, now=later)
    assert row is not None and row.action == "refill"
    assert row.balance_after == plan.max_credits
    assert await services.credits.refill_if_due(uid, now=later) is None
    # ensure_discord_user refills when due.
    async with services.db.transaction() as session:
        await session.execute(
            update(User)
            .where(User.id == uid)  # type: ignore[arg-type]
            .values(credits=0, last_refill_at=utcnow() - timedelta(hours=plan.refill_period_hours))
        )
        session.add(
            CreditTransaction(
                user_id=uid,
                action="take",
                amount=-plan.max_credits,
                balance_before=plan.max_credits,
                balance_after=0,
            )
        )
    seen = await services.users.ensure_discord_user(user.discord_id or 0, "tester")
    assert seen.credits == plan.credits_per_refill
    assert await services.credits.verify() == []


async def test_verify_names_the_first_broken_row(services: Services) -> None:
    user = await make_user(services, credits=10)
    uid = user.id or 0
    await services.credits.deduct(uid, 1)
    bad = await services.credits.deduct(uid, 1)
    await services.credits.deduct(uid, 1)
    async with services.db.transaction() as session:
        await session.execute(
            update(CreditTransaction)
            .where(CreditTransaction.id == bad.id)  # type: ignore[arg-type]
            .values(balance_after=bad.balance_after + 5)
        )
    problems = await services.credits.verify()
    assert len(problems) == 1
    assert problems[0].transaction_id == bad.id and problems[0].user_id == uid


async def test_every_change_publishes_user_credits_changed(services: Services) -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    services.events.subscribe(handler)
    user = await make_user(services, credits=None)
    tx = await services.credits.deduct(user.id or 0, 2)
    for _ in range(50):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.01)
    changes = [e for e in seen if isinstance(e, UserCreditsChanged)]
    assert [(c.old_balance, c.new_balance) for c in changes] == [
        (0, user.credits),
        (user.credits, user.credits - 2),
    ]
    assert changes[-1].transaction["id"] == tx.id
    assert changes[-1].discord_id == user.discord_id
