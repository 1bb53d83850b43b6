"""Sign-in through the local OAuth 2.0 / OpenID Connect provider, for real, and its failures."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from yarl import URL

from core.models import Role
from tests.core.helpers import make_user
from tests.web.conftest import Web, WebFactory, new_provider_user
from tests.web.oauth_provider import ProviderUser, free_port


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _with_query(url: str, **changes: str | None) -> str:
    params = _query(url)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(params)}"


async def _signed_in(web: Web, client: object | None = None) -> bool:
    c = client or web.client
    response = await c.get("/api/v1/me")  # type: ignore[attr-defined]
    return bool(response.status == 200)


@pytest.mark.parametrize("flavor", ["discord", "github", "google", "oidc"])
async def test_each_provider_signs_in(web: Web, flavor: str) -> None:
    person = new_provider_user("Ada Lovelace", username="ada")
    user = await web.login(flavor, person)
    me = await (await web.client.get("/api/v1/me")).json()
    assert me["display_name"] == "Ada Lovelace"
    assert me["identities"] == [{"provider": flavor, "username": "ada"}]
    assert me["avatar_url"].startswith(web.provider.base_url)
    if flavor == "discord":
        assert user.discord_id == int(person.subject) and me["discord_id"] == person.subject
    else:
        assert user.discord_id is None and me["discord_id"] is None
    # The authorization request used PKCE S256 and state; the provider issued exactly once.
    assert web.provider.token_log == ["issued"]


async def test_authorization_request_carries_pkce_state_and_scope(web: Web) -> None:
    response = await web.client.get("/login/google", allow_redirects=False)
    params = _query(response.headers["Location"])
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32 and params["nonce"]
    assert params["scope"] == "openid profile"
    assert params["redirect_uri"] == f"{web.base_url}/auth/google/callback"
    discord = await web.client.get("/login/discord", allow_redirects=False)
    assert _query(discord.headers["Location"])["scope"] == "identify"


async def test_discord_login_shows_credits_granted_by_the_bot(web: Web) -> None:
    bot_user = await make_user(web.services, credits=10, name="bot member")
    await web.services.credits.grant(bot_user.id or 0, 25, reason="granted in Discord")
    user = await web.login("discord", ProviderUser(str(bot_user.discord_id), "Member", "member"))
    assert user.id == bot_user.id
    page = await (await web.client.get("/credits")).text()
    assert 'id="balance"' in page and ">35</span>" in page
    assert "granted in Discord" in page


async def test_only_configured_providers_get_a_button(web_factory: WebFactory) -> None:
    web = await web_factory(oauth_github_client_secret="", oauth_oidc_issuer="")
    page = await (await web.client.get("/")).text()
    assert "Sign in with Discord" in page and "Sign in with Google" in page
    assert "GitHub" not in page and "Test SSO" not in page
    assert (await web.client.get("/login/github", allow_redirects=False)).status == 404
    bare = await web_factory(
        oauth_discord_client_id="",
        oauth_github_client_id="",
        oauth_google_client_id="",
        oauth_oidc_client_id="",
    )
    page = await (await bare.client.get("/")).text()
    assert "No sign-in provider is configured" in page


async def test_wrong_or_missing_state_is_refused(web: Web) -> None:
    callback = await web.authorize("discord")
    wrong = await web.callback(_with_query(callback, state="not-the-state"))
    assert wrong.status == 400
    assert "did not start here" in await wrong.text()
    assert not await _signed_in(web)
    # The flow was consumed: even the right state no longer works.
    again = await web.callback(callback)
    assert again.status == 400 and "expired or was already used" in await again.text()
    missing = await web.callback(_with_query(await web.authorize("discord"), state=None))
    assert missing.status == 400
    assert not await _signed_in(web)
    assert web.provider.token_log == []  # no code was ever exchanged


async def test_callback_in_another_browser_is_refused(web: Web) -> None:
    callback = await web.authorize("github")
    other = web.new_client()
    response = await web.callback(callback, client=other)
    assert response.status == 400
    assert not await _signed_in(web, other)


async def test_wrong_pkce_verifier_is_refused(web: Web) -> None:
    """A code stolen from one flow and injected into another fails at the token endpoint."""
    victim = web.new_client()
    stolen = _query(await web.authorize("discord", client=victim))["code"]
    attacker_callback = await web.authorize("discord")
    response = await web.callback(_with_query(attacker_callback, code=stolen))
    assert response.status == 400
    assert "did not accept the sign-in (invalid_grant)" in await response.text()
    assert web.provider.token_log == ["invalid_grant:pkce"]
    assert not await _signed_in(web)


async def test_a_code_works_only_once(web: Web) -> None:
    callback = await web.authorize("github")
    web.provider.users["github"] = new_provider_user()
    assert (await web.callback(callback)).status == 303
    # Replayed in a fresh flow (matching state), the provider refuses the used code.
    other = web.new_client()
    fresh = await web.authorize("github", client=other)
    replay = await web.callback(_with_query(fresh, code=_query(callback)["code"]), client=other)
    assert replay.status == 400
    assert web.provider.token_log[-1] == "invalid_grant:reused"
    assert not await _signed_in(web, other)


async def test_cancelled_at_the_provider(web: Web) -> None:
    web.provider.deny = True
    callback = await web.authorize("discord")
    assert _query(callback)["error"] == "access_denied"
    response = await web.callback(callback)
    assert response.status == 303 and response.headers["Location"] == "/"
    page = await (await web.client.get("/")).text()
    assert "Sign-in with Discord was cancelled." in page


@pytest.mark.parametrize(
    ("change", "foreign_key"),
    [
        ({"aud": "someone-else"}, False),
        ({"iss": "https://issuer.example"}, False),
        ({"nonce": "replayed-nonce"}, False),
        ({"exp": 1_000_000_000}, False),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, False),
        ({}, True),
    ],
    ids=["audience", "issuer", "nonce", "expired", "at_hash", "signature"],
)
async def test_bad_id_tokens_are_refused(
    web: Web, change: dict[str, object], foreign_key: bool
) -> None:
    web.provider.id_token_claims = change
    web.provider.sign_with_foreign_key = foreign_key
    web.provider.users["oidc"] = new_provider_user()
    response = await web.callback(await web.authorize("oidc"))
    assert response.status == 400
    assert "identity token could not be verified" in await response.text()
    assert not await _signed_in(web)


async def test_unreachable_provider_gives_a_clear_502(web_factory: WebFactory) -> None:
    web = await web_factory(oauth_oidc_issuer=f"http://127.0.0.1:{free_port()}/nothing")
    response = await web.client.get("/login/oidc", allow_redirects=False)
    assert response.status == 502
    assert "could not reach Test SSO" in await response.text()


async def test_unknown_provider_is_404(web: Web) -> None:
    assert (await web.client.get("/login/myspace", allow_redirects=False)).status == 404
    assert (await web.client.get("/auth/myspace/callback?code=x&state=y")).status == 404


async def test_login_starts_a_new_session(web: Web) -> None:
    """No fixation: the pre-login session (and its CSRF token) is discarded at login."""
    before = await web.csrf(page="/")
    anonymous_cookie = web.client.session.cookie_jar.filter_cookies(URL(web.base_url))
    await web.login("discord")
    after = await web.csrf(page="/account")
    assert before != after
    stale = web.new_client()
    stale.session.cookie_jar.update_cookies(anonymous_cookie)
    assert not await _signed_in(web, stale)


@pytest.mark.parametrize(
    ("next_value", "expected"),
    [
        ("/account", "/account"),
        ("/credits?action=play", "/credits?action=play"),
        ("https://evil.example/", "/credits"),
        ("//evil.example/x", "/credits"),
        ("/\\evil.example", "/credits"),
        ("javascript:alert(1)", "/credits"),
    ],
)
async def test_next_only_goes_to_paths_on_this_site(
    web: Web, next_value: str, expected: str
) -> None:
    web.provider.users["discord"] = new_provider_user()
    path = "/login/discord?" + urlencode({"next": next_value})
    response = await web.callback(await web.authorize("discord", path=path))
    assert response.status == 303
    assert response.headers["Location"] == expected
    signed_in = await web.client.get("/?" + urlencode({"next": next_value}), allow_redirects=False)
    assert signed_in.headers["Location"] == expected


async def test_sign_in_page_sends_you_back(web: Web) -> None:
    response = await web.client.get("/account", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/?next=/account"
    page = await (await web.client.get("/?next=/account")).text()
    assert 'href="/login/discord?next=/account"' in page


async def test_logout_needs_post_and_csrf(web: Web) -> None:
    await web.login("discord")
    assert (await web.client.get("/logout")).status == 405
    refused = await web.client.post("/logout", allow_redirects=False)
    assert refused.status == 403
    assert "This form has expired" in await refused.text()
    forged = await web.client.post("/logout", data={"csrf_token": "guess"}, allow_redirects=False)
    assert forged.status == 403
    assert await _signed_in(web)
    token = await web.csrf()
    out = await web.client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/"
    assert not await _signed_in(web)
    assert (await web.client.get("/account", allow_redirects=False)).status == 303


async def test_foreign_origin_is_refused_even_with_the_token(web: Web) -> None:
    await web.login("discord")
    token = await web.csrf()
    response = await web.client.post(
        "/logout",
        data={"csrf_token": token},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert response.status == 403
    assert await _signed_in(web)


async def test_tampered_and_foreign_cookies_are_ignored(web_factory: WebFactory) -> None:
    web = await web_factory()
    await web.login("discord")
    cookie = web.client.session.cookie_jar.filter_cookies(URL(web.base_url))["soundboard_session"]
    value = cookie.value
    tampered = value[:40] + ("A" if value[40] != "A" else "B") + value[41:]
    browser = web.new_client()
    browser.session.cookie_jar.update_cookies({"soundboard_session": tampered})
    assert not await _signed_in(web, browser)
    assert (await browser.get("/account", allow_redirects=False)).status == 303
    # A valid cookie from another deployment (another secret) means nothing here.
    other = await web_factory(session_secret="another-deployment-secret")
    await other.login("discord")
    foreign = other.client.session.cookie_jar.filter_cookies(URL(other.base_url))[
        "soundboard_session"
    ]
    browser = web.new_client()
    browser.session.cookie_jar.update_cookies({"soundboard_session": foreign.value})
    assert not await _signed_in(web, browser)


async def test_session_cookie_flags(web_factory: WebFactory) -> None:
    web = await web_factory()
    response = await web.client.get("/")
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header
    secure = await web_factory(web_base_url="https://sounds.example")
    header = (await secure.client.get("/")).headers["Set-Cookie"]
    assert "Secure" in header and "HttpOnly" in header


async def test_link_another_provider_then_sign_in_with_either(web: Web) -> None:
    user = await web.login("discord")
    web.provider.users["github"] = new_provider_user("Same Person", username="same")
    response = await web.callback(await web.authorize("github", path="/link/github"))
    assert response.status == 303 and response.headers["Location"] == "/account"
    page = await (await web.client.get("/account")).text()
    assert "GitHub is now linked to your account." in page
    assert [i.provider for i in await web.services.accounts.list_identities(user.id or 0)] == [
        "discord",
        "github",
    ]
    other = web.new_client()
    again = await web.login("github", web.provider.users["github"], client=other)
    assert again.id == user.id


async def test_linking_an_identity_of_another_account_is_refused(web: Web) -> None:
    owner = web.new_client()
    taken = new_provider_user("Owner")
    await web.login("github", taken, client=owner)
    me = await web.login("discord")
    web.provider.users["github"] = taken
    await web.callback(await web.authorize("github", path="/link/github"))
    page = await (await web.client.get("/account")).text()
    assert "This GitHub account is already linked to another soundboard account." in page
    identities = await web.services.accounts.list_identities(me.id or 0)
    assert [i.provider for i in identities] == ["discord"]


async def test_linking_discord_to_a_github_account(web: Web) -> None:
    me = await web.login("github")
    person = new_provider_user("Discord Me")
    web.provider.users["discord"] = person
    await web.callback(await web.authorize("discord", path="/link/discord"))
    assert (await web.services.users.get(me.id or 0)).discord_id == int(person.subject)
    # A Discord account the bot already knows as someone else is refused.
    bot_user = await make_user(web.services)
    other = web.new_client()
    await web.login("github", client=other)
    web.provider.users["discord"] = ProviderUser(str(bot_user.discord_id), "Bot", "bot")
    await web.callback(
        await web.authorize("discord", client=other, path="/link/discord"), client=other
    )
    page = await (await other.get("/account")).text()
    assert "That Discord account already has its own soundboard account" in page


async def test_link_requires_sign_in(web: Web) -> None:
    response = await web.client.get("/link/github", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/?next=")


async def test_admin_role_survives_sign_in(web: Web) -> None:
    user = await web.login("discord", new_provider_user())
    await web.make_admin(user)
    me = await (await web.client.get("/api/v1/me")).json()
    assert me["role"] == Role.ADMIN.value
