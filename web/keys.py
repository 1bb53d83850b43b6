"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from core.config import Settings
from core.models import User
from core.services.container import Services
from web.oauth import ProviderRegistry
from web.pagecache import PageCache
from web.plans import PlanCache
from web.ratelimit import RateLimiter

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
PROVIDERS = web.AppKey("providers", ProviderRegistry)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
LIVE_CLOSING = web.AppKey("live_closing", asyncio.Event)
STARTED_AT = web.AppKey("started_at", float)
OPENAPI = web.AppKey[dict[str, Any]]("openapi")
SECURITY_HEADERS = web.AppKey[dict[str, str]]("security_headers")
PAGE_CACHE = web.AppKey("page_cache", PageCache)
PLANS = web.AppKey("plans", PlanCache)

# Set by the auth layer for the current request: the signed-in (or token-bearing) user.
USER = web.RequestKey("user", User)
# The API token that authenticated the request (absent for a session).
TOKEN_ID = web.RequestKey("token_id", int)
