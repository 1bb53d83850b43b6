"""Console plus a size-rotated log file; secrets are masked before anything is written."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

from core.config import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SECRET_PATTERNS = (
    # Discord bot tokens: three base64 segments separated by dots.
    re.compile(r"[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,40}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:token|secret|password|code_verifier|client_secret)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,]+"
    ),
    re.compile(r"sb_[A-Za-z0-9_-]{20,}"),  # our API tokens
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        # The message is built here once: the formatter then has no arguments to apply again.
        record.msg, record.args = redact(record.getMessage(), self.secrets), None
        return True


class SizeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that formats each record once and asks the file system nothing
    per record. The standard one formats every record twice and checks the path with two stat
    calls before each line (to leave special files such as /dev/null alone), which made up a
    third of the cost of a log line; the web app writes one per request. Here that check runs
    when the file is opened."""

    _regular: bool | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
            if self._regular is None:
                self._regular = os.path.isfile(self.baseFilename)
            if self.maxBytes > 0 and self._regular:
                self.stream.seek(0, 2)  # the end, wherever other processes have written to
                if self.stream.tell() + len(message) >= self.maxBytes:
                    self.doRollover()
            self.stream.write(message)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def doRollover(self) -> None:
        super().doRollover()
        self._regular = None


def configure_logging(settings: Settings, *, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(settings.log_level)
    secrets = (
        settings.discord_token,
        settings.session_secret,
        settings.oauth_discord_client_secret,
        settings.oauth_github_client_secret,
        settings.oauth_google_client_secret,
        settings.oauth_oidc_client_secret,
    )
    redactor = RedactingFilter(tuple(s for s in secrets if s))
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            SizeRotatingFileHandler(
                settings.log_file,
                maxBytes=settings.log_max_bytes,
                backupCount=settings.log_backup_count,
                encoding="utf-8",
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
        root.addHandler(handler)
    # Library chatter stays out of the way unless we are debugging.
    for noisy in ("discord", "aiohttp.access", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
