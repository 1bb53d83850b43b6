"""Every setting is documented in .env.example and the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    names = [name.upper() for name in Settings.model_fields]
    missing_example = [n for n in names if f"\n{n}=" not in example and f"\n# {n}=" not in example]
    missing_readme = [n for n in names if f"`{n}`" not in readme]
    assert missing_example == []
    assert missing_readme == []


def test_env_example_parses_as_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.web_port == 8000 and settings.credits_default_plan == "free"
    assert settings.shard_count is None and settings.database_url.endswith("soundboard.db")
