"""Browser tests: Debian's chromium driven by Playwright through the real sign-in and pages.

Each test saves a screenshot in tests/artifacts/ and checks that it is not blank.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from core.models import User
from tests.core.helpers import make_user
from tests.web.conftest import Web, new_provider_user
from tests.web.oauth_provider import ProviderUser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    opened = await context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    await context.close()


def assert_not_blank(path: Path) -> None:
    """Decode the PNG and check it shows something: many colours, no colour covering it all."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).astype(np.uint32)
    pixels = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    colours, counts = np.unique(pixels, return_counts=True)
    assert len(colours) > 50, f"{path.name}: only {len(colours)} colours"
    assert counts.max() / len(pixels) < 0.95, f"{path.name}: one colour covers the page"


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    assert_not_blank(path)
    return path


async def member_with_history(web: Web, plays: int = 70) -> tuple[User, ProviderUser]:
    """A member the bot already knows, with a ledger long enough to page through."""
    user = await make_user(web.services, credits=200, name="Bot Member")
    for index in range(plays):
        action = "extraction" if index % 10 == 0 else "play"
        await web.services.credits.deduct(
            user.id or 0, 2 if action == "extraction" else 1, action=action, meta={"n": index}
        )
    await web.services.credits.grant(user.id or 0, 40, reason="weekly bonus", actor="cli")
    return user, ProviderUser(str(user.discord_id), "Ada Player", "ada")


async def sign_in(web: Web, page: Page, person: ProviderUser, flavor: str = "discord") -> None:
    web.provider.users[flavor] = person
    await page.goto(web.base_url + "/")
    await page.get_by_role("link", name=f"Sign in with {flavor.capitalize()}").click()
    await page.wait_for_url(web.base_url + "/credits")


async def test_sign_in_history_charts_csv_and_sign_out(web: Web, page: Page) -> None:
    user, person = await member_with_history(web)
    await page.goto(web.base_url + "/")
    await screenshot(page, "signin")
    await sign_in(web, page, person)
    fresh = await web.services.users.get(user.id or 0)
    await expect(page.locator("#balance")).to_have_text(str(fresh.credits))
    await expect(page.get_by_role("heading", name="Credits", exact=True)).to_be_visible()
    # Both charts load as images.
    for name in ("balance", "spending"):
        chart = page.locator(f'img[src^="/credits/{name}.svg"]')
        await expect(chart).to_be_visible()
        assert await chart.evaluate("img => img.complete && img.naturalWidth > 0")
    await screenshot(page, "credits")
    # Page through the history and back.
    rows = page.locator("#ledger-rows tr")
    await expect(rows).to_have_count(50)
    newest = await rows.first.inner_text()
    await page.get_by_role("link", name="Older →").click()
    await expect(rows).to_have_count(23)  # signup, setup grant, 70 spends, bonus: 73 rows
    assert "Sign-up" in await rows.last.inner_text()
    assert await rows.first.inner_text() != newest
    await page.get_by_role("link", name="← Newest").click()
    await expect(rows.first).to_have_text(newest)
    # Filter, then export what is shown as CSV.
    await page.get_by_label("Action").select_option("extraction")
    await page.get_by_role("button", name="Apply").click()
    await expect(rows).to_have_count(7)
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Export CSV").click()
    download = await download_info.value
    assert download.suggested_filename.startswith("credits-")
    content = Path(await download.path()).read_text()
    exported = list(csv.reader(io.StringIO(content)))
    assert exported[0][:3] == ["id", "time_utc", "action"]
    assert [r[2] for r in exported[1:]] == ["extraction"] * 7
    # Sign out.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(web.base_url + "/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.goto(web.base_url + "/credits")
    await page.wait_for_url(web.base_url + "/?next=/credits")


async def test_balance_changes_live_while_the_page_is_open(web: Web, page: Page) -> None:
    user, person = await member_with_history(web, plays=5)
    await sign_in(web, page, person)
    status = page.locator("#live-status")
    await expect(status).to_have_attribute("data-state", "live")
    before = (await web.services.users.get(user.id or 0)).credits

    async def spend_elsewhere() -> None:
        await web.services.credits.deduct(user.id or 0, 7, meta={"sound": "airhorn"})

    await asyncio.create_task(spend_elsewhere())
    await expect(page.locator("#balance")).to_have_text(str(before - 7))
    first_row = page.locator("#ledger-rows tr").first
    await expect(first_row).to_contain_text("Play")
    await expect(first_row).to_contain_text("\u22127")
    await expect(first_row).to_contain_text("sound: airhorn")
    await expect(page.locator("#ledger-rows tr")).to_have_count(9)  # 8 before, 1 live
    await screenshot(page, "credits-live")


async def test_account_tokens_dark_mode_and_phone(web: Web, browser: Browser) -> None:
    context = await browser.new_context(
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        await sign_in(web, page, new_provider_user("Phone Person", username="phone"), "github")
        await page.goto(web.base_url + "/account")
        await page.get_by_label("Name").fill("shortcut on my phone")
        await page.get_by_role("button", name="Create token").click()
        token = page.get_by_label("New API token")
        await expect(token).to_be_visible()
        assert (await token.input_value()).startswith("sb_")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 17, 21)"  # the dark palette
        # Nothing is wider than the phone's screen.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await screenshot(page, "account-dark-phone")
        await page.goto(web.base_url + "/credits")
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await screenshot(page, "credits-dark-phone")
    finally:
        await context.close()


async def test_keyboard_skip_link_and_focus(web: Web, page: Page) -> None:
    _, person = await member_with_history(web, plays=2)
    await sign_in(web, page, person)
    await page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    await expect(skip).to_be_focused()
    await expect(skip).to_be_in_viewport()
    outline = await skip.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline == "solid"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.textContent.trim()")
    assert focused  # the next stop is a real control inside the page
    await screenshot(page, "keyboard-focus", full_page=False)


async def test_admin_grants_credits_in_the_browser(web: Web, page: Page) -> None:
    _, person = await member_with_history(web, plays=1)
    await sign_in(web, page, person)
    admin = await web.services.users.get_by_discord_id(int(person.subject))
    await web.make_admin(admin)
    target = await make_user(web.services, name="Someone Else")
    await page.goto(web.base_url + "/admin")
    await page.get_by_role("link", name="Manage Someone Else").click()
    await page.get_by_label("Amount").fill("25")
    await page.get_by_label("Reason (kept in the ledger)").fill("won the quiz")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.get_by_role("status")).to_contain_text("Granted 25 credits")
    await expect(page.locator("table.ledger tbody tr").first).to_contain_text("won the quiz")
    assert (await web.services.users.get(target.id or 0)).credits == target.credits + 25
    await screenshot(page, "admin-user")
