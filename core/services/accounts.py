"""Accounts: sign-in identities (OAuth providers) linked to users, and personal API tokens.

A user has one or more identities. A Discord identity is special: it carries the Discord id that
the bot knows the user by, so signing in with Discord finds the account the bot already uses.
API tokens are shown once; only their SHA-256 hash and a short prefix are stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.errors import Conflict, InvalidInput, NotFound
from core.models import ApiToken, User, UserOAuth, utcnow
from core.repositories import api_tokens, ledger_stats, oauth, users
from core.services.credits import CreditsService
from core.services.users import UserService

log = logging.getLogger(__name__)

DISCORD = "discord"
TOKEN_PREFIX = "sb_"
TOKEN_SHOWN_PREFIX_LENGTH = 11  # "sb_" and 8 characters: enough to tell tokens apart
MAX_ACTIVE_TOKENS = 20
MAX_TOKEN_NAME = 100
# last_used_at is written at most this often per token: reads stay reads on a busy token.
TOUCH_INTERVAL = timedelta(seconds=60)
# A token seen valid is trusted this long without a query (revoking here takes effect at once;
# a revocation by another process, and a change of the user's role, within this many seconds).
# Requests that find the entry missing or expired share one query per token.
AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_SIZE = 10_000

_PROVIDER = re.compile(r"^[a-z0-9_-]{1,32}$")
_TITLES = {"discord": "Discord", "github": "GitHub", "google": "Google", "oidc": "OpenID Connect"}


def provider_title(provider: str) -> str:
    return _TITLES.get(provider, provider.capitalize())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A freshly created token: `plaintext` exists only here, never in the database."""

    token: ApiToken
    plaintext: str


@dataclass(frozen=True)
class TokenAuth:
    user: User
    token_id: int


class AccountService:
    def __init__(
        self,
        db: Database,
        users_service: UserService,
        credits: CreditsService,
        *,
        auth_cache_seconds: float = AUTH_CACHE_SECONDS,
    ) -> None:
        self.auth_cache_seconds = auth_cache_seconds
        self._db = db
        self._users = users_service
        self._credits = credits
        self._auth_cache: dict[str, tuple[float, TokenAuth]] = {}
        # The lookup in flight per token hash, shared by the requests that wait for it.
        self._auth_lookups: dict[str, asyncio.Task[TokenAuth | None]] = {}
        # Bumped by every revocation: a lookup that started before one does not cache its answer.
        self._auth_generation = 0

    # Sign-in identities -------------------------------------------------------------------

    async def login_with_identity(
        self,
        provider: str,
        provider_user_id: str,
        username: str | None,
        display_name: str,
        avatar: str | None,
        discord_id: int | None = None,
    ) -> User:
        """The user behind an identity; a first sign-in creates the account (or, for Discord,
        finds the one the bot already knows by that Discord id) and links the identity."""
        self._check_provider(provider, provider_user_id, discord_id)
        async with self._db.session() as session:
            row = await oauth.get_identity(
                session, provider=provider, provider_user_id=provider_user_id
            )
        if row is not None:
            user = await self._signed_in(row.user_id, provider, username, display_name, avatar)
            log.info("sign-in user=%s provider=%s", user.id, provider)
            return user
        if discord_id is not None:
            user = await self._users.ensure_discord_user(discord_id, display_name, avatar)
        else:
            user = await self._users.create(display_name=display_name or username or provider)
            if avatar:
                user = await self._users.update_profile(user.id or 0, avatar_url=avatar)
        try:
            await self.link_identity(
                user.id or 0, provider, provider_user_id, username, discord_id=discord_id
            )
        except Conflict:
            # Another request linked the same identity a moment ago: sign in as that account.
            async with self._db.session() as session:
                row = await oauth.get_identity(
                    session, provider=provider, provider_user_id=provider_user_id
                )
            if row is None:
                raise
            log.warning("identity linked concurrently provider=%s user=%s", provider, row.user_id)
            return await self._users.get(row.user_id)
        log.info("first sign-in user=%s provider=%s", user.id, provider)
        return await self._users.get(user.id or 0)

    async def _signed_in(
        self,
        user_id: int,
        provider: str,
        username: str | None,
        display_name: str,
        avatar: str | None,
    ) -> User:
        async with self._db.transaction() as session:
            row = await oauth.get_for_user_provider(session, user_id=user_id, provider=provider)
            if row is not None:
                await oauth.update_username(session, row=row, username=username)
        user = await self._users.get(user_id)
        # Discord is the profile the bot shows; other providers only fill in what is missing.
        if provider == DISCORD or not user.avatar_url:
            name = display_name if provider == DISCORD else None
            await self._users.update_profile(user_id, display_name=name, avatar_url=avatar)
        await self._credits.refill_if_due(user_id)
        return await self._users.get(user_id)

    async def link_identity(
        self,
        user_id: int,
        provider: str,
        provider_user_id: str,
        username: str | None = None,
        *,
        discord_id: int | None = None,
    ) -> UserOAuth:
        """Link an identity to a user. Raises Conflict when it belongs to someone else."""
        self._check_provider(provider, provider_user_id, discord_id)
        title = provider_title(provider)
        try:
            async with self._db.transaction() as session:
                existing = await oauth.get_identity(
                    session, provider=provider, provider_user_id=provider_user_id
                )
                if existing is not None:
                    if existing.user_id != user_id:
                        raise Conflict(
                            f"This {title} account is already linked to another soundboard "
                            "account. Sign in with it to use that account instead."
                        )
                    return existing
                user = await users.get_for_update(session, user_id=user_id)
                if user is None:
                    raise NotFound(f"No user with id {user_id}.")
                if discord_id is not None:
                    await self._attach_discord(session, user, discord_id)
                row = await oauth.link(
                    session,
                    user_id=user_id,
                    provider=provider,
                    provider_user_id=provider_user_id,
                    username=(username or None) and username[:255],
                )
        except IntegrityError as exc:
            raise Conflict(
                f"This {title} account is already linked to another soundboard account."
            ) from exc
        log.info("identity linked user=%s provider=%s", user_id, provider)
        return row

    async def _attach_discord(self, session: AsyncSession, user: User, discord_id: int) -> None:
        if user.discord_id == discord_id:
            return
        if user.discord_id is not None:
            raise Conflict("This account is already linked to a different Discord account.")
        other = await users.get_by_discord_id(session, discord_id=discord_id)
        if other is not None:
            raise Conflict(
                "That Discord account already has its own soundboard account (the bot created "
                "it when you first used it). Sign out and sign in with Discord to use it."
            )
        await users.update_fields(session, user=user, discord_id=discord_id)

    async def unlink_identity(self, user_id: int, identity_id: int) -> None:
        """Remove one of the user's sign-in methods; never the last one."""
        async with self._db.transaction() as session:
            await users.get_for_update(session, user_id=user_id)  # serialize unlinks per user
            row = await oauth.get(session, identity_id=identity_id)
            if row is None or row.user_id != user_id:
                raise NotFound("That sign-in method is not linked to your account.")
            if await oauth.count_for_user(session, user_id=user_id) <= 1:
                raise InvalidInput(
                    "You cannot remove your only sign-in method: link another one first."
                )
            await oauth.unlink(session, row=row)
        log.info("identity unlinked user=%s provider=%s", user_id, row.provider)

    async def list_identities(self, user_id: int) -> list[UserOAuth]:
        async with self._db.session() as session:
            return await oauth.list_for_user(session, user_id=user_id)

    @staticmethod
    def _check_provider(provider: str, provider_user_id: str, discord_id: int | None) -> None:
        if not _PROVIDER.match(provider):
            raise InvalidInput(f"Unknown sign-in provider {provider!r}.")
        if not provider_user_id or len(provider_user_id) > 255:
            raise InvalidInput("The provider did not say who you are.")
        if discord_id is not None and provider != DISCORD:
            raise InvalidInput("Only a Discord identity carries a Discord id.")

    # API tokens -------------------------------------------------------------------------------

    async def create_token(self, user_id: int, name: str) -> NewToken:
        """A new token; the plaintext is returned here once and never stored."""
        name = " ".join(name.split())
        if not name:
            raise InvalidInput("Give the token a name, so you know later what it is for.")
        if len(name) > MAX_TOKEN_NAME:
            raise InvalidInput(f"A token name has at most {MAX_TOKEN_NAME} characters.")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self._db.transaction() as session:
            if await users.get_for_update(session, user_id=user_id) is None:
                raise NotFound(f"No user with id {user_id}.")
            if await api_tokens.count_active_for_user(session, user_id=user_id) >= (
                MAX_ACTIVE_TOKENS
            ):
                raise InvalidInput(
                    f"You already have {MAX_ACTIVE_TOKENS} tokens: revoke one you no longer use."
                )
            token = await api_tokens.create(
                session,
                user_id=user_id,
                name=name,
                token_hash=hash_token(plaintext),
                prefix=plaintext[:TOKEN_SHOWN_PREFIX_LENGTH],
            )
        log.info("api token created user=%s token=%s", user_id, token.id)
        return NewToken(token=token, plaintext=plaintext)

    async def list_tokens(self, user_id: int) -> list[ApiToken]:
        """The user's active tokens, newest first."""
        async with self._db.session() as session:
            return await api_tokens.list_active_for_user(session, user_id=user_id)

    async def revoke_token(self, user_id: int, token_id: int) -> ApiToken:
        async with self._db.transaction() as session:
            token = await api_tokens.get(session, token_id=token_id)
            if token is None or token.user_id != user_id or token.revoked_at is not None:
                raise NotFound("There is no such active token on your account.")
            await api_tokens.revoke(session, token=token)
        self._auth_generation += 1
        self._auth_cache.pop(token.token_hash, None)
        # A lookup still running may have read the token before the revocation: later requests
        # must not share its answer.
        self._auth_lookups.pop(token.token_hash, None)
        log.info("api token revoked user=%s token=%s", user_id, token_id)
        return token

    async def authenticate_token(self, token: str) -> TokenAuth | None:
        """The user and token id behind a plaintext token, or None if it is unknown/revoked."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        cached = self._auth_cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # Every request in flight finds an expired entry at the same moment: without sharing,
        # each of them would run the query (tens of them at once on a busy token).
        lookup = self._auth_lookups.get(digest)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._look_up_token(digest))
            self._auth_lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._forget_lookup(digest, done))
        # Shielded: one waiter's cancellation must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def _forget_lookup(self, digest: str, lookup: asyncio.Task[TokenAuth | None]) -> None:
        if self._auth_lookups.get(digest) is lookup:
            del self._auth_lookups[digest]

    async def _look_up_token(self, digest: str) -> TokenAuth | None:
        generation = self._auth_generation
        async with self._db.session() as session:
            found = await api_tokens.get_active_with_user(session, token_hash=digest)
        if found is None:
            self._auth_cache.pop(digest, None)
            return None
        row, user = found
        now = utcnow()
        if row.last_used_at is None or row.last_used_at < now - TOUCH_INTERVAL:
            async with self._db.transaction() as session:
                await api_tokens.touch_if_older(
                    session, token_id=row.id or 0, older_than=now - TOUCH_INTERVAL
                )
        auth = TokenAuth(user=user, token_id=row.id or 0)
        if len(self._auth_cache) >= AUTH_CACHE_SIZE:
            self._auth_cache.clear()
        if self.auth_cache_seconds > 0 and generation == self._auth_generation:
            self._auth_cache[digest] = (time.monotonic() + self.auth_cache_seconds, auth)
        return auth

    async def authenticate(self, token: str) -> User | None:
        found = await self.authenticate_token(token)
        return None if found is None else found.user

    # Ledger statistics for charts ------------------------------------------------------------

    async def balance_series(
        self, user_id: int, *, since: datetime, until: datetime, points: int = 60
    ) -> list[tuple[datetime, int]]:
        """The balance at `points` evenly spaced moments from `since` to `until`."""
        points = max(2, min(points, 200))
        step = (until - since) / (points - 1)
        moments = [since + step * i for i in range(points)]
        async with self._db.session() as session:
            values = await ledger_stats.balances_at(session, user_id=user_id, moments=moments)
        return [(m, v) for m, v in zip(moments, values, strict=True) if v is not None]

    async def first_activity(self, user_id: int) -> datetime | None:
        async with self._db.session() as session:
            return await ledger_stats.first_activity(session, user_id=user_id)

    async def spending_by_action(
        self,
        user_id: int,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
    ) -> dict[str, int]:
        async with self._db.session() as session:
            return await ledger_stats.spending_by_action(
                session, user_id=user_id, since=since, until=until, action=action
            )
