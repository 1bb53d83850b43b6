"""Fetching URLs on behalf of strangers: which URLs we accept, and a guard on every connection.

Two layers, both needed:

* `check_url` looks at what a member typed: only http(s), no credentials, a host that is not
  a loopback/private/link-local/multicast/reserved/unspecified address in any spelling
  (``2130706433``, ``0x7f000001``, ``0177.1``, ``[::ffff:127.0.0.1]``...), and, when
  EXTRACTION_ALLOWED_HOSTS is set, one of those sites. `resolve_checked` adds a DNS lookup.
* `FetchGuard` is handed to yt-dlp as its only HTTP handler. Every connection yt-dlp opens (the
  page, each redirect, each media URL or fragment, the thumbnail) resolves the host, checks each
  address and connects to the checked address itself, so a public page cannot point the server
  at an internal one and DNS rebinding gains nothing. The guard also cancels a job: it shuts
  down the job's sockets, which unblocks a worker thread stuck reading from a slow server.

EXTRACTION_ALLOW_PRIVATE_HOSTS lists ``host:port`` pairs let through despite a private address
(the tests' local media server; an intranet mirror); nothing else private is ever contacted.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidInput

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000
ALLOWED_SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class UnsafeURL(InvalidInput):
    """A URL we refuse to fetch; the message says why in plain words."""


class BlockedAddress(OSError):
    """Raised inside yt-dlp's connection code when an address is not allowed."""


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address that inet_aton (and so getaddrinfo) reads from ``host``, or None.

    Accepts what C resolvers accept: 1 to 4 dot-separated parts in decimal, octal (leading 0)
    or hex (0x), the last part filling the remaining bytes: ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1`` and ``127.1`` are all 127.0.0.1.
    """
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing dot
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not part:
            return None
        try:
            if part.lower().startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS: IPv6 literals and every IPv4 spelling."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    return parse_loose_ipv4(bare)


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses, looking inside IPv6 wrappers."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip.teredo is not None:
            inner = ip.teredo[1]
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and not is_public_address(inner):
            return False
        if ip.is_site_local:
            return False
    return bool(
        ip.is_global
        and not (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
        )
    )


def _host_port_key(host: str, port: int) -> tuple[str, int]:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def parse_host_port(entry: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` from a setting; ValueError if malformed."""
    entry = entry.strip()
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]:")
    else:
        host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {entry!r}")
    return _host_port_key(host, int(port))


@dataclass(frozen=True)
class AddressPolicy:
    """Which (host, port, address) triples may be connected to."""

    allow_private: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        return cls(frozenset(parse_host_port(e) for e in entries if e.strip()))

    def allows(self, host: str, port: int, ip: IPAddress) -> bool:
        if is_public_address(ip):
            return True
        return _host_port_key(host, port) in self.allow_private

    def is_exempt(self, host: str, port: int) -> bool:
        return _host_port_key(host, port) in self.allow_private


def _refusal(host: str, ip: IPAddress | None = None) -> UnsafeURL:
    shown = host if ip is None or str(ip) == host.strip("[]") else f"{host} ({ip})"
    return UnsafeURL(
        f"That link points to a local or private network address ({shown[:100]}); "
        "only public sites can be used."
    )


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str  # lower case, IDNA-encoded, IPv6 without brackets
    port: int


def _host_matches(host: str, allowed: Iterable[str]) -> bool:
    for entry in allowed:
        site = entry.strip().lower().rstrip(".")
        if site and (host == site or host.endswith("." + site)):
            return True
    return False


def check_url(url: str, *, policy: AddressPolicy, allowed_hosts: Iterable[str] = ()) -> CheckedURL:
    """Everything we can say about a URL without the network. Raises UnsafeURL."""
    url = url.strip()
    if not url:
        raise UnsafeURL("Give me a link to a video or audio page.")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"That link is too long (the limit is {MAX_URL_LENGTH} characters).")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise UnsafeURL("That link contains spaces or control characters.")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("That is not a valid link.") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeURL("Only http:// and https:// links can be used.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("Links with a user name or password cannot be used.")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise UnsafeURL("That link has no site in it.")
    port = port or _default_port(scheme)
    ip = literal_address(raw_host)
    if ip is not None:
        if not policy.allows(raw_host, port, ip):
            raise _refusal(raw_host, ip)
        host = str(ip)
    else:
        try:
            host = raw_host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise UnsafeURL("That link's site name is not valid.") from None
        if not all(ch.isalnum() or ch in "-." for ch in host):
            raise UnsafeURL("That link's site name is not valid.")
        if host.split(".")[-1].isdigit():
            # All-numeric labels that inet_aton would not take: never a real site name.
            raise UnsafeURL("That link's site name is not valid.")
        is_local_name = host in _LOCAL_NAMES or host.endswith(".localhost")
        if is_local_name and not policy.is_exempt(host, port):
            raise _refusal(host)
    allowed = list(allowed_hosts)
    if allowed and not _host_matches(host, allowed):
        raise UnsafeURL(
            f"Extraction from {host[:100]} is not allowed here; allowed sites: "
            f"{', '.join(allowed)[:300]}."
        )
    return CheckedURL(url=url, scheme=scheme, host=host, port=port)


def resolve_checked(host: str, port: int, policy: AddressPolicy) -> list[IPAddress]:
    """Resolve `host` (blocking) and refuse it if any address is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeURL(f"I couldn't find the site {host[:100]}.") from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not policy.allows(host, port, ip):
            raise _refusal(host, ip)
        addresses.append(ip)
    if not addresses:
        raise UnsafeURL(f"I couldn't find the site {host[:100]}.")
    return addresses


def check_and_resolve(
    url: str, *, policy: AddressPolicy, allowed_hosts: Iterable[str] = ()
) -> CheckedURL:
    checked = check_url(url, policy=policy, allowed_hosts=allowed_hosts)
    resolve_checked(checked.host, checked.port, policy)
    return checked


class JobCancelled(Exception):
    """The job was cancelled (timeout or shutdown) while a worker thread was busy."""


@dataclass
class FetchGuard:
    """One job's connections: checked at connect time, counted, and closable from outside."""

    policy: AddressPolicy
    blocked: list[str] = field(default_factory=list)
    connections: int = 0
    cancel_reason: str | None = None
    _sockets: set[socket.socket] = field(default_factory=set)
    _connections: weakref.WeakSet[http.client.HTTPConnection] = field(
        default_factory=weakref.WeakSet
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def cancel(self, reason: str) -> None:
        """Refuse new connections and shut down open ones (any thread may call this)."""
        with self._lock:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            sockets = list(self._sockets)
            # A TLS connection's socket replaces the raw one we created: reach it through
            # the connection object.
            sockets += [c.sock for c in self._connections if c.sock is not None]
        for sock in sockets:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)

    def track(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.add(conn)

    def check_cancelled(self) -> None:
        if self.cancel_reason is not None:
            raise JobCancelled(self.cancel_reason)

    def _block(self, host: str, port: int, ip: IPAddress | str) -> BlockedAddress:
        note = f"{host}:{port} ({ip})"
        with self._lock:
            self.blocked.append(note)
        log.warning("extraction connection refused address=%s", note)
        return BlockedAddress(f"connection to {note} refused: not a public address")

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
        **_: Any,
    ) -> socket.socket:
        """socket.create_connection, but only to addresses the policy allows."""
        host, port = address
        if self.cancel_reason is not None:
            raise OSError(f"job cancelled: {self.cancel_reason}")
        literal = literal_address(host)
        if literal is not None:
            candidates: list[tuple[Any, ...]] = [
                (
                    socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                    socket.SOCK_STREAM,
                    0,
                    "",
                    (str(literal), port),
                )
            ]
        else:
            candidates = list(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        allowed = []
        for family, type_, proto, _name, sockaddr in candidates:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if self.policy.allows(host, port, ip):
                allowed.append((family, type_, proto, sockaddr))
            else:
                raise self._block(host, port, ip)
        if not allowed:
            raise OSError(f"no address found for {host}")
        error: OSError | None = None
        for family, type_, proto, sockaddr in allowed:
            sock = socket.socket(family, type_, proto)
            try:
                if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                with self._lock:
                    if self.cancel_reason is not None:
                        raise OSError(f"job cancelled: {self.cancel_reason}")
                    self._sockets.add(sock)
                    self.connections += 1
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                self.forget(sock)
                sock.close()
        assert error is not None
        raise error

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


# ----- yt-dlp wiring --------------------------------------------------------------------------
# Imported lazily by `make_handler_class` so that importing this module stays cheap.


def make_handler_class(guard: FetchGuard) -> Any:
    """A yt-dlp RequestHandler (urllib-based) whose every connection goes through `guard`:
    http(s) only (no file, data or ftp), no proxies, redirects re-checked."""
    from yt_dlp.networking import _urllib as ytu

    def connection_factory(
        conn_class: type[http.client.HTTPConnection],
        source_address: str | None,
        *args: Any,
        **kwargs: Any,
    ) -> http.client.HTTPConnection:
        conn = conn_class(*args, **kwargs)
        conn._create_connection = guard.create_connection  # type: ignore[attr-defined]
        guard.track(conn)
        if source_address is not None:
            conn.source_address = (source_address, 0)  # type: ignore[attr-defined]
        return conn

    class GuardedHTTPHandler(ytu.HTTPHandler):  # type: ignore[misc]
        def http_open(self, req: urllib.request.Request) -> Any:
            guard.check_cancelled()
            return self.do_open(
                functools.partial(
                    connection_factory, http.client.HTTPConnection, self._source_address
                ),
                req,
            )

        def https_open(self, req: urllib.request.Request) -> Any:
            guard.check_cancelled()
            return self.do_open(
                functools.partial(
                    connection_factory, http.client.HTTPSConnection, self._source_address
                ),
                req,
                context=self._context,
            )

    class GuardedRedirectHandler(ytu.RedirectHandler):  # type: ignore[misc]
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: Any,
            code: int,
            msg: str,
            headers: Any,
            newurl: str,
        ) -> Any:
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in ALLOWED_SCHEMES:
                raise urllib.error.HTTPError(
                    newurl, code, f"redirect to a {scheme or 'relative'} URL refused", headers, fp
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    class UrllibRH(ytu.UrllibRH):  # type: ignore[misc]
        # Named like the stock handler (RH_KEY "Urllib") so yt-dlp code that asks for
        # "the urllib handler" gets this one.
        _SUPPORTED_URL_SCHEMES = ALLOWED_SCHEMES
        _SUPPORTED_PROXY_SCHEMES = ()
        _SUPPORTED_FEATURES = ()

        def __init__(self, **kwargs: Any) -> None:
            kwargs["enable_file_urls"] = False
            kwargs["proxies"] = {}
            super().__init__(**kwargs)

        def _get_proxies(self, request: Any) -> dict[str, str]:
            return {}

        def _create_instance(
            self, proxies: Any, cookiejar: Any, legacy_ssl_support: Any = None
        ) -> urllib.request.OpenerDirector:
            opener = urllib.request.OpenerDirector()
            for handler in (
                GuardedHTTPHandler(
                    debuglevel=0,
                    context=self._make_sslcontext(legacy_ssl_support=legacy_ssl_support),
                    source_address=self.source_address,
                ),
                urllib.request.HTTPCookieProcessor(cookiejar),
                urllib.request.UnknownHandler(),
                urllib.request.HTTPDefaultErrorHandler(),
                urllib.request.HTTPErrorProcessor(),
                GuardedRedirectHandler(),
            ):
                opener.add_handler(handler)
            opener.addheaders = []
            return opener

    return UrllibRH
