"""The `soundboard` command line, run as a user would (in-process `main`, and once as a process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from soundboard_cli.main import main


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SOUNDS_DIR", str(tmp_path / "sounds"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_users_and_credits_round_trip(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "users", "add", "--discord-id", "4242", "--name", "Ada", "--admin")
    assert code == 0 and "Ada" in out
    code, out, _ = run(capsys, "users", "list", "--json")
    users = json.loads(out)
    assert [(u["discord_id"], u["role"], u["plan"]) for u in users] == [(4242, "admin", "free")]
    start = users[0]["credits"]

    assert run(capsys, "credits", "grant", "4242", "25", "--reason", "contest")[0] == 0
    code, out, err = run(capsys, "credits", "take", "4242", str(start + 1000), "--reason", "x")
    assert code == 1 and "Not enough credits" in err and out == ""
    assert run(capsys, "credits", "take", "4242", "5", "--reason", "fine")[0] == 0
    code, out, _ = run(capsys, "credits", "balance", "4242")
    assert code == 0 and f"{start + 20} credits" in out

    code, out, _ = run(capsys, "credits", "history", "4242", "--json")
    history = json.loads(out)
    assert [(r["action"], r["amount"]) for r in history] == [
        ("take", -5),
        ("grant", 25),
        ("signup", start),
    ]
    assert history[1]["metadata"]["reason"] == "contest"
    code, out, _ = run(capsys, "credits", "verify")
    assert code == 0 and "verifies" in out


def test_verify_exits_nonzero_naming_the_broken_row(
    cli_env: Path, capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    import sqlite3

    run(capsys, "users", "add", "--discord-id", "1", "--name", "Bob")
    run(capsys, "credits", "grant", "1", "3", "--reason", "x")
    with sqlite3.connect(sqlite_url.split("///", 1)[1]) as conn:
        row_id = conn.execute("SELECT max(id) FROM credit_transaction").fetchone()[0]
        conn.execute("UPDATE credit_transaction SET amount = 4 WHERE id = ?", (row_id,))
    code, _, err = run(capsys, "credits", "verify")
    assert code == 1 and f"transaction {row_id}" in err


def test_errors_are_one_line(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "credits", "balance", "999")
    assert code == 1 and err.strip() == "error: No user with Discord id 999."
    run(capsys, "users", "add", "--discord-id", "5", "--name", "Eve")
    code, _, err = run(capsys, "users", "add", "--discord-id", "5", "--name", "Eve")
    assert code == 1 and "already exists" in err and "Traceback" not in err
    code, _, err = run(capsys, "credits", "grant", "5", "0", "--reason", "x")
    assert code == 1 and "positive" in err


def test_db_upgrade_and_bad_settings_as_a_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("soundboard")
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "d"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [exe, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "soundboard.db").exists()
    assert (tmp_path / "d" / "logs" / "soundboard.log").exists()
    bad = subprocess.run(
        [exe, "users", "list"],
        cwd=tmp_path,
        env={**env, "WEB_PORT": "nope"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: invalid setting WEB_PORT")
    assert "Traceback" not in bad.stderr
    missing = subprocess.run(
        [exe, "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and "DISCORD_TOKEN" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "bot", "web", "db", "users", "credits"):
        assert command in out
