"""Sound library: sounds, tags, play history, playlists, entrance sounds, extractions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import core.models.common

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "playlist",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["guild_id"], ["guild.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "guild_id", "name", name="uq_playlist_owner_name"),
    )
    with op.batch_alter_table("playlist", schema=None) as batch_op:
        batch_op.create_index("ix_playlist_guild", ["guild_id"], unique=False)

    op.create_table(
        "sound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column(
            "sound_type",
            sa.Enum("SDB", "TTS", "EXT", name="soundtype", native_enum=False),
            nullable=False,
        ),
        sa.Column(
            "original_filename", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False
        ),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("file_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("file_mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column(
            "normalized_filename", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
        ),
        sa.Column("normalized_duration_ms", sa.Integer(), nullable=True),
        sa.Column("normalized_size_bytes", sa.Integer(), nullable=True),
        sa.Column("normalized_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("is_normalized", sa.Boolean(), nullable=False),
        sa.Column("is_silent", sa.Boolean(), nullable=False),
        sa.Column("normalize_error", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("play_count", sa.Integer(), nullable=False),
        sa.Column("uploader_id", sa.Integer(), nullable=True),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["guild_id"], ["guild.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["uploader_id"], ["user.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sound", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sound_original_path", ["sound_type", "original_filename"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sound_uploader_id"), ["uploader_id"], unique=False)
        batch_op.create_index(
            "uq_sound_global_hash",
            ["file_hash"],
            unique=True,
            sqlite_where=sa.text("guild_id IS NULL"),
            postgresql_where=sa.text("guild_id IS NULL"),
        )
        batch_op.create_index(
            "uq_sound_global_name",
            ["name"],
            unique=True,
            sqlite_where=sa.text("guild_id IS NULL"),
            postgresql_where=sa.text("guild_id IS NULL"),
        )
        batch_op.create_index(
            "uq_sound_guild_hash",
            ["guild_id", "file_hash"],
            unique=True,
            sqlite_where=sa.text("guild_id IS NOT NULL"),
            postgresql_where=sa.text("guild_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_sound_guild_name",
            ["guild_id", "name"],
            unique=True,
            sqlite_where=sa.text("guild_id IS NOT NULL"),
            postgresql_where=sa.text("guild_id IS NOT NULL"),
        )

    op.create_table(
        "entrance_sound",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("sound_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["guild_id"], ["guild.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sound_id"], ["sound.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "guild_id"),
    )
    with op.batch_alter_table("entrance_sound", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_entrance_sound_sound_id"), ["sound_id"], unique=False)

    op.create_table(
        "extraction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("requested_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("service", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("service_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "processing",
                "completed",
                "failed",
                name="extractionstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("lease_until", core.models.common.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sound_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("charge_transaction_id", sa.Integer(), nullable=True),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", core.models.common.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["guild_id"], ["guild.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sound_id"], ["sound.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("extraction", schema=None) as batch_op:
        batch_op.create_index(
            "ix_extraction_guild_service", ["guild_id", "service", "service_id"], unique=False
        )
        batch_op.create_index(
            "ix_extraction_status_created", ["status", "created_at"], unique=False
        )
        batch_op.create_index("ix_extraction_user_status", ["user_id", "status"], unique=False)

    op.create_table(
        "playlist_sound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playlist_id", sa.Integer(), nullable=False),
        sa.Column("sound_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["playlist_id"], ["playlist.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sound_id"], ["sound.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("playlist_sound", schema=None) as batch_op:
        batch_op.create_index("ix_playlist_sound_order", ["playlist_id", "position"], unique=False)
        batch_op.create_index("ix_playlist_sound_sound", ["sound_id"], unique=False)

    op.create_table(
        "sound_played",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("sound_id", sa.Integer(), nullable=True),
        sa.Column("sound_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("played_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sound_id"], ["sound.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sound_played", schema=None) as batch_op:
        batch_op.create_index("ix_sound_played_guild_time", ["guild_id", "played_at"], unique=False)
        batch_op.create_index("ix_sound_played_sound", ["sound_id"], unique=False)
        batch_op.create_index("ix_sound_played_user_time", ["user_id", "played_at"], unique=False)

    op.create_table(
        "sound_tag",
        sa.Column("sound_id", sa.Integer(), nullable=False),
        sa.Column("tag", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(["sound_id"], ["sound.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sound_id", "tag"),
    )
    with op.batch_alter_table("sound_tag", schema=None) as batch_op:
        batch_op.create_index("ix_sound_tag_tag", ["tag"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sound_tag", schema=None) as batch_op:
        batch_op.drop_index("ix_sound_tag_tag")

    op.drop_table("sound_tag")
    with op.batch_alter_table("sound_played", schema=None) as batch_op:
        batch_op.drop_index("ix_sound_played_user_time")
        batch_op.drop_index("ix_sound_played_sound")
        batch_op.drop_index("ix_sound_played_guild_time")

    op.drop_table("sound_played")
    with op.batch_alter_table("playlist_sound", schema=None) as batch_op:
        batch_op.drop_index("ix_playlist_sound_sound")
        batch_op.drop_index("ix_playlist_sound_order")

    op.drop_table("playlist_sound")
    with op.batch_alter_table("extraction", schema=None) as batch_op:
        batch_op.drop_index("ix_extraction_user_status")
        batch_op.drop_index("ix_extraction_status_created")
        batch_op.drop_index("ix_extraction_guild_service")

    op.drop_table("extraction")
    with op.batch_alter_table("entrance_sound", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entrance_sound_sound_id"))

    op.drop_table("entrance_sound")
    with op.batch_alter_table("sound", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_sound_guild_name",
            sqlite_where=sa.text("guild_id IS NOT NULL"),
            postgresql_where=sa.text("guild_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_sound_guild_hash",
            sqlite_where=sa.text("guild_id IS NOT NULL"),
            postgresql_where=sa.text("guild_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_sound_global_name",
            sqlite_where=sa.text("guild_id IS NULL"),
            postgresql_where=sa.text("guild_id IS NULL"),
        )
        batch_op.drop_index(
            "uq_sound_global_hash",
            sqlite_where=sa.text("guild_id IS NULL"),
            postgresql_where=sa.text("guild_id IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_sound_uploader_id"))
        batch_op.drop_index("ix_sound_original_path")

    op.drop_table("sound")
    with op.batch_alter_table("playlist", schema=None) as batch_op:
        batch_op.drop_index("ix_playlist_guild")

    op.drop_table("playlist")
