"""Sign-in, linking another provider, the OAuth callback and sign-out."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp_session import get_session

from core.errors import Conflict, InvalidInput
from core.models import User
from web.context import current_user, flash, redirect, render, require_user, start_session
from web.keys import PROVIDERS, SERVICES
from web.oauth import Identity, OAuthFailed, PendingFlow, Provider
from web.security import safe_next

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


def _provider(request: web.Request) -> Provider:
    provider = request.config_dict[PROVIDERS].get(request.match_info["provider"])
    if provider is None:
        raise web.HTTPNotFound(reason="There is no such sign-in provider on this site.")
    return provider


@routes.get("/", name="index")
async def index(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    if await current_user(request) is not None:
        raise redirect(next_path)
    providers = list(request.config_dict[PROVIDERS].providers.values())
    return await render(request, "index.html", {"providers": providers, "next": next_path})


@routes.get("/login/{provider}", name="login")
async def login(request: web.Request) -> web.StreamResponse:
    provider = _provider(request)
    return await _start(request, provider, link=False)


@routes.get("/link/{provider}", name="link")
async def link(request: web.Request) -> web.StreamResponse:
    await require_user(request)
    return await _start(request, _provider(request), link=True)


async def _start(request: web.Request, provider: Provider, *, link: bool) -> web.StreamResponse:
    default = "/account" if link else "/credits"
    next_path = safe_next(request.query.get("next"), default)
    url, flow = await request.config_dict[PROVIDERS].start_flow(
        provider, next_path=next_path, link=link
    )
    session = await get_session(request)
    session["oauth"] = flow.to_dict()
    raise web.HTTPFound(url)


@routes.get("/auth/{provider}/callback", name="callback")
async def callback(request: web.Request) -> web.StreamResponse:
    provider = _provider(request)
    session = await get_session(request)
    flow = PendingFlow.from_dict(session.pop("oauth", None))
    if request.query.get("error"):
        await flash(request, f"Sign-in with {provider.label} was cancelled.", "error")
        raise redirect("/account" if flow and flow.link else "/")
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if flow is None or flow.provider != provider.name or flow.expired or not code:
        raise OAuthFailed("This sign-in has expired or was already used. Please start again.")
    if not hmac.compare_digest(flow.state, state):
        log.warning("oauth provider=%s state mismatch", provider.name)
        raise OAuthFailed("This sign-in did not start here (the state does not match).")
    identity = await request.config_dict[PROVIDERS].finish_flow(provider, flow, code)
    if flow.link:
        return await _link(request, provider, identity, flow)
    user = await _login(request, identity)
    await start_session(request, user)
    raise redirect(flow.next)


async def _login(request: web.Request, identity: Identity) -> User:
    return await request.config_dict[SERVICES].accounts.login_with_identity(
        identity.provider,
        identity.provider_user_id,
        identity.username,
        identity.display_name,
        identity.avatar,
        discord_id=identity.discord_id,
    )


async def _link(
    request: web.Request, provider: Provider, identity: Identity, flow: PendingFlow
) -> web.StreamResponse:
    user = await require_user(request)
    try:
        await request.config_dict[SERVICES].accounts.link_identity(
            user.id or 0,
            identity.provider,
            identity.provider_user_id,
            identity.username,
            discord_id=identity.discord_id,
        )
    except (Conflict, InvalidInput) as exc:
        await flash(request, str(exc), "error")
    else:
        await flash(request, f"{provider.label} is now linked to your account.", "success")
    raise redirect(flow.next)


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther("/")
