"""Core: users, plans, OAuth identities, API tokens, guilds, credits ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import core.models.common

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guild",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("play_cost", sa.Integer(), nullable=True),
        sa.Column("cooldown_seconds", sa.Float(), nullable=True),
        sa.Column("queue_cap", sa.Integer(), nullable=True),
        sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("entrance_sounds_enabled", sa.Boolean(), nullable=False),
        sa.Column("upload_role_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "plan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("credits_per_refill", sa.Integer(), nullable=False),
        sa.Column("max_credits", sa.Integer(), nullable=False),
        sa.Column("refill_period_hours", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("discord_id", sa.BigInteger(), nullable=True),
        sa.Column("display_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("avatar_url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column(
            "role",
            sa.Enum("user", "admin", name="role", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("last_refill_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("credits >= 0", name="ck_user_credits_nonnegative"),
        sa.ForeignKeyConstraint(["plan_id"], ["plan.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("discord_id"),
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_plan_id"), ["plan_id"], unique=False)

    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", core.models.common.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", core.models.common.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_token_user_id"), ["user_id"], unique=False)

    op.create_table(
        "credit_transaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("balance_before", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credit_transaction", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_transaction_user_action_id", ["user_id", "action", "id"], unique=False
        )
        batch_op.create_index(
            "ix_credit_transaction_user_created", ["user_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_credit_transaction_user_id", ["user_id", "id"], unique=False)

    op.create_table(
        "user_oauth",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("provider_user_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("created_at", core.models.common.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "provider_user_id", name="uq_user_oauth_identity"),
    )
    with op.batch_alter_table("user_oauth", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_oauth_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("user_oauth", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_oauth_user_id"))

    op.drop_table("user_oauth")
    with op.batch_alter_table("credit_transaction", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_transaction_user_id")
        batch_op.drop_index("ix_credit_transaction_user_created")
        batch_op.drop_index("ix_credit_transaction_user_action_id")

    op.drop_table("credit_transaction")
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_token_user_id"))

    op.drop_table("api_token")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_plan_id"))

    op.drop_table("user")
    op.drop_table("plan")
    op.drop_table("guild")
