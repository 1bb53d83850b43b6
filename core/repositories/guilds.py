from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Guild, utcnow


async def get(session: AsyncSession, *, guild_id: int) -> Guild | None:
    return await session.get(Guild, guild_id)


async def ensure(session: AsyncSession, *, guild_id: int, name: str = "") -> Guild:
    """Insert the guild if it is new (safe under concurrent callers) and return it."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(Guild)
        .values(id=guild_id, name=name[:100], entrance_sounds_enabled=True, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    await session.execute(stmt)
    guild = await session.get(Guild, guild_id)
    assert guild is not None
    if name and guild.name != name[:100]:
        guild.name = name[:100]
        session.add(guild)
        await session.flush()
    return guild


async def update_settings(session: AsyncSession, *, guild: Guild, **values: object) -> Guild:
    for key, value in values.items():
        if not hasattr(guild, key):
            raise AttributeError(key)
        setattr(guild, key, value)
    session.add(guild)
    await session.flush()
    return guild
