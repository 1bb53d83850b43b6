from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import ApiToken, User, utcnow


async def create(
    session: AsyncSession, *, user_id: int, name: str, token_hash: str, prefix: str
) -> ApiToken:
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash, prefix=prefix)
    session.add(row)
    await session.flush()
    return row


async def get_active_by_hash(session: AsyncSession, *, token_hash: str) -> ApiToken | None:
    stmt = select(ApiToken).where(
        col(ApiToken.token_hash) == token_hash,
        col(ApiToken.revoked_at).is_(None),
    )
    return (await session.scalars(stmt)).first()


async def list_for_user(session: AsyncSession, *, user_id: int) -> list[ApiToken]:
    stmt = (
        select(ApiToken).where(col(ApiToken.user_id) == user_id).order_by(col(ApiToken.id).desc())
    )
    return list((await session.scalars(stmt)).all())


async def get(session: AsyncSession, *, token_id: int) -> ApiToken | None:
    return await session.get(ApiToken, token_id)


async def touch(session: AsyncSession, *, token_id: int) -> None:
    await session.execute(
        update(ApiToken).where(col(ApiToken.id) == token_id).values(last_used_at=utcnow())
    )


async def revoke(session: AsyncSession, *, token: ApiToken) -> None:
    token.revoked_at = utcnow()
    session.add(token)
    await session.flush()


async def get_active_with_user(
    session: AsyncSession, *, token_hash: str
) -> tuple[ApiToken, User] | None:
    """An active token and its user in one query (the API's per-request authentication)."""
    stmt = (
        select(ApiToken, User)
        .join(User, col(User.id) == col(ApiToken.user_id))
        .where(col(ApiToken.token_hash) == token_hash, col(ApiToken.revoked_at).is_(None))
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def list_active_for_user(session: AsyncSession, *, user_id: int) -> list[ApiToken]:
    stmt = (
        select(ApiToken)
        .where(col(ApiToken.user_id) == user_id, col(ApiToken.revoked_at).is_(None))
        .order_by(col(ApiToken.id).desc())
    )
    return list((await session.scalars(stmt)).all())


async def count_active_for_user(session: AsyncSession, *, user_id: int) -> int:
    stmt = (
        select(func.count())
        .select_from(ApiToken)
        .where(col(ApiToken.user_id) == user_id, col(ApiToken.revoked_at).is_(None))
    )
    return int((await session.execute(stmt)).scalar_one())


async def touch_if_older(session: AsyncSession, *, token_id: int, older_than: datetime) -> bool:
    """Set last_used_at to now unless it was set after `older_than`: one conditional UPDATE,
    so a busy token costs one write per interval, not one per request."""
    stmt = (
        update(ApiToken)
        .where(
            col(ApiToken.id) == token_id,
            (col(ApiToken.last_used_at).is_(None)) | (col(ApiToken.last_used_at) < older_than),
        )
        .values(last_used_at=utcnow())
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))
