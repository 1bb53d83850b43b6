from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index
from sqlmodel import Field, SQLModel

from core.models.common import created_field


class CreditTransaction(SQLModel, table=True):
    """One row of a user's ledger. Rows chain: balance_before equals the previous balance_after."""

    __tablename__ = "credit_transaction"
    __table_args__ = (
        Index("ix_credit_transaction_user_id", "user_id", "id"),
        Index("ix_credit_transaction_user_action_id", "user_id", "action", "id"),
        Index("ix_credit_transaction_user_created", "user_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # RESTRICT: a ledger is never silently dropped with its user.
    user_id: int = Field(
        sa_column=Column(ForeignKey("user.id", ondelete="RESTRICT"), nullable=False)
    )
    action: str = Field(max_length=32)
    amount: int
    balance_before: int
    balance_after: int
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    success: bool = True
    created_at: datetime = created_field()
