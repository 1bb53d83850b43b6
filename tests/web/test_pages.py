"""The member's pages and the admin pages, through the real app and a signed-in session."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from html import unescape

from core.models import utcnow
from core.services.container import Services
from tests.core.helpers import make_user
from tests.web.conftest import Web, new_provider_user


def _row_ids(html: str) -> list[str]:
    """The ledger table's rows, as 'action amount balance' strings, in page order."""
    body = html.split('id="ledger-rows"', 1)[1].split("</tbody>", 1)[0]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [
            re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
        ]
        rows.append(" ".join(cells[1:4]))
    return rows


def _next_link(html: str) -> str | None:
    match = re.search(r'rel="next" href="([^"]+)"', html)
    return match.group(1).replace("&amp;", "&") if match else None


async def _spend(services: Services, user_id: int, count: int, action: str = "play") -> None:
    for index in range(count):
        await services.credits.deduct(user_id, 1, action=action, meta={"sound": f"s{index}"})


async def test_account_page_shows_profile_plan_balance_and_identities(web: Web) -> None:
    user = await web.login("discord", new_provider_user("Grace Hopper", username="grace"))
    html = await (await web.client.get("/account")).text()
    assert "Grace Hopper" in html
    assert f'src="{web.provider.base_url}/cdn/avatars/' in html
    assert re.search(rf'id="balance"[^>]*aria-live="polite"[^>]*>{user.credits}<', html)
    assert "Free" in html and "Next refill" in html
    assert "grace" in html and "Your only sign-in method" in html
    for label in ("Link GitHub", "Link Google", "Link Test SSO"):
        assert label in html
    assert "Link Discord" not in html


async def test_create_list_and_revoke_api_tokens(web: Web) -> None:
    user = await web.login("discord")
    csrf = await web.csrf()
    created = await web.client.post(
        "/account/tokens", data={"csrf_token": csrf, "name": "stream deck"}, allow_redirects=False
    )
    assert created.status == 303 and created.headers["Location"] == "/account#tokens"
    html = await (await web.client.get("/account")).text()
    token = re.search(r'id="new-token-value"[^>]*value="(sb_[^"]+)"', html)
    assert token is not None and "it will not be shown again" in html
    plaintext = token.group(1)
    # Shown once: the next view has only the name and prefix.
    html = await (await web.client.get("/account")).text()
    assert plaintext not in html
    assert "stream deck" in html and f"{plaintext[:11]}…" in html and "never" in html
    api = await web.client.get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
    assert api.status == 200
    html = await (await web.client.get("/account")).text()
    assert "never" not in html.split('id="tokens"', 1)[1]
    tokens = await web.services.accounts.list_tokens(user.id or 0)
    revoke = await web.client.post(
        f"/account/tokens/{tokens[0].id}/revoke", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert revoke.status == 303
    html = await (await web.client.get("/account")).text()
    assert "“stream deck” is revoked" in html and "You have no API tokens." in html
    api = await web.client.get("/api/v1/me", headers={"Authorization": f"Bearer {plaintext}"})
    assert api.status == 401


async def test_token_form_errors_are_shown(web: Web) -> None:
    await web.login("discord")
    csrf = await web.csrf()
    response = await web.client.post("/account/tokens", data={"csrf_token": csrf, "name": "  "})
    assert response.url.path == "/account"
    assert "Give the token a name" in await response.text()
    missing_csrf = await web.client.post("/account/tokens", data={"name": "x"})
    assert missing_csrf.status == 403


async def test_another_users_token_and_identity_cannot_be_touched(web: Web) -> None:
    victim = await make_user(web.services)
    victim_token = await web.services.accounts.create_token(victim.id or 0, "victim")
    await web.services.accounts.link_identity(victim.id or 0, "github", "victim-gh")
    await web.services.accounts.link_identity(victim.id or 0, "oidc", "victim-sso")
    victim_identity = (await web.services.accounts.list_identities(victim.id or 0))[0]
    await web.login("discord")
    csrf = await web.csrf()
    headers = {"Referer": f"{web.base_url}/account"}
    revoke = await web.client.post(
        f"/account/tokens/{victim_token.token.id}/revoke",
        data={"csrf_token": csrf},
        headers=headers,
        allow_redirects=False,
    )
    assert revoke.status == 303 and revoke.headers["Location"] == "/account"
    unlink = await web.client.post(
        f"/account/identities/{victim_identity.id}/unlink",
        data={"csrf_token": csrf},
        headers=headers,
    )
    html = await unlink.text()
    assert "There is no such active token on your account." in html
    assert "That sign-in method is not linked to your account." in html
    assert await web.services.accounts.authenticate(victim_token.plaintext) is not None
    assert len(await web.services.accounts.list_identities(victim.id or 0)) == 2
    not_a_number = await web.client.post(
        "/account/tokens/abc/revoke", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert not_a_number.status == 404


async def test_unlink_keeps_at_least_one_identity(web: Web) -> None:
    user = await web.login("discord")
    await web.callback(await web.authorize("github", path="/link/github"))
    identities = await web.services.accounts.list_identities(user.id or 0)
    csrf = await web.csrf()
    html = await (
        await web.client.post(
            f"/account/identities/{identities[1].id}/unlink", data={"csrf_token": csrf}
        )
    ).text()
    assert "That sign-in method was removed" in html
    assert "Your only sign-in method" in html
    # Forcing the last one anyway is refused.
    await web.client.post(
        f"/account/identities/{identities[0].id}/unlink",
        data={"csrf_token": csrf},
        headers={"Referer": f"{web.base_url}/account"},
    )
    assert len(await web.services.accounts.list_identities(user.id or 0)) == 1


async def test_credits_page_lists_transactions_newest_first(web: Web) -> None:
    user = await web.login("discord")
    await web.services.credits.deduct(user.id or 0, 3, meta={"sound": "airhorn"})
    await web.services.credits.grant(user.id or 0, 10, reason="birthday", actor="admin")
    html = await (await web.client.get("/credits")).text()
    start = user.credits
    assert _row_ids(html) == [
        f"Granted +10 {start + 7}",
        f"Play \u22123 {start - 3}",
        f"Sign-up +{start} {start}",
    ]
    assert "sound: airhorn" in html and "reason: birthday" in html
    assert 'src="/credits/balance.svg' in html and 'src="/credits/spending.svg' in html
    assert 'data-live="true"' in html


async def test_keyset_pages_stay_stable_while_rows_arrive(web: Web) -> None:
    user = await web.login("discord")
    await _spend(web.services, user.id or 0, 24)
    first = await (await web.client.get("/credits?limit=10")).text()
    assert len(_row_ids(first)) == 10
    second_link = _next_link(first)
    assert second_link is not None and "cursor=" in second_link and "limit=10" in second_link
    second = await (await web.client.get(second_link)).text()
    # New rows arrive while the member reads: the second page does not shift.
    await _spend(web.services, user.id or 0, 5)
    again = await (await web.client.get(second_link)).text()
    assert _row_ids(again) == _row_ids(second)
    assert 'data-live="false"' in again  # older pages do not take live rows
    third = await (await web.client.get(_next_link(second) or "")).text()
    assert len(_row_ids(third)) == 5  # 24 plays + signup = 25 rows, in pages of 10
    assert _next_link(third) is None
    assert "← Newest" in third
    seen = _row_ids(first) + _row_ids(second) + _row_ids(third)
    assert len(seen) == 25 and seen[-1].startswith("Sign-up")


async def test_filters_by_action_and_dates(web: Web) -> None:
    user = await web.login("discord")
    await _spend(web.services, user.id or 0, 2)
    await _spend(web.services, user.id or 0, 1, action="extraction")
    html = await (await web.client.get("/credits?action=extraction")).text()
    assert [r.split()[0] for r in _row_ids(html)] == ["Extraction"]
    assert '<option value="extraction" selected>' in html
    today = utcnow().date()
    html = await (await web.client.get(f"/credits?since={today}&until={today}")).text()
    assert len(_row_ids(html)) == 4
    yesterday = today - timedelta(days=1)
    html = await (await web.client.get(f"/credits?until={yesterday}")).text()
    assert _row_ids(html) == [] and "No transactions match these filters." in html
    bad = await web.client.get("/credits?since=yesterday")
    assert bad.status == 422 and "must be a date like 2026-01-31" in await bad.text()
    reversed_range = await web.client.get(f"/credits?since={today}&until={yesterday}")
    assert reversed_range.status == 422
    assert (await web.client.get("/credits?action=DROP%20TABLE")).status == 422
    assert (await web.client.get("/credits?limit=5000")).status == 422
    bad_cursor = await web.client.get("/credits?cursor=bm9wZQ")
    assert bad_cursor.status == 400 and "bad cursor" in await bad_cursor.text()


async def test_csv_export_has_every_filtered_row(web: Web) -> None:
    user = await web.login("discord")
    await _spend(web.services, user.id or 0, 3)
    await web.services.credits.grant(user.id or 0, 5, reason="=HYPERLINK(evil)")
    response = await web.client.get("/credits.csv")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[0] == [
        "id",
        "time_utc",
        "action",
        "amount",
        "balance_before",
        "balance_after",
        "details",
    ]
    assert [r[2] for r in rows[1:]] == ["grant", "play", "play", "play", "signup"]
    assert rows[2][3] == "-1"
    assert '"reason": "=HYPERLINK(evil)"' in rows[1][6]
    plays = list(
        csv.reader(io.StringIO(await (await web.client.get("/credits.csv?action=play")).text()))
    )
    assert len(plays) == 4


async def test_csv_export_streams_many_pages(web: Web) -> None:
    user = await web.login("discord")
    await _spend(web.services, user.id or 0, 90)
    await web.services.credits.grant(user.id or 0, 500, reason="top up")
    await _spend(web.services, user.id or 0, 160)
    text = await (await web.client.get("/credits.csv")).text()
    ids = [int(r[0]) for r in list(csv.reader(io.StringIO(text)))[1:]]
    assert len(ids) == 252 and ids == sorted(ids, reverse=True)


async def test_charts_are_svg_with_text_alternatives(web: Web) -> None:
    user = await web.login("discord")
    await _spend(web.services, user.id or 0, 4)
    await _spend(web.services, user.id or 0, 2, action="extraction")
    balance = await web.client.get("/credits/balance.svg")
    assert balance.status == 200 and balance.content_type == "image/svg+xml"
    svg = await balance.text()
    assert svg.startswith("<svg") and "<title" in svg and "<desc" in svg
    assert f"ended at {user.credits - 6}" in svg and 'class="line"' in svg
    spending = await (await web.client.get("/credits/spending.svg")).text()
    assert "Play 4" in spending and "Extraction 2" in spending
    only = await (await web.client.get("/credits/spending.svg?action=play")).text()
    assert "Play 4" in only and "Extraction" not in only
    old = await (
        await web.client.get("/credits/spending.svg?since=2020-01-01&until=2020-01-31")
    ).text()
    assert "No credits spent between 2020-01-01 and 2020-02-01" in old
    assert (await web.client.get("/credits/balance.svg?since=bad")).status == 422


async def test_member_pages_need_sign_in(web: Web) -> None:
    for path in ("/account", "/credits", "/credits.csv", "/credits/balance.svg", "/admin"):
        response = await web.client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/?next=")
    assert (await web.client.get("/credits/live")).status == 401


async def test_admin_pages_are_for_admins_only(web: Web) -> None:
    member = await web.login("discord")
    other = await make_user(web.services)
    for path in ("/admin", f"/admin/users/{other.id}"):
        response = await web.client.get(path)
        assert response.status == 403
        assert "Only administrators" in await response.text()
    csrf = await web.csrf()
    forbidden = await web.client.post(
        f"/admin/users/{member.id}/credits",
        data={"csrf_token": csrf, "amount": "1000", "reason": "free money"},
    )
    assert forbidden.status == 403
    assert (await web.services.users.get(member.id or 0)).credits == member.credits


async def test_admin_lists_users_and_adjusts_credits_and_plan(web: Web) -> None:
    admin = await web.make_admin(await web.login("discord"))
    members = [await make_user(web.services, name=f"member {i}") for i in range(3)]
    target = members[1]
    html = await (await web.client.get("/admin?limit=2")).text()
    assert admin.display_name in html and "member 0" in html and "member 1" not in html
    next_link = _next_link(html)
    assert next_link is not None
    html = await (await web.client.get(next_link)).text()
    assert "member 1" in html and "member 2" in html
    found = await web.client.get(f"/admin?find={target.discord_id}", allow_redirects=False)
    assert found.headers["Location"] == f"/admin/users/{target.id}"
    csrf = await web.csrf()
    page = f"/admin/users/{target.id}"
    granted = await web.client.post(
        f"{page}/credits", data={"csrf_token": csrf, "amount": "50", "reason": "contest winner"}
    )
    assert "Granted 50 credits. Balance: 150." in await granted.text()
    took = await web.client.post(
        f"{page}/credits",
        data={"csrf_token": csrf, "amount": "20", "reason": "abuse", "direction": "take"},
    )
    html = await took.text()
    assert "Took 20 credits. Balance: 130." in html and "reason: abuse" in html
    assert f"actor: web:{admin.id}" in html
    history = await web.services.credits.history(target.id or 0)
    assert [(t.action, t.amount, t.meta["reason"]) for t in history.items[:2]] == [
        ("take", -20, "abuse"),
        ("grant", 50, "contest winner"),
    ]
    plan = await web.client.post(f"{page}/plan", data={"csrf_token": csrf, "plan": "plus"})
    assert "The plan is now plus." in await plan.text()
    summary = await web.services.users.summary(target.id or 0)
    assert summary.plan.code == "plus"
    assert await web.services.credits.verify() == []


async def test_admin_form_errors_are_explained(web: Web) -> None:
    await web.make_admin(await web.login("discord"))
    target = await make_user(web.services, credits=5)
    csrf = await web.csrf()
    page = f"/admin/users/{target.id}"
    headers = {"Referer": f"{web.base_url}{page}"}
    cases = [
        ({"amount": "ten", "reason": "x"}, "The amount must be a whole number"),
        ({"amount": "0", "reason": "x"}, "between 1 and 1,000,000"),
        ({"amount": "5", "reason": " "}, "Give a reason"),
        ({"amount": "6", "reason": "x", "direction": "take"}, "Not enough credits"),
    ]
    for form, message in cases:
        response = await web.client.post(
            f"{page}/credits", data={"csrf_token": csrf, **form}, headers=headers
        )
        assert message in await response.text(), message
    bad_plan = await web.client.post(
        f"{page}/plan", data={"csrf_token": csrf, "plan": "gold"}, headers=headers
    )
    assert "There is no plan called 'gold'." in unescape(await bad_plan.text())
    assert (await web.services.users.get(target.id or 0)).credits == 5
    missing = await web.client.get("/admin/users/999999")
    assert missing.status == 404 and "No user with id 999999." in await missing.text()
    assert (await web.client.get("/admin?find=abc")).status == 422


async def test_unknown_page_is_a_friendly_404(web: Web) -> None:
    response = await web.client.get("/nope")
    assert response.status == 404
    html = await response.text()
    assert "There is nothing here." in html and "<html" in html
