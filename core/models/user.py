from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.models.common import UTCDateTime, created_field, enum_column, time_field, utcnow


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class Plan(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=32, unique=True)
    name: str = Field(max_length=64)
    credits_per_refill: int = Field(ge=0)
    max_credits: int = Field(ge=0)
    refill_period_hours: int = Field(ge=1)


class User(SQLModel, table=True):
    __table_args__ = (CheckConstraint("credits >= 0", name="ck_user_credits_nonnegative"),)

    id: int | None = Field(default=None, primary_key=True)
    discord_id: int | None = Field(
        default=None, sa_column=Column(BigInteger(), nullable=True, unique=True)
    )
    display_name: str = Field(max_length=100)
    avatar_url: str | None = Field(default=None, max_length=500)
    role: Role = Field(default=Role.USER, sa_column=enum_column(Role))
    plan_id: int = Field(
        sa_column=Column(ForeignKey("plan.id", ondelete="RESTRICT"), nullable=False, index=True)
    )
    credits: int = Field(default=0)
    last_refill_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    created_at: datetime = created_field()
    updated_at: datetime = created_field()


class UserOAuth(SQLModel, table=True):
    __tablename__ = "user_oauth"
    __table_args__ = (
        UniqueConstraint("provider", "provider_user_id", name="uq_user_oauth_identity"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    provider: str = Field(max_length=32)
    provider_user_id: str = Field(max_length=255)
    username: str | None = Field(default=None, max_length=255)
    created_at: datetime = created_field()


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = created_field()
    last_used_at: datetime | None = time_field()
    revoked_at: datetime | None = time_field()
