"""Wake-ups across processes on PostgreSQL: ``NOTIFY`` when work appears, ``LISTEN`` for it.

A transaction that queues a job (a new one, or one put back by a failover, a retry, a
recovery or a shutdown) also runs ``pg_notify('sdhost_jobs', <provider>)``; one that writes
outbox events runs ``pg_notify('sdhost_outbox', <platform>)``. PostgreSQL delivers a
notification when its transaction commits and drops it if it rolls back, so a process woken
by one always finds the row. On SQLite the helpers do nothing.

``Listener`` holds one dedicated asyncpg connection per process (outside SQLAlchemy's pool),
listens on both channels and calls a handler per notification. Polling stays the safety net:
a notification can be missed while the connection is down, so after every (re)connect, and
when the connection is lost, the listener calls ``on_change`` (wake everything once: a
poller that waits longer while notifications arrive goes back to its short poll). A lost
connection is retried with a growing pause, logged once per outage; it never stops the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

JOBS_CHANNEL = "sdhost_jobs"
OUTBOX_CHANNEL = "sdhost_outbox"
APPLICATION_NAME = "sdhost-listen"  # how the listener's backend shows in pg_stat_activity

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def notify(conn: Connection, channel: str, payloads: Iterable[str | None]) -> None:
    """Announce, at commit, work for each payload (a provider or a platform); PostgreSQL only.
    PostgreSQL folds identical notifications of one transaction into one."""
    if conn.dialect.name != "postgresql":
        return
    for payload in sorted({p or "" for p in payloads}):
        conn.execute(_NOTIFY, {"channel": channel, "payload": payload[:200]})


def jobs_queued(conn: Connection, providers: Iterable[str | None]) -> None:
    """Jobs for ``providers`` became claimable (an empty payload: any provider)."""
    notify(conn, JOBS_CHANNEL, providers)


def events_added(conn: Connection, platforms: Iterable[str | None]) -> None:
    """Outbox events for ``platforms`` became deliverable (empty: any platform)."""
    notify(conn, OUTBOX_CHANNEL, platforms)


def plain_dsn(url: str) -> str:
    """The libpq-style DSN asyncpg takes, from a SQLAlchemy URL (``postgresql+asyncpg://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


Handler = Callable[[str], Any]


class Listener:
    """One LISTEN connection that calls ``handlers[channel](payload)`` per notification."""

    RETRY_FIRST_S = 0.5
    RETRY_MAX_S = 30.0
    CHECK_S = 10.0  # how often an idle connection is checked (a silent drop has no event)

    def __init__(
        self,
        url: str,
        handlers: Mapping[str, Handler],
        *,
        on_change: Callable[[], Any] | None = None,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        self.dsn = plain_dsn(url)
        self.handlers = dict(handlers)
        self.on_change = on_change or (lambda: None)
        self.application_name = application_name
        self.connected = asyncio.Event()  # set while LISTEN is in place
        self.connects = 0  # successful (re)connections so far
        self.backend_pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self.connected.is_set()

    async def start(self) -> None:
        if self._task is None and self.handlers:
            self._task = asyncio.create_task(self._run(), name="pg-listen")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.connected.clear()

    async def _run(self) -> None:
        pause = self.RETRY_FIRST_S
        down_logged = False
        while True:
            conn: Any = None
            try:
                conn = await self._connect()
                if down_logged:
                    log.info("listening for wake-ups on PostgreSQL again")
                down_logged = False
                pause = self.RETRY_FIRST_S
                await self._serve(conn)
                raise ConnectionError("the connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not down_logged:
                    log.warning(
                        "lost the PostgreSQL wake-up connection (%s); polling until it is back",
                        exc.__class__.__name__,
                    )
                    down_logged = True
            finally:
                if self.connected.is_set():  # it was up: pollers go back to polling often
                    self.connected.clear()
                    self._call(self.on_change)
                self.backend_pid = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.RETRY_MAX_S)

    async def _connect(self) -> Any:
        import asyncpg  # PostgreSQL deployments only

        async with asyncio.timeout(10):
            conn = await asyncpg.connect(
                self.dsn, server_settings={"application_name": self.application_name}
            )
        try:
            for channel in self.handlers:
                await conn.add_listener(channel, self._received)
            self.backend_pid = conn.get_server_pid()
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _serve(self, conn: Any) -> None:
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _c: closed.set())
        self.connects += 1
        self.connected.set()
        self._call(self.on_change)  # notifications may have been missed meanwhile
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.CHECK_S):
                    await closed.wait()
            if closed.is_set() or conn.is_closed():
                return
            async with asyncio.timeout(5):
                await conn.execute("SELECT 1")

    def _received(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            self._call(handler, payload)

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a wake-up handler failed")
