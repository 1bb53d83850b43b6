"""Settings for every process, read from the environment and `.env`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it in one line."""


class NormalizedFormat(StrEnum):
    OGG = "ogg"
    MP3 = "mp3"


def _split_ints(value: Any) -> Any:
    if isinstance(value, str):
        return [int(part) for part in value.replace(" ", "").split(",") if part]
    if isinstance(value, int):
        return [value]
    return value


def _split_strs(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    # Storage
    data_dir: Path = Path("./data")
    database_url: str = ""
    sounds_dir: Path = Path("./sounds")
    database_echo: bool = False
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)

    # Logging
    log_level: str = "INFO"
    log_file: Path | None = None
    log_max_bytes: int = Field(default=5_000_000, ge=10_000)
    log_backup_count: int = Field(default=5, ge=0)

    # Discord
    discord_token: str = ""
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_owner_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    discord_guild_ready_timeout: float = Field(default=2.0, ge=0)
    discord_sync_guild_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)

    # Web
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=0, le=65535)
    web_base_url: str = "http://127.0.0.1:8000"
    session_secret: str = ""
    api_rate_limit_per_minute: int = Field(default=120, ge=1)

    oauth_discord_client_id: str = ""
    oauth_discord_client_secret: str = ""
    oauth_discord_authorize_url: str = "https://discord.com/oauth2/authorize"
    oauth_discord_token_url: str = "https://discord.com/api/oauth2/token"
    oauth_discord_userinfo_url: str = "https://discord.com/api/users/@me"
    oauth_discord_cdn_url: str = "https://cdn.discordapp.com"
    oauth_github_client_id: str = ""
    oauth_github_client_secret: str = ""
    oauth_github_authorize_url: str = "https://github.com/login/oauth/authorize"
    oauth_github_token_url: str = "https://github.com/login/oauth/access_token"
    oauth_github_userinfo_url: str = "https://api.github.com/user"
    oauth_google_client_id: str = ""
    oauth_google_client_secret: str = ""
    oauth_google_issuer: str = "https://accounts.google.com"
    oauth_oidc_issuer: str = ""
    oauth_oidc_client_id: str = ""
    oauth_oidc_client_secret: str = ""
    oauth_oidc_name: str = "OpenID Connect"

    # Sound library
    sound_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    sound_max_duration_ms: int = Field(default=10 * 60 * 1000, ge=1)
    normalize_on_add: bool = True
    normalized_audio_format: NormalizedFormat = NormalizedFormat.OGG
    normalized_audio_bitrate: str = "128k"
    normalized_audio_passes: int = Field(default=2, ge=1, le=2)
    loudness_target_i: float = -23.0
    loudness_target_tp: float = -2.0
    loudness_target_lra: float = 7.0
    # A normalization worker renews its sounds' leases while it works; the sounds of a worker
    # whose lease ran out (it died) are taken by another worker.
    normalize_lease_seconds: float = Field(default=60.0, ge=1)
    # The bot process runs a normalization worker; turn it off when dedicated
    # `soundboard normalize --worker` processes do the work.
    normalize_worker_in_bot: bool = True

    # Playback
    queue_cap: int = Field(default=25, ge=1)
    idle_timeout_seconds: int = Field(default=300, ge=5)
    play_cooldown_seconds: float = Field(default=2.0, ge=0)
    # "opus" streams the Ogg Opus playback file; "ffmpeg-pcm" is discord.py's stock path
    # (ffmpeg decodes, the bot encodes), kept only to measure against.
    playback_engine: Literal["opus", "ffmpeg-pcm"] = "opus"
    pacer_stats_interval_seconds: float = Field(default=60.0, gt=0)

    # Extraction
    extraction_max_concurrent: int = Field(default=2, ge=1)
    extraction_max_queued_per_user: int = Field(default=3, ge=1)
    extraction_temp_dir: Path | None = None
    extraction_thumbnail_dir: Path | None = None
    extraction_max_duration_seconds: int = Field(default=600, ge=1)
    extraction_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    extraction_timeout_seconds: int = Field(default=300, ge=1)
    extraction_allow_generic: bool = False
    extraction_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # host:port pairs fetched despite a private address (tests' local server, an intranet
    # mirror); every other loopback/private/link-local address stays refused.
    extraction_allow_private_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A worker renews its job's lease while it works; a job whose lease ran out is retried.
    extraction_lease_seconds: float = Field(default=60.0, ge=1)

    # Credits
    credits_play_cost: int = Field(default=1, ge=0)
    credits_extraction_cost: int = Field(default=10, ge=0)
    credits_default_plan: str = "free"

    @field_validator("discord_owner_ids", "discord_sync_guild_ids", "shard_ids", mode="before")
    @classmethod
    def _ints(cls, value: Any) -> Any:
        return _split_ints(value)

    @field_validator("extraction_allowed_hosts", "extraction_allow_private_hosts", mode="before")
    @classmethod
    def _strs(cls, value: Any) -> Any:
        return _split_strs(value)

    @field_validator("extraction_allow_private_hosts")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for entry in value:
            host, sep, port = entry.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port pairs, got {entry!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if not self.database_url:
            self.database_url = (
                f"sqlite+aiosqlite:///{(self.data_dir / 'soundboard.db').as_posix()}"
            )
        if self.log_file is None:
            self.log_file = self.data_dir / "logs" / "soundboard.log"
        if self.extraction_temp_dir is None:
            self.extraction_temp_dir = self.sounds_dir / "temp"
        if self.extraction_thumbnail_dir is None:
            self.extraction_thumbnail_dir = (
                self.sounds_dir / "originals" / "extracted" / "thumbnails"
            )
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def temp_dir(self) -> Path:
        assert self.extraction_temp_dir is not None
        return self.extraction_temp_dir

    @property
    def thumbnail_dir(self) -> Path:
        assert self.extraction_thumbnail_dir is not None
        return self.extraction_thumbnail_dir


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]).upper() or "settings"
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None
