"""Sessions, CSRF protection, safe redirects and security headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import warnings
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import Session, get_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from core.config import Settings

log = logging.getLogger(__name__)

# aiohttp-session keeps its state under plain string keys; nothing for us to change there.
warnings.filterwarnings("ignore", category=NotAppKeyWarning, module="aiohttp_session")

COOKIE_NAME = "soundboard_session"
SESSION_MAX_AGE = 30 * 24 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_https(settings: Settings) -> bool:
    return settings.web_base_url.lower().startswith("https://")


def session_secret(settings: Settings) -> str:
    """SESSION_SECRET, or a random one (with a warning) when it is not set."""
    if settings.session_secret:
        return settings.session_secret
    log.warning(
        "SESSION_SECRET is not set: using a random one, so sign-ins will not survive a restart"
    )
    return secrets.token_urlsafe(32)


def session_fernet(secret: str) -> Fernet:
    """The cookie cipher: any SESSION_SECRET string, stretched to a Fernet key."""
    key = hashlib.sha256(b"soundboard-session\0" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def session_storage(settings: Settings, secret: str) -> EncryptedCookieStorage:
    """Encrypted (Fernet) cookie sessions: HttpOnly, SameSite=Lax, Secure over https."""
    return EncryptedCookieStorage(
        session_fernet(secret),
        cookie_name=COOKIE_NAME,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="Lax",
        secure=is_https(settings),
    )


def csrf_token(session: Session) -> str:
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def safe_next(value: str | None, default: str = "/credits") -> str:
    """Only a path on this site: no scheme, no host, no `//host`, no backslash tricks."""
    if not value or len(value) > 2000:
        return default
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ch in value for ch in "\\\r\n\t") or any(ord(ch) < 0x20 for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def csrf_middleware(settings: Settings) -> Middleware:
    """Every unsafe request that relies on the session cookie must carry the session's CSRF
    token (form field or X-CSRF-Token header) and, when the browser sends one, our Origin.
    Requests authenticated by an `Authorization` header carry no ambient credentials."""
    own_origin = _origin(settings.web_base_url)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS or request.headers.get("Authorization"):
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin and origin.lower() not in {own_origin, f"{request.scheme}://{request.host}"}:
            log.warning("csrf: foreign origin %s on %s", origin, request.path)
            raise web.HTTPForbidden(reason="CSRF")
        session = await get_session(request)
        expected = session.get("csrf")
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.content_type in {
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        }:
            form = await request.post()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not expected or not sent or not hmac.compare_digest(str(expected), sent):
            log.warning("csrf: missing or wrong token on %s %s", request.method, request.path)
            raise web.HTTPForbidden(reason="CSRF")
        return await handler(request)

    return middleware


def content_security_policy(settings: Settings, image_origins: set[str]) -> str:
    images = " ".join(["'self'", "data:", "https:", *sorted(image_origins)])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "font-src 'self'",
            "manifest-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def http_image_origins(settings: Settings) -> set[str]:
    """Plain-http origins that may serve avatars (a local test provider, a LAN issuer)."""
    urls = [
        settings.oauth_discord_cdn_url,
        settings.oauth_github_userinfo_url,
        settings.oauth_google_issuer,
        settings.oauth_oidc_issuer,
    ]
    return {_origin(u) for u in urls if u.lower().startswith("http://")}


def security_headers(settings: Settings) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(settings, http_image_origins(settings)),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }
    if is_https(settings):
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers
