from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.config import ConfigError, load_settings
from core.logging_setup import configure_logging, redact


def test_defaults_put_everything_under_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, _env_file=None)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.as_posix()}/soundboard.db"
    assert settings.log_file == tmp_path / "logs" / "soundboard.log"
    assert (settings.web_host, settings.web_port) == ("127.0.0.1", 8000)
    assert settings.extraction_max_concurrent == 2
    assert (settings.loudness_target_i, settings.loudness_target_tp) == (-23.0, -2.0)


def test_env_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_OWNER_IDS", "1, 2,3")
    monkeypatch.setenv("EXTRACTION_ALLOWED_HOSTS", "a.example, b.example")
    settings = load_settings(_env_file=None)
    assert settings.discord_owner_ids == [1, 2, 3]
    assert settings.extraction_allowed_hosts == ["a.example", "b.example"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WEB_PORT", "http", "WEB_PORT"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("EXTRACTION_MAX_CONCURRENT", "0", "EXTRACTION_MAX_CONCURRENT"),
    ],
)
def test_invalid_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("SOUNDS_DIR=/srv/sounds\nQUEUE_CAP=9\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.sounds_dir == Path("/srv/sounds") and settings.queue_cap == 9


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    token = "MTA5ODc2NTQzMjEwOTg3NjU0.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
    settings = load_settings(
        data_dir=tmp_path, discord_token=token, session_secret="s3cr3t-session-key", _env_file=None
    )
    configure_logging(settings, console=False)
    try:
        log = logging.getLogger("tests.secret")
        log.warning("connecting with %s", token)
        log.warning("header Authorization: Bearer sb_live_abcdefghijklmnopqrstuvwx")
        log.warning("session key s3cr3t-session-key, client_secret=hunter2")
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
    text = (tmp_path / "logs" / "soundboard.log").read_text()
    assert "connecting with" in text
    for secret in (token, "sb_live_abcdefghijklmnopqrstuvwx", "s3cr3t-session-key", "hunter2"):
        assert secret not in text
    assert redact("token=abc123") == "token=[redacted]"
    logging.getLogger().handlers.clear()


def test_the_log_file_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, log_max_bytes=10_000, log_backup_count=50, _env_file=None
    )
    configure_logging(settings, console=False)
    try:
        log = logging.getLogger("tests.rotation")
        for index in range(500):
            log.warning("line %03d of the rotation test", index)
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        logging.getLogger().handlers.clear()
    logs = tmp_path / "logs"
    # soundboard.log.N is older the larger N is; soundboard.log is the newest.
    files = sorted(logs.glob("soundboard.log*"), key=lambda p: -int(p.name[15:] or 0))
    assert len(files) > 3
    assert all(f.stat().st_size <= 10_000 for f in files)
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert [line.rsplit("line ", 1)[1][:3] for line in lines] == [f"{i:03d}" for i in range(500)]
