"""yt-dlp, fenced in: metadata first, then the download, every byte through a `FetchGuard`.

Everything here blocks; the extraction service runs it in worker threads. Errors come out as
`FetchError` with a message written for the member who asked.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from core.services.sounds import human_size
from core.services.url_safety import (
    ALLOWED_SCHEMES,
    AddressPolicy,
    FetchGuard,
    JobCancelled,
    UnsafeURL,
    check_and_resolve,
    make_handler_class,
)

log = logging.getLogger(__name__)

# Downloaders that fetch through yt-dlp's request director (and so through the guard). Anything
# else (ffmpeg, rtmpdump, aria2c...) would open connections we cannot see, so it is refused.
SAFE_DOWNLOADERS = frozenset({"HttpFD", "HlsFD", "DashSegmentsFD"})
SAFE_PROTOCOLS = frozenset({"http", "https", "m3u8_native", "http_dash_segments"})
THUMBNAIL_MAX_BYTES = 5 * 1024 * 1024
_THUMBNAIL_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
)
_JS_RUNTIME_MARKERS = (
    "no supported javascript runtime",
    "js challenge",
    "challenge solving failed",
    "signature solving failed",
    "n challenge",
    "remote component",
)
JS_RUNTIME_MESSAGE = (
    "This site needs a JavaScript runtime that the server does not have: the server's admin "
    "must install the yt-dlp-ejs package and deno (or node)."
)
# Extractors whose ids are only file names or "page-1": the page address makes them unique.
_PAGE_SCOPED_EXTRACTORS = frozenset({"generic", "html5mediaembed"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FetchError(Exception):
    """Extraction failed; the message is meant for the member."""


class TooBig(FetchError):
    pass


@dataclass(frozen=True)
class FetchLimits:
    max_duration_seconds: int
    max_bytes: int
    socket_timeout: float


@dataclass
class MediaInfo:
    service: str
    service_id: str
    title: str
    duration: float | None
    filesize: int | None
    webpage_url: str
    thumbnail: str | None
    has_video: bool
    info: dict[str, Any] = field(repr=False, default_factory=dict)


class _Logger:
    """yt-dlp's logger: into ours at debug level, remembering warnings and errors."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.messages: list[str] = []

    def _keep(self, message: str) -> None:
        if len(self.messages) < 200:
            self.messages.append(_ANSI.sub("", message))

    def debug(self, message: str) -> None:
        if message.startswith("[download]") and "%" in message:
            return  # progress lines
        self._keep(message)
        log.debug("yt-dlp job=%s %s", self.job, message)

    def info(self, message: str) -> None:
        self.debug(message)

    def warning(self, message: str) -> None:
        self._keep(message)
        log.info("yt-dlp warning job=%s %s", self.job, _ANSI.sub("", message))

    def error(self, message: str) -> None:
        self._keep(message)
        log.info("yt-dlp error job=%s %s", self.job, _ANSI.sub("", message))

    def saw(self, markers: Iterable[str]) -> bool:
        lowered = [m.lower() for m in self.messages]
        return any(marker in text for text in lowered for marker in markers)


def _clean(message: str) -> str:
    text = _ANSI.sub("", message).strip()
    text = re.sub(r"^ERROR:\s*", "", text)
    text = re.sub(r"^\[[\w:]+\]\s*(?:[\w-]+:\s*)?", "", text)
    text = re.sub(r"\s*\(caused by .*$", "", text, flags=re.DOTALL)
    return text.splitlines()[0][:300] if text else "unknown error"


def service_key(info: dict[str, Any], url: str) -> tuple[str, str]:
    """(service, media id). The generic extractor's ids are just file names, so there the id
    is the page address itself."""
    service = str(info.get("extractor_key") or info.get("ie_key") or "unknown")[:64]
    ident = str(info.get("id") or "")
    if service.lower() in _PAGE_SCOPED_EXTRACTORS:
        page = str(info.get("webpage_url") or url).split("#", 1)[0]
        ident = page if service.lower() == "generic" else f"{page}#{ident}"
    if len(ident) > 255:
        ident = "sha256:" + sha256(ident.encode()).hexdigest()
    if not ident:
        raise FetchError("The site did not say which media this is.")
    return service, ident


def _selected_formats(info: dict[str, Any]) -> list[dict[str, Any]]:
    requested = info.get("requested_formats")
    if requested:
        return [f for f in requested if isinstance(f, dict)]
    return [info]


class MediaFetcher:
    """One job's yt-dlp session. Not thread-safe: one worker thread at a time uses it."""

    def __init__(
        self,
        *,
        job_id: int,
        guard: FetchGuard,
        policy: AddressPolicy,
        workdir: Path,
        limits: FetchLimits,
        allow_generic: bool,
        allowed_hosts: list[str],
        cache_dir: Path | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.guard = guard
        self.policy = policy
        self.workdir = workdir
        self.limits = limits
        self.allow_generic = allow_generic
        self.allowed_hosts = allowed_hosts
        self.cache_dir = cache_dir
        self.progress = progress
        self.logger = _Logger(str(job_id))
        self.downloaded_bytes = 0
        self._ydl: Any = None
        self._lock = threading.Lock()

    # ----- yt-dlp ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        ffmpeg_blackhole = self.workdir / "no-ffmpeg"
        ffmpeg_blackhole.mkdir(parents=True, exist_ok=True)
        return {
            "logger": self.logger,
            "quiet": True,
            "no_warnings": False,
            "noprogress": True,
            "color": {"stdout": "no_color", "stderr": "no_color"},
            # Sites yt-dlp knows; the generic extractor ("any page") only when allowed.
            "allowed_extractors": ["default"] if self.allow_generic else ["default", "-generic"],
            "default_search": "error",
            "noplaylist": True,
            "extract_flat": "in_playlist",
            "format": "bestaudio/best",
            "max_filesize": self.limits.max_bytes,
            "socket_timeout": self.limits.socket_timeout,
            "retries": 1,
            "fragment_retries": 1,
            "extractor_retries": 0,
            "file_access_retries": 0,
            "skip_unavailable_fragments": False,
            "outtmpl": {"default": str(self.workdir / "media.%(ext)s")},
            "paths": {"home": str(self.workdir), "temp": str(self.workdir)},
            "overwrites": True,
            "continuedl": False,
            "restrictfilenames": True,
            "writethumbnail": False,
            "writesubtitles": False,
            "writeinfojson": False,
            "postprocessors": [],
            "fixup": "never",
            "proxy": "",
            "enable_file_urls": False,
            "hls_prefer_native": True,
            # An empty folder: yt-dlp's own ffmpeg use (which would fetch URLs itself) fails.
            "ffmpeg_location": str(ffmpeg_blackhole),
            "cachedir": str(self.cache_dir) if self.cache_dir else False,
            "js_runtimes": {"deno": {}, "node": {}},
            "remote_components": [],
            "progress_hooks": [self._hook],
            "live_from_start": False,
            "wait_for_video": None,
            "check_formats": False,
            "ignoreerrors": False,
        }

    def _make_ydl(self) -> Any:
        import yt_dlp
        from yt_dlp.downloader import get_suitable_downloader

        handler = make_handler_class(self.guard)

        class SafeYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]
            # The guarded urllib handler is the only way out: no requests, curl_cffi or
            # websockets handlers, whatever happens to be installed.
            def build_request_director(self, handlers: Any, preferences: Any = None) -> Any:
                return super().build_request_director([handler])

            def dl(self, name: str, info: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
                fd = get_suitable_downloader(info, self.params)
                if fd is None or fd.__name__ not in SAFE_DOWNLOADERS:
                    raise FetchError(
                        "This media is only available over a streaming protocol I don't fetch "
                        f"({info.get('protocol') or 'unknown'})."
                    )
                return super().dl(name, info, *args, **kwargs)

        return SafeYoutubeDL(self._params())

    @property
    def ydl(self) -> Any:
        with self._lock:
            if self._ydl is None:
                self._ydl = self._make_ydl()
            return self._ydl

    def close(self) -> None:
        with self._lock:
            ydl, self._ydl = self._ydl, None
        if ydl is not None:
            try:
                ydl.close()
            except Exception:
                log.debug("yt-dlp close failed job=%s", self.job_id, exc_info=True)

    def _hook(self, status: dict[str, Any]) -> None:
        from yt_dlp.utils import DownloadCancelled

        if self.guard.cancelled:
            raise DownloadCancelled(self.guard.cancel_reason)
        downloaded = int(status.get("downloaded_bytes") or 0)
        self.downloaded_bytes = max(self.downloaded_bytes, downloaded)
        if downloaded > self.limits.max_bytes:
            raise TooBig(self._too_big(downloaded))
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        fraction: float | None = None
        if total:
            if total > self.limits.max_bytes and status.get("total_bytes"):
                raise TooBig(self._too_big(int(total)))
            fraction = downloaded / float(total)
        elif status.get("fragment_count"):
            fraction = float(status.get("fragment_index") or 0) / float(status["fragment_count"])
        if status.get("status") == "finished":
            fraction = 1.0
        if fraction is not None and self.progress is not None:
            self.progress(max(0.0, min(1.0, fraction)))

    def _too_big(self, size: int | None = None) -> str:
        limit = human_size(self.limits.max_bytes)
        if size is None:
            return f"The download is too big (the limit is {limit})."
        return f"The download is too big ({human_size(size)} or more; the limit is {limit})."

    # ----- errors ------------------------------------------------------------------------

    def explain(self, exc: BaseException) -> FetchError:
        """Turn whatever yt-dlp raised into one plain sentence."""
        if isinstance(exc, FetchError):
            return exc
        if isinstance(exc, UnsafeURL):
            return FetchError(str(exc))
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, FetchError):
                return cause
            cause = cause.__cause__ or cause.__context__
        if self.guard.blocked:
            return FetchError(
                "That link leads to a local or private network address, which I never fetch "
                f"({self.guard.blocked[0].split(' ', 1)[0][:100]})."
            )
        if self.guard.cancelled or isinstance(exc, JobCancelled):
            return FetchError(self.guard.cancel_reason or "The job was cancelled.")
        message = str(exc)
        low = message.lower()
        if any(m in low for m in _JS_RUNTIME_MARKERS) or (
            self.logger.saw(_JS_RUNTIME_MARKERS)
            and any(
                m in low
                for m in ("format is not available", "no video formats", "only images", "sign in")
            )
        ):
            return FetchError(JS_RUNTIME_MESSAGE)
        if "unsupported url" in low or "no suitable extractor" in low:
            if self.allow_generic:
                return FetchError("I couldn't find any audio or video at that link.")
            return FetchError(
                "That site is not supported: only sites that yt-dlp knows can be used here."
            )
        found = re.search(r"HTTP Error (\d{3})", message)
        if found:
            code = int(found.group(1))
            if code == 404:
                return FetchError("The page was not found (HTTP 404).")
            if code in (401, 403):
                return FetchError(f"The site refused access (HTTP {code}).")
            return FetchError(f"The site answered with an error (HTTP {code}).")
        if "timed out" in low or "timeout" in low:
            return FetchError("The site took too long to answer.")
        if "larger than max-filesize" in low or self.logger.saw(["larger than max-filesize"]):
            return TooBig(self._too_big())
        if any(
            m in low
            for m in (
                "no video formats",
                "requested format is not available",
                "no media",
                "unable to extract",
                "only images are available",
            )
        ):
            return FetchError("I couldn't find any audio or video at that link.")
        return FetchError(f"The download failed: {_clean(message)}")

    # ----- steps -------------------------------------------------------------------------

    def probe(self, url: str) -> MediaInfo:
        """Resolve and check the URL, then ask yt-dlp what is there (nothing downloaded)."""
        check_and_resolve(url, policy=self.policy, allowed_hosts=self.allowed_hosts)
        self.guard.check_cancelled()
        try:
            info = self.ydl.extract_info(url, download=False)
        except Exception as exc:
            raise self.explain(exc) from exc
        if not isinstance(info, dict):
            raise FetchError("I couldn't find any audio or video at that link.")
        kind = info.get("_type", "video")
        if kind in ("playlist", "multi_video"):
            raise FetchError(
                "That link is a playlist or a page with several videos; link one video instead."
            )
        if kind != "video":
            raise FetchError("I couldn't find any audio or video at that link.")
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            raise FetchError("Live streams can't be extracted; try again once it has ended.")
        page = str(info.get("webpage_url") or url)
        if self.allowed_hosts:
            # The site the extractor ended up on must be allowed too.
            check_and_resolve(page, policy=self.policy, allowed_hosts=self.allowed_hosts)
        service, service_id = service_key(info, url)
        formats = _selected_formats(info)
        sizes = [f.get("filesize") or f.get("filesize_approx") for f in formats]
        filesize = sum(int(s) for s in sizes if s) or None
        duration = info.get("duration")
        has_video = any(f.get("vcodec") not in (None, "none") for f in formats)
        thumbnail = info.get("thumbnail")
        return MediaInfo(
            service=service,
            service_id=service_id,
            title=str(info.get("title") or info.get("id") or "extracted sound")[:500],
            duration=float(duration) if isinstance(duration, int | float) else None,
            filesize=filesize,
            webpage_url=page,
            thumbnail=thumbnail if isinstance(thumbnail, str) else None,
            has_video=has_video,
            info=info,
        )

    def check_limits(self, media: MediaInfo) -> None:
        limit = self.limits.max_duration_seconds
        if media.duration is not None and media.duration > limit:
            raise FetchError(
                f"That is too long ({media.duration / 60:.1f} min; the limit is "
                f"{limit / 60:.0f} min)."
            )
        if media.filesize is not None and media.filesize > self.limits.max_bytes:
            raise TooBig(self._too_big(media.filesize))
        for fmt in _selected_formats(media.info):
            protocol = str(fmt.get("protocol") or "")
            for part in protocol.split("+"):
                if part not in SAFE_PROTOCOLS:
                    raise FetchError(
                        "This media is only available over a streaming protocol I don't fetch "
                        f"({part or 'unknown'})."
                    )
            media_url = fmt.get("url")
            if isinstance(media_url, str) and media_url.split(":", 1)[0].lower() in (
                ALLOWED_SCHEMES
            ):
                # Early, clear refusal; the guard checks every connection again anyway.
                check_and_resolve(media_url, policy=self.policy)

    def download(self, media: MediaInfo) -> Path:
        """Download the selected audio into the work folder; returns the file."""
        self.guard.check_cancelled()
        started = time.monotonic()
        try:
            self.ydl.process_ie_result(media.info, download=True)
        except Exception as exc:
            raise self.explain(exc) from exc
        if self.logger.saw(["larger than max-filesize"]):
            raise TooBig(self._too_big())
        files = [
            p
            for p in self.workdir.glob("media.*")
            if p.is_file() and not p.name.endswith((".part", ".ytdl", ".temp"))
        ]
        if not files:
            raise FetchError("The download did not produce a file.")
        path = max(files, key=lambda p: p.stat().st_size)
        size = path.stat().st_size
        if size > self.limits.max_bytes:
            raise TooBig(self._too_big(size))
        log.info(
            "extraction downloaded job=%s bytes=%s duration_ms=%s",
            self.job_id,
            size,
            round((time.monotonic() - started) * 1000),
        )
        return path

    def fetch_thumbnail(self, media: MediaInfo) -> tuple[bytes, str] | None:
        """The thumbnail image (bounded size, image types only), or None."""
        if not media.thumbnail:
            return None
        from yt_dlp.networking import Request

        try:
            check_and_resolve(media.thumbnail, policy=self.policy)
            with self.ydl.urlopen(Request(media.thumbnail)) as response:
                data = response.read(THUMBNAIL_MAX_BYTES + 1)
        except Exception as exc:
            log.info("thumbnail skipped job=%s reason=%s", self.job_id, _clean(str(exc)))
            return None
        if len(data) > THUMBNAIL_MAX_BYTES:
            return None
        for magic, ext in _THUMBNAIL_MAGIC:
            if data.startswith(magic):
                return data, ext
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return data, ".webp"
        return None
