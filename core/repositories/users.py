from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import Plan, User, utcnow
from core.repositories.base import Page, keyset_page


async def get(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def get_for_update(session: AsyncSession, *, user_id: int) -> User | None:
    stmt = select(User).where(col(User.id) == user_id).with_for_update()
    return (await session.scalars(stmt.execution_options(populate_existing=True))).first()


async def get_by_discord_id(session: AsyncSession, *, discord_id: int) -> User | None:
    return (await session.scalars(select(User).where(col(User.discord_id) == discord_id))).first()


async def create(
    session: AsyncSession,
    *,
    display_name: str,
    plan: Plan,
    credits: int,
    discord_id: int | None = None,
    avatar_url: str | None = None,
    role: str = "user",
) -> User:
    user = User.model_validate(
        {
            "discord_id": discord_id,
            "display_name": display_name[:100],
            "avatar_url": avatar_url,
            "role": role,
            "plan_id": plan.id,
            "credits": credits,
        }
    )
    session.add(user)
    await session.flush()
    return user


async def list_page(session: AsyncSession, *, cursor: str | None, limit: int) -> Page[User]:
    return await keyset_page(
        session, select(User), id_column=col(User.id), cursor=cursor, limit=limit, descending=False
    )


async def all_ids(session: AsyncSession) -> list[int]:
    ids = (await session.scalars(select(col(User.id)).order_by(col(User.id)))).all()
    return [i for i in ids if i is not None]


async def change_credits(
    session: AsyncSession, *, user_id: int, delta: int, at_least: int | None = None
) -> tuple[int, int | None] | None:
    """Add `delta` to the balance in one conditional UPDATE; returns the new balance and the
    Discord id, or None when the user is missing or holds less than `at_least`. The database,
    not Python, does the sum."""
    stmt = (
        update(User)
        .where(col(User.id) == user_id)
        .values(credits=col(User.credits) + delta, updated_at=utcnow())
        .returning(col(User.credits), col(User.discord_id))
    )
    if at_least is not None:
        stmt = stmt.where(col(User.credits) >= at_least)
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (int(row[0]), row[1])


async def set_refilled(
    session: AsyncSession, *, user_id: int, credits: int, refilled_at: datetime
) -> None:
    await session.execute(
        update(User)
        .where(col(User.id) == user_id)
        .values(credits=credits, last_refill_at=refilled_at, updated_at=utcnow())
    )


async def update_fields(session: AsyncSession, *, user: User, **values: object) -> User:
    for key, value in values.items():
        setattr(user, key, value)
    user.updated_at = utcnow()
    session.add(user)
    await session.flush()
    return user
