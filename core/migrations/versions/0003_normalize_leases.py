"""Normalization leases: workers claim sounds to normalize (owner, expiry) and find them by index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import core.models.common

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must not change when the model module does.
NEEDS_NORMALIZING = "is_normalized = false AND normalize_error IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("sound", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "normalize_lease_owner",
                sqlmodel.sql.sqltypes.AutoString(length=100),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "normalize_lease_until",
                core.models.common.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.create_index(
            "ix_sound_needs_normalizing",
            ["id"],
            unique=False,
            sqlite_where=sa.text(NEEDS_NORMALIZING),
            postgresql_where=sa.text(NEEDS_NORMALIZING),
        )


def downgrade() -> None:
    with op.batch_alter_table("sound", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_sound_needs_normalizing",
            sqlite_where=sa.text(NEEDS_NORMALIZING),
            postgresql_where=sa.text(NEEDS_NORMALIZING),
        )
        batch_op.drop_column("normalize_lease_until")
        batch_op.drop_column("normalize_lease_owner")
