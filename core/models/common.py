from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy import Enum as SAEnum
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which drops the zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def created_field() -> datetime:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))  # type: ignore[no-any-return]


def time_field(*, nullable: bool = True, index: bool = False) -> datetime | None:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))  # type: ignore[no-any-return]


def snowflake(*, nullable: bool = False, unique: bool = False, index: bool = False) -> int:
    """A Discord id: 64-bit, so BIGINT on PostgreSQL."""
    return Field(  # type: ignore[no-any-return]
        default=None if nullable else ...,
        sa_column=Column(BigInteger(), nullable=nullable, unique=unique, index=index),
    )


def enum_column(enum_cls: type[StrEnum], *, length: int = 16) -> Column[Any]:
    """Store a StrEnum by value as a plain string (no native PostgreSQL enum to migrate)."""
    return Column(
        SAEnum(
            enum_cls,
            native_enum=False,
            create_constraint=False,
            length=length,
            values_callable=lambda members: [member.value for member in members],
        ),
        nullable=False,
    )
