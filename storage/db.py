"""One database API for SQLite and PostgreSQL: run a function inside a transaction.

The job core's transactions are small synchronous SQLAlchemy Core functions,
``fn(conn, *args)``, handed to ``Database.run_write`` or ``Database.run_read``:

* SQLite: the function runs on a dedicated writer thread (reads on reader threads), on a
  connection that lives as long as the thread, inside ``BEGIN IMMEDIATE`` for writes. That
  is one thread hop per *transaction*. Going through SQLAlchemy's async aiosqlite adapter
  instead costs three or four hops per *statement* (cursor, execute, fetch, close): we
  measured ~140 us per statement that way against ~25 us here, which decides whether the
  core reaches its throughput target. One writer thread also means writers in this process
  never meet SQLITE_BUSY; other processes are waited for by SQLite's busy timeout, which
  ``BEGIN IMMEDIATE`` makes apply (a deferred transaction that upgrades to a write gets
  SQLITE_BUSY at once, whatever the timeout).
* PostgreSQL: the same function runs through ``AsyncConnection.run_sync`` on asyncpg, with
  connections from a pool, so many transactions run at once and ``FOR UPDATE SKIP LOCKED``
  lets several processes claim work side by side.

``session()`` gives an async ORM session (aiosqlite or asyncpg) for tools and tests that
want to look at rows as objects; nothing on the job path uses it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

P = ParamSpec("P")
T = TypeVar("T")

_WRITE = "sdhost_write"
SQLITE_READERS = 2


def _prepare_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so our BEGIN is the one that runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
        conn.exec_driver_sql(mode)


class _SqliteThreads:
    """A writer thread and a few reader threads, each holding its own connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="sdhost-db-write")
        self.readers = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="sdhost-db-read")
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()

    def _conn(self, write: bool) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.engine.connect()
            if write:
                conn = conn.execution_options(**{_WRITE: True})
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def call(self, write: bool, fn: Callable[..., T], args: tuple[Any, ...], kw: Any) -> T:
        conn = self._conn(write)
        try:
            with conn.begin():
                return fn(conn, *args, **kw)
        except BaseException:
            # A connection whose transaction could not even be rolled back is replaced.
            if conn.invalidated:
                self._local.conn = None
            raise

    def close(self) -> None:
        self.writer.shutdown(wait=True)
        self.readers.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except Exception:  # closing at shutdown: nothing useful to do with it
                    pass
            self._conns.clear()


class Database:
    """Owns the engines; runs transactions; hands out ORM sessions for tools and tests."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._threads: _SqliteThreads | None = None
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            db = parsed.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000}
            sync = create_engine(
                parsed.set(drivername="sqlite"),
                echo=echo,
                poolclass=NullPool,  # each thread keeps its own connection for good
                connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
            )
            _prepare_sqlite(sync, busy_timeout_ms)
            self._threads = _SqliteThreads(sync)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _prepare_sqlite(self.engine.sync_engine, busy_timeout_ms)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def run_write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args, **kw)`` in a write transaction; commit if it returns.

        If the awaiting task is cancelled the transaction still completes (it is already
        running on its thread); callers treat the outcome as unknown, never as undone.
        """
        if self._threads is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._threads.writer, self._threads.call, True, fn, args, kw
            )
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args, **kw)

    async def run_read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(conn, *args, **kw)`` in a read transaction (a consistent snapshot)."""
        if self._threads is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._threads.readers, self._threads.call, False, fn, args, kw
            )
        async with self.engine.connect() as conn, conn.begin():
            return await conn.run_sync(fn, *args, **kw)

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """An ORM session in a transaction (for tools and tests); commits on success."""
        maker = self._write_sessions if write else self._sessions
        async with maker() as s, s.begin():
            yield s

    async def create_all(self) -> None:
        """Schema straight from the models; tests use it, real runs use Alembic."""
        from storage.models import Base

        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def dispose(self) -> None:
        if self._threads is not None:
            await asyncio.to_thread(self._threads.close)
            self._threads.engine.dispose()
        await self.engine.dispose()
