"""Named locks held across every sdhost process that shares the database.

A GPU instance renders one job at a time; when several sdhost processes share one queue,
each has its own pool of instances, and only a lock they all see keeps two of them from
sending work to the same instance at once. ``try_hold(name)`` takes the lock if nobody
holds it and never waits; the holder gives it back with ``HeldLock.release``. A process
that dies gives its locks back with it.

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on one connection kept for
  the purpose, so the server frees every lock of a process whose connection drops.
- SQLite (the processes of one machine): ``flock`` on a file per name beside the database
  file; the kernel frees it when the process exits, however it exits.

If the lock service itself fails (the database is unreachable), the lock is granted and a
warning logged: a GPU queueing a second job is better than no job running at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage.db import Database

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: locks of one process only
    fcntl = None  # type: ignore[assignment]


def lock_key(name: str) -> int:
    """A name's 64-bit signed advisory-lock key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class HeldLock:
    def __init__(self, locks: NamedLocks, name: str, handle: Any) -> None:
        self._locks = locks
        self.name = name
        self._handle = handle
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self._locks._release(self.name, self._handle)


class NamedLocks:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None  # the PostgreSQL connection that holds this process's locks
        self._guard = asyncio.Lock()
        self._warned = False
        self._held: set[str] = set()  # names this process holds
        self._dir: Path | None = None
        if db.is_sqlite:
            database = make_url(str(db.engine.url)).database or ""
            base = Path(database).parent if database and database != ":memory:" else None
            self._dir = (base or Path.cwd()) / ".locks"

    async def try_hold(self, name: str) -> HeldLock | None:
        """The lock ``name`` if no process (this one included) holds it now, else None."""
        if name in self._held:
            return None  # PostgreSQL's advisory locks would grant it again to this session
        self._held.add(name)
        try:
            held = await self._take(name)
        except BaseException:
            self._held.discard(name)
            raise
        if held is None:
            self._held.discard(name)
        return held

    async def _take(self, name: str) -> HeldLock | None:
        try:
            if self.db.is_sqlite:
                fd = await asyncio.to_thread(self._flock, name)
                return None if fd is None else HeldLock(self, name, fd)
            async with self._guard:
                conn = await self._connection()
                got = (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}
                    )
                ).scalar()
                await conn.commit()
            return HeldLock(self, name, "pg") if got else None
        except Exception as exc:
            await self._drop_connection()
            if not self._warned:
                self._warned = True
                log.warning("cross-process locks unavailable (%r): going on without them", exc)
            return HeldLock(self, name, None)

    async def aclose(self) -> None:
        await self._drop_connection()

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self.db.engine.connect()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _release(self, name: str, handle: Any) -> None:
        try:
            await self._give_back(name, handle)
        finally:
            self._held.discard(name)

    async def _give_back(self, name: str, handle: Any) -> None:
        if handle is None:
            return
        if isinstance(handle, int):
            await asyncio.to_thread(os.close, handle)  # closing the file frees the flock
            return
        try:
            async with self._guard:
                if self._conn is None:
                    return  # the connection went away, and its locks with it
                await self._conn.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)}
                )
                await self._conn.commit()
        except Exception:
            log.warning("could not give back lock %s; dropping the connection", name)
            await self._drop_connection()

    def _flock(self, name: str) -> int | None:
        assert self._dir is not None
        if fcntl is None:  # pragma: no cover
            return os.open(os.devnull, os.O_RDONLY)
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd
