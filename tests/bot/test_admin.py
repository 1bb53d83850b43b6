"""/admin: refused for plain members (and nothing changes), works for members who can manage
the server and for the bot's owners, whatever their permissions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from core.models import SoundType
from tests.bot.harness import BotEnv, bot_env
from tests.core import audiogen
from tests.dbutil import (
    PostgresTemplates,
    SqliteTemplates,
    fresh_database,
)
from tests.fakediscord import MANAGE_GUILD, FakeMember

OWNER_ID = 4242424242424242  # a bot owner (DISCORD_OWNER_IDS) with no permissions here
REFUSED = "Only members who can manage this server can do that."


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
) -> AsyncIterator[BotEnv]:
    """The usual bot, with one owner id configured; the owner is a member without rights."""
    url = await fresh_database(request.param, sqlite_templates, pg_templates)
    async with bot_env(
        tmp_path_factory.mktemp("bot"), url, discord_owner_ids=[OWNER_ID]
    ) as environment:
        await environment.fake.add_member(environment.guild.id, user_id=OWNER_ID, name="owner")
        yield environment


def owner(env: BotEnv) -> FakeMember:
    return env.fake.guilds[env.guild.id].members[OWNER_ID]


async def _user(env: BotEnv, member: FakeMember) -> int:
    return (await env.services.users.ensure_discord_user(member.id, member.user.username)).id or 0


async def _ledger(env: BotEnv, user_id: int) -> list[tuple[str, int]]:
    page = await env.services.credits.history(user_id, limit=100)
    return [(t.action, t.amount) for t in page.items]


def _render(path: Path, freq: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.render(path, f"sine=frequency={freq}:sample_rate=48000", seconds=0.3)


async def test_admin_is_registered_for_server_managers_only(env: BotEnv) -> None:
    admin = next(c for c in env.fake.commands[None] if c["name"] == "admin")
    assert admin["default_member_permissions"] == str(MANAGE_GUILD)
    assert admin["dm_permission"] is False
    assert sorted(o["name"] for o in admin["options"]) == [
        "credits",
        "normalize",
        "plan",
        "scan",
        "settings",
    ]


async def test_plain_member_is_refused_and_nothing_changes(env: BotEnv) -> None:
    bob = await _user(env, env.bob)
    ledger = await _ledger(env, bob)
    plan = (await env.services.users.summary(bob)).plan.code
    config = await env.services.guilds.config(env.guild.id)
    raw = await env.add_tone("ad raw", 440, normalize=False)
    originals = env.services.storage.originals / SoundType.SDB.folder
    dropped = await asyncio.to_thread(_render, originals / "refused_scan.wav", 450)

    attempts: list[tuple[str, dict[str, object]]] = [
        ("admin scan", {}),
        ("admin normalize", {}),
        ("admin normalize", {"sound": str(raw.id), "force": True}),
        ("admin credits grant", {"member": env.bob.id, "amount": 50, "reason": "me!"}),
        ("admin credits take", {"member": env.bob.id, "amount": 5, "reason": "oops"}),
        ("admin plan set", {"member": env.bob.id, "plan": "plus"}),
        ("admin settings", {}),
        ("admin settings", {"play_cost": 0, "entrance_sounds": False}),
        ("admin settings", {"reset": "everything"}),
    ]
    for name, options in attempts:
        assert await env.reply_text(env.alice, name, options) == REFUSED, name
        assert await env.reply_text(env.bob, name, options) == REFUSED, name
    choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.bob.id,
        "admin plan set",
        {"member": env.bob.id, "plan": ""},
        focused="plan",
    )
    assert choices == []

    assert await _ledger(env, bob) == ledger
    assert (await env.services.users.summary(bob)).plan.code == plan
    assert await env.services.guilds.config(env.guild.id) == config
    assert not (await env.services.sounds.get(raw.id or 0)).is_normalized
    names = {s.name for s in await env.services.sounds.list_all(all_guilds=True)}
    assert "refused scan" not in names
    dropped.unlink()


async def test_credits_grant_and_take(env: BotEnv) -> None:
    bob = await _user(env, env.bob)
    start = (await env.services.users.get(bob)).credits
    text = await env.reply_text(
        env.admin,
        "admin credits grant",
        {"member": env.bob.id, "amount": 50, "reason": "quiz winner"},
    )
    assert text == f"Gave 50 credits to <@{env.bob.id}>; they have {start + 50} now."
    row = (await env.services.credits.history(bob, limit=1)).items[0]
    assert (row.action, row.amount, row.meta) == (
        "grant",
        50,
        {"reason": "quiz winner", "actor": f"discord:{env.admin.id}"},
    )
    text = await env.reply_text(
        env.admin, "admin credits take", {"member": env.bob.id, "amount": 10, "reason": "spam"}
    )
    assert text == f"Took 10 credits from <@{env.bob.id}>; they have {start + 40} now."
    ledger = await _ledger(env, bob)
    text = await env.reply_text(
        env.admin,
        "admin credits take",
        {"member": env.bob.id, "amount": 100_000, "reason": "everything"},
    )
    assert text == f"bob has only {start + 40} credits; you can take at most {start + 40}."
    assert await _ledger(env, bob) == ledger
    # A member who never used the bot gets an account (with their welcome credits) first.
    newcomer = await env.fake.add_member(env.guild.id, name="newcomer")
    text = await env.reply_text(
        env.admin, "admin credits grant", {"member": newcomer.id, "amount": 5, "reason": "hi"}
    )
    assert text == f"Gave 5 credits to <@{newcomer.id}>; they have 105 now."
    assert await env.services.credits.verify() == []


async def test_plan_set_with_autocomplete(env: BotEnv) -> None:
    bob = await _user(env, env.bob)
    choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.admin.id,
        "admin plan set",
        {"member": env.bob.id, "plan": "pl"},
        focused="plan",
    )
    assert choices == [
        {"name": "Plus (plus): 500 every 24 h, up to 2000", "value": "plus"},
    ]
    text = await env.reply_text(env.admin, "admin plan set", {"member": env.bob.id, "plan": "plus"})
    assert text == f"<@{env.bob.id}> is now on the Plus plan."
    assert (await env.services.users.summary(bob)).plan.code == "plus"
    text = await env.reply_text(env.admin, "admin plan set", {"member": env.bob.id, "plan": "gold"})
    assert text == "There is no plan called 'gold'."
    text = await env.reply_text(env.admin, "admin plan set", {"member": env.bob.id, "plan": "Free"})
    assert text == f"<@{env.bob.id}> is now on the Free plan."
    assert (await env.services.users.summary(bob)).plan.code == "free"


async def test_settings_show_change_and_reset(env: BotEnv) -> None:
    role = await env.fake.add_role(env.guild.id, "uploaders")
    shown = (await env.reply_text(env.admin, "admin settings")).splitlines()
    assert shown == [
        "Soundboard settings for Soundboard Test",
        "Play cost: 1 credit",
        "Cooldown: 0 s",
        "Queue cap: 25 sounds",
        "Idle timeout: 300 s",
        "Entrance sounds: on",
        "Upload role: not set",
    ]
    changed = await env.reply_text(
        env.admin,
        "admin settings",
        {
            "play_cost": 2,
            "cooldown": 1.5,
            "queue_cap": 10,
            "idle_timeout": 60,
            "entrance_sounds": False,
            "upload_role": role.id,
        },
    )
    assert changed.splitlines() == [
        "Soundboard settings for Soundboard Test",
        "Settings updated.",
        "Play cost: 2 credits",
        "Cooldown: 1.5 s",
        "Queue cap: 10 sounds",
        "Idle timeout: 60 s",
        "Entrance sounds: off",
        f"Upload role: <@&{role.id}>",
    ]
    config = await env.services.guilds.config(env.guild.id)
    assert (config.play_cost, config.cooldown_seconds, config.queue_cap) == (2, 1.5, 10)
    assert (config.idle_timeout_seconds, config.entrance_sounds_enabled) == (60, False)
    assert config.upload_role_id == role.id

    # The new price is what a play costs now.
    sound = await env.add_tone("ad pricey", 520, seconds=0.2)
    await env.join_voice(env.alice)
    alice = await _user(env, env.alice)
    before = (await env.services.users.get(alice)).credits
    text = await env.reply_text(env.alice, "play", {"sound": str(sound.id)})
    assert text == f"Playing **ad pricey** (0.2 s) · {before - 2} credits left."

    both = await env.reply_text(env.admin, "admin settings", {"reset": "play_cost", "play_cost": 3})
    assert both == "Reset a setting or change it, not both at once."
    await env.reply_text(env.admin, "admin settings", {"reset": "cooldown"})
    assert (await env.services.guilds.config(env.guild.id)).cooldown_seconds == 0
    reset = await env.reply_text(env.admin, "admin settings", {"reset": "everything"})
    assert reset.splitlines()[2:] == shown[1:]


async def test_scan_and_normalize(env: BotEnv) -> None:
    originals = env.services.storage.originals / SoundType.SDB.folder
    await asyncio.to_thread(_render, originals / "fresh_drop.wav", 460)
    text = await env.reply_text(env.admin, "admin scan")
    assert text.startswith("Scan done in ")
    assert "1 added, 0 updated, 0 removed" in text and "0 skipped" in text, text
    scanned = await env.services.sounds.find(env.guild.id, "fresh drop")
    assert scanned.guild_id == env.guild.id and scanned.is_normalized

    one = await env.add_tone("ad one", 470, normalize=False)
    text = await env.reply_text(env.admin, "admin normalize", {"sound": str(one.id)})
    assert text == "Normalized 1 sound."
    assert (await env.services.sounds.get(one.id or 0)).is_normalized
    again = await env.reply_text(env.admin, "admin normalize", {"sound": str(one.id)})
    assert again == "1 sound was normalized already (use force to redo it)."
    forced = await env.reply_text(
        env.admin, "admin normalize", {"sound": str(one.id), "force": True}
    )
    assert forced == "Normalized 1 sound."
    both = await env.reply_text(
        env.admin, "admin normalize", {"sound": str(one.id), "type": SoundType.SDB.value}
    )
    assert both == "Choose a sound or a type, not both."

    # A server manager normalizes this server's sounds; another server's are not theirs.
    mine = await env.add_tone("ad mine", 480, normalize=False)
    theirs = await env.add_tone("ad theirs", 490, normalize=False, guild_id=999_999)
    text = await env.reply_text(env.admin, "admin normalize", {"type": SoundType.SDB.value})
    assert text.startswith("Normalized "), text
    assert (await env.services.sounds.get(mine.id or 0)).is_normalized
    assert not (await env.services.sounds.get(theirs.id or 0)).is_normalized
    # The bot's owners look after the whole library.
    text = await env.reply_text(owner(env), "admin normalize")
    assert text.startswith("Normalized "), text
    assert (await env.services.sounds.get(theirs.id or 0)).is_normalized
    text = await env.reply_text(env.admin, "admin normalize")
    assert text == (
        "Nothing to normalize: every sound is normalized already (use force to redo them)."
    )


async def test_owner_without_permissions_can_use_admin(env: BotEnv) -> None:
    boss = owner(env)
    shown = await env.reply_text(boss, "admin settings")
    assert shown.splitlines()[0] == "Soundboard settings for Soundboard Test"
    bob = await _user(env, env.bob)
    before = (await env.services.users.get(bob)).credits
    text = await env.reply_text(
        boss, "admin credits grant", {"member": env.bob.id, "amount": 7, "reason": "owner"}
    )
    assert text == f"Gave 7 credits to <@{env.bob.id}>; they have {before + 7} now."
    row = (await env.services.credits.history(bob, limit=1)).items[0]
    assert row.meta["actor"] == f"discord:{OWNER_ID}"
    # The owner sees other members' credits like a manager.
    shown = await env.reply_text(boss, "credits", {"member": env.bob.id})
    assert shown.splitlines()[0] == "Credits of bob"
