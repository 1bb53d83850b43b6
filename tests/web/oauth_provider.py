"""A local OAuth 2.0 / OpenID Connect provider for the tests, on loopback.

One server plays four providers under path prefixes: /discord and /github (plain OAuth 2.0
with a userinfo endpoint in each one's own shape) and /google and /oidc (OpenID Connect:
discovery document, JWKS, RS256-signed ID tokens). The authorize endpoint approves at once,
as the configured test user, and redirects back with `code` and `state`. The token endpoint
checks the client secret, the redirect URI, the PKCE S256 verifier, and that a code is used
only once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

FLAVORS = ("discord", "github", "google", "oidc")
OIDC_FLAVORS = ("google", "oidc")
CLIENT_ID = "soundboard-test-client"
CLIENT_SECRET = "soundboard-test-secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    """A solid-colour PNG, built by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


@dataclass
class ProviderUser:
    """Who the provider says signs in. `subject` is the Discord id for Discord."""

    subject: str
    name: str
    username: str
    avatar: bool = True


@dataclass
class Grant:
    flavor: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    scope: str
    user: ProviderUser
    expires: float


@dataclass
class LocalProvider:
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    users: dict[str, ProviderUser] = field(default_factory=dict)
    deny: bool = False
    # Changes to the next ID tokens' claims (a wrong audience, say), and a foreign signing key.
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    sign_with_foreign_key: bool = False
    # What happened at the token endpoint, for assertions: "issued", or "error:reason".
    token_log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig"})
        self.foreign_key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1"})
        self._codes: dict[str, Grant] = {}
        self._used_codes: set[str] = set()
        self._tokens: dict[str, tuple[str, ProviderUser]] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # Server ----------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{flavor}/authorize", self.authorize)
        app.router.add_post("/{flavor}/token", self.token)
        app.router.add_get("/{flavor}/userinfo", self.userinfo)
        app.router.add_get("/{flavor}/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/{flavor}/jwks", self.jwks)
        app.router.add_get("/avatars/{name}", self.avatar)
        app.router.add_get("/cdn/avatars/{user}/{name}", self.avatar)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def settings(self) -> dict[str, Any]:
        """Settings that point every provider of the web app at this server."""
        b = self.base_url
        return {
            "oauth_discord_client_id": self.client_id,
            "oauth_discord_client_secret": self.client_secret,
            "oauth_discord_authorize_url": f"{b}/discord/authorize",
            "oauth_discord_token_url": f"{b}/discord/token",
            "oauth_discord_userinfo_url": f"{b}/discord/userinfo",
            "oauth_discord_cdn_url": f"{b}/cdn",
            "oauth_github_client_id": self.client_id,
            "oauth_github_client_secret": self.client_secret,
            "oauth_github_authorize_url": f"{b}/github/authorize",
            "oauth_github_token_url": f"{b}/github/token",
            "oauth_github_userinfo_url": f"{b}/github/userinfo",
            "oauth_google_client_id": self.client_id,
            "oauth_google_client_secret": self.client_secret,
            "oauth_google_issuer": f"{b}/google",
            "oauth_oidc_issuer": f"{b}/oidc",
            "oauth_oidc_client_id": self.client_id,
            "oauth_oidc_client_secret": self.client_secret,
            "oauth_oidc_name": "Test SSO",
        }

    def user_for(self, flavor: str) -> ProviderUser:
        return self.users.get(flavor) or ProviderUser("424242424242424242", "Test User", "tester")

    # Endpoints -------------------------------------------------------------------------------

    def _flavor(self, request: web.Request) -> str:
        flavor = request.match_info["flavor"]
        if flavor not in FLAVORS:
            raise web.HTTPNotFound()
        return flavor

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        flavor = self._flavor(request)
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri.startswith("http"):
            return web.Response(status=400, text="unknown client or redirect_uri")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="response_type must be code")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE S256 is required")
        state = q.get("state", "")
        if self.deny:
            params = {"error": "access_denied", "state": state}
            raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")
        code = secrets.token_urlsafe(24)
        self._codes[code] = Grant(
            flavor=flavor,
            client_id=self.client_id,
            redirect_uri=redirect_uri,
            challenge=q["code_challenge"],
            nonce=q.get("nonce"),
            scope=q.get("scope", ""),
            user=self.user_for(flavor),
            expires=time.time() + 60,
        )
        raise web.HTTPFound(f"{redirect_uri}?{urlencode({'code': code, 'state': state})}")

    def _error(self, error: str, status: int = 400, reason: str = "") -> web.Response:
        self.token_log.append(f"{error}:{reason}" if reason else error)
        return web.json_response({"error": error, "error_description": error}, status=status)

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            raw = base64.b64decode(header[6:]).decode()
            client_id, _, secret = raw.partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.client_id and secrets.compare_digest(secret, self.client_secret)

    async def token(self, request: web.Request) -> web.Response:
        flavor = self._flavor(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._client_ok(request, form):
            return self._error("invalid_client", 401)
        if form.get("grant_type") != "authorization_code":
            return self._error("unsupported_grant_type")
        code = form.get("code", "")
        if code in self._used_codes:
            return self._error("invalid_grant", reason="reused")  # a code works once
        grant = self._codes.pop(code, None)
        if grant is None or grant.flavor != flavor or grant.expires < time.time():
            return self._error("invalid_grant", reason="unknown")
        self._used_codes.add(code)
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._error("invalid_grant", reason="redirect_uri")
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        if not verifier or not secrets.compare_digest(challenge, grant.challenge):
            return self._error("invalid_grant", reason="pkce")
        access = secrets.token_urlsafe(24)
        self._tokens[access] = (flavor, grant.user)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant.scope,
        }
        if flavor in OIDC_FLAVORS and "openid" in grant.scope.split():
            body["id_token"] = self._id_token(flavor, grant, access)
        self.token_log.append("issued")
        return web.json_response(body)

    def _issuer(self, flavor: str) -> str:
        return f"{self.base_url}/{flavor}"

    def _id_token(self, flavor: str, grant: Grant, access_token: str) -> str:
        now = int(time.time())
        half = hashlib.sha256(access_token.encode()).digest()[:16]
        claims: dict[str, Any] = {
            "iss": self._issuer(flavor),
            "sub": grant.user.subject,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "name": grant.user.name,
            "preferred_username": grant.user.username,
            "at_hash": base64.urlsafe_b64encode(half).decode().rstrip("="),
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        if grant.user.avatar:
            claims["picture"] = f"{self.base_url}/avatars/{grant.user.subject}.png"
        claims.update(self.id_token_claims)
        key = self.foreign_key if self.sign_with_foreign_key else self.key
        return jwt.encode({"alg": "RS256", "kid": "test-key-1"}, claims, key)

    async def userinfo(self, request: web.Request) -> web.Response:
        flavor = self._flavor(request)
        header = request.headers.get("Authorization", "")
        found = self._tokens.get(header.removeprefix("Bearer ").strip())
        if not header.startswith("Bearer ") or found is None or found[0] != flavor:
            return web.json_response({"error": "invalid_token"}, status=401)
        user = found[1]
        if flavor == "discord":
            return web.json_response(
                {
                    "id": user.subject,
                    "username": user.username,
                    "global_name": user.name,
                    "avatar": "a1b2c3" if user.avatar else None,
                }
            )
        if flavor == "github":
            avatar = f"{self.base_url}/avatars/gh-{user.subject}.png" if user.avatar else None
            return web.json_response(
                {
                    "id": int(user.subject),
                    "login": user.username,
                    "name": user.name,
                    "avatar_url": avatar,
                }
            )
        info = {"sub": user.subject, "name": user.name, "preferred_username": user.username}
        if user.avatar:
            info["picture"] = f"{self.base_url}/avatars/{user.subject}.png"
        return web.json_response(info)

    async def discovery(self, request: web.Request) -> web.Response:
        flavor = self._flavor(request)
        if flavor not in OIDC_FLAVORS:
            raise web.HTTPNotFound()
        issuer = self._issuer(flavor)
        return web.json_response(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "userinfo_endpoint": f"{issuer}/userinfo",
                "jwks_uri": f"{issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        self._flavor(request)
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def avatar(self, request: web.Request) -> web.Response:
        seed = hashlib.sha256(request.path.encode()).digest()
        colour = (60 + seed[0] % 160, 60 + seed[1] % 160, 60 + seed[2] % 160)
        return web.Response(body=png(colour), content_type="image/png")
