from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import Plan

DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan(code="free", name="Free", credits_per_refill=100, max_credits=200, refill_period_hours=24),
    Plan(
        code="plus", name="Plus", credits_per_refill=500, max_credits=2000, refill_period_hours=24
    ),
)


async def get_by_code(session: AsyncSession, *, code: str) -> Plan | None:
    return (await session.scalars(select(Plan).where(col(Plan.code) == code))).first()


async def list_all(session: AsyncSession) -> list[Plan]:
    return list((await session.scalars(select(Plan).order_by(col(Plan.id)))).all())


async def ensure_defaults(session: AsyncSession) -> None:
    existing = {plan.code for plan in await list_all(session)}
    for plan in DEFAULT_PLANS:
        if plan.code not in existing:
            session.add(Plan.model_validate(plan.model_dump(exclude={"id"})))
    await session.flush()
