"""Hostile URLs: nothing private is ever contacted, in the default configuration and with the
generic extractor on. Every case checks the local media site got zero requests."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidInput
from core.models import ExtractionStatus, User
from core.services.container import Services
from core.services.url_safety import (
    AddressPolicy,
    FetchGuard,
    UnsafeURL,
    check_url,
    is_public_address,
    literal_address,
    parse_loose_ipv4,
)
from tests.conftest import make_settings
from tests.core import extraction_media as xm
from tests.core.extraction_media import MediaSite, media_site
from tests.core.helpers import make_user

media_files, media_site_session, site = xm.media_files, xm.media_site_session, xm.site

PRIVATE_REFUSAL = "local or private network address"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every socket connect() in this process; connecting to 10.0.0.0/8 fails the test."""
    seen: list[Any] = []
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        seen.append(address)
        host = str(address[0]) if isinstance(address, tuple) else ""
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            ip = None
        if ip is not None and ip in ipaddress.ip_network("10.0.0.0/8"):
            raise AssertionError(f"connected to a private address: {address}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield seen


@pytest.fixture(params=[False, True], ids=["default", "generic"])
async def strict(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> AsyncIterator[Services]:
    """The default configuration (no private host allowed), with and without generic."""
    settings = make_settings(
        tmp_path,
        database_url,
        extraction_allow_generic=request.param,
        extraction_timeout_seconds=10,
    )
    assert settings.extraction_allow_private_hosts == []
    async with Services.from_settings(settings) as svc:
        yield svc


async def attempt(services: Services, url: str, user: User) -> str:
    """Refused at submit (nothing charged) or failed as a job (refunded): the reason."""
    before = (await services.users.get(user.id or 0)).credits
    try:
        submitted = await services.extractions.submit(url, guild_id=1, user_id=user.id or 0)
    except InvalidInput as exc:
        reason = str(exc)
    else:
        job = await services.extractions.run_foreground(submitted.job.id or 0)
        assert job.status == ExtractionStatus.FAILED, job
        reason = job.error or ""
    assert (await services.users.get(user.id or 0)).credits == before
    return reason


LOOPBACK_FORMS = [
    "http://127.0.0.1:{port}/media/tone.mp3",
    "http://localhost:{port}/media/tone.mp3",
    "http://LocalHost.:{port}/media/tone.mp3",
    "http://[::1]:{port}/media/tone.mp3",
    "http://[::ffff:127.0.0.1]:{port}/media/tone.mp3",
    "http://2130706433:{port}/media/tone.mp3",
    "http://0x7f000001:{port}/media/tone.mp3",
    "http://0177.0.0.1:{port}/media/tone.mp3",
    "http://127.1:{port}/media/tone.mp3",
    "http://0:{port}/media/tone.mp3",
    "https://127.0.0.1:{port}/media/tone.mp3",
]


@pytest.mark.parametrize("template", LOOPBACK_FORMS)
async def test_loopback_in_any_spelling_is_refused(
    strict: Services, site: MediaSite, connects: list[Any], template: str
) -> None:
    user = await make_user(strict, credits=100)
    reason = await attempt(strict, template.format(port=site.port), user)
    assert PRIVATE_REFUSAL in reason, reason
    assert site.hits == []
    assert not any(isinstance(a, tuple) and a[1] == site.port for a in connects)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "Only http:// and https:// links can be used."),
        ("/etc/passwd", "Only http:// and https:// links can be used."),
        ("ftp://example.com/a.mp3", "Only http:// and https:// links can be used."),
        ("http://10.1.2.3:8080/a.mp3", PRIVATE_REFUSAL),
        ("http://169.254.169.254/latest/meta-data/", PRIVATE_REFUSAL),
        ("http://[fd00::1]/a.mp3", PRIVATE_REFUSAL),
        ("http://192.168.0.1/a.mp3", PRIVATE_REFUSAL),
        ("http://224.0.0.1/a.mp3", PRIVATE_REFUSAL),
        ("http://user:pw@example.com/a.mp3", "user name or password"),
        ("http://example.com@127.0.0.1/a.mp3", "user name or password"),
        ("http://exa mple.com/a.mp3", "spaces or control characters"),
    ],
)
async def test_other_hostile_urls_are_refused_before_any_connection(
    strict: Services, connects: list[Any], url: str, reason: str
) -> None:
    user = await make_user(strict, credits=100)
    got = await attempt(strict, url, user)
    assert reason in got
    assert [a for a in connects if isinstance(a, tuple) and a[1] != 5432] == []


async def test_a_name_resolving_to_a_private_address_is_refused(
    strict: Services, site: MediaSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "intranet.example":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    user = await make_user(strict, credits=100)
    reason = await attempt(strict, f"http://intranet.example:{site.port}/media/tone.mp3", user)
    assert PRIVATE_REFUSAL in reason
    assert site.hits == []


async def test_dns_rebinding_is_caught_at_connect_time(
    tmp_path: Path, database_url: str, site: MediaSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name looks public when checked, then resolves to loopback when yt-dlp connects:
    the guard checks the address it connects to, so nothing reaches the server."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            calls.append(host)
            if len(calls) == 1:  # the pre-flight check: a public address (never connected)
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = make_settings(tmp_path, database_url, extraction_allow_generic=True)
    async with Services.from_settings(settings) as services:
        user = await make_user(services, credits=100)
        reason = await attempt(services, f"http://rebind.example:{site.port}/media/tone.mp3", user)
    assert PRIVATE_REFUSAL in reason, reason
    assert len(calls) >= 2 and site.hits == []


@pytest.mark.parametrize("generic", [False, True], ids=["default", "generic"])
async def test_redirect_from_an_allowed_host_to_loopback_is_refused(
    tmp_path: Path,
    database_url: str,
    site: MediaSite,
    media_files: xm.MediaFiles,
    generic: bool,
) -> None:
    """The test site is allowed; it redirects to a second local server that is not."""
    with media_site(media_files) as other:
        site.redirect_target = other.url("/media/tone.mp3")
        settings = make_settings(
            tmp_path,
            database_url,
            extraction_allow_generic=generic,
            extraction_allow_private_hosts=[site.allow_entry],
        )
        async with Services.from_settings(settings) as services:
            user = await make_user(services, credits=100)
            for path in ("/redirect/tone.mp3", "/embeds-elsewhere.html"):
                reason = await attempt(services, site.url(path), user)
                if generic:
                    assert PRIVATE_REFUSAL in reason, reason
                    assert site.count(path) >= 1
                else:
                    assert "not supported" in reason, reason
                    assert site.hits == []  # no extractor for it: never fetched
        assert other.hits == []


async def test_allowed_hosts_narrow_the_sites(
    tmp_path: Path, database_url: str, site: MediaSite
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        extraction_allow_generic=True,
        extraction_allowed_hosts=["youtube.com", "soundcloud.com"],
        extraction_allow_private_hosts=[site.allow_entry],
    )
    async with Services.from_settings(settings) as services:
        user = await make_user(services, credits=100)
        reason = await attempt(services, site.url("/media/tone.mp3"), user)
    assert reason.startswith("Extraction from 127.0.0.1 is not allowed here")
    assert site.hits == []


# ----- the address rules themselves ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.258", "10.0.1.2"),
        ("0", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("256.1.1.1", None),
        ("08.1.1.1", None),
        ("example.com", None),
        ("1.2.3.4.5", None),
    ],
)
def test_loose_ipv4_matches_inet_aton(host: str, expected: str | None) -> None:
    parsed = parse_loose_ipv4(host)
    assert (str(parsed) if parsed else None) == expected
    if expected is not None:
        assert socket.inet_ntoa(socket.inet_aton(host.rstrip("."))) == expected


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "::127.0.0.1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    ip = literal_address(address)
    assert ip is not None and not is_public_address(ip)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_policy_exempts_only_the_listed_host_and_port() -> None:
    policy = AddressPolicy.from_entries(["127.0.0.1:8080", "[::1]:9000"])
    loop4, loop6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert policy.allows("127.0.0.1", 8080, loop4)
    assert policy.allows("::1", 9000, loop6)
    assert not policy.allows("127.0.0.1", 8081, loop4)
    assert not policy.allows("localhost", 8080, loop4)
    assert check_url("http://127.0.0.1:8080/x", policy=policy).host == "127.0.0.1"
    with pytest.raises(UnsafeURL):
        check_url("http://2130706433:8080/x", policy=AddressPolicy())
    with pytest.raises(ValueError):
        AddressPolicy.from_entries(["localhost"])


def test_guard_refuses_at_connect_time_and_cancels(site: MediaSite) -> None:
    guard = FetchGuard(AddressPolicy())
    with pytest.raises(OSError, match="not a public address"):
        guard.create_connection(("127.0.0.1", site.port), 2)
    assert guard.blocked and site.hits == []
    allowed = FetchGuard(AddressPolicy.from_entries([site.allow_entry]))
    sock = allowed.create_connection(("127.0.0.1", site.port), 2)
    allowed.cancel("stop")
    assert sock.recv(1) == b""  # shut down from another thread's point of view
    sock.close()
    with pytest.raises(OSError, match="cancelled"):
        allowed.create_connection(("127.0.0.1", site.port), 2)


def test_settings_validate_private_host_entries(tmp_path: Path) -> None:
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="EXTRACTION_ALLOW_PRIVATE_HOSTS"):
        make_settings(
            tmp_path, "sqlite+aiosqlite:///x.db", extraction_allow_private_hosts="localhost"
        )
