"""In-memory state of the fake Discord: users, guilds, interactions, records."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._util import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    FLAG_LOADING,
    GUILD_TEXT,
    GUILD_VOICE,
    iso_now,
)

if TYPE_CHECKING:
    from aiohttp import web

    from .server import FakeDiscord


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class FakeChannel:
    id: int
    guild_id: int | None
    name: str
    type: int = GUILD_TEXT
    position: int = 0
    bitrate: int = 64000
    user_limit: int = 0
    recipients: list[FakeUser] = field(default_factory=list)

    @property
    def is_voice(self) -> bool:
        return self.type == GUILD_VOICE

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "flags": 0,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.type == GUILD_TEXT:
            data.update(topic=None, last_message_id=None, rate_limit_per_user=0)
        elif self.type == GUILD_VOICE:
            data.update(
                bitrate=self.bitrate,
                user_limit=self.user_limit,
                rtc_region=None,
                video_quality_mode=1,
                last_message_id=None,
                rate_limit_per_user=0,
            )
        if self.recipients:
            data["recipients"] = [u.payload() for u in self.recipients]
            data.pop("name", None)
        return data


@dataclass
class FakeMember:
    user: FakeUser
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self, *, permissions: int | None = None, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids],
            "nick": self.nick,
            "avatar": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class VoiceStateRecord:
    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    voice_states: dict[int, VoiceStateRecord] = field(default_factory=dict)

    @property
    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == GUILD_TEXT]

    @property
    def voice_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == GUILD_VOICE]

    @property
    def text_channel(self) -> FakeChannel:
        """The first text channel."""
        return self.text_channels[0]

    @property
    def voice_channel(self) -> FakeChannel:
        """The first voice channel."""
        return self.voice_channels[0]

    def channel(self, name: str) -> FakeChannel:
        for c in self.channels.values():
            if c.name == name:
                return c
        raise KeyError(name)

    def role(self, name: str) -> FakeRole:
        for r in self.roles.values():
            if r.name == name:
                return r
        raise KeyError(name)

    def permissions_for(self, user_id: int) -> int:
        """Guild-level permissions (no channel overwrites exist in the fake)."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.roles[self.id].permissions if self.id in self.roles else 0
        member = self.members.get(user_id)
        if member is not None:
            for rid in member.role_ids:
                role = self.roles.get(rid)
                if role is not None:
                    perms |= role.permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def payload(self, bot_user_id: int) -> dict[str, Any]:
        bot_member = self.members.get(bot_user_id)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": bot_member.joined_at if bot_member else iso_now(),
            "channels": [c.payload() for c in self.channels.values()],
            "members": [m.payload() for m in self.members.values()],
            "voice_states": [
                {
                    "user_id": str(vs.user_id),
                    "channel_id": str(vs.channel_id),
                    "session_id": vs.session_id,
                    "deaf": False,
                    "mute": False,
                    "self_deaf": vs.self_deaf,
                    "self_mute": vs.self_mute,
                    "self_video": False,
                    "suppress": False,
                    "request_to_speak_timestamp": None,
                }
                for vs in self.voice_states.values()
            ],
            "presences": [],
            "threads": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class StoredAttachment:
    id: int
    filename: str
    content_type: str
    data: bytes
    url: str
    description: str | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            data["description"] = self.description
        return data


@dataclass(frozen=True)
class CallbackRecord:
    """One ``POST /interactions/{id}/{token}/callback`` as received."""

    type: int
    data: dict[str, Any]
    received_at_ns: int
    files: list[StoredAttachment] = field(default_factory=list)


@dataclass(frozen=True)
class MessageEvent:
    """A create/edit/delete of a stored message (``message`` is a snapshot)."""

    kind: str  # "create" | "edit" | "delete"
    message: dict[str, Any]
    at_ns: int
    interaction_id: int | None = None


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    at_ns: int
    json: Any = None


@dataclass
class InjectedError:
    method: str
    path_contains: str
    status: int
    body: dict[str, Any]
    remaining: int


@dataclass
class FakeInteraction:
    """An INTERACTION_CREATE the fake sent, and what the bot answered."""

    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user_id: int
    payload: dict[str, Any]
    fake: FakeDiscord = field(repr=False)
    sent_at_ns: int = 0
    callbacks: list[CallbackRecord] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)

    @property
    def callback(self) -> CallbackRecord | None:
        return self.callbacks[0] if self.callbacks else None

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def original_message(self) -> dict[str, Any] | None:
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[dict[str, Any]]:
        return [self.fake.messages[i] for i in self.followup_ids if i in self.fake.messages]

    async def wait_for_callback(self, timeout: float = 5.0) -> CallbackRecord:
        return await self.fake.wait_for_callback(self, timeout)

    async def wait_for_original(
        self,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        return await self.fake.wait_for_original_message(self, predicate, timeout=timeout)

    async def wait_for_followup(self, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        return await self.fake.wait_for_followup(self, count=count, timeout=timeout)

    def message_is_final(self) -> bool:
        msg = self.original_message
        return msg is not None and not (int(msg.get("flags", 0)) & FLAG_LOADING)


@dataclass
class GatewaySession:
    """A main-gateway session (one shard of one bot)."""

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    ws: web.WebSocketResponse | None = None
    seq: int = 0
    ready: bool = False
    resumes: int = 0
    heartbeats: int = 0
    #: Sequence number carried by the client's last heartbeat.
    last_heartbeat_seq: int | None = None
    buffer: collections.deque[tuple[int, str]] = field(
        default_factory=lambda: collections.deque(maxlen=5000)
    )
    created_ns: int = field(default_factory=time.perf_counter_ns)

    def covers(self, guild_id: int) -> bool:
        return (guild_id >> 22) % self.shard_count == self.shard_id
