"""Small builders for test data."""

from __future__ import annotations

import itertools

from core.models import User
from core.services.container import Services

_ids = itertools.count(100_000_000_000_000_000)


def next_discord_id() -> int:
    return next(_ids)


async def make_user(
    services: Services, *, credits: int | None = None, name: str = "tester"
) -> User:
    """A Discord user; with `credits`, the balance is moved there through the ledger."""
    user = await services.users.create(display_name=name, discord_id=next_discord_id())
    assert user.id is not None
    if credits is not None and credits != user.credits:
        if credits > user.credits:
            await services.credits.grant(user.id, credits - user.credits, reason="test setup")
        else:
            await services.credits.take(user.id, user.credits - credits, reason="test setup")
        user = await services.users.get(user.id)
    return user
