"""The inbox: updates a chat platform pushes to whichever process its load balancer picks,
handled once, by whichever process claims them, in order per chat.

The receiving process stores the raw update (a second copy of an ``update_id`` is dropped)
and answers the platform at once; a claimer in every process takes the oldest unhandled
updates, at most one per chat at a time, under a lease. A process that dies mid-update
loses its lease and another one handles the update again, so handling is at least once:
what costs credits carries the message's own id as its idempotency key. Updates are
forgotten by age (``FORGET_AFTER_S``), handled or not, because platforms reuse ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.jobs import now
from bot.waiting import wait_for_event
from storage import repos
from storage.db import Database

log = logging.getLogger(__name__)

LEASE_S = 120.0
IDLE_POLL_S = 0.5  # how often an idle claimer looks for updates other processes stored
FORGET_AFTER_S = 2 * 86400.0  # longer than a platform keeps an unanswered update (24 h)
FORGET_EVERY_S = 3600.0
CLAIM_BATCH = 50

Handler = Callable[[int, dict[str, Any]], Awaitable[None]]


class Inbox:
    def __init__(
        self,
        db: Database,
        owner: str,
        source: str,
        *,
        lease_s: float = LEASE_S,
        idle_poll_s: float = IDLE_POLL_S,
        forget_after_s: float = FORGET_AFTER_S,
    ) -> None:
        self.db = db
        self.owner = owner
        self.source = source
        self.lease_s = lease_s
        self.idle_poll_s = idle_poll_s
        self.forget_after_s = forget_after_s
        self._wake = asyncio.Event()
        self._last_forget = 0.0

    async def put(self, update_id: int, chat: str, raw: dict[str, Any]) -> bool:
        """Store an update; False when it was stored before (a copy, ignored)."""
        fresh = await self.db.run_write(
            repos.store_update,
            source=self.source,
            update_id=update_id,
            chat=chat,
            raw=raw,
            now=now(),
        )
        if fresh:
            self._wake.set()
        return fresh

    async def claim(self, limit: int = CLAIM_BATCH) -> list[Any]:
        return await self.db.run_write(
            repos.claim_updates,
            source=self.source,
            owner=self.owner,
            now=now(),
            lease_s=self.lease_s,
            limit=limit,
        )

    async def done(self, ids: list[int]) -> None:
        await self.db.run_write(repos.finish_updates, ids=ids, owner=self.owner, now=now())

    async def release(self) -> None:
        """Give back what this process holds and has not finished (it is stopping), so
        another process takes it at once instead of after the lease."""
        await self.db.run_write(repos.release_updates, source=self.source, owner=self.owner)

    async def forget_old(self, *, at: float | None = None) -> int:
        """Forget updates received more than ``forget_after_s`` ago."""
        moment = now() if at is None else at
        self._last_forget = moment
        return await self.db.run_write(repos.forget_updates, before=moment - self.forget_after_s)

    async def run(self, handle: Handler) -> None:
        """Claim and handle updates until cancelled: ``handle(update_id, raw)`` for each,
        one chat's updates one after the other, different chats side by side."""
        while True:
            try:
                if now() - self._last_forget > FORGET_EVERY_S:
                    await self.forget_old()
                self._wake.clear()
                rows = await self.claim()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("inbox %s: claiming failed", self.source, exc_info=True)
                rows = []
            if not rows:
                await wait_for_event(self._wake, self.idle_poll_s)
                continue
            await asyncio.gather(*(self._one(row, handle) for row in rows))

    async def _one(self, row: Any, handle: Handler) -> None:
        try:
            await handle(int(row.update_id), dict(row.raw))
        except asyncio.CancelledError:
            raise
        except Exception:  # handled (badly) all the same: a retry would fail again
            log.exception("inbox %s: handling update %s failed", self.source, row.update_id)
        await self.done([int(row.id)])
