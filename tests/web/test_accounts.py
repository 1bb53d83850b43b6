"""core.services.accounts: identities, linking rules and API tokens."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from core.errors import Conflict, InvalidInput, NotFound
from core.models import ApiToken, utcnow
from core.repositories import api_tokens
from core.services.container import Services
from tests.core.helpers import make_user, next_discord_id


async def test_discord_login_finds_the_user_the_bot_already_knows(services: Services) -> None:
    bot_user = await make_user(services, credits=42, name="from the bot")
    user = await services.accounts.login_with_identity(
        "discord",
        str(bot_user.discord_id),
        "botuser",
        "Bot User",
        None,
        discord_id=bot_user.discord_id,
    )
    assert user.id == bot_user.id and user.credits == 42
    again = await services.accounts.login_with_identity(
        "discord",
        str(bot_user.discord_id),
        "botuser",
        "Renamed",
        "https://cdn/x.png",
        discord_id=bot_user.discord_id,
    )
    assert again.id == bot_user.id
    assert again.display_name == "Renamed" and again.avatar_url == "https://cdn/x.png"
    assert [i.provider for i in await services.accounts.list_identities(user.id or 0)] == [
        "discord"
    ]


async def test_first_non_discord_login_creates_an_account_then_reuses_it(
    services: Services,
) -> None:
    user = await services.accounts.login_with_identity(
        "github", "777", "octo", "Octo Cat", "https://avatars/octo.png"
    )
    assert user.discord_id is None and user.display_name == "Octo Cat"
    assert user.avatar_url == "https://avatars/octo.png"
    page = await services.credits.history(user.id or 0)
    assert [t.action for t in page.items] == ["signup"]
    same = await services.accounts.login_with_identity("github", "777", "octo", "Other", None)
    assert same.id == user.id and same.display_name == "Octo Cat"


async def test_linking_discord_sets_the_discord_id(services: Services) -> None:
    user = await services.accounts.login_with_identity("github", "1", "a", "A", None)
    discord_id = next_discord_id()
    await services.accounts.link_identity(
        user.id or 0, "discord", str(discord_id), "a#1", discord_id=discord_id
    )
    assert (await services.users.get(user.id or 0)).discord_id == discord_id
    # The bot now finds this account by the Discord id.
    assert (await services.users.ensure_discord_user(discord_id, "A")).id == user.id
    # Signing in with Discord later lands on the same account.
    again = await services.accounts.login_with_identity(
        "discord", str(discord_id), "a#1", "A", None, discord_id=discord_id
    )
    assert again.id == user.id


async def test_linking_refuses_identities_of_other_accounts(services: Services) -> None:
    first = await services.accounts.login_with_identity("github", "10", "a", "A", None)
    second = await services.accounts.login_with_identity("google", "g-20", "b", "B", None)
    with pytest.raises(Conflict, match="GitHub account is already linked to another"):
        await services.accounts.link_identity(second.id or 0, "github", "10", "a")
    # Linking what you already have is a no-op.
    row = await services.accounts.link_identity(first.id or 0, "github", "10", "a")
    assert row.user_id == first.id
    # A Discord id that already belongs to another (bot-created) user is refused.
    bot_user = await make_user(services)
    with pytest.raises(Conflict, match="already has its own soundboard account"):
        await services.accounts.link_identity(
            first.id or 0, "discord", str(bot_user.discord_id), discord_id=bot_user.discord_id
        )
    # A user who has a Discord id cannot take a second one.
    with pytest.raises(Conflict, match="different Discord account"):
        other = next_discord_id()
        await services.accounts.link_identity(
            bot_user.id or 0, "discord", str(other), discord_id=other
        )
    assert (await services.users.get(first.id or 0)).discord_id is None


async def test_unlink_never_removes_the_last_identity(services: Services) -> None:
    user = await services.accounts.login_with_identity("github", "30", "a", "A", None)
    await services.accounts.link_identity(user.id or 0, "oidc", "sub-30", "a")
    identities = await services.accounts.list_identities(user.id or 0)
    assert [i.provider for i in identities] == ["github", "oidc"]
    await services.accounts.unlink_identity(user.id or 0, identities[0].id or 0)
    with pytest.raises(InvalidInput, match="only sign-in method"):
        await services.accounts.unlink_identity(user.id or 0, identities[1].id or 0)
    other = await services.accounts.login_with_identity("github", "31", "b", "B", None)
    with pytest.raises(NotFound):
        await services.accounts.unlink_identity(other.id or 0, identities[1].id or 0)


async def test_bad_identity_input_is_refused(services: Services) -> None:
    with pytest.raises(InvalidInput):
        await services.accounts.login_with_identity("Bad Provider", "1", None, "x", None)
    with pytest.raises(InvalidInput):
        await services.accounts.login_with_identity("github", "", None, "x", None)
    with pytest.raises(InvalidInput):
        await services.accounts.login_with_identity("github", "1", None, "x", None, discord_id=5)


async def test_tokens_store_only_hash_and_prefix(services: Services) -> None:
    user = await make_user(services)
    created = await services.accounts.create_token(user.id or 0, "  my   script ")
    assert created.plaintext.startswith("sb_") and len(created.plaintext) > 40
    assert created.token.name == "my script"
    async with services.db.session() as session:
        row = (await session.scalars(select(ApiToken))).one()
    assert row.token_hash == hashlib.sha256(created.plaintext.encode()).hexdigest()
    assert row.prefix == created.plaintext[:11]
    assert created.plaintext not in (row.token_hash, row.prefix, row.name)
    assert [t.id for t in await services.accounts.list_tokens(user.id or 0)] == [row.id]


async def test_authenticate_touches_last_used_and_revoke_stops_it(services: Services) -> None:
    services.accounts.auth_cache_seconds = 0  # every call goes to the database
    user = await make_user(services)
    created = await services.accounts.create_token(user.id or 0, "ci")
    assert created.token.last_used_at is None
    found = await services.accounts.authenticate(created.plaintext)
    assert found is not None and found.id == user.id
    tokens = await services.accounts.list_tokens(user.id or 0)
    assert tokens[0].last_used_at is not None
    first_use = tokens[0].last_used_at
    # Within a minute the timestamp is not rewritten; after it, it is.
    await services.accounts.authenticate(created.plaintext)
    assert (await services.accounts.list_tokens(user.id or 0))[0].last_used_at == first_use
    async with services.db.transaction() as session:
        await session.execute(update(ApiToken).values(last_used_at=utcnow() - timedelta(minutes=5)))
    await services.accounts.authenticate(created.plaintext)
    assert (await services.accounts.list_tokens(user.id or 0))[0].last_used_at > first_use
    await services.accounts.revoke_token(user.id or 0, created.token.id or 0)
    assert await services.accounts.authenticate(created.plaintext) is None
    assert await services.accounts.list_tokens(user.id or 0) == []
    with pytest.raises(NotFound):
        await services.accounts.revoke_token(user.id or 0, created.token.id or 0)


async def test_unknown_malformed_and_foreign_tokens(services: Services) -> None:
    owner = await make_user(services)
    other = await make_user(services)
    created = await services.accounts.create_token(owner.id or 0, "mine")
    assert await services.accounts.authenticate("sb_" + "x" * 43) is None
    assert await services.accounts.authenticate("not-a-token") is None
    assert await services.accounts.authenticate(created.plaintext + "x") is None
    with pytest.raises(NotFound):
        await services.accounts.revoke_token(other.id or 0, created.token.id or 0)
    assert await services.accounts.authenticate(created.plaintext) is not None


async def test_token_names_and_count_are_limited(services: Services) -> None:
    user = await make_user(services)
    with pytest.raises(InvalidInput, match="name"):
        await services.accounts.create_token(user.id or 0, "   ")
    with pytest.raises(InvalidInput, match="at most 100"):
        await services.accounts.create_token(user.id or 0, "x" * 101)
    for index in range(20):
        await services.accounts.create_token(user.id or 0, f"t{index}")
    with pytest.raises(InvalidInput, match="already have 20"):
        await services.accounts.create_token(user.id or 0, "one too many")
    with pytest.raises(NotFound):
        await services.accounts.create_token(999_999, "nobody")


async def test_balance_series_and_spending(services: Services) -> None:
    user = await make_user(services, credits=50)
    start = utcnow()
    await services.credits.deduct(user.id or 0, 5)
    await services.credits.deduct(user.id or 0, 7, action="extraction")
    await services.credits.deduct(user.id or 0, 1)
    end = utcnow() + timedelta(seconds=1)
    spending = await services.accounts.spending_by_action(user.id or 0, since=start, until=end)
    assert spending == {"play": 6, "extraction": 7}
    only_play = await services.accounts.spending_by_action(
        user.id or 0, since=start, until=end, action="play"
    )
    assert only_play == {"play": 6}
    series = await services.accounts.balance_series(user.id or 0, since=start, until=end)
    assert len(series) == 60
    assert (series[0][1], series[-1][1]) == (50, 37)
    # Before the account existed there is nothing to draw.
    early = await services.accounts.balance_series(
        user.id or 0, since=start - timedelta(hours=1), until=end, points=10
    )
    assert [value for _, value in early] == [37]
    before = await services.accounts.balance_series(
        user.id or 0, since=start - timedelta(days=3), until=start - timedelta(days=2)
    )
    assert before == []


async def test_valid_tokens_are_cached_briefly(services: Services) -> None:
    user = await make_user(services)
    services.accounts.auth_cache_seconds = 0.3
    first = await services.accounts.create_token(user.id or 0, "cached")
    second = await services.accounts.create_token(user.id or 0, "revoked elsewhere")
    assert await services.accounts.authenticate(first.plaintext) is not None
    assert await services.accounts.authenticate(second.plaintext) is not None
    # Revoked through this service: refused at once.
    await services.accounts.revoke_token(user.id or 0, first.token.id or 0)
    assert await services.accounts.authenticate(first.plaintext) is None
    # Revoked by another process (straight in the database): refused once the entry expires.
    async with services.db.transaction() as session:
        await session.execute(
            update(ApiToken).where(ApiToken.id == second.token.id).values(revoked_at=utcnow())  # type: ignore[arg-type]
        )
    assert await services.accounts.authenticate(second.plaintext) is not None
    await asyncio.sleep(0.35)
    assert await services.accounts.authenticate(second.plaintext) is None


async def test_requests_that_miss_the_cache_share_one_lookup(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user(services)
    created = await services.accounts.create_token(user.id or 0, "busy")
    lookups: list[str] = []
    original = api_tokens.get_active_with_user

    async def counting(session: Any, *, token_hash: str) -> Any:
        lookups.append(token_hash)
        await asyncio.sleep(0.05)  # long enough for every request below to arrive meanwhile
        return await original(session, token_hash=token_hash)

    monkeypatch.setattr(api_tokens, "get_active_with_user", counting)
    found = await asyncio.gather(
        *(services.accounts.authenticate_token(created.plaintext) for _ in range(20))
    )
    assert len(lookups) == 1
    assert {(f.user.id, f.token_id) for f in found if f is not None} == {
        (user.id, created.token.id)
    }
    assert all(f is not None for f in found)
    unknown = "sb_" + "u" * 43
    assert (
        await asyncio.gather(*(services.accounts.authenticate(unknown) for _ in range(5)))
        == [None] * 5
    )
    assert len(lookups) == 2  # unknown tokens are never cached, but still share the query


async def test_a_revocation_during_a_lookup_is_honoured_at_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user(services)
    created = await services.accounts.create_token(user.id or 0, "racing")
    read = asyncio.Event()
    release = asyncio.Event()
    original = api_tokens.get_active_with_user

    async def slow(session: Any, *, token_hash: str) -> Any:
        found = await original(session, token_hash=token_hash)
        read.set()
        await release.wait()  # the token was read as valid; the revocation lands now
        return found

    monkeypatch.setattr(api_tokens, "get_active_with_user", slow)
    early = asyncio.create_task(services.accounts.authenticate(created.plaintext))
    await read.wait()
    await services.accounts.revoke_token(user.id or 0, created.token.id or 0)
    monkeypatch.setattr(api_tokens, "get_active_with_user", original)
    # A request after the revocation does not wait for the lookup that started before it.
    after = services.accounts.authenticate(created.plaintext)
    assert await asyncio.wait_for(after, 5) is None
    release.set()
    assert await early is not None  # it began before the revocation: either answer was right
    # But its answer was not cached: the token stays refused.
    assert await services.accounts.authenticate(created.plaintext) is None
