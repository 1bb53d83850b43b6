from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Integer, Select, Text, bindparam, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import UpdateBase
from sqlmodel import col

from core.db import Database, InlineWrite, NotApplied
from core.models import CreditTransaction, User, utcnow
from core.repositories.base import MAX_PAGE_SIZE, Page, decode_cursor, encode_cursor, keyset_page


class LedgerEntry(NamedTuple):
    """A ledger row as plain values, for pages that only pass rows on (the JSON API)."""

    id: int
    action: str
    amount: int
    balance_before: int
    balance_after: int
    # The stored JSON text, not parsed: a JSON response can embed it as it is.
    metadata_json: str | None
    success: bool
    created_at: datetime


async def add(
    session: AsyncSession,
    *,
    user_id: int,
    action: str,
    amount: int,
    balance_before: int,
    balance_after: int,
    meta: dict[str, Any] | None = None,
    success: bool = True,
) -> CreditTransaction:
    row = CreditTransaction(
        user_id=user_id,
        action=action,
        amount=amount,
        balance_before=balance_before,
        balance_after=balance_after,
        meta=meta or {},
        success=success,
    )
    session.add(row)
    await session.flush()
    return row


def _change_statement(conditional: bool) -> UpdateBase:
    users = User.__table__.c  # type: ignore[attr-defined]
    stmt = (
        update(User)
        .where(users.id == bindparam("user_id"))
        .values(credits=users.credits + bindparam("delta"), updated_at=bindparam("now"))
        .returning(users.credits, users.discord_id)
    )
    return stmt.where(users.credits >= bindparam("at_least")) if conditional else stmt


def _add_statement() -> UpdateBase:
    t = CreditTransaction.__table__.c  # type: ignore[attr-defined]
    return (
        insert(CreditTransaction)
        .values(
            user_id=bindparam("user_id"),
            action=bindparam("action"),
            amount=bindparam("delta"),
            balance_before=bindparam("balance_before"),
            balance_after=bindparam("balance_after"),
            metadata=bindparam("meta", type_=t.metadata.type),
            success=True,
            created_at=bindparam("now"),
        )
        .returning(t.id)
    )


async def change_and_add_inline(
    db: Database,
    *,
    user_id: int,
    delta: int,
    at_least: int | None,
    action: str,
    meta: dict[str, Any] | None,
) -> tuple[CreditTransaction, int | None] | None:
    """The balance change and its ledger row in one write transaction run inline
    (Database.write_inline), the same statements as users.change_credits and add. Returns the
    row and the member's Discord id; None when nothing changed and the caller must take the
    session path (not SQLite here, another process writing, or the user missing or short of
    `at_least`, which that path reports in detail)."""
    change = db.write_query(
        ("ledger.change", at_least is not None), lambda: _change_statement(at_least is not None)
    )
    add_row = db.write_query("ledger.add", _add_statement)
    now = utcnow()
    row_meta = meta or {}

    def work(tx: InlineWrite) -> tuple[CreditTransaction, int | None]:
        changed = tx.fetch(
            change, {"user_id": user_id, "delta": delta, "now": now, "at_least": at_least}
        )
        if not changed:
            raise NotApplied
        balance, discord_id = int(changed[0][0]), changed[0][1]
        values = {
            "user_id": user_id,
            "action": action,
            "delta": delta,
            "balance_before": balance - delta,
            "balance_after": balance,
            "meta": row_meta,
            "now": now,
        }
        (row_id,) = tx.fetch(add_row, values)[0]
        row = CreditTransaction(
            id=row_id,
            user_id=user_id,
            action=action,
            amount=delta,
            balance_before=balance - delta,
            balance_after=balance,
            meta=row_meta,
            success=True,
            created_at=now,
        )
        return row, discord_id

    done = await db.write_inline(work)
    return None if done is None else done[0]


async def get(session: AsyncSession, *, transaction_id: int) -> CreditTransaction | None:
    return await session.get(CreditTransaction, transaction_id)


async def page_for_user(
    session: AsyncSession,
    *,
    user_id: int,
    cursor: str | None = None,
    limit: int = 50,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[CreditTransaction]:
    stmt = select(CreditTransaction).where(col(CreditTransaction.user_id) == user_id)
    if action:
        stmt = stmt.where(col(CreditTransaction.action) == action)
    if since is not None:
        stmt = stmt.where(col(CreditTransaction.created_at) >= since)
    if until is not None:
        stmt = stmt.where(col(CreditTransaction.created_at) < until)
    return await keyset_page(
        session, stmt, id_column=col(CreditTransaction.id), cursor=cursor, limit=limit
    )


def _entries_statement(action: bool, since: bool, until: bool, before: bool) -> Select[Any]:
    t = CreditTransaction.__table__.c  # type: ignore[attr-defined]
    stmt = select(
        t.id,
        t.action,
        t.amount,
        t.balance_before,
        t.balance_after,
        cast(t.metadata, Text).label("metadata"),
        t.success,
        t.created_at,
    ).where(t.user_id == bindparam("user_id"))
    if action:
        stmt = stmt.where(t.action == bindparam("action"))
    if since:
        stmt = stmt.where(t.created_at >= bindparam("since"))
    if until:
        stmt = stmt.where(t.created_at < bindparam("until"))
    if before:
        stmt = stmt.where(t.id < bindparam("before"))
    return stmt.order_by(t.id.desc()).limit(bindparam("limit", type_=Integer))


async def entries_page_for_user(
    db: Database,
    *,
    user_id: int,
    cursor: str | None = None,
    limit: int = 50,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[LedgerEntry]:
    """The same page as `page_for_user`, as plain values: one precompiled SELECT of the
    columns, no ORM objects and no session (several times cheaper per request)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    before = decode_cursor(cursor)
    shape = (bool(action), since is not None, until is not None, before is not None)
    query = db.read_query(("ledger.entries", *shape), lambda: _entries_statement(*shape))
    values = {
        "user_id": user_id,
        "action": action,
        "since": since,
        "until": until,
        "before": before,
        "limit": limit + 1,
    }
    items = await db.fetch(query, values, LedgerEntry._make)
    next_cursor = encode_cursor(items[limit - 1].id) if len(items) > limit else None
    return Page(items=items[:limit], next_cursor=next_cursor)


async def iter_for_user(
    session: AsyncSession, *, user_id: int, batch: int = 1000
) -> AsyncIterator[CreditTransaction]:
    """Every row of a user's ledger, oldest first, in batches."""
    after = 0
    while True:
        stmt = (
            select(CreditTransaction)
            .where(col(CreditTransaction.user_id) == user_id, col(CreditTransaction.id) > after)
            .order_by(col(CreditTransaction.id))
            .limit(batch)
        )
        rows = (await session.scalars(stmt)).all()
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = rows[-1].id or 0


async def actions_for_user(session: AsyncSession, *, user_id: int) -> list[str]:
    stmt = (
        select(col(CreditTransaction.action))
        .where(col(CreditTransaction.user_id) == user_id)
        .group_by(col(CreditTransaction.action))
        .order_by(col(CreditTransaction.action))
    )
    return [str(a) for a in (await session.scalars(stmt)).all()]


async def spending_by_action(
    session: AsyncSession, *, user_id: int, since: datetime | None = None
) -> dict[str, int]:
    stmt = select(col(CreditTransaction.action), func.sum(col(CreditTransaction.amount))).where(
        col(CreditTransaction.user_id) == user_id, col(CreditTransaction.amount) < 0
    )
    if since is not None:
        stmt = stmt.where(col(CreditTransaction.created_at) >= since)
    rows = (await session.execute(stmt.group_by(col(CreditTransaction.action)))).all()
    return {str(action): -int(total) for action, total in rows}
