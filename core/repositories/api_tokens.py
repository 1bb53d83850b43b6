from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import ApiToken, utcnow


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
