"""Extraction jobs: the queue in the database, claimed with a lease.

A job is claimable when it is pending, or processing with an expired lease (its worker died).
The claim is one conditional UPDATE; on PostgreSQL the candidate row is picked with
SELECT ... FOR UPDATE SKIP LOCKED so concurrent workers never queue behind each other, on
SQLite the write transaction (BEGIN IMMEDIATE) serializes claimers. Every later write by a
worker is conditional on it still holding the lease, so a job is never finished twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import Extraction, ExtractionStatus, Sound
from core.repositories.base import Page, keyset_page

ACTIVE = (ExtractionStatus.PENDING, ExtractionStatus.PROCESSING)


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        col(Extraction.status) == ExtractionStatus.PENDING,
        and_(
            col(Extraction.status) == ExtractionStatus.PROCESSING,
            or_(col(Extraction.lease_until).is_(None), col(Extraction.lease_until) < now),
        ),
    )


def _owned(job_id: int, owner: str) -> ColumnElement[bool]:
    return and_(
        col(Extraction.id) == job_id,
        col(Extraction.status) == ExtractionStatus.PROCESSING,
        col(Extraction.lease_owner) == owner,
    )


async def _rowcount(session: AsyncSession, stmt: Any) -> int:
    result: CursorResult[Any] = await session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)


async def add(session: AsyncSession, job: Extraction) -> Extraction:
    session.add(job)
    await session.flush()
    return job


async def get(session: AsyncSession, *, job_id: int) -> Extraction | None:
    stmt = select(Extraction).where(col(Extraction.id) == job_id)
    return (await session.scalars(stmt.execution_options(populate_existing=True))).first()


async def lock_key(session: AsyncSession, key: str) -> None:
    """Serialize transactions on `key` until commit (PostgreSQL advisory lock). SQLite needs
    nothing: its write transactions are serialized already."""
    if _is_postgres(session):
        number = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": number - (1 << 63)})


async def count_active_for_user(session: AsyncSession, *, user_id: int) -> int:
    stmt = select(func.count()).where(
        col(Extraction.user_id) == user_id, col(Extraction.status).in_(ACTIVE)
    )
    return int(await session.scalar(stmt) or 0)


async def active_for_url(session: AsyncSession, *, guild_id: int, url: str) -> Extraction | None:
    stmt = (
        select(Extraction)
        .where(
            col(Extraction.guild_id) == guild_id,
            col(Extraction.url) == url,
            col(Extraction.status).in_(ACTIVE),
        )
        .order_by(col(Extraction.id))
        .limit(1)
    )
    return (await session.scalars(stmt)).first()


async def any_claimable(session: AsyncSession, *, now: datetime) -> bool:
    stmt = select(col(Extraction.id)).where(_claimable(now)).limit(1)
    return await session.scalar(stmt) is not None


async def claim_next(
    session: AsyncSession, *, owner: str, lease_seconds: float, now: datetime
) -> Extraction | None:
    """Take the oldest claimable job (oldest first, so a crashed job is retried early)."""
    stmt = (
        select(col(Extraction.id))
        .where(_claimable(now))
        .order_by(col(Extraction.created_at), col(Extraction.id))
        .limit(1)
    )
    if _is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    job_id = await session.scalar(stmt)
    if job_id is None:
        return None
    return await claim(session, job_id=job_id, owner=owner, lease_seconds=lease_seconds, now=now)


async def claim(
    session: AsyncSession, *, job_id: int, owner: str, lease_seconds: float, now: datetime
) -> Extraction | None:
    """Take one job if it is claimable; None if someone else holds it or it is finished."""
    stmt = (
        update(Extraction)
        .where(col(Extraction.id) == job_id, _claimable(now))
        .values(
            status=ExtractionStatus.PROCESSING,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=col(Extraction.attempts) + 1,
            updated_at=now,
        )
    )
    if await _rowcount(session, stmt) != 1:
        return None
    return await get(session, job_id=job_id)


async def update_owned(session: AsyncSession, *, job_id: int, owner: str, **values: Any) -> bool:
    """Write `values` if `owner` still holds the job's lease."""
    stmt = update(Extraction).where(_owned(job_id, owner)).values(**values)
    return await _rowcount(session, stmt) == 1


async def completed_duplicate(
    session: AsyncSession, *, guild_id: int, service: str, service_id: str, exclude_id: int
) -> Extraction | None:
    """A finished job of this guild for the same media whose sound still exists."""
    stmt = (
        select(Extraction)
        .join(Sound, col(Sound.id) == col(Extraction.sound_id))
        .where(
            col(Extraction.guild_id) == guild_id,
            col(Extraction.service) == service,
            col(Extraction.service_id) == service_id,
            col(Extraction.status) == ExtractionStatus.COMPLETED,
            col(Extraction.id) != exclude_id,
        )
        .order_by(col(Extraction.id))
        .limit(1)
    )
    return (await session.scalars(stmt)).first()


async def active_peer(
    session: AsyncSession,
    *,
    guild_id: int,
    service: str,
    service_id: str,
    exclude_id: int,
    now: datetime,
) -> Extraction | None:
    """Another job of this guild working on the same media right now (live lease)."""
    stmt = (
        select(Extraction)
        .where(
            col(Extraction.guild_id) == guild_id,
            col(Extraction.service) == service,
            col(Extraction.service_id) == service_id,
            col(Extraction.status) == ExtractionStatus.PROCESSING,
            col(Extraction.lease_until) >= now,
            col(Extraction.id) != exclude_id,
        )
        .order_by(col(Extraction.id))
        .limit(1)
    )
    return (await session.scalars(stmt)).first()


async def list_page(
    session: AsyncSession,
    *,
    guild_id: int | None = None,
    user_id: int | None = None,
    cursor: str | None = None,
    limit: int = 25,
) -> Page[Extraction]:
    stmt = select(Extraction)
    if guild_id is not None:
        stmt = stmt.where(col(Extraction.guild_id) == guild_id)
    if user_id is not None:
        stmt = stmt.where(col(Extraction.user_id) == user_id)
    return await keyset_page(
        session, stmt, id_column=col(Extraction.id), cursor=cursor, limit=limit
    )


async def processing(session: AsyncSession) -> list[Extraction]:
    stmt = select(Extraction).where(col(Extraction.status) == ExtractionStatus.PROCESSING)
    return list((await session.scalars(stmt)).all())


async def expire_lease(session: AsyncSession, *, job_id: int, owner: str, now: datetime) -> bool:
    """Make a dead worker's job claimable at once."""
    stmt = (
        update(Extraction)
        .where(_owned(job_id, owner))
        .values(lease_until=now - timedelta(seconds=1), updated_at=now)
    )
    return await _rowcount(session, stmt) == 1


async def failed_with_charge(session: AsyncSession, *, since: datetime) -> list[Extraction]:
    stmt = select(Extraction).where(
        col(Extraction.status) == ExtractionStatus.FAILED,
        col(Extraction.charge_transaction_id).is_not(None),
        col(Extraction.updated_at) >= since,
    )
    return list((await session.scalars(stmt)).all())


async def counts_by_status(session: AsyncSession) -> dict[str, int]:
    stmt = select(col(Extraction.status), func.count()).group_by(col(Extraction.status))
    rows = (await session.execute(stmt)).all()
    counts = {status.value: 0 for status in ExtractionStatus}
    for status, count in rows:
        counts[ExtractionStatus(status).value] = int(count)
    return counts
