"""Read-only statistics over a user's ledger, for charts. Every query is an index seek or a
bounded range scan on (user_id, created_at), so the cost does not grow with the ledger's age."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import CreditTransaction


async def balances_at(
    session: AsyncSession, *, user_id: int, moments: Sequence[datetime]
) -> list[int | None]:
    """The balance right before each moment (None before the first row), in one statement."""
    if not moments:
        return []
    columns = [
        select(col(CreditTransaction.balance_after))
        .where(
            col(CreditTransaction.user_id) == user_id,
            col(CreditTransaction.created_at) < moment,
        )
        .order_by(col(CreditTransaction.created_at).desc())
        .limit(1)
        .scalar_subquery()
        .label(f"b{index}")
        for index, moment in enumerate(moments)
    ]
    row = (await session.execute(select(*columns))).one()
    return [None if value is None else int(value) for value in row]


async def first_activity(session: AsyncSession, *, user_id: int) -> datetime | None:
    """When the user's ledger starts (an index seek)."""
    stmt = select(func.min(col(CreditTransaction.created_at))).where(
        col(CreditTransaction.user_id) == user_id
    )
    value = (await session.execute(stmt)).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


async def spending_by_action(
    session: AsyncSession,
    *,
    user_id: int,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
) -> dict[str, int]:
    """Credits spent (negative amounts, as positive numbers) per action in a time range."""
    stmt = select(col(CreditTransaction.action), func.sum(col(CreditTransaction.amount))).where(
        col(CreditTransaction.user_id) == user_id, col(CreditTransaction.amount) < 0
    )
    if since is not None:
        stmt = stmt.where(col(CreditTransaction.created_at) >= since)
    if until is not None:
        stmt = stmt.where(col(CreditTransaction.created_at) < until)
    if action:
        stmt = stmt.where(col(CreditTransaction.action) == action)
    rows = (await session.execute(stmt.group_by(col(CreditTransaction.action)))).all()
    return {str(name): -int(total) for name, total in rows if total}
