from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from core.config import Settings
from core.models import Role, User
from core.services.container import Services
from tests.web.oauth_provider import LocalProvider, ProviderUser, free_port
from web.app import create_app

SESSION_SECRET = "test-session-secret-that-is-long-enough"
_subjects = itertools.count(300_000_000_000_000_000)


def new_provider_user(name: str = "Test User", **kwargs: Any) -> ProviderUser:
    subject = str(next(_subjects))
    return ProviderUser(subject, name, kwargs.pop("username", f"user{subject[-4:]}"), **kwargs)


@dataclass
class Web:
    """The web app under test on a real loopback port, with the local OAuth provider."""

    services: Services
    settings: Settings
    provider: LocalProvider
    client: TestClient[Any, Any]

    @property
    def base_url(self) -> str:
        return self.settings.web_base_url

    def new_client(self) -> TestClient[Any, Any]:
        """Another browser: its own cookie jar, same server."""
        return TestClient(self.client.server)

    async def authorize(
        self, flavor: str, *, client: TestClient[Any, Any] | None = None, path: str = ""
    ) -> str:
        """Start a sign-in (or a link) and follow the provider: the callback URL it returns."""
        client = client or self.client
        start = await client.get(path or f"/login/{flavor}", allow_redirects=False)
        assert start.status == 302, await start.text()
        location = start.headers["Location"]
        assert location.startswith(self.provider.base_url), location
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(location, allow_redirects=False) as at_provider,
        ):
            assert at_provider.status == 302, await at_provider.text()
            callback = at_provider.headers["Location"]
        assert callback.startswith(self.base_url + f"/auth/{flavor}/callback"), callback
        return callback

    async def callback(
        self, callback: str, *, client: TestClient[Any, Any] | None = None
    ) -> aiohttp.ClientResponse:
        client = client or self.client
        parts = urlsplit(callback)
        return await client.get(f"{parts.path}?{parts.query}", allow_redirects=False)

    async def login(
        self,
        flavor: str = "discord",
        user: ProviderUser | None = None,
        *,
        client: TestClient[Any, Any] | None = None,
    ) -> User:
        """Sign in for real through the local provider; returns the account signed in to."""
        self.provider.users[flavor] = user or new_provider_user()
        response = await self.callback(await self.authorize(flavor, client=client), client=client)
        assert response.status == 303, await response.text()
        me = await (client or self.client).get("/api/v1/me")
        assert me.status == 200, await me.text()
        return await self.services.users.get((await me.json())["id"])

    async def csrf(self, client: TestClient[Any, Any] | None = None, page: str = "/account") -> str:
        """The session's CSRF token, as a page shows it."""
        html = await (await (client or self.client).get(page)).text()
        marker = '<meta name="csrf-token" content="'
        start = html.index(marker) + len(marker)
        return html[start : html.index('"', start)]

    async def make_admin(self, user: User) -> User:
        return await self.services.users.set_role(user.id or 0, Role.ADMIN)


WebFactory = Callable[..., Awaitable[Web]]


def pytest_configure(config: pytest.Config) -> None:
    # aiohttp-session stores its state under string keys; not ours to change.
    config.addinivalue_line(
        "filterwarnings", "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"
    )


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    local = LocalProvider()
    await local.start()
    yield local
    await local.stop()


@pytest.fixture
async def web_factory(
    services: Services, settings: Settings, provider: LocalProvider
) -> AsyncIterator[WebFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def build(**overrides: Any) -> Web:
        port = free_port()
        values = {
            **provider.settings(),
            "web_base_url": f"http://127.0.0.1:{port}",
            "web_port": port,
            "session_secret": SESSION_SECRET,
            **overrides,
        }
        web_settings = settings.model_copy(update=values)
        server = TestServer(create_app(web_settings, services), host="127.0.0.1", port=port)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Web(services=services, settings=web_settings, provider=provider, client=client)

    yield build
    for client in clients:
        await client.close()


@pytest.fixture
async def web(web_factory: WebFactory) -> Web:
    return await web_factory()
