from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import UserOAuth


async def get_identity(
    session: AsyncSession, *, provider: str, provider_user_id: str
) -> UserOAuth | None:
    stmt = select(UserOAuth).where(
        col(UserOAuth.provider) == provider, col(UserOAuth.provider_user_id) == provider_user_id
    )
    return (await session.scalars(stmt)).first()


async def link(
    session: AsyncSession,
    *,
    user_id: int,
    provider: str,
    provider_user_id: str,
    username: str | None = None,
) -> UserOAuth:
    row = UserOAuth(
        user_id=user_id, provider=provider, provider_user_id=provider_user_id, username=username
    )
    session.add(row)
    await session.flush()
    return row


async def list_for_user(session: AsyncSession, *, user_id: int) -> list[UserOAuth]:
    stmt = select(UserOAuth).where(col(UserOAuth.user_id) == user_id).order_by(col(UserOAuth.id))
    return list((await session.scalars(stmt)).all())


async def count_for_user(session: AsyncSession, *, user_id: int) -> int:
    stmt = select(func.count()).select_from(UserOAuth).where(col(UserOAuth.user_id) == user_id)
    return int((await session.execute(stmt)).scalar_one())


async def unlink(session: AsyncSession, *, row: UserOAuth) -> None:
    await session.delete(row)
    await session.flush()


async def get(session: AsyncSession, *, identity_id: int) -> UserOAuth | None:
    return await session.get(UserOAuth, identity_id)


async def get_for_user_provider(
    session: AsyncSession, *, user_id: int, provider: str
) -> UserOAuth | None:
    stmt = select(UserOAuth).where(
        col(UserOAuth.user_id) == user_id, col(UserOAuth.provider) == provider
    )
    return (await session.scalars(stmt)).first()


async def update_username(session: AsyncSession, *, row: UserOAuth, username: str | None) -> None:
    if username and row.username != username:
        row.username = username[:255]
        session.add(row)
        await session.flush()
