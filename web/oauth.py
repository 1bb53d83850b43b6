"""OAuth 2.0 / OpenID Connect sign-in: authorization code flow with PKCE (S256) and `state`.

Authlib's AsyncOAuth2Client builds the authorization URL and exchanges the code; ID tokens
(OpenID Connect issuers, Google) are verified against the issuer's JWKS with joserfc and
Authlib's claim rules. Providers without credentials are left out (no button).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from core.config import Settings

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0
FLOW_MAX_AGE = 600  # seconds a user may spend at the provider
METADATA_TTL = 3600.0


class OAuthFailed(Exception):
    """A sign-in that cannot finish; the message is shown to the user as is."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    client_id: str
    client_secret: str
    scope: str
    authorize_url: str = ""
    token_url: str = ""
    userinfo_url: str = ""
    issuer: str = ""  # set for OpenID Connect: the endpoints come from discovery
    token_auth_method: str = "client_secret_basic"

    @property
    def is_oidc(self) -> bool:
        return bool(self.issuer)


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    userinfo: str | None
    issuer: str | None = None
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)


@dataclass(frozen=True)
class Identity:
    """Who the provider says the user is, in our terms."""

    provider: str
    provider_user_id: str
    username: str | None
    display_name: str
    avatar: str | None
    discord_id: int | None = None


@dataclass(frozen=True)
class PendingFlow:
    """What the session remembers between the redirect to the provider and the callback."""

    provider: str
    state: str
    verifier: str
    nonce: str
    next: str
    link: bool
    created: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> PendingFlow | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                provider=str(data["provider"]),
                state=str(data["state"]),
                verifier=str(data["verifier"]),
                nonce=str(data["nonce"]),
                next=str(data["next"]),
                link=bool(data["link"]),
                created=float(data["created"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def expired(self) -> bool:
        return time.time() - self.created > FLOW_MAX_AGE


def providers_from_settings(settings: Settings) -> dict[str, Provider]:
    """The providers that have credentials, in button order."""
    s = settings
    candidates = [
        Provider(
            "discord",
            "Discord",
            s.oauth_discord_client_id,
            s.oauth_discord_client_secret,
            "identify",
            s.oauth_discord_authorize_url,
            s.oauth_discord_token_url,
            s.oauth_discord_userinfo_url,
        ),
        Provider(
            "github",
            "GitHub",
            s.oauth_github_client_id,
            s.oauth_github_client_secret,
            "read:user",
            s.oauth_github_authorize_url,
            s.oauth_github_token_url,
            s.oauth_github_userinfo_url,
            token_auth_method="client_secret_post",
        ),
        Provider(
            "google",
            "Google",
            s.oauth_google_client_id,
            s.oauth_google_client_secret,
            "openid profile",
            issuer=s.oauth_google_issuer,
        ),
        Provider(
            "oidc",
            s.oauth_oidc_name or "OpenID Connect",
            s.oauth_oidc_client_id,
            s.oauth_oidc_client_secret,
            "openid profile",
            issuer=s.oauth_oidc_issuer,
        ),
    ]
    return {
        p.name: p
        for p in candidates
        if p.client_id and p.client_secret and (p.authorize_url or p.issuer)
    }


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class ProviderRegistry:
    """Configured providers, their discovered endpoints and signing keys (cached)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers = providers_from_settings(settings)
        self._http: httpx2.AsyncClient | None = None
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}
        self._jwks: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        self._http = httpx2.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def get(self, name: str) -> Provider | None:
        return self.providers.get(name)

    def redirect_uri(self, provider: Provider) -> str:
        return f"{self.settings.web_base_url.rstrip('/')}/auth/{provider.name}/callback"

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            raise RuntimeError("the provider registry is not started")
        return self._http

    async def _get_json(self, provider: Provider, url: str) -> dict[str, Any]:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning("oauth provider=%s fetch failed url=%s error=%s", provider.name, url, exc)
            raise OAuthFailed(
                f"We could not reach {provider.label}. Please try again in a moment.", status=502
            ) from exc
        if not isinstance(data, dict):
            raise OAuthFailed(f"{provider.label} sent an answer we do not understand.", status=502)
        return data

    async def endpoints(self, provider: Provider) -> Endpoints:
        if not provider.is_oidc:
            return Endpoints(provider.authorize_url, provider.token_url, provider.userinfo_url)
        cached = self._metadata.get(provider.name)
        if cached is None or time.monotonic() - cached[0] > METADATA_TTL:
            url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
            data = await self._get_json(provider, url)
            if not _same_issuer(str(data.get("issuer", "")), provider.issuer):
                raise OAuthFailed(
                    f"{provider.label}'s discovery document names another issuer.", status=502
                )
            cached = (time.monotonic(), data)
            self._metadata[provider.name] = cached
        meta = cached[1]
        try:
            return Endpoints(
                authorize=str(meta["authorization_endpoint"]),
                token=str(meta["token_endpoint"]),
                userinfo=meta.get("userinfo_endpoint"),
                issuer=str(meta["issuer"]),
                jwks_uri=str(meta["jwks_uri"]),
                algorithms=tuple(meta.get("id_token_signing_alg_values_supported") or ["RS256"]),
            )
        except KeyError as exc:
            raise OAuthFailed(
                f"{provider.label}'s discovery document lacks {exc.args[0]}.", status=502
            ) from exc

    async def key_set(self, provider: Provider, endpoints: Endpoints, *, force: bool) -> KeySet:
        if force or provider.name not in self._jwks:
            assert endpoints.jwks_uri is not None
            self._jwks[provider.name] = await self._get_json(provider, endpoints.jwks_uri)
        return KeySet.import_key_set(self._jwks[provider.name])  # type: ignore[arg-type]

    def _client(self, provider: Provider) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            scope=provider.scope,
            redirect_uri=self.redirect_uri(provider),
            code_challenge_method="S256",
            token_endpoint_auth_method=provider.token_auth_method,
            timeout=HTTP_TIMEOUT,
        )

    async def start_flow(
        self, provider: Provider, *, next_path: str, link: bool
    ) -> tuple[str, PendingFlow]:
        """The provider's authorization URL and the flow state to keep in the session."""
        endpoints = await self.endpoints(provider)
        flow = PendingFlow(
            provider=provider.name,
            state=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            nonce=secrets.token_urlsafe(24),
            next=next_path,
            link=link,
            created=time.time(),
        )
        extra = {"nonce": flow.nonce} if provider.is_oidc else {}
        async with self._client(provider) as client:
            url, _ = client.create_authorization_url(
                endpoints.authorize, state=flow.state, code_verifier=flow.verifier, **extra
            )
        return str(url), flow

    async def finish_flow(self, provider: Provider, flow: PendingFlow, code: str) -> Identity:
        """Exchange the code (with the PKCE verifier) and find out who signed in."""
        endpoints = await self.endpoints(provider)
        async with self._client(provider) as client:
            try:
                token = await client.fetch_token(
                    endpoints.token,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=flow.verifier,
                )
                claims: dict[str, Any] = {}
                if provider.is_oidc:
                    claims = await self._verify_id_token(provider, endpoints, token, flow.nonce)
                info: dict[str, Any] = {}
                if endpoints.userinfo:
                    response = await client.get(endpoints.userinfo)
                    response.raise_for_status()
                    info = response.json()
            except OAuthError as exc:
                log.warning("oauth provider=%s token refused error=%s", provider.name, exc.error)
                raise OAuthFailed(
                    f"{provider.label} did not accept the sign-in ({exc.error}). "
                    "Please start again."
                ) from exc
            except (httpx2.HTTPError, ValueError) as exc:
                log.warning("oauth provider=%s exchange failed error=%s", provider.name, exc)
                raise OAuthFailed(
                    f"We could not complete the sign-in with {provider.label}. "
                    "Please try again in a moment.",
                    status=502,
                ) from exc
        return self._identity(provider, claims, info)

    async def _verify_id_token(
        self, provider: Provider, endpoints: Endpoints, token: dict[str, Any], nonce: str
    ) -> dict[str, Any]:
        raw = token.get("id_token")
        if not raw:
            raise OAuthFailed(f"{provider.label} did not send an ID token.")
        registry = JWSRegistry(algorithms=list(endpoints.algorithms))
        try:
            try:
                keys = await self.key_set(provider, endpoints, force=False)
                decoded = jwt.decode(raw, keys, registry=registry)
            except InvalidKeyIdError:
                # The issuer rotated its keys since we cached them.
                keys = await self.key_set(provider, endpoints, force=True)
                decoded = jwt.decode(raw, keys, registry=registry)
            claims = CodeIDToken(
                decoded.claims,
                decoded.header,
                {
                    "iss": {"essential": True, "value": endpoints.issuer or provider.issuer},
                    "aud": {"essential": True, "value": provider.client_id},
                    "nonce": {"essential": True, "value": nonce},
                },
                {
                    "nonce": nonce,
                    "client_id": provider.client_id,
                    "access_token": token.get("access_token"),
                },
            )
            claims.validate(leeway=60)
        except JoseError as exc:
            log.warning("oauth provider=%s bad id token error=%s", provider.name, exc)
            raise OAuthFailed(
                f"{provider.label}'s identity token could not be verified. Please start again."
            ) from exc
        return dict(claims)

    def _identity(
        self, provider: Provider, claims: dict[str, Any], info: dict[str, Any]
    ) -> Identity:
        if provider.name == "discord":
            return self._discord_identity(info)
        if provider.name == "github":
            return _github_identity(info)
        if info and claims and str(info.get("sub")) != str(claims.get("sub")):
            raise OAuthFailed(f"{provider.label} described two different users.")
        merged = {**info, **claims}
        subject = str(merged.get("sub") or "")
        if not subject:
            raise OAuthFailed(f"{provider.label} did not say who you are.")
        username = merged.get("preferred_username") or merged.get("email")
        return Identity(
            provider=provider.name,
            provider_user_id=subject,
            username=str(username) if username else None,
            display_name=str(merged.get("name") or username or subject)[:100],
            avatar=_url_or_none(merged.get("picture")),
        )

    def _discord_identity(self, info: dict[str, Any]) -> Identity:
        try:
            discord_id = int(info["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OAuthFailed("Discord did not say who you are.") from exc
        avatar_hash = info.get("avatar")
        cdn = self.settings.oauth_discord_cdn_url.rstrip("/")
        avatar = f"{cdn}/avatars/{discord_id}/{avatar_hash}.png?size=128" if avatar_hash else None
        username = str(info.get("username") or discord_id)
        return Identity(
            provider="discord",
            provider_user_id=str(discord_id),
            username=username,
            display_name=str(info.get("global_name") or username)[:100],
            avatar=avatar,
            discord_id=discord_id,
        )


def _github_identity(info: dict[str, Any]) -> Identity:
    if info.get("id") is None:
        raise OAuthFailed("GitHub did not say who you are.")
    login = str(info.get("login") or info["id"])
    return Identity(
        provider="github",
        provider_user_id=str(info["id"]),
        username=login,
        display_name=str(info.get("name") or login)[:100],
        avatar=_url_or_none(info.get("avatar_url")),
    )


def _url_or_none(value: object) -> str | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= 500:
        return value
    return None
