"""/healthz, /metrics and the one-line request log."""

from __future__ import annotations

import logging
import re

import pytest

from core.config import Settings
from core.db import Database
from core.services.container import Services
from tests.web.conftest import Web
from tests.web.oauth_provider import free_port
from web.app import create_app


async def test_healthz_reports_ok(web: Web) -> None:
    response = await web.client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["uptime_seconds"] >= 0


async def test_healthz_reports_an_unreachable_database(settings: Settings) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    services = Services(settings, Database.from_url(url))
    client = TestClient(TestServer(create_app(settings, services)))
    await client.start_server()
    try:
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["database"] == "unreachable"
    finally:
        await client.close()
        await services.db.dispose()


async def test_metrics_expose_requests_and_credits_spent(web: Web) -> None:
    user = await web.login("discord")
    await web.client.get("/credits")
    await web.client.get("/credits?action=play")
    await web.services.credits.deduct(user.id or 0, 3)
    await web.services.credits.deduct(user.id or 0, 2, action="extraction")
    await web.services.credits.grant(user.id or 0, 9, reason="not spending")
    response = await web.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await response.text()
    assert 'soundboard_credits_spent_total{action="play"} 3' in text
    assert 'soundboard_credits_spent_total{action="extraction"} 2' in text
    assert 'action="grant"' not in text
    count = re.search(
        r'soundboard_http_request_duration_seconds_count\{method="GET",route="/credits",'
        r'status="200"\} (\d+)',
        text,
    )
    assert count is not None and int(count.group(1)) == 2
    # Routes are labelled by template, never by raw path or query.
    assert "action=play" not in text
    await web.client.get("/admin/users/12345")
    text = await (await web.client.get("/metrics")).text()
    assert 'route="/admin/users/{user_id}"' in text and "12345" not in text
    await web.client.get("/no/such/page")
    text = await (await web.client.get("/metrics")).text()
    assert 'route="unmatched",status="404"' in text
    for name in ("plays_total", "play_start_latency_seconds", "queue_length", "extraction_jobs"):
        assert f"# TYPE soundboard_{name} " in text


async def test_each_request_is_logged_once_without_its_query(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="web.monitoring"):
        await web.client.get("/healthz")
        await web.client.get("/auth/discord/callback?code=SECRET-CODE&state=SECRET-STATE")
    lines = [r.getMessage() for r in caplog.records if r.name == "web.monitoring"]
    assert len(lines) == 2
    assert re.fullmatch(r"GET /healthz 200 \d+\.\dms", lines[0])
    assert lines[1].startswith("GET /auth/discord/callback 400 ")
    assert all("SECRET" not in line for line in lines)
