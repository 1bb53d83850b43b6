from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, ForeignKey, Index, text
from sqlmodel import Field, SQLModel

from core.models.common import created_field, enum_column, time_field

# Sounds waiting for a normalization worker (core.services.normalize_worker). The claim query
# repeats this predicate word for word so both databases use the partial index for it.
NEEDS_NORMALIZING_SQL = "is_normalized = false AND normalize_error IS NULL"


class SoundType(StrEnum):
    SDB = "SDB"  # uploaded to the soundboard
    TTS = "TTS"  # text to speech
    EXT = "EXT"  # extracted from a site

    @property
    def folder(self) -> str:
        return {"SDB": "soundboard", "TTS": "text_to_speech", "EXT": "extracted"}[self.value]


class Sound(SQLModel, table=True):
    # Names and hashes are unique per guild; NULL guild (the global library) needs partial
    # indexes because NULLs never collide in a plain unique constraint.
    __table_args__ = (
        Index(
            "uq_sound_guild_name",
            "guild_id",
            "name",
            unique=True,
            sqlite_where=text("guild_id IS NOT NULL"),
            postgresql_where=text("guild_id IS NOT NULL"),
        ),
        Index(
            "uq_sound_global_name",
            "name",
            unique=True,
            sqlite_where=text("guild_id IS NULL"),
            postgresql_where=text("guild_id IS NULL"),
        ),
        Index(
            "uq_sound_guild_hash",
            "guild_id",
            "file_hash",
            unique=True,
            sqlite_where=text("guild_id IS NOT NULL"),
            postgresql_where=text("guild_id IS NOT NULL"),
        ),
        Index(
            "uq_sound_global_hash",
            "file_hash",
            unique=True,
            sqlite_where=text("guild_id IS NULL"),
            postgresql_where=text("guild_id IS NULL"),
        ),
        Index("ix_sound_original_path", "sound_type", "original_filename"),
        Index(
            "ix_sound_needs_normalizing",
            "id",
            sqlite_where=text(NEEDS_NORMALIZING_SQL),
            postgresql_where=text(NEEDS_NORMALIZING_SQL),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    guild_id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger(), ForeignKey("guild.id", ondelete="CASCADE"), nullable=True),
    )
    name: str = Field(max_length=100)
    sound_type: SoundType = Field(default=SoundType.SDB, sa_column=enum_column(SoundType, length=3))
    original_filename: str = Field(max_length=500)
    duration_ms: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    file_hash: str = Field(max_length=64)
    file_mtime_ns: int = Field(default=0, sa_column=Column(BigInteger(), nullable=False))
    normalized_filename: str | None = Field(default=None, max_length=500)
    normalized_duration_ms: int | None = None
    normalized_size_bytes: int | None = None
    normalized_hash: str | None = Field(default=None, max_length=64)
    is_normalized: bool = False
    is_silent: bool = False
    normalize_error: str | None = Field(default=None, max_length=500)
    # A normalization worker's claim: who holds the sound and until when (renewed while it
    # works). An expired lease means the worker died: another worker takes the sound.
    normalize_lease_owner: str | None = Field(default=None, max_length=100)
    normalize_lease_until: datetime | None = time_field()
    play_count: int = 0
    uploader_id: int | None = Field(
        default=None,
        sa_column=Column(ForeignKey("user.id", ondelete="SET NULL"), nullable=True, index=True),
    )
    created_at: datetime = created_field()


class SoundTag(SQLModel, table=True):
    __tablename__ = "sound_tag"
    __table_args__ = (Index("ix_sound_tag_tag", "tag"),)

    sound_id: int = Field(
        sa_column=Column(ForeignKey("sound.id", ondelete="CASCADE"), primary_key=True)
    )
    tag: str = Field(max_length=32, primary_key=True)


class SoundPlayed(SQLModel, table=True):
    """Play history. Rows outlive their sound: the name is kept and the link set to NULL."""

    __tablename__ = "sound_played"
    __table_args__ = (
        Index("ix_sound_played_guild_time", "guild_id", "played_at"),
        Index("ix_sound_played_user_time", "user_id", "played_at"),
        Index("ix_sound_played_sound", "sound_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("user.id", ondelete="SET NULL"), nullable=True)
    )
    sound_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("sound.id", ondelete="SET NULL"), nullable=True)
    )
    sound_name: str = Field(max_length=100)
    guild_id: int | None = Field(default=None, sa_column=Column(BigInteger(), nullable=True))
    channel_id: int | None = Field(default=None, sa_column=Column(BigInteger(), nullable=True))
    played_at: datetime = created_field()
