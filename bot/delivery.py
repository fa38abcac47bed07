"""The outbox pump: hands stored events to chat adapters and records that they arrived.

Events of one job are delivered in order (a picture before its "done" line), also across
retries: an event waits while an earlier one of its job is out (see
``storage.repos.claim_events``). Different jobs go in parallel, so one slow upload or a
flood-control wait in one chat never holds up the others.

An event is marked sent right after the adapter returns; marks are written in batches by
one task, so delivering many pictures costs few transactions. A crash between the two
means the event is delivered again after a restart (at least once, never lost); events a
dead process on this host was sending are taken back at start-up, others once their
send lease runs out.

An adapter that sends several pictures at once (``ChatAdapter.max_group`` > 1, an album)
gets a job's pictures together: pictures claimed while the job's earlier ones wait their turn
join them, and a group still missing pictures of its job waits up to ``album_settle_s``
for them (less once the job's outcome or its last picture is in). Pictures that come far
apart (a provider that makes them one by one) still go as they come.

A platform whose delivery is bound to one process (``ChatAdapter.audiences``) is handed only
the events of the people this process serves; the others' events wait for theirs, also
those a process of theirs left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Row

from bot.chat import ChatAdapter, Delivery, DeliveryGone, DeliveryRetry, audience_of
from bot.jobs import now
from bot.owners import owner_is_dead
from bot.waiting import wait_for_event
from storage import repos
from storage.db import Database
from storage.status import OutboxStatus

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
SEND_LEASE_S = 120.0
CLAIM_BATCH = 100
STOP_GRACE_S = 10.0  # how long stopping waits for deliveries under way
ALBUM_SETTLE_S = 1.0  # how long a job's first pictures wait for the job's other pictures


class Deliverer:
    def __init__(
        self,
        db: Database,
        adapters: dict[str, ChatAdapter],
        owner: str,
        *,
        poll_idle_s: float = 0.5,
        album_settle_s: float = ALBUM_SETTLE_S,
    ) -> None:
        self.db = db
        self.adapters = adapters
        self.owner = owner
        self.poll_idle_s = poll_idle_s
        # How long the idle loop waits before looking again: the App lengthens it while
        # notifications wake this process (see storage.notify); an event held back until a
        # later time is woken for by a timer (``wake_at``).
        self.idle_poll: Callable[[], float] = lambda: self.poll_idle_s
        self.album_settle_s = album_settle_s
        # a job's pictures not yet handed to the adapter, which pictures of the job claimed
        # meanwhile join (job id -> the group and an event set when it grew or closed)
        self._open: dict[int, tuple[list[Delivery], asyncio.Event]] = {}
        self._wake = asyncio.Event()
        self._chains: dict[int, asyncio.Task[bool]] = {}
        self._marks: list[dict[str, Any]] = []
        self._marks_ready = asyncio.Event()
        self._flushing = False
        self._loop_task: asyncio.Task[None] | None = None
        self._marker_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def wake_at(self, t: float) -> None:
        """Look again at ``t`` (wall time), when an event held back until then is due."""
        delay = t - now()
        if delay <= 0:
            self.wake()
        else:
            asyncio.get_running_loop().call_later(delay + 0.01, self.wake)

    async def start(self) -> None:
        if not self.adapters:
            return
        owners = await self.db.run_read(repos.sending_owners)
        dead = [o for o in owners if owner_is_dead(o, self.owner)]
        if dead and await self.db.run_write(repos.release_events, dead) > 0:
            log.info("taking back undelivered events from stopped processes")
        await self._address_old_events()
        self._loop_task = asyncio.create_task(self._loop(), name="deliverer")
        self._marker_task = asyncio.create_task(self._marker(), name="delivery-marks")

    async def stop(self) -> None:
        """Stop sending; record what was sent; give back what was not."""
        # In order: no new claims, then no deliveries in flight, then no background marks.
        # A send cut off mid-request may have arrived without being recorded, and would be
        # sent again after the restart; so what is under way may finish, for a while.
        await _cancel([self._loop_task])
        chains = list(self._chains.values())
        if chains:
            await asyncio.wait(chains, timeout=STOP_GRACE_S)
        await _cancel(list(self._chains.values()))
        await _cancel([self._marker_task])
        self._chains.clear()
        self._loop_task = self._marker_task = None
        with contextlib.suppress(Exception):
            await self._flush()
            await self.db.run_write(repos.release_events, [self.owner])

    async def idle(self) -> bool:
        """Nothing being delivered and every outcome recorded."""
        return not self._chains and not self._marks and not self._flushing

    # --- claiming ----------------------------------------------------------------------------

    def _claim_scope(self) -> dict[str, list[str]]:
        """Which events this process may deliver: every event of the platforms any process
        can deliver, and for bound ones only those of the audiences it serves."""
        free: list[str] = []
        bound: list[str] = []
        audiences: set[str] = set()
        for platform, adapter in self.adapters.items():
            served = adapter.audiences()
            if served is None:
                free.append(platform)
            else:
                bound.append(platform)
                audiences |= served
        return {"platforms": free, "bound_platforms": bound, "audiences": sorted(audiences)}

    async def _address_old_events(self) -> None:
        """Give an audience to undelivered events of bound platforms written before events
        had one, so the process serving their person delivers them (and no other)."""
        bound = self._claim_scope()["bound_platforms"]
        try:
            rows = await self.db.run_read(repos.unaddressed_events, bound)
            found = {r.id: audience_of(dict(r.payload).get("reply_to") or {}) for r in rows}
            addressed = {eid: aud for eid, aud in found.items() if aud is not None}
            if addressed:
                await self.db.run_write(repos.address_events, addressed)
        except Exception:
            log.exception("addressing older outbox events failed")

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                events = await self.db.run_write(
                    repos.claim_events,
                    **self._claim_scope(),
                    owner=self.owner,
                    now=now(),
                    lease_s=SEND_LEASE_S,
                    limit=CLAIM_BATCH,
                )
            except Exception:
                log.exception("claiming outbox events failed")
                await asyncio.sleep(1)
                continue
            for group in self._groups(events):
                self._enqueue(group)
            if len(events) < CLAIM_BATCH:
                await wait_for_event(self._wake, self.idle_poll())

    def _groups(self, events: list[Row[Any]]) -> list[list[Row[Any]]]:
        """Consecutive pictures of one job go together to an adapter that sends albums."""
        groups: list[list[Row[Any]]] = []
        for ev in events:
            last = groups[-1] if groups else None
            if (
                last is not None
                and ev.kind == "image"
                and last[-1].kind == "image"
                and last[-1].job_id == ev.job_id
                and len(last) < self.adapters[ev.platform].max_group
            ):
                last.append(ev)
            else:
                groups.append([ev])
        return groups

    def _enqueue(self, events: list[Row[Any]]) -> None:
        deliveries = [
            Delivery(
                id=ev.id,
                job_id=ev.job_id,
                kind=ev.kind,
                idx=ev.idx,
                payload=dict(ev.payload),
                attempts=ev.attempts,
            )
            for ev in events
        ]
        job_id = deliveries[0].job_id
        platform = events[0].platform
        open_group = self._open.get(job_id)
        if open_group is not None:
            group, grew = open_group
            if all(d.kind == "image" for d in deliveries):
                room = self.adapters[platform].max_group - len(group)
                group.extend(deliveries[:room])
                deliveries = deliveries[room:]
            else:  # the job's outcome: no more pictures are coming
                del self._open[job_id]
            grew.set()
            if not deliveries:
                return
        prev = self._chains.get(job_id)
        task = asyncio.create_task(self._deliver_after(prev, platform, deliveries))
        self._chains[job_id] = task
        if deliveries[0].kind == "image" and self.adapters[platform].max_group > 1:
            self._open[job_id] = (deliveries, asyncio.Event())

        def _done(t: asyncio.Task[bool], job_id: int = job_id) -> None:
            if self._chains.get(job_id) is t:
                del self._chains[job_id]

        task.add_done_callback(_done)

    # --- delivering --------------------------------------------------------------------------

    async def _deliver_after(
        self, prev: asyncio.Task[bool] | None, platform: str, deliveries: list[Delivery]
    ) -> bool:
        """Deliver once the job's previous event is done; True if the chain may go on.

        A chain that stops (this event must wait) stays in place until that outcome is
        written, so an event of the same job claimed meanwhile queues behind it, finds it
        failed, and steps back too; the database then holds it until the earlier one is
        through.
        """

        def mark_all(
            status: OutboxStatus, attempts: int | None = None, **kw: Any
        ) -> asyncio.Future[Any]:
            marks = [
                self._mark(d, status, attempts=d.attempts if attempts is None else attempts, **kw)
                for d in deliveries
            ]
            return asyncio.gather(*marks)

        first = deliveries[0]
        adapter = self.adapters[platform]
        try:
            if prev is not None:
                try:
                    ok = await prev
                except BaseException:
                    ok = False
                if not ok:  # give it back: claimed again once its predecessor is through
                    self._close(deliveries)
                    await mark_all(OutboxStatus.PENDING, next_try=now())
                    return False
            await self._gather_pictures(adapter, deliveries)
        finally:
            self._close(deliveries)
        try:
            if len(deliveries) == 1:
                await adapter.deliver(first)
            else:
                await adapter.deliver_group(deliveries)
        except DeliveryRetry as exc:
            next_try = now() + exc.retry_after
            await mark_all(OutboxStatus.PENDING, next_try=next_try)
            self.wake_at(next_try)
            return False
        except DeliveryGone as exc:
            log.warning("event %s for job %s dropped: %s", first.id, first.job_id, exc)
            mark_all(OutboxStatus.DEAD, first.attempts + 1, error=str(exc))
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempts = first.attempts + 1
            log.exception("delivering event %s (job %s) failed", first.id, first.job_id)
            if attempts >= MAX_ATTEMPTS:
                mark_all(OutboxStatus.DEAD, attempts, error=repr(exc))
                return True
            next_try = now() + min(300.0, 2.0**attempts)
            await mark_all(OutboxStatus.PENDING, attempts, next_try=next_try, error=repr(exc))
            self.wake_at(next_try)
            return False
        mark_all(OutboxStatus.SENT, sent_at=now())
        return True

    async def _gather_pictures(self, adapter: ChatAdapter, deliveries: list[Delivery]) -> None:
        """Let the job's pictures still to come join ``deliveries`` (in place), for a while:
        until the group is full, the job's outcome came, or ``album_settle_s`` passed."""
        job_id = deliveries[0].job_id
        open_group = self._open.get(job_id)
        if open_group is None or open_group[0] is not deliveries:
            return
        grew = open_group[1]
        deadline = asyncio.get_running_loop().time() + self.album_settle_s
        while self._open.get(job_id) is open_group and not _all_in(deliveries, adapter.max_group):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            grew.clear()
            await wait_for_event(grew, left)

    def _close(self, deliveries: list[Delivery]) -> None:
        """Nothing joins ``deliveries`` any more: it is being handed over (or given back)."""
        open_group = self._open.get(deliveries[0].job_id)
        if open_group is not None and open_group[0] is deliveries:
            del self._open[deliveries[0].job_id]

    # --- recording outcomes ------------------------------------------------------------------

    def _mark(
        self,
        delivery: Delivery,
        status: OutboxStatus,
        *,
        attempts: int,
        next_try: float = 0.0,
        error: str | None = None,
        sent_at: float | None = None,
    ) -> asyncio.Future[None]:
        """Queue an outcome for the next batch write; the future resolves once written."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append(
            {
                "eid": delivery.id,
                "status": status,
                "attempts": attempts,
                "next_try": next_try,
                "error": error[:2000] if error else None,
                "sent_at": sent_at,
                "written": written,
            }
        )
        self._marks_ready.set()
        return written

    async def _marker(self) -> None:
        while True:
            await self._marks_ready.wait()
            try:
                await self._flush()
            except Exception:
                log.exception("recording delivery outcomes failed; retrying")
                await asyncio.sleep(0.5)

    async def _flush(self) -> None:
        self._marks_ready.clear()
        if not self._marks:
            return
        batch, self._marks = self._marks, []
        self._flushing = True
        try:
            await self.db.run_write(repos.mark_events, self.owner, batch)
        except BaseException:
            self._marks[:0] = batch  # keep them for the next try
            self._marks_ready.set()
            raise
        finally:
            self._flushing = False
        for mark in batch:
            if not mark["written"].done():
                mark["written"].set_result(None)
        self.wake()  # events waiting on these may go now


def _all_in(pictures: list[Delivery], max_group: int) -> bool:
    """Whether a group of a job's pictures is as full as it gets: the job's last picture is
    in (they come in order), or the adapter takes no more at once."""
    if len(pictures) >= max_group:
        return True
    last = max(int(d.payload.get("index", 0)) for d in pictures)
    return last + 1 >= int(pictures[0].payload.get("count", 1) or 1)


async def _cancel(tasks: list[asyncio.Task[Any] | None]) -> None:
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)
