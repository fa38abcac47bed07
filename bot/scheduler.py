"""Workers: claim jobs fairly, run them on their provider, store results, survive crashes.

One dispatcher per provider claims as many jobs as it has free slots (the provider's
``concurrency`` in this process, within its ``max_running`` across processes), in one
transaction, fairly across people (see
``bot.fairness.plan_fair_share``), and runs each as a task. A claimed job carries a lease
(owner + expiry); one loop renews every lease this process holds in a single statement and
learns from the same statement whether a job was cancelled from elsewhere or taken over.

When a process dies its leases lapse (or, on the same host, its pid is seen to be gone) and
the jobs go back to the queue: a job whose provider task id is known resumes polling that
task, others run again, and pictures already stored are not made twice.

A death is the job's fault only when the process left a fatal-signal report (see
``bot.crashes``): then the run counts as an attempt, as an exception raised in sdhost's
own code does. A job a crash already cost an attempt runs alone in its process, so the
next crash names it and not the jobs that happened to run beside it; after
``queue.max_attempts`` it is quarantined so it cannot block the queue or crash-loop the
bot. A process killed from outside (``kill -9``, the OOM killer, a reboot) costs its jobs
nothing: they go back at once, counted in ``lost_runs``, and only a job under which the
process died ``queue.max_lost_runs`` times is set aside.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from PIL import Image
from sqlalchemy import Connection, Row

from bot import crashes
from bot.chat import Progress, ReplyTo, outbox_address
from bot.config import Config
from bot.errors import FailureClass, ProviderFailure, UserError
from bot.fairness import plan_fair_share
from bot.imaging import encode_output_png, thumbnail_of
from bot.infotext import format_infotext
from bot.jobs import finish_job, load_more_inputs, now
from bot.owners import make_owner, owner_is_dead
from bot.params import GenerationParams
from bot.providers import Provider, ResolvedRequest, ResultImage, queued_stage
from bot.routing import Router
from bot.waiting import wait_for_event
from storage import notify, repos
from storage.db import Database
from storage.files import PictureStore, StorageUnavailable
from storage.status import JobStatus

log = logging.getLogger(__name__)

PROGRESS_DB_INTERVAL = 2.0  # seconds between progress writes for one job
FAILOVER_COOLDOWN_S = 30.0  # a provider that failed transiently is skipped this long
# The error of a job put back because the picture store was down (see ``_storage_down``).
STORAGE_WAIT = "waiting for the picture store: "


class LeaseLost(BaseException):
    """This process no longer holds the job (its lease lapsed and someone else took it).

    A BaseException so that a provider's ``except Exception`` cannot swallow it.
    """


class _Run:
    """The ProviderRun handed to a provider: callbacks into the core for one job."""

    def __init__(self, sched: Scheduler, job: Row[Any], request: ResolvedRequest, have: set[int]):
        self.sched = sched
        self.job = job
        self.request = request
        self.task_id: str | None = job.provider_task_id
        self.state: dict[str, Any] = dict(job.provider_state or {})
        self.images: set[int] = set(have)
        # Stored pictures whose rows are written with the job's outcome (the last one).
        self.pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._last_db_progress = 0.0
        self._last_percent = -1
        self._last_stage = ""
        # What the provider billed for this job so far (earlier attempts included); written
        # with the job's next update.
        self.cost_amount: float | None = getattr(job, "provider_cost", None)
        self.cost_unit: str | None = getattr(job, "provider_cost_unit", None)
        self.cost_dirty = False
        # Set when storing a picture met an unreachable store: whatever the provider makes
        # of the exception (some wrap every error), the job waits for the store.
        self.storage_error: StorageUnavailable | None = None

    def has_image(self, index: int) -> bool:
        return index in self.images

    def cost(self, amount: float, unit: str) -> None:
        """The provider billed ``amount`` ``unit`` (e.g. "credits") for a task of this job;
        added to the job's ``provider_cost`` with its next update."""
        if self.cost_unit not in (None, unit):
            return  # one unit per job: a provider reports in one currency
        self.cost_amount = (self.cost_amount or 0.0) + float(amount)
        self.cost_unit = unit
        self.cost_dirty = True

    def cost_values(self) -> dict[str, Any]:
        """The cost columns to write with the next update (and mark them written)."""
        if not self.cost_dirty:
            return {}
        self.cost_dirty = False
        return {"provider_cost": self.cost_amount, "provider_cost_unit": self.cost_unit}

    async def submitted(self, task_id: str, state: dict[str, Any] | None = None) -> None:
        first = self.task_id is None
        self.task_id = task_id
        self.state = dict(state or {})
        if not first:  # another task of the same job (one per picture): keep the progress
            await self.sched._update(
                self.job, self, provider_task_id=task_id, provider_state=self.state
            )
            return
        await self.sched._update(
            self.job,
            self,
            provider_task_id=task_id,
            provider_state=self.state,
            submitted_at=now(),
            progress=30,
            stage="submitted",
        )
        await self.sched._progress(self.job, 30, "submitted")

    async def progress(
        self,
        fraction: float,
        *,
        queue_position: int | None = None,
        wait_s: float | None = None,
        preview: bytes | None = None,
    ) -> None:
        pct = 30 + int(60 * min(max(fraction, 0.0), 1.0))
        stage = "generating"
        if queue_position is not None:  # waiting in the provider's own queue
            stage = queued_stage(queue_position, wait_s)
        if (pct, stage) == (self._last_percent, self._last_stage) and preview is None:
            return
        self._last_percent, self._last_stage = pct, stage
        t = time.monotonic()
        if t - self._last_db_progress >= PROGRESS_DB_INTERVAL:
            self._last_db_progress = t
            await self.sched._update(self.job, progress=pct, stage=stage)
        await self.sched._progress(self.job, pct, stage, preview)

    async def image(self, index: int, result: ResultImage) -> None:
        if index in self.images:
            return
        try:
            stored = await self.sched._store_picture(self.job, self.request, index, result)
        except StorageUnavailable as exc:
            self.storage_error = exc
            raise
        self.pending.append(stored)
        self.images.add(index)
        # The last picture's rows go in with the job's outcome, which follows at once,
        # saving a transaction per job (every way out of the job writes them); others now.
        if len(self.images) < self.request.n:
            await self.sched._update(self.job, self, stage="generating")


class Scheduler:
    def __init__(
        self,
        config: Config,
        db: Database,
        providers: dict[str, Provider],
        files: PictureStore,
        *,
        owner: str | None = None,
        on_event: Callable[[], None] | None = None,
        on_progress: Callable[[Progress], Any] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.providers = providers
        self.files = files
        self.owner = owner or make_owner()
        self.on_event = on_event or (lambda: None)
        self.on_progress = on_progress
        self._wake: dict[str, asyncio.Event] = {p: asyncio.Event() for p in providers}
        self._dispatchers: list[asyncio.Task[None]] = []
        self._running: dict[int, asyncio.Task[None]] = {}
        self._cancel_asked: set[int] = set()
        self._lost: set[int] = set()
        self._settling: set[int] = set()  # their final write is under way: leave them be
        self._stopping = False
        self._lease_task: asyncio.Task[None] | None = None
        self.router = Router(config, providers)
        # providers that failed transiently: jobs that have not reached them fail over
        # straight away until then (a circuit breaker, per process)
        self._down_until: dict[str, float] = {}
        # Claims are made one at a time in this process; a retried job (see
        # repos.claim_jobs) runs alone, and while it does nothing else is claimed here.
        self._claim_lock = asyncio.Lock()
        self._solo: int | None = None
        # How long an idle dispatcher waits before looking for work again. The App lengthens
        # it while notifications wake this process (see storage.notify); a job that becomes
        # due later (a retry's backoff) is woken for by a timer (``wake_at``).
        self.idle_poll: Callable[[], float] = lambda: config.queue.poll_idle_s

    def limits(self, provider: str) -> tuple[int, int | None]:
        """(jobs this process runs at once, cap across all processes or None)."""
        section = getattr(self.config.providers, provider, None)
        concurrency = int(getattr(section, "concurrency", None) or 4)
        return concurrency, int(getattr(section, "max_running", 0) or 0) or None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        await self.recover()
        for name in self.providers:
            self._dispatchers.append(
                asyncio.create_task(self._dispatch(name), name=f"dispatch-{name}")
            )
        self._lease_task = asyncio.create_task(self._lease_loop(), name="leases")

    async def stop(self) -> None:
        """Stop claiming; running jobs go back to the queue with their provider task ids."""
        self._stopping = True
        tasks = [*self._dispatchers, *([self._lease_task] if self._lease_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatchers.clear()
        self._lease_task = None
        running = list(self._running.values())
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # A claim whose dispatcher was cancelled while it ran still committed; nothing
        # will run those jobs here, and our own reaper would never take them back.
        try:
            orphans = await self.db.run_write(repos.release_held, self.owner)
        except Exception:
            log.exception("could not give back claimed jobs at shutdown")
        else:
            if orphans:
                log.info("gave back %d claimed job(s) that had not started", orphans)

    def wake(self, provider: str | None = None) -> None:
        events = [self._wake[provider]] if provider in self._wake else list(self._wake.values())
        for ev in events:
            ev.set()

    def wake_at(self, provider: str | None, t: float) -> None:
        """Wake ``provider``'s dispatcher when a job of it comes due at ``t`` (wall time):
        no notification announces that moment."""
        delay = t - now()
        if delay <= 0:
            self.wake(provider)
        else:
            asyncio.get_running_loop().call_later(delay + 0.01, self.wake, provider)

    def cancel_local(self, job_id: int) -> bool:
        task = self._running.get(job_id)
        if task is None or job_id in self._settling:
            return False
        if job_id in self._cancel_asked:
            return True  # asked before: a second cancel must not cut the first one's cleanup
        self._cancel_asked.add(job_id)
        task.cancel()
        return True

    @property
    def running_jobs(self) -> list[int]:
        return list(self._running)

    # --- recovery ----------------------------------------------------------------------------

    async def recover(self) -> int:
        """Requeue (or quarantine) running jobs whose lease lapsed or whose owner is gone."""
        owners = await self.db.run_read(repos.running_owners)
        dead = [o for o in owners if owner_is_dead(o, self.owner)]
        data_dir = self.config.data.dir
        # Read before the transaction: file I/O does not belong inside a write lock.
        fatal = {o for o in owners if o != self.owner and crashes.fatal_report(data_dir, o)}
        due: list[tuple[str, float]] = []
        requeued = await self.db.run_write(self._recover_tx, now(), dead, fatal, due)
        for provider, t in due:
            self.wake_at(provider, t)
        # Every job of a dead owner is accounted for now: its report has served.
        try:
            still = await self.db.run_read(repos.running_owners)
            await asyncio.to_thread(crashes.sweep, data_dir, self.owner, still)
        except Exception:
            log.exception("could not clean up crash reports")
        if requeued:
            log.info("took back %d job(s) from stopped workers", requeued)
            self.on_event()
            self.wake()
        return requeued

    def _recover_tx(
        self,
        conn: Connection,
        t: float,
        dead: list[str],
        fatal: set[str],
        due: list[tuple[str, float]],
    ) -> int:
        """Take back lapsed jobs; ``due`` gets (provider, when) of those held back a while."""
        q = self.config.queue
        n = 0
        due.clear()  # a retried transaction starts over
        for job in repos.lapsed_jobs(conn, t, dead):
            if job.lease_owner == self.owner:
                continue  # ours: the lease loop renews it, or finds it lost
            n += 1
            if job.lease_owner in fatal:
                # Its process died of a fatal signal while running it: the run counts.
                log.warning("job %s: its worker %s crashed (fatal signal)", job.id, job.lease_owner)
                if job.attempts >= q.max_attempts:
                    self._set_aside(conn, job, _quarantine_msg(job.attempts), t)
                else:
                    run_after = t + q.retry_backoff_s * job.attempts
                    _requeue(
                        conn,
                        job,
                        run_after=run_after,
                        error="the worker process running it crashed",
                    )
                    due.append((job.provider, run_after))
                continue
            # Killed from outside (or gone unseen on another host): bad luck, not an
            # attempt. Requeued at once, unless the process died under it too often.
            lost = job.lost_runs + 1
            if lost >= q.max_lost_runs:
                self._set_aside(conn, job, _lost_msg(lost), t, lost_runs=lost)
            else:
                _requeue(
                    conn, job, attempts=max(0, job.attempts - 1), lost_runs=lost, run_after=0.0
                )
        return n

    def _set_aside(
        self, conn: Connection, job: Row[Any], message: str, t: float, **values: Any
    ) -> None:
        if values:
            repos.update_job(conn, job.id, **values)
        finish_job(
            conn,
            self.config,
            job,
            status=JobStatus.QUARANTINED,
            failure=FailureClass.CRASH,
            message=message,
            images_made=len(repos.images_for_job(conn, job.id)),
            t=t,
        )

    async def _lease_loop(self) -> None:
        q = self.config.queue
        interval = q.lease_s / 3
        next_reap = time.monotonic() + q.lease_s / 2
        while True:
            await asyncio.sleep(interval)
            try:
                if self._running:
                    await self._renew()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + q.lease_s / 2
                    await self.recover()
            except Exception:  # keep renewing; log the cause
                log.exception("lease upkeep failed")

    async def _renew(self) -> None:
        # Only jobs claimed before the renewal starts can be judged by its answer: one
        # claimed while it runs (other connections, on PostgreSQL) is simply not in it.
        before = dict(self._running)
        held = await self.db.run_write(
            repos.renew_leases, self.owner, now() + self.config.queue.lease_s
        )
        for job_id, task in before.items():
            if job_id in self._settling or task.done():
                continue
            if job_id not in held:
                log.warning("job %s: lease lost; another worker owns it now", job_id)
                self._lost.add(job_id)
                task.cancel()
            elif held[job_id] and job_id not in self._cancel_asked:
                self._cancel_asked.add(job_id)  # cancelled from another process or the CLI
                task.cancel()

    # --- dispatching -------------------------------------------------------------------------

    async def _dispatch(self, provider: str) -> None:
        cap, shared_cap = self.limits(provider)
        wake = self._wake[provider]
        mine: set[int] = set()
        while True:
            wake.clear()
            free = cap - len(mine)
            claimed: list[Row[Any]] = []
            if free > 0:
                try:
                    claimed = await self._claim(provider, free, shared_cap)
                except Exception:
                    log.exception("claiming jobs for %s failed; retrying", provider)
                    await asyncio.sleep(1)
                    continue
            for job in claimed:
                self._start(job, mine, wake)
            if claimed and len(claimed) == free:
                continue  # there may be more waiting
            await wait_for_event(wake, self.idle_poll())

    async def _claim(self, provider: str, free: int, shared_cap: int | None) -> list[Row[Any]]:
        """Claim up to ``free`` jobs; a retried job only when nothing else runs here, and
        then alone. While one is due, a busy process claims nothing new, so it drains and
        the retried job gets its turn."""
        q = self.config.queue
        kw: dict[str, Any] = {
            "provider": provider,
            "owner": self.owner,
            "lease_s": q.lease_s,
            "timeout_s": q.job_timeout_s,
            "max_running_per_user": q.max_running_per_user,
            "provider_cap": shared_cap,
            "plan": plan_fair_share,
        }

        def tx(conn: Connection, idle: bool) -> tuple[list[Row[Any]], bool]:
            t = now()
            if idle:
                alone = repos.claim_jobs(conn, now=t, slots=1, retried=True, **kw)
                if alone:
                    return alone, True
            elif repos.retried_waiting(conn, provider, t):
                return [], False
            return repos.claim_jobs(conn, now=t, slots=free, **kw), False

        async with self._claim_lock:
            if self._solo is not None:
                return []
            # one transaction for the whole decision (an idle poll used to take two)
            claimed, solo = await self.db.run_write(tx, not self._running)
            if solo:
                self._solo = claimed[0].id
            return claimed

    def _start(self, job: Row[Any], mine: set[int], wake: asyncio.Event) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._running[job.id] = task
        mine.add(job.id)

        def done(_: asyncio.Task[None], job_id: int = job.id) -> None:
            self._running.pop(job_id, None)
            mine.discard(job_id)
            for s in (self._cancel_asked, self._lost, self._settling):
                s.discard(job_id)
            if self._solo == job_id:
                self._solo = None
                self.wake()  # every provider's dispatcher held back while it ran
            wake.set()

        task.add_done_callback(done)

    # --- running one job ---------------------------------------------------------------------

    async def _run(self, job: Row[Any]) -> None:
        run: list[_Run] = []  # filled in once the provider is about to be called
        try:
            await self._run_job(job, run)
        except (asyncio.CancelledError, LeaseLost):
            if (self._stopping or job.id in self._lost) and job.id not in self._settling:
                # Stopping: give the job back. Lost: normally a no-op (someone else holds
                # it); if we still hold it after all, giving it back keeps it from being
                # stranded under our name.
                await self._release(job, run[0] if run else None)
        except Exception:
            log.exception("job %s: unexpected error in the scheduler", job.id)

    async def _run_job(self, job: Row[Any], holder: list[_Run]) -> None:
        q = self.config.queue
        provider = self.providers[job.provider]
        if job.attempts > q.max_attempts:
            await self._finish(
                job, JobStatus.QUARANTINED, FailureClass.CRASH, _quarantine_msg(job.attempts - 1)
            )
            return
        if job.cancel_requested:
            await self._finish(job, JobStatus.CANCELLED, FailureClass.CANCELLED, "cancelled")
            return
        remaining = (job.deadline or now() + q.job_timeout_s) - now()
        if remaining <= 0:
            message = _timeout_msg(q.job_timeout_s)
            if (job.error or "").startswith(STORAGE_WAIT):  # say why it never finished
                message = f"{message} ({job.error})"
            await self._finish(job, JobStatus.FAILED, FailureClass.TIMEOUT, message[:2000])
            return
        try:
            request = await self._request_for(job)
        except StorageUnavailable as exc:
            await self._storage_down(job, None, exc)
            return
        except Exception as exc:
            log.exception("job %s: cannot build its request", job.id)
            await self._finish(
                job, JobStatus.FAILED, FailureClass.CRASH, f"the job's input is unusable: {exc}"
            )
            return
        have: set[int] = set()
        if (
            job.provider_task_id
            or job.attempts > 1
            or job.lost_runs
            or (job.error or "").startswith(STORAGE_WAIT)
        ):
            have = {im.idx for im in await self.db.run_read(repos.images_for_job, job.id)}
        run = _Run(self, job, request, have)
        holder.append(run)
        if (
            not job.provider_task_id
            and self._down_until.get(job.provider, 0.0) > time.monotonic()
            and await self._fail_over(job, run, f"{job.provider} is unavailable")
        ):
            return
        await self._progress(job, 30 if job.provider_task_id else 10, "received")
        try:
            async with asyncio.timeout(remaining) as deadline:
                await provider.generate(run)
        except StorageUnavailable as exc:
            await self._storage_down(job, run, exc)
        except ProviderFailure as exc:
            if run.storage_error is not None:  # the provider wrapped it
                await self._storage_down(job, run, run.storage_error)
                return
            if exc.retry_after is not None and run.task_id is None and not run.images:
                # down or throttled past its retries, before it took the job: next in chain
                self._down_until[job.provider] = time.monotonic() + FAILOVER_COOLDOWN_S
                if await self._fail_over(job, run, exc.message):
                    return
            await self._finish(
                job, JobStatus.FAILED, exc.failure, exc.message, run=run, uncharged=exc.uncharged
            )
        except TimeoutError:
            if not deadline.expired():  # a timeout inside the provider, not our deadline
                await self._crashed(job, run, "the provider timed out")
                return
            await self._cancel_remote(provider, run.task_id)
            await self._finish(
                job, JobStatus.FAILED, FailureClass.TIMEOUT, _timeout_msg(q.job_timeout_s), run=run
            )
        except (asyncio.CancelledError, LeaseLost):
            if job.id in self._cancel_asked and not self._stopping:
                await self._cancel_remote(provider, run.task_id)
                await self._finish(
                    job,
                    JobStatus.CANCELLED,
                    FailureClass.CANCELLED,
                    "cancelled while running",
                    run=run,
                )
                return
            raise
        except Exception as exc:
            if run.storage_error is not None:  # the provider wrapped it
                await self._storage_down(job, run, run.storage_error)
                return
            log.exception("job %s crashed on attempt %s", job.id, job.attempts)
            await self._crashed(job, run, repr(exc))
        else:
            if not run.images:
                await self._finish(
                    job,
                    JobStatus.FAILED,
                    FailureClass.PROVIDER_ERROR,
                    "the provider returned no image",
                )
            else:
                await self._finish(job, JobStatus.SUCCEEDED, None, None, run=run)

    async def _fail_over(self, job: Row[Any], run: _Run, reason: str) -> bool:
        """Move a job that never reached its provider to the next one in the configured
        chain that can make it; True if it moved. The job keeps its charge: the person
        pays once, at the price they were quoted."""
        chain = self.config.providers.failover.get(job.provider, [])
        params = GenerationParams.from_dict(job.params)
        tried = [*job.params.get("failed_over", []), job.provider]
        w, h = params.width or 1, params.height or 1  # stored params carry the resolved size
        init_size = (w, h) if job.kind == "img2img" else None
        if params.upscale:  # the stored size is the result's: the input is that over the factor
            init_size = (max(1, round(w / params.upscale)), max(1, round(h / params.upscale)))
        for name in chain:
            if name in tried or name not in self.providers:
                continue
            if self._down_until.get(name, 0.0) > time.monotonic():
                continue
            kind = "img2img" if job.kind == "img2img" else "txt2img"
            g = math.gcd(w, h)
            moved = params.with_(provider=name, model=None, width=None, height=None)
            if init_size is None:
                moved = moved.with_(aspect=f"{w // g}:{h // g}")
            try:
                route = self.router.resolve(moved, kind, init_size)
            except UserError:
                continue
            new_params = {
                **params.with_(
                    provider=name, model=route.model, width=route.width, height=route.height
                ).to_dict(),
                "failed_over": tried,
            }
            note = f"{job.provider} failed ({reason}); moved to {name}"
            log.warning("job %s: %s", job.id, note)
            await self._update(
                job,
                run,
                status=JobStatus.QUEUED,
                provider=name,
                model=route.model,
                params=new_params,
                provider_state=None,
                lease_owner=None,
                lease_until=None,
                run_after=0.0,
                attempts=max(0, job.attempts - 1),  # moving is not a crash
                stage="received",
                progress=0,
                error=note[:2000],
            )
            self.wake(name)
            return True
        return False

    async def _storage_down(self, job: Row[Any], run: _Run | None, exc: StorageUnavailable) -> None:
        """The picture store is unreachable: not the job's fault, so not an attempt (it is
        never quarantined for it). Back in the queue after ``queue.retry_backoff_s``, with
        the pictures already stored kept; the job's deadline bounds the wait, and a job
        still waiting then fails as timed out (refunded as the refund policy says)."""
        log.warning("job %s: %s; back in the queue, not counted as an attempt", job.id, exc)
        await self._update(
            job,
            run,
            status=JobStatus.QUEUED,
            lease_owner=None,
            lease_until=None,
            attempts=max(0, job.attempts - 1),
            run_after=now() + self.config.queue.retry_backoff_s,
            error=f"{STORAGE_WAIT}{exc}"[:2000],
        )
        self.wake(job.provider)

    async def _crashed(self, job: Row[Any], run: _Run, error: str) -> None:
        q = self.config.queue
        if job.attempts >= q.max_attempts:
            await self._finish(
                job,
                JobStatus.QUARANTINED,
                FailureClass.CRASH,
                _quarantine_msg(job.attempts),
                run=run,
            )
            return
        run_after = now() + q.retry_backoff_s * job.attempts
        await self._update(
            job,
            run,
            status=JobStatus.QUEUED,
            lease_owner=None,
            lease_until=None,
            run_after=run_after,
            error=error[:2000],
        )
        self.wake_at(job.provider, run_after)

    async def _request_for(self, job: Row[Any]) -> ResolvedRequest:
        p = GenerationParams.from_dict(job.params)
        init = None
        if job.input_sha256:
            init = await asyncio.to_thread(
                self.files.get, job.input_sha256, kind="inputs", ext="png"
            )
        more = await load_more_inputs(self.files, job.params) if init is not None else []
        return ResolvedRequest(
            job_id=job.id,
            kind="img2img" if job.kind == "img2img" else "txt2img",
            prompt=p.prompt,
            negative=p.negative,
            width=p.width or 512,
            height=p.height or 512,
            seed=p.seed or 0,
            n=p.n,
            model=job.model or "",
            steps=p.steps,
            cfg=p.cfg,
            sampler=p.sampler,
            strength=p.strength,
            loras=p.loras,
            vae=p.vae,
            scheduler=p.scheduler,
            hires=p.hires,
            upscale=p.upscale,
            workflow=p.workflow,
            init_image=init,
            init_images=(init, *more) if init is not None and more else (),
            # the chat's NSFW policy when the job was asked for (see Commands.job_address)
            nsfw_ok=ReplyTo.from_json(job.reply_to).nsfw_ok,
        )

    # --- state changes (all guarded by lease ownership) --------------------------------------

    @staticmethod
    def _write_pictures(
        conn: Connection, pictures: list[tuple[dict[str, Any], dict[str, Any]]]
    ) -> None:
        repos.add_images(conn, [image for image, _ in pictures])
        repos.add_events(conn, [event for _, event in pictures])

    async def _update(self, job: Row[Any], run: _Run | None = None, **values: Any) -> None:
        """Change our running job and record the run's pending pictures with it; LeaseLost
        if the job is no longer ours."""
        written = list(run.pending) if run is not None else []
        if run is not None:
            values = {**values, **run.cost_values()}

        def tx(conn: Connection) -> bool:
            if not repos.update_owned(conn, job.id, self.owner, **values):
                return False
            self._write_pictures(conn, written)
            if values.get("status") == JobStatus.QUEUED:  # back in the queue: wake workers
                notify.jobs_queued(conn, [values.get("provider", job.provider)])
            return True

        if not await self.db.run_write(tx):
            raise LeaseLost
        if written:
            del run.pending[: len(written)]  # type: ignore[union-attr]
            self.on_event()

    async def _finish(
        self,
        job: Row[Any],
        status: JobStatus,
        failure: FailureClass | None,
        message: str | None,
        *,
        run: _Run | None = None,
        uncharged: bool = False,
    ) -> None:
        self._settling.add(job.id)

        def tx(conn: Connection) -> bool:
            current = repos.owned_job(conn, job.id, self.owner, lock=True)
            if current is None:
                return False  # our lease lapsed and someone else owns it now
            self._write_pictures(conn, run.pending if run is not None else [])
            cost = run.cost_values() if run is not None else {}
            if cost:
                repos.update_owned(conn, job.id, self.owner, **cost)
            finish_job(
                conn,
                self.config,
                current,
                status=status,
                failure=failure,
                message=message,
                # Without a run (the job ended before reaching its provider this time),
                # count what earlier attempts stored: those were delivered and are kept.
                images_made=len(run.images)
                if run is not None
                else len(repos.images_for_job(conn, job.id)),
                t=now(),
                # a cancel refunds what was not made when the provider bills nothing for it
                # (JobService.cancel told the person so, by the same rule)
                uncharged=uncharged
                or (
                    status == JobStatus.CANCELLED
                    and not self.router.bills_when_cancelled(current.provider)
                ),
            )
            return True

        # Shielded: once we decide a job's outcome, a cancel must not cut the write short.
        if await asyncio.shield(self.db.run_write(tx)):
            log.info("job %s %s%s", job.id, status, f" ({failure.value})" if failure else "")
            self.on_event()
            await self._progress(
                job, 100 if status == JobStatus.SUCCEEDED else job.progress, status
            )

    async def _release(self, job: Row[Any], run: _Run | None) -> None:
        """Shutdown: give the job back without counting the attempt (keeping its pictures)."""
        values = {
            "status": JobStatus.QUEUED,
            "lease_owner": None,
            "lease_until": None,
            "attempts": max(0, job.attempts - 1),
            "run_after": 0.0,
        }

        def tx(conn: Connection) -> None:
            if repos.update_owned(conn, job.id, self.owner, **values):
                self._write_pictures(conn, run.pending if run is not None else [])
                notify.jobs_queued(conn, [job.provider])  # another process may take it now

        try:
            await asyncio.shield(self.db.run_write(tx))
        except Exception:
            log.exception("job %s: could not give it back to the queue", job.id)

    async def _cancel_remote(self, provider: Provider, task_id: str | None) -> None:
        if task_id:
            try:
                await provider.cancel(task_id)
            except Exception:
                log.warning("provider %s could not cancel task %s", provider.name, task_id)

    async def _progress(
        self, job: Row[Any], percent: int, stage: str, preview: bytes | None = None
    ) -> None:
        if self.on_progress is None:
            return
        try:
            res = self.on_progress(
                Progress(
                    job_id=job.id,
                    percent=percent,
                    stage=stage,
                    reply_to=ReplyTo.from_json(job.reply_to),
                    batch_id=job.batch_id,
                    preview=preview,
                )
            )
            if asyncio.iscoroutine(res):
                await res
        except Exception:
            log.exception("progress callback failed for job %s", job.id)

    async def _store_picture(
        self, job: Row[Any], request: ResolvedRequest, index: int, result: ResultImage
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Encode and store the file (and thumbnail); return its image and event rows."""
        seed = result.seed if result.seed is not None else request.seed + index
        model = f"{job.provider}:{job.model}" if job.model else job.provider
        stored = await asyncio.to_thread(
            _encode_and_store, self.files, result, job.params, seed, model, job.id
        )
        t = now()
        image = {
            "job_id": job.id,
            "idx": index,
            "sha256": stored["sha256"],
            "width": stored["width"],
            "height": stored["height"],
            "seed": seed,
            "size_bytes": stored["size"],
            "created_at": t,
        }
        event = {
            "job_id": job.id,
            **outbox_address(job.reply_to),
            "kind": "image",
            "idx": index,
            "created_at": t,
            "payload": {
                "reply_to": ReplyTo.from_json(job.reply_to).to_json(),
                "path": stored["path"],
                "sha256": stored["sha256"],
                "width": stored["width"],
                "height": stored["height"],
                "seed": seed,
                "index": index,
                "count": request.n,
                "batch_id": job.batch_id,
                "batch_index": job.batch_index,
                "prompt": request.prompt,
                "model": model,
                "nsfw": result.nsfw,
            },
        }
        return image, event


def _encode_and_store(
    files: PictureStore,
    result: ResultImage,
    params: dict[str, Any],
    seed: int,
    model: str,
    job_id: int,
) -> dict[str, Any]:
    """One thread hop for everything CPU- and disk-bound about a finished picture."""
    img = result.image
    if img is None:
        if result.data is None:
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "the provider sent an empty image")
        try:
            img = Image.open(io.BytesIO(result.data), formats=["PNG", "JPEG", "WEBP"])
            img.load()
        except Exception as exc:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, "the provider sent an image that cannot be read"
            ) from exc
    text = format_infotext(
        GenerationParams.from_dict(params),
        width=img.width,
        height=img.height,
        seed=seed,
        model=model,
        extra={"sdhost job": str(job_id)},
    )
    data = encode_output_png(img, text)
    stored = files.put(data, kind="images", ext="png")
    if not files.exists(stored.sha256, kind="thumbs", ext="webp"):
        files.put_thumbnail(stored.sha256, thumbnail_of(img))
    return {
        "sha256": stored.sha256,
        # for display only (the console shows it): readers ask the store by sha256
        "path": str(stored.path) if stored.path is not None else files.locate(stored.sha256),
        "size": stored.size,
        "width": img.width,
        "height": img.height,
    }


def _requeue(conn: Connection, job: Row[Any], **values: Any) -> None:
    """Back to the queue, held by nobody (a job taken back from a dead process); idle
    workers of every process sharing the database are woken at commit."""
    repos.update_job(
        conn, job.id, status=JobStatus.QUEUED, lease_owner=None, lease_until=None, **values
    )
    notify.jobs_queued(conn, [job.provider])


def _quarantine_msg(attempts: int) -> str:
    return (
        f"this job failed {attempts} times inside sdhost and was set aside so it cannot block "
        "the queue; an admin can look at it with `sdhost jobs show`"
    )


def _lost_msg(times: int) -> str:
    return (
        f"the process running this job died under it {times} times (killed from outside, "
        "perhaps for using too much memory); it was set aside so it cannot block the queue; "
        "an admin can look at it with `sdhost jobs show`"
    )


def _timeout_msg(limit: float) -> str:
    return f"the provider did not finish within {int(limit)} s"
