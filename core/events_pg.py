"""An event bus across processes: PostgreSQL LISTEN/NOTIFY on one channel.

Every process that opens `Services` on PostgreSQL (bot shards, the web app, the CLI) gets a
`PostgresEventBus`. `publish()` sends `SELECT pg_notify(channel, json)` on a small publishing
pool; one dedicated listener connection per process LISTENs on the channel and feeds the local
subscribers. The publisher hears its own notifications too, so local subscribers are fed from
the listener only: every subscriber in every process sees every event exactly once.

Delivery is best effort, like the in-process bus:

* Events published while a process's listener is disconnected are lost for that process
  (PostgreSQL queues notifications only for sessions that are listening). The listener
  reconnects with exponential backoff and logs the gap; anything that must not be missed has
  to be read back from the database (the credits ledger is the record, events are hints).
* `publish()` never raises: when PostgreSQL cannot take the notification (the database is
  down, the pool is closed) the event is logged and dropped, so a committed credits change is
  never reported to its caller as a failure.
* NOTIFY payloads must be shorter than 8000 bytes. An event that does not fit loses its
  `transaction` metadata (then the whole `transaction` dict); one that still does not fit is
  logged and dropped.
* Notifications are per database: processes see each other only on the same database.
* LISTEN needs a session of its own: behind PgBouncer in transaction pooling mode, point the
  URL at PostgreSQL directly (or at a session-pooled port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from core.events import Event, Handler, LocalEventBus, event_from_dict

log = logging.getLogger(__name__)

CHANNEL = "soundboard_events"
# PostgreSQL refuses payloads of 8000 bytes or more (with the default block size).
MAX_PAYLOAD_BYTES = 7999
LISTENER_APPLICATION_NAME = "soundboard-events-listen"
PUBLISHER_APPLICATION_NAME = "soundboard-events-publish"
# What a credits event keeps of its transaction when the whole of it is too big to send.
ESSENTIAL_TRANSACTION_KEYS = (
    "id",
    "action",
    "amount",
    "balance_before",
    "balance_after",
    "success",
    "created_at",
)
# Options SQLAlchemy's asyncpg dialect understands but asyncpg would send as server settings.
_SQLALCHEMY_ONLY_QUERY_KEYS = ("prepared_statement_cache_size", "prepared_statement_name_func")
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def asyncpg_dsn(url: str) -> str:
    """postgresql+asyncpg://… (SQLAlchemy) → postgresql://… (asyncpg)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.drivername}")
    parsed = parsed.set(drivername="postgresql").difference_update_query(
        _SQLALCHEMY_ONLY_QUERY_KEYS
    )
    return parsed.render_as_string(hide_password=False)


def _dumps(data: dict[str, Any]) -> str:
    # ASCII only, so the length in characters is the length in bytes.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True, default=str)


def encode_event(event: Event) -> str | None:
    """The NOTIFY payload; shrinks `transaction` when too big, None when it still won't fit."""
    data = event.to_dict()
    payload = _dumps(data)
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return payload
    size = len(payload)
    transaction = data.get("transaction")
    if isinstance(transaction, dict) and transaction:
        for smaller in (
            {k: transaction[k] for k in ESSENTIAL_TRANSACTION_KEYS if k in transaction},
            {},
        ):
            data["transaction"] = smaller
            payload = _dumps(data)
            if len(payload) <= MAX_PAYLOAD_BYTES:
                log.warning(
                    "event too big for NOTIFY, transaction details dropped event=%s bytes=%d "
                    "kept=%s",
                    event.name,
                    size,
                    ",".join(smaller) or "nothing",
                )
                return payload
    log.error("event too big for NOTIFY, dropped event=%s bytes=%d", event.name, size)
    return None


def decode_event(payload: str) -> Event:
    """Parse a NOTIFY payload; raises ValueError when it is not an event this version knows."""
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return event_from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a known event: {exc!r}") from exc


async def _keep_session(_conn: Any) -> None:
    return None


class PostgresEventBus:
    """The `EventBus` for PostgreSQL: LISTEN/NOTIFY on `channel` (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        channel: str = CHANNEL,
        publish_pool_size: int = 2,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_initial_delay: float = 0.25,
        reconnect_max_delay: float = 30.0,
        health_check_interval: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self._publish_pool_size = publish_pool_size
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._initial_delay = reconnect_initial_delay
        self._max_delay = reconnect_max_delay
        self._health_check_interval = health_check_interval
        self._local = LocalEventBus()
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.connects = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresEventBus:
        """From the SQLAlchemy URL (postgresql+asyncpg://…)."""
        return cls(asyncpg_dsn(url), **options)

    @property
    def listener_pid(self) -> int | None:
        """The listening backend's pid; None while disconnected."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        return int(conn.get_server_pid())

    # ----- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the listener (raises if PostgreSQL is unreachable) and keep it connected."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("the event bus is closed")
        await self._connect()
        self._started = True
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="postgres-event-listener"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])
            self._supervisor = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close_connection(conn)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except _CONNECTION_ERRORS as exc:
                log.warning("event publishing pool did not close cleanly error=%s", exc)
                pool.terminate()
        await self._local.close()

    # ----- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """NOTIFY every process (this one included); logs and drops the event on failure."""
        payload = encode_event(event)
        if payload is None:
            return
        if self._closed:
            log.warning("event bus closed, event dropped event=%s", event.name)
            return
        try:
            async with asyncio.timeout(self._publish_timeout):
                pool = await self._publisher()
                async with pool.acquire() as conn:
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)
        except _CONNECTION_ERRORS as exc:
            log.warning(
                "event publish failed, event dropped event=%s error=%s: %s",
                event.name,
                type(exc).__name__,
                exc,
            )

    async def _publisher(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self._publish_pool_size,
                    timeout=self._connect_timeout,
                    server_settings={"application_name": PUBLISHER_APPLICATION_NAME},
                    # These connections only ever run pg_notify in autocommit: there is no
                    # session state to reset, so skip asyncpg's reset round trip on release.
                    reset=_keep_session,
                )
                if self._closed:  # closed while connecting: don't leave the pool behind
                    pool, self._pool = self._pool, None
                    pool.terminate()
                    raise asyncpg.InterfaceError("the event bus is closed")
            return self._pool

    # ----- subscribing ----------------------------------------------------------------------

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        return self._local.subscribe(handler)

    def stream(
        self, *, maxsize: int = 100
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Events as an async iterator; a subscriber that falls behind loses the oldest events."""
        return self._local.stream(maxsize=maxsize)

    # ----- the listener ---------------------------------------------------------------------

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": LISTENER_APPLICATION_NAME},
        )
        try:
            self._lost.clear()
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.connects += 1
        log.info(
            "event listener connected channel=%s pid=%s connects=%d",
            self.channel,
            conn.get_server_pid(),
            self.connects,
        )

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn and not self._closed:
            self._lost.set()

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            event = decode_event(payload)
        except ValueError as exc:
            log.warning("ignoring a notification that is not an event error=%s", exc)
            return
        self._local.deliver(event)

    async def _supervise(self) -> None:
        """Watch the listener; reconnect with exponential backoff when it goes away."""
        delay = self._initial_delay
        while True:
            if self._conn is None:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._max_delay)
                try:
                    await self._connect()
                except Exception as exc:  # whatever stops a connect now may pass later
                    log.warning(
                        "event listener reconnect failed, retrying in about %.1fs error=%s: %s",
                        delay,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                log.warning("event listener reconnected; events published meanwhile were lost")
            if await self._healthy():
                delay = self._initial_delay
                continue
            conn, self._conn = self._conn, None
            log.warning(
                "event listener connection lost, reconnecting channel=%s pid=%s",
                self.channel,
                conn.get_server_pid() if conn is not None else None,
            )
            if conn is not None:
                conn.terminate()

    async def _healthy(self) -> bool:
        """Wait one health-check interval: False as soon as the connection goes away."""
        try:
            await asyncio.wait_for(self._lost.wait(), timeout=self._health_check_interval)
        except TimeoutError:
            pass
        else:
            return False
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await conn.execute("SELECT 1", timeout=self._connect_timeout)
        except Exception as exc:
            log.warning("event listener health check failed error=%s: %s", type(exc).__name__, exc)
            return False
        return True

    async def _close_connection(self, conn: Any) -> None:
        try:
            await asyncio.wait_for(conn.close(), timeout=5)
        except _CONNECTION_ERRORS as exc:
            log.debug("event listener did not close cleanly error=%s", exc)
            conn.terminate()
