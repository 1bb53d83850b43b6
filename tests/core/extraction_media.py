"""A local media site for the extraction tests: real audio files, pages that embed them, and
misbehaving endpoints (404, no media, hangs, trickles, redirects to places we must not go).

It runs an aiohttp server in a thread of its own (so sync tests and subprocesses can use it
while the test's loop is busy) and records every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.core import audiogen

MEDIA_SECONDS = 1.5


def tiny_png() -> bytes:
    """A valid 2x2 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@dataclass
class MediaFiles:
    mp3: Path
    ogg: Path
    m4a: Path
    png: bytes

    @classmethod
    def make(cls, folder: Path) -> MediaFiles:
        wav = audiogen.speech(folder / "speech.wav", seconds=MEDIA_SECONDS, gain_db=-6)
        return cls(
            mp3=audiogen.encode(wav, folder / "tone.mp3"),
            ogg=audiogen.encode(wav, folder / "tone.ogg"),
            m4a=audiogen.encode(wav, folder / "tone.m4a"),
            png=tiny_png(),
        )


def _page(title: str, body: str = "", head: str = "") -> web.Response:
    html = (
        f"<!DOCTYPE html><html><head><title>{title}</title>{head}</head><body>{body}</body></html>"
    )
    return web.Response(text=html, content_type="text/html")


def _json_ld(data: dict[str, object]) -> str:
    return f'<script type="application/ld+json">{json.dumps(data)}</script>'


@dataclass
class MediaSite:
    """The server; `url(path)` builds addresses, `hits` lists the paths requested."""

    files: MediaFiles
    host: str = "127.0.0.1"
    port: int = 0
    hits: list[str] = field(default_factory=list)
    redirect_target: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _slow_gate: asyncio.Event | None = None
    _stop: asyncio.Event | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def allow_entry(self) -> str:
        return f"{self.host}:{self.port}"

    def reset(self) -> None:
        self.hits.clear()
        if self._loop is not None and self._slow_gate is not None:
            self._loop.call_soon_threadsafe(self._slow_gate.clear)

    def release_slow(self) -> None:
        """Let /slow/ downloads finish (they stall after the first chunk until then)."""
        assert self._loop is not None and self._slow_gate is not None
        self._loop.call_soon_threadsafe(self._slow_gate.set)

    def count(self, prefix: str = "/") -> int:
        return sum(1 for h in list(self.hits) if h.startswith(prefix))

    # ----- routes ------------------------------------------------------------------------

    def _app(self) -> web.Application:
        f = self.files

        @web.middleware
        async def record(request: web.Request, handler: web.Handler) -> web.StreamResponse:
            self.hits.append(request.path_qs)
            return await handler(request)

        async def media(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            path = {"tone.mp3": f.mp3, "tone.ogg": f.ogg, "tone.m4a": f.m4a}.get(name)
            if path is None:
                raise web.HTTPNotFound()
            return web.FileResponse(path)

        async def page(request: web.Request) -> web.StreamResponse:
            return _page("A page with a sound", '<audio controls src="/media/tone.ogg"></audio>')

        async def described(request: web.Request) -> web.StreamResponse:
            # Media described in JSON-LD: the generic extractor reports duration and thumbnail.
            seconds = int(request.query.get("seconds", "2"))
            data = {
                "@context": "https://schema.org",
                "@type": "VideoObject",
                "name": request.query.get("title", "Described sound"),
                "contentUrl": self.url(f"/media/tone.{request.query.get('file', 'mp3')}"),
                "thumbnailUrl": self.url("/thumb.png"),
                "uploadDate": "2024-01-01",
                "duration": f"PT{seconds}S",
            }
            return _page("Described", "<p>media</p>", _json_ld(data))

        async def two(request: web.Request) -> web.StreamResponse:
            return _page(
                "Two sounds",
                '<audio controls src="/media/tone.ogg"></audio>'
                '<audio controls src="/media/tone.m4a"></audio>',
            )

        async def nomedia(request: web.Request) -> web.StreamResponse:
            return _page("Nothing to see", "<p>Just text, no audio or video here.</p>")

        async def thumb(request: web.Request) -> web.StreamResponse:
            return web.Response(body=f.png, content_type="image/png")

        async def chunked(request: web.Request) -> web.StreamResponse:
            # No Content-Length: only a cut during the download can enforce the size limit.
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            data = f.mp3.read_bytes()
            for _ in range(20):
                for start in range(0, len(data), 16384):
                    await response.write(data[start : start + 16384])
            await response.write_eof()
            return response

        async def trickle(request: web.Request) -> web.StreamResponse:
            # A byte every 0.2 s forever: no socket timeout ever fires.
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.content_length = 50_000_000
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                for _ in range(100_000):
                    await response.write(b"\x00")
                    await asyncio.sleep(0.2)
            return response

        async def hang(request: web.Request) -> web.StreamResponse:
            await asyncio.sleep(3600)
            raise web.HTTPNotFound()

        async def slow(request: web.Request) -> web.StreamResponse:
            # The first 8 KiB at once, the rest only after release_slow().
            assert self._slow_gate is not None
            data = f.mp3.read_bytes()
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[:8192])
            with contextlib.suppress(ConnectionError):
                await self._slow_gate.wait()
                await response.write(data[8192:])
                await response.write_eof()
            return response

        async def alias(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(self.url("/media/tone.mp3"))

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(self.redirect_target)

        async def embeds_elsewhere(request: web.Request) -> web.StreamResponse:
            return _page("Embeds", f'<audio controls src="{self.redirect_target}"></audio>')

        app = web.Application(middlewares=[record])
        app.router.add_get("/media/{name}", media)
        app.router.add_get("/page.html", page)
        app.router.add_get("/described.html", described)
        app.router.add_get("/nomedia.html", nomedia)
        app.router.add_get("/two.html", two)
        app.router.add_get("/thumb.png", thumb)
        app.router.add_get("/chunked/tone.mp3", chunked)
        app.router.add_get("/trickle/tone.mp3", trickle)
        app.router.add_get("/hang/tone.mp3", hang)
        app.router.add_get("/slow/tone.mp3", slow)
        app.router.add_get("/alias/tone.mp3", alias)
        app.router.add_get("/redirect/tone.mp3", redirect)
        app.router.add_get("/embeds-elsewhere.html", embeds_elsewhere)
        return app

    # ----- running -----------------------------------------------------------------------

    def start(self) -> MediaSite:
        ready = threading.Event()
        errors: list[BaseException] = []

        async def serve() -> None:
            self._slow_gate = asyncio.Event()
            self._stop = asyncio.Event()
            runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            self._runner = runner
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            with contextlib.suppress(OSError):  # the same port on ::1, where IPv6 exists
                sock6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock6.bind(("::1", self.port))
                await web.SockSite(runner, sock6).start()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # surfaced by start()
                errors.append(exc)
                ready.set()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=5))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"media-site-{id(self)}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._slow_gate.set)  # type: ignore[union-attr]
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


@contextlib.contextmanager
def media_site(files: MediaFiles) -> Iterator[MediaSite]:
    site = MediaSite(files).start()
    try:
        yield site
    finally:
        site.stop()


# ----- fixtures (imported by the extraction test modules) --------------------------------------


@pytest.fixture(scope="session")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> MediaFiles:
    return MediaFiles.make(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def media_site_session(media_files: MediaFiles) -> Iterator[MediaSite]:
    with media_site(media_files) as site:
        yield site


@pytest.fixture
def site(media_site_session: MediaSite) -> MediaSite:
    """The shared local media site, with its request log cleared for this test."""
    media_site_session.reset()
    media_site_session.redirect_target = ""
    return media_site_session
