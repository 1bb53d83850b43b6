from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel

M = TypeVar("M", bound=SQLModel)
T = TypeVar("T")

MAX_PAGE_SIZE = 200


class InvalidCursor(ValueError):
    """A pagination cursor that this server did not hand out."""


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "id":
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor") from exc


async def keyset_page(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    id_column: Any,
    cursor: str | None,
    limit: int,
    descending: bool = True,
) -> Page[M]:
    """One page of `stmt` ordered by id; the cursor is the last id seen, so pages stay stable
    while new rows arrive."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    after = decode_cursor(cursor)
    if after is not None:
        stmt = stmt.where(id_column < after if descending else id_column > after)
    stmt = stmt.order_by(id_column.desc() if descending else id_column.asc()).limit(limit + 1)
    rows: Sequence[M] = (await session.scalars(stmt)).all()
    items = list(rows[:limit])
    next_cursor = encode_cursor(getattr(items[-1], "id")) if len(rows) > limit else None  # noqa: B009
    return Page(items=items, next_cursor=next_cursor)


async def get(session: AsyncSession, model: type[M], ident: Any) -> M | None:
    return await session.get(model, ident)


async def add(session: AsyncSession, obj: M) -> M:
    session.add(obj)
    await session.flush()
    return obj
