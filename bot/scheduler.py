"""Workers: claim jobs fairly, run them on their provider, store results, survive crashes.

Each provider gets ``concurrency`` worker loops in this process. A claimed job carries a
lease (owner + expiry) that a heartbeat extends; the heartbeat also notices a cancel asked
for from another process. When a process dies its leases lapse (or, on the same host, its
pid is seen to be gone at start-up) and the jobs go back to the queue: a job whose provider
task id is known resumes polling that task, others run again. A job that keeps crashing
our own code is quarantined after ``queue.max_attempts`` so it cannot block the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from PIL import Image
from sqlalchemy import update

from bot.chat import Progress
from bot.config import Config
from bot.errors import FailureClass, ProviderFailure
from bot.imaging import encode_output_png, make_thumbnail
from bot.infotext import format_infotext
from bot.jobs import finish_job, now
from bot.params import GenerationParams
from bot.providers import Provider, ResolvedRequest, ResultImage
from storage import repos
from storage.db import Database
from storage.files import FileStore
from storage.models import Job

log = logging.getLogger(__name__)

PROGRESS_DB_INTERVAL = 2.0  # seconds between progress writes for one job


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_dead(owner: str) -> bool:
    """True when ``owner`` is a process on this host that no longer exists."""
    try:
        host, pid_s, _ = owner.split(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Run:
    """The ProviderRun handed to a provider: callbacks into the core for one job."""

    def __init__(self, sched: Scheduler, job: Job, request: ResolvedRequest, have: set[int]):
        self.sched = sched
        self.job = job
        self.request = request
        self.task_id: str | None = job.provider_task_id
        self.state: dict[str, Any] = dict(job.provider_state or {})
        self.images: set[int] = set(have)
        self._last_db_progress = 0.0
        self._last_percent = -1

    def has_image(self, index: int) -> bool:
        return index in self.images

    async def submitted(self, task_id: str, state: dict[str, Any] | None = None) -> None:
        self.task_id = task_id
        self.state = dict(state or {})
        await self.sched._update_owned(
            self.job,
            provider_task_id=task_id,
            provider_state=self.state,
            submitted_at=now(),
            progress=30,
            stage="submitted",
        )
        self.job.submitted_at = now()
        await self.sched._progress(self.job, 30, "submitted")

    async def progress(self, fraction: float) -> None:
        pct = 30 + int(60 * min(max(fraction, 0.0), 1.0))
        if pct == self._last_percent:
            return
        self._last_percent = pct
        t = time.monotonic()
        if t - self._last_db_progress >= PROGRESS_DB_INTERVAL:
            self._last_db_progress = t
            await self.sched._update_owned(self.job, progress=pct, stage="generating")
        await self.sched._progress(self.job, pct, "generating")

    async def image(self, index: int, result: ResultImage) -> None:
        if index in self.images:
            return
        await self.sched._store_image(self.job, self.request, index, result)
        self.images.add(index)


class Scheduler:
    def __init__(
        self,
        config: Config,
        db: Database,
        providers: dict[str, Provider],
        files: FileStore,
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
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[int, asyncio.Task[Any]] = {}
        self._cancel_asked: set[int] = set()
        self._stopping = False
        self._reaper: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        for name, provider in self.providers.items():
            n = getattr(getattr(self.config.providers, name, None), "concurrency", None) or 4
            del provider
            for i in range(n):
                self._workers.append(
                    asyncio.create_task(self._worker(name), name=f"worker-{name}-{i}")
                )
        self._reaper = asyncio.create_task(self._reap_loop(), name="reaper")

    async def stop(self) -> None:
        """Stop workers; running jobs go back to the queue with their provider task ids."""
        self._stopping = True
        tasks = [*self._workers, *([self._reaper] if self._reaper else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def wake(self, provider: str | None = None) -> None:
        events = [self._wake[provider]] if provider in self._wake else list(self._wake.values())
        for ev in events:
            ev.set()

    def cancel_local(self, job_id: int) -> bool:
        task = self._running.get(job_id)
        if task is None:
            return False
        self._cancel_asked.add(job_id)
        task.cancel()
        return True

    @property
    def running_jobs(self) -> list[int]:
        return list(self._running)

    # --- recovery ----------------------------------------------------------------------------

    async def recover(self) -> int:
        """Requeue running jobs whose lease lapsed or whose owner process is gone."""
        async with self.db.read() as s:
            owners = await repos.running_owners(s)
        dead = [o for o in owners if o != self.owner and _owner_dead(o)]
        requeued = 0
        async with self.db.write() as s:
            for job in await repos.expired_leases(s, now(), dead):
                requeued += 1
                if job.attempts >= self.config.queue.max_attempts:
                    await finish_job(
                        s,
                        self.config,
                        job,
                        status="quarantined",
                        failure=FailureClass.CRASH,
                        message=_quarantine_msg(job.attempts),
                        images_made=await _made(s, job.id),
                    )
                    continue
                job.status = "queued"
                job.lease_owner = None
                job.lease_until = None
                job.run_after = 0.0
        if requeued:
            log.info("requeued %d job(s) from stopped workers", requeued)
            self.on_event()
            self.wake()
        return requeued

    async def _reap_loop(self) -> None:
        interval = max(1.0, self.config.queue.lease_s / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.recover()
            except Exception:  # keep reaping; log the cause
                log.exception("lease recovery failed")

    # --- the worker loop ---------------------------------------------------------------------

    async def _worker(self, provider: str) -> None:
        q = self.config.queue
        cap = getattr(getattr(self.config.providers, provider, None), "concurrency", None)
        wake = self._wake[provider]
        while True:
            try:
                async with self.db.write() as s:
                    job = await repos.claim_job(
                        s,
                        provider=provider,
                        owner=self.owner,
                        now=now(),
                        lease_s=q.lease_s,
                        max_running_per_user=q.max_running_per_user,
                        provider_cap=cap,
                    )
                    if job is not None and job.deadline is None:
                        job.deadline = job.started_at + q.job_timeout_s
            except Exception:
                log.exception("claiming a job failed; retrying")
                await asyncio.sleep(1)
                continue
            if job is None:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), q.poll_idle_s)
                continue
            # another worker may find more work too
            wake.set()
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._running[job.id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():  # the worker itself is stopping
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                    raise
                # only the job's task was cancelled (lease lost): keep working
            finally:
                self._running.pop(job.id, None)

    async def _run(self, job: Job) -> None:
        q = self.config.queue
        provider = self.providers[job.provider]
        if job.attempts > q.max_attempts:
            await self._finish(
                job, "quarantined", FailureClass.CRASH, _quarantine_msg(job.attempts - 1)
            )
            return
        if job.cancel_requested:
            await self._finish(job, "cancelled", FailureClass.CANCELLED, "cancelled")
            return
        remaining = (job.deadline or now() + q.job_timeout_s) - now()
        if remaining <= 0:
            await self._finish(job, "failed", FailureClass.TIMEOUT, _timeout_msg(q.job_timeout_s))
            return
        try:
            request = await self._request_for(job)
        except Exception as exc:
            log.exception("job %s: cannot build its request", job.id)
            await self._finish(
                job, "failed", FailureClass.CRASH, f"the job's input is unusable: {exc}"
            )
            return
        async with self.db.read() as s:
            have = {im.idx for im in await repos.images_for_job(s, job.id)}
        run = _Run(self, job, request, have)
        await self._progress(job, 30 if job.provider_task_id else 10, "received")
        heartbeat = asyncio.create_task(self._heartbeat(job, asyncio.current_task()))
        try:
            async with asyncio.timeout(remaining):
                await provider.generate(run)
        except ProviderFailure as exc:
            await self._finish(job, "failed", exc.failure, exc.message, made=len(run.images))
        except TimeoutError:
            await self._cancel_remote(provider, run.task_id)
            await self._finish(
                job,
                "failed",
                FailureClass.TIMEOUT,
                _timeout_msg(q.job_timeout_s),
                made=len(run.images),
            )
        except asyncio.CancelledError:
            if job.id in self._cancel_asked:
                self._cancel_asked.discard(job.id)
                await self._cancel_remote(provider, run.task_id)
                await self._finish(
                    job,
                    "cancelled",
                    FailureClass.CANCELLED,
                    "cancelled while running",
                    made=len(run.images),
                )
                return
            if self._stopping:
                await self._release(job)
                raise
            log.warning("job %s: lease lost; another worker owns it now", job.id)
        except Exception as exc:
            log.exception("job %s crashed on attempt %s", job.id, job.attempts)
            if job.attempts >= q.max_attempts:
                await self._finish(
                    job,
                    "quarantined",
                    FailureClass.CRASH,
                    _quarantine_msg(job.attempts),
                    made=len(run.images),
                )
            else:
                await self._requeue(job, delay=q.retry_backoff_s * job.attempts, error=repr(exc))
        else:
            if not run.images:
                await self._finish(
                    job, "failed", FailureClass.PROVIDER_ERROR, "the provider returned no image"
                )
            else:
                await self._finish(job, "succeeded", None, None, made=len(run.images))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat

    async def _request_for(self, job: Job) -> ResolvedRequest:
        p = GenerationParams.from_dict(job.params)
        init = None
        if job.input_sha256:
            init = await asyncio.to_thread(
                self.files.get, job.input_sha256, kind="inputs", ext="png"
            )
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
            init_image=init,
        )

    async def _heartbeat(self, job: Job, runner: asyncio.Task[Any] | None) -> None:
        q = self.config.queue
        while True:
            await asyncio.sleep(q.lease_s / 3)
            try:
                async with self.db.write() as s:
                    row = (
                        await s.execute(
                            update(Job)
                            .where(
                                Job.id == job.id,
                                Job.lease_owner == self.owner,
                                Job.status == "running",
                            )
                            .values(lease_until=now() + q.lease_s)
                            .returning(Job.cancel_requested)
                        )
                    ).first()
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)
                continue
            if row is None or row[0]:
                # lost the lease, or someone asked (from anywhere) to cancel
                if row is not None:
                    self._cancel_asked.add(job.id)
                if runner is not None:
                    runner.cancel()
                return

    # --- state changes (all guarded by lease ownership) --------------------------------------

    async def _update_owned(self, job: Job, **values: Any) -> bool:
        async with self.db.write() as s:
            res = await s.execute(
                update(Job)
                .where(Job.id == job.id, Job.lease_owner == self.owner, Job.status == "running")
                .values(**values)
            )
            return res.rowcount == 1

    async def _finish(
        self,
        job: Job,
        status: str,
        failure: FailureClass | None,
        message: str | None,
        *,
        made: int = 0,
    ) -> None:
        async with self.db.write() as s:
            current = await s.get(Job, job.id, populate_existing=True)
            if current is None or current.status != "running" or current.lease_owner != self.owner:
                return  # someone else owns it now (our lease lapsed)
            await finish_job(
                s,
                self.config,
                current,
                status=status,
                failure=failure,
                message=message,
                images_made=made,
            )
        self.on_event()
        await self._progress(job, 100 if status == "succeeded" else job.progress, status)

    async def _requeue(self, job: Job, *, delay: float, error: str) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Job)
                .where(Job.id == job.id, Job.lease_owner == self.owner, Job.status == "running")
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_until=None,
                    run_after=now() + delay,
                    error=error[:2000],
                )
            )

    async def _release(self, job: Job) -> None:
        """Shutdown: give the job back without counting the attempt."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._release_now(job))

    async def _release_now(self, job: Job) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Job)
                .where(Job.id == job.id, Job.lease_owner == self.owner, Job.status == "running")
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_until=None,
                    attempts=Job.attempts - 1,
                    run_after=0.0,
                )
            )

    async def _cancel_remote(self, provider: Provider, task_id: str | None) -> None:
        if task_id:
            try:
                await provider.cancel(task_id)
            except Exception:
                log.warning("provider %s could not cancel task %s", provider.name, task_id)

    async def _progress(self, job: Job, percent: int, stage: str) -> None:
        if self.on_progress is None:
            return
        try:
            res = self.on_progress(
                Progress(
                    job_id=job.id,
                    percent=percent,
                    stage=stage,
                    reply_to=job.reply_to,
                    batch_id=job.batch_id,
                )
            )
            if asyncio.iscoroutine(res):
                await res
        except Exception:
            log.exception("progress callback failed for job %s", job.id)

    async def _store_image(
        self, job: Job, request: ResolvedRequest, index: int, result: ResultImage
    ) -> None:
        seed = result.seed if result.seed is not None else request.seed + index
        params = GenerationParams.from_dict(job.params)
        model = f"{job.provider}:{job.model}" if job.model else job.provider
        data, width, height = await asyncio.to_thread(
            _encode_result, result, params, seed, model, job.id
        )
        stored = await asyncio.to_thread(self.files.put, data, kind="images", ext="png")
        if not self.files.exists(stored.sha256, kind="thumbs", ext="webp"):
            thumb = await asyncio.to_thread(make_thumbnail, data)
            await asyncio.to_thread(self.files.put_thumbnail, stored.sha256, thumb)
        t = now()
        async with self.db.write() as s:
            current = await s.get(Job, job.id, populate_existing=True)
            if current is None or current.lease_owner != self.owner or current.status != "running":
                raise asyncio.CancelledError  # we no longer own this job; stop quietly
            await repos.add_image(
                s,
                job_id=job.id,
                idx=index,
                sha256=stored.sha256,
                width=width,
                height=height,
                seed=seed,
                size_bytes=stored.size,
                created_at=t,
            )
            await repos.add_event(
                s,
                job_id=job.id,
                platform=job.reply_to.get("platform", ""),
                kind="image",
                idx=index,
                created_at=t,
                payload={
                    "reply_to": job.reply_to,
                    "path": str(stored.path),
                    "sha256": stored.sha256,
                    "width": width,
                    "height": height,
                    "seed": seed,
                    "index": index,
                    "count": request.n,
                    "batch_id": job.batch_id,
                    "batch_index": job.batch_index,
                    "prompt": request.prompt,
                    "model": model,
                    "nsfw": result.nsfw,
                },
            )
        self.on_event()


async def _made(s: Any, job_id: int) -> int:
    return len(await repos.images_for_job(s, job_id))


def _encode_result(
    result: ResultImage, params: GenerationParams, seed: int, model: str, job_id: int
) -> tuple[bytes, int, int]:
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
        params,
        width=img.width,
        height=img.height,
        seed=seed,
        model=model,
        extra={"sdhost job": str(job_id)},
    )
    return encode_output_png(img, text), img.width, img.height


def _quarantine_msg(attempts: int) -> str:
    return (
        f"this job failed {attempts} times inside sdhost and was set aside so it cannot block "
        "the queue; an admin can look at it with `sdhost jobs show`"
    )


def _timeout_msg(limit: float) -> str:
    return f"the provider did not finish within {int(limit)} s"
