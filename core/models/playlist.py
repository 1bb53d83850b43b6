from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.models.common import created_field


class Playlist(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("user_id", "guild_id", "name", name="uq_playlist_owner_name"),
        Index("ix_playlist_guild", "guild_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    )
    guild_id: int = Field(
        sa_column=Column(BigInteger(), ForeignKey("guild.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(max_length=100)
    created_at: datetime = created_field()


class PlaylistSound(SQLModel, table=True):
    __tablename__ = "playlist_sound"
    __table_args__ = (
        Index("ix_playlist_sound_order", "playlist_id", "position"),
        Index("ix_playlist_sound_sound", "sound_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    playlist_id: int = Field(
        sa_column=Column(ForeignKey("playlist.id", ondelete="CASCADE"), nullable=False)
    )
    sound_id: int = Field(
        sa_column=Column(ForeignKey("sound.id", ondelete="CASCADE"), nullable=False)
    )
    position: int = Field(ge=0)
