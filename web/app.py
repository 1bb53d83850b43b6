"""The web app: `create_app` builds it, `serve` runs it until cancelled.

Usage: inside `async with open_services(settings) as services:`, `await serve(settings,
services)` listens on WEB_HOST:WEB_PORT (http://127.0.0.1:8000 by default) until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import importlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import session_middleware

from core.config import Settings
from core.services.container import Services
from web import admin, auth, live, monitoring, pages
from web.api import API_PREFIX, ApiRoutes, build_api
from web.errors import handle_errors
from web.keys import (
    LIVE_CLOSING,
    OPENAPI,
    PAGE_CACHE,
    PLANS,
    PROVIDERS,
    RATE_LIMITER,
    SECURITY_HEADERS,
    SERVICES,
    SETTINGS,
    STARTED_AT,
)
from web.ledger_view import action_label, format_time, signed
from web.oauth import ProviderRegistry
from web.openapi import build_openapi
from web.pagecache import PageCache
from web.plans import PlanCache
from web.ratelimit import RateLimiter
from web.security import csrf_middleware, security_headers, session_secret, session_storage

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
# Modules whose `routes` (an ApiRoutes) make up /api/v1.
API_MODULES: tuple[str, ...] = ("web.api_core", "web.api_sounds")
MAX_BODY_BYTES = 1024 * 1024
SHUTDOWN_TIMEOUT = 5.0


def _asset_urls() -> dict[str, str]:
    """Static files with a content hash in the URL, so browsers may cache them for long."""
    urls = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            urls[path.name] = f"/static/{path.name}?v={digest}"
    return urls


def _setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    assets = _asset_urls()
    env.globals["asset"] = lambda name: assets.get(name, f"/static/{name}")
    env.filters["when"] = format_time
    env.filters["signed"] = signed
    env.filters["action_label"] = action_label


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in request.config_dict[SECURITY_HEADERS].items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "public, max-age=31536000, immutable")
    else:
        response.headers.setdefault("Cache-Control", "no-store")


async def _providers(app: web.Application) -> AsyncIterator[None]:
    await app[PROVIDERS].start()
    yield
    await app[PROVIDERS].close()


async def _stop_live_streams(app: web.Application) -> None:
    """Open event streams would hold shutdown up: end them first."""
    app[LIVE_CLOSING].set()


def create_app(settings: Settings, services: Services) -> web.Application:
    storage = session_storage(settings, session_secret(settings))
    app = web.Application(
        middlewares=[
            monitoring.observe,
            session_middleware(storage),
            handle_errors,
            csrf_middleware(settings),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[SERVICES] = services
    app[PROVIDERS] = ProviderRegistry(settings)
    app[RATE_LIMITER] = RateLimiter(settings.api_rate_limit_per_minute)
    app[LIVE_CLOSING] = asyncio.Event()
    app[STARTED_AT] = time.monotonic()
    app[SECURITY_HEADERS] = security_headers(settings)
    app[PAGE_CACHE] = PageCache()
    app[PLANS] = PlanCache(services.users.list_plans)
    _setup_templates(app)
    for table in (auth.routes, pages.routes, live.routes, admin.routes, monitoring.routes):
        app.router.add_routes(table)
    app.router.add_static("/static", STATIC_DIR, name="static")
    route_sets: list[ApiRoutes] = [importlib.import_module(m).routes for m in API_MODULES]
    app[OPENAPI] = build_openapi(route_sets, settings.web_base_url)
    app.add_subapp(API_PREFIX, build_api(route_sets))
    app.on_response_prepare.append(_add_headers)
    app.cleanup_ctx.append(_providers)
    app.cleanup_ctx.append(monitoring.count_credits_spent)
    app.on_shutdown.append(_stop_live_streams)
    return app


async def start_web(
    settings: Settings, services: Services, *, host: str | None = None, port: int | None = None
) -> web.AppRunner:
    """Start listening; the caller owns the returned runner (`await runner.cleanup()`)."""
    app = create_app(settings, services)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(
        runner, host or settings.web_host, settings.web_port if port is None else port
    )
    await site.start()
    log.info("web app listening on %s (public URL %s)", site.name, settings.web_base_url)
    return runner


async def serve(settings: Settings, services: Services) -> None:
    """Run the web app until cancelled."""
    runner = await start_web(settings, services)
    # What exists now (modules, the app, the services) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise walk all of it and stall every
    # request for tens of milliseconds.
    gc.collect()
    gc.freeze()
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        log.info("web app stopped")


def run_web(settings: Settings, services: Services) -> None:
    """Blocking entry point for scripts: start the (not yet started) services, serve until
    Ctrl+C, then close them."""

    async def main() -> None:
        async with services:
            await serve(settings, services)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
