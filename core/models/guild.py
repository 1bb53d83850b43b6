from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey
from sqlmodel import Field, SQLModel

from core.models.common import created_field


class Guild(SQLModel, table=True):
    """A Discord server. The primary key is Discord's own guild id."""

    id: int = Field(sa_column=Column(BigInteger(), primary_key=True, autoincrement=False))
    name: str = Field(default="", max_length=100)
    play_cost: int | None = Field(default=None, ge=0)
    cooldown_seconds: float | None = Field(default=None, ge=0)
    queue_cap: int | None = Field(default=None, ge=1)
    idle_timeout_seconds: int | None = Field(default=None, ge=5)
    entrance_sounds_enabled: bool = True
    upload_role_id: int | None = Field(default=None, sa_column=Column(BigInteger(), nullable=True))
    created_at: datetime = created_field()


class EntranceSound(SQLModel, table=True):
    """The sound played when a member joins a voice channel in a guild."""

    __tablename__ = "entrance_sound"

    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    )
    guild_id: int = Field(
        sa_column=Column(BigInteger(), ForeignKey("guild.id", ondelete="CASCADE"), primary_key=True)
    )
    sound_id: int = Field(
        sa_column=Column(ForeignKey("sound.id", ondelete="CASCADE"), nullable=False, index=True)
    )
