"""The outbox pump: hands stored events to chat adapters and records that they arrived.

Events of one job are delivered in order (a picture before its "done" line); different jobs
go in parallel, so one slow upload or a flood-control wait in one chat never holds up the
others. An event is marked sent right after the adapter returns; a crash in between means it
is delivered again after a restart (at least once), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import update

from bot.chat import ChatAdapter, Delivery, DeliveryGone, DeliveryRetry
from bot.jobs import now
from storage import repos
from storage.db import Database
from storage.models import OutboxEvent

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
SEND_LEASE_S = 120.0


class Deliverer:
    def __init__(
        self,
        db: Database,
        adapters: dict[str, ChatAdapter],
        owner: str,
        *,
        poll_idle_s: float = 0.5,
    ) -> None:
        self.db = db
        self.adapters = adapters
        self.owner = owner
        self.poll_idle_s = poll_idle_s
        self._wake = asyncio.Event()
        self._chains: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self.adapters:
            self._task = asyncio.create_task(self._loop(), name="deliverer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        chains = list(self._chains.values())
        for t in chains:
            t.cancel()
        await asyncio.gather(*chains, return_exceptions=True)
        self._chains.clear()

    async def _loop(self) -> None:
        platforms = list(self.adapters)
        while True:
            self._wake.clear()
            try:
                async with self.db.write() as s:
                    events = await repos.claim_events(
                        s, platforms=platforms, owner=self.owner, now=now(), lease_s=SEND_LEASE_S
                    )
            except Exception:
                log.exception("claiming outbox events failed")
                events = []
                await asyncio.sleep(1)
            for ev in events:
                self._enqueue(
                    ev.platform,
                    Delivery(
                        id=ev.id,
                        job_id=ev.job_id,
                        kind=ev.kind,
                        idx=ev.idx,
                        payload=dict(ev.payload),
                        attempts=ev.attempts,
                    ),
                )
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_idle_s)

    def _enqueue(self, platform: str, delivery: Delivery) -> None:
        prev = self._chains.get(delivery.job_id)
        task = asyncio.create_task(self._deliver_after(prev, platform, delivery))
        self._chains[delivery.job_id] = task

        def _done(t: asyncio.Task[None], job_id: int = delivery.job_id) -> None:
            if self._chains.get(job_id) is t:
                del self._chains[job_id]

        task.add_done_callback(_done)

    async def _deliver_after(
        self, prev: asyncio.Task[None] | None, platform: str, delivery: Delivery
    ) -> None:
        if prev is not None:
            with contextlib.suppress(BaseException):
                await prev
        adapter = self.adapters[platform]
        try:
            await adapter.deliver(delivery)
        except DeliveryRetry as exc:
            await self._mark(delivery, status="pending", next_try=now() + exc.retry_after)
        except DeliveryGone as exc:
            log.warning("event %s for job %s dropped: %s", delivery.id, delivery.job_id, exc)
            await self._mark(delivery, status="dead", error=str(exc)[:2000])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempts = delivery.attempts + 1
            log.exception("delivering event %s (job %s) failed", delivery.id, delivery.job_id)
            if attempts >= MAX_ATTEMPTS:
                await self._mark(delivery, status="dead", attempts=attempts, error=repr(exc)[:2000])
            else:
                backoff = min(300.0, 2.0**attempts)
                await self._mark(
                    delivery,
                    status="pending",
                    attempts=attempts,
                    next_try=now() + backoff,
                    error=repr(exc)[:2000],
                )
            self.wake()
        else:
            await self._mark(delivery, status="sent", sent_at=now())

    async def _mark(self, delivery: Delivery, **values: Any) -> None:
        for attempt in range(5):
            try:
                async with self.db.write() as s:
                    await s.execute(
                        update(OutboxEvent)
                        .where(OutboxEvent.id == delivery.id, OutboxEvent.owner == self.owner)
                        .values(**values)
                    )
                return
            except Exception:
                log.exception("recording delivery of event %s failed", delivery.id)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def idle(self) -> bool:
        return not self._chains
