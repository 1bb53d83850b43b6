"""Security headers, static files and templates that keep to the content security policy."""

from __future__ import annotations

import re
from pathlib import Path

from tests.web.conftest import Web, WebFactory
from web.security import safe_next

TEMPLATES = Path(__file__).parents[2] / "web" / "templates"


async def test_pages_and_api_carry_security_headers(web: Web) -> None:
    for path in ("/", "/api/v1/openapi.json", "/nope", "/healthz"):
        response = await web.client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "default-src 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" not in response.headers


async def test_https_deployments_get_hsts(web_factory: WebFactory) -> None:
    web = await web_factory(web_base_url="https://sounds.example")
    response = await web.client.get("/")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


async def test_avatar_origin_is_allowed_for_images_only(web: Web) -> None:
    csp = (await web.client.get("/")).headers["Content-Security-Policy"]
    img = next(part for part in csp.split("; ") if part.startswith("img-src"))
    assert web.provider.base_url in img
    assert web.provider.base_url not in csp.replace(img, "")


async def test_static_files_are_versioned_and_cached(web: Web) -> None:
    html = await (await web.client.get("/")).text()
    match = re.search(r'href="(/static/style\.css\?v=[0-9a-f]{12})"', html)
    assert match is not None
    response = await web.client.get(match.group(1))
    assert response.status == 200 and response.content_type == "text/css"
    assert "immutable" in response.headers["Cache-Control"]
    assert "prefers-color-scheme: dark" in await response.text()
    script = await web.client.get("/static/live.js")
    assert script.status == 200 and "EventSource" in await script.text()


async def test_personal_pages_are_not_cached(web: Web) -> None:
    await web.login("discord")
    for path in ("/credits", "/account", "/api/v1/me"):
        assert (await web.client.get(path)).headers["Cache-Control"] == "no-store", path


def test_templates_have_no_inline_script_or_style() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)", text), template.name
        assert " style=" not in text and "<style" not in text, template.name
        assert not re.search(r"\son[a-z]+=", text), template.name


def test_form_inputs_have_labels() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        labelled = set(re.findall(r'<label[^>]*for="([^"]+)"', text))
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", text):
            if 'type="hidden"' in tag or 'type="radio"' in tag:
                continue
            ident = re.search(r'id="([^"]+)"', tag)
            assert ident is not None and ident.group(1) in labelled, (template.name, tag)


def test_safe_next() -> None:
    assert safe_next("/credits?x=1") == "/credits?x=1"
    for bad in (
        None,
        "",
        "credits",
        "https://evil.example",
        "//evil.example",
        "/\\evil.example",
        "/ok\r\nSet-Cookie: x=1",
        "\\\\evil",
        "/" + "a" * 3000,
    ):
        assert safe_next(bad, "/home") == "/home", bad
