from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, ForeignKey, Index
from sqlmodel import Field, SQLModel

from core.models.common import created_field, enum_column, time_field


class ExtractionStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class Extraction(SQLModel, table=True):
    __table_args__ = (
        Index("ix_extraction_status_created", "status", "created_at"),
        Index("ix_extraction_guild_service", "guild_id", "service", "service_id"),
        Index("ix_extraction_user_status", "user_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2000)
    requested_name: str | None = Field(default=None, max_length=100)
    service: str | None = Field(default=None, max_length=64)
    service_id: str | None = Field(default=None, max_length=255)
    title: str | None = Field(default=None, max_length=500)
    status: ExtractionStatus = Field(
        default=ExtractionStatus.PENDING, sa_column=enum_column(ExtractionStatus)
    )
    error: str | None = Field(default=None, max_length=1000)
    progress: float = 0.0
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = time_field()
    sound_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("sound.id", ondelete="SET NULL"), nullable=True)
    )
    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    )
    guild_id: int = Field(
        sa_column=Column(BigInteger(), ForeignKey("guild.id", ondelete="CASCADE"), nullable=False)
    )
    channel_id: int | None = Field(default=None, sa_column=Column(BigInteger(), nullable=True))
    charge_transaction_id: int | None = None
    created_at: datetime = created_field()
    updated_at: datetime = created_field()
    finished_at: datetime | None = time_field()
