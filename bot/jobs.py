"""JobService: submit, cancel, retry and look up jobs; charge and refund credits.

Every state change that involves money happens in one write transaction with the job rows
it concerns, so a crash can never leave a charge without a job or a job without a charge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.chat import UserRef
from bot.config import Config
from bot.errors import (
    BadInput,
    FailureClass,
    Forbidden,
    InsufficientCredits,
    LimitReached,
    NotFound,
    UserError,
)
from bot.params import MAX_BATCH_TASKS, GenerationParams
from bot.routing import Route, Router
from storage import repos
from storage.db import Database
from storage.files import FileStore
from storage.models import Batch, Job, User

KINDS = ("txt2img", "img2img", "batch")


def now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class JobTicket:
    id: int
    provider: str
    model: str
    width: int
    height: int
    n: int
    seed: int
    cost: int
    position: int


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str
    jobs: tuple[JobTicket, ...]
    batch_id: int | None
    cost: int
    balance: int
    duplicate: bool = False  # the same command was submitted before; nothing new charged
    notes: tuple[str, ...] = ()

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self.jobs]


@dataclass(slots=True)
class JobView:
    id: int
    user_id: int
    kind: str
    status: str
    progress: int
    stage: str
    provider: str
    model: str | None
    params: dict[str, Any]
    cost: int
    attempts: int
    failure: str | None
    error: str | None
    batch_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    images: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[tuple[str, int]] = field(default_factory=list)
    batch_counts: dict[str, int] | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            user_id=job.user_id,
            kind=job.kind,
            status=job.status,
            progress=job.progress,
            stage=job.stage,
            provider=job.provider,
            model=job.model,
            params=dict(job.params),
            cost=job.cost,
            attempts=job.attempts,
            failure=job.failure,
            error=job.error,
            batch_id=job.batch_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


def refund_due(config: Config, job: Job, failure: FailureClass, images_made: int) -> int:
    """How much of the job's cost goes back, by the configured policy.

    A job that never reached a provider is always refunded in full. Otherwise the policy for
    the job's kind decides; when it refunds, only the pictures that were not made are paid
    back (a person keeps, and pays for, what they received).
    """
    if job.cost <= 0:
        return 0
    n = max(1, int(job.params.get("n", 1)))
    unmade = max(0, n - images_made)
    unit = job.cost // n
    if job.submitted_at is None and images_made == 0:
        return job.cost
    policy: list[FailureClass] = getattr(config.credits.refunds, job.kind)
    if failure in policy:
        return unit * unmade
    return 0


class JobService:
    def __init__(
        self,
        config: Config,
        db: Database,
        router: Router,
        files: FileStore,
        *,
        on_submit: Callable[[str], None] | None = None,
        on_cancel: Callable[[int], bool] | None = None,
        on_event: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.router = router
        self.files = files
        self.on_submit = on_submit or (lambda provider: None)
        self.on_cancel = on_cancel or (lambda job_id: False)
        self.on_event = on_event or (lambda: None)

    # --- people and credits ----------------------------------------------------------------

    async def user(self, ref: UserRef) -> User:
        async with self.db.write() as s:
            return await repos.ensure_user(
                s,
                ref.platform,
                ref.id,
                name=ref.name,
                starting_grant=self.config.credits.starting_grant,
                now=now(),
            )

    async def balance(self, ref: UserRef) -> int:
        return (await self.user(ref)).balance

    async def grant(
        self, ref: UserRef, amount: int, *, note: str = "", key: str | None = None
    ) -> int:
        """Admin grant (negative to take back). Returns the new balance."""
        import uuid

        async with self.db.write() as s:
            user = await repos.ensure_user(
                s,
                ref.platform,
                ref.id,
                name=ref.name,
                starting_grant=self.config.credits.starting_grant,
                now=now(),
            )
            if amount < 0 and user.balance + amount < 0:
                raise UserError(f"{ref.key} has {user.balance} credits; cannot take {-amount}")
            await repos.credit(
                s,
                user.id,
                amount,
                reason="grant" if amount >= 0 else "debit",
                now=now(),
                key=key or f"admin:{uuid.uuid4().hex}",
                note=note,
            )
            await s.refresh(user)
            return user.balance

    async def set_balance(self, ref: UserRef, target: int, *, note: str = "") -> int:
        if target < 0:
            raise UserError("a balance cannot be negative")
        current = await self.balance(ref)
        if target != current:
            return await self.grant(ref, target - current, note=note or f"set to {target}")
        return current

    async def set_banned(self, ref: UserRef, banned: bool) -> None:
        async with self.db.write() as s:
            user = await repos.ensure_user(
                s,
                ref.platform,
                ref.id,
                name=ref.name,
                starting_grant=self.config.credits.starting_grant,
                now=now(),
            )
            user.banned = banned

    # --- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        ref: UserRef,
        kind: str,
        params_list: Sequence[GenerationParams],
        reply_to: dict[str, Any],
        *,
        init_image: bytes | None = None,
        init_size: tuple[int, int] | None = None,
        idem_key: str | None = None,
        retry_of: int | None = None,
        notes: Sequence[str] = (),
    ) -> Receipt:
        """Validate, route, charge and queue in one transaction; return the receipt."""
        if kind not in KINDS:
            raise BadInput(f"unknown job kind {kind!r}")
        if not params_list:
            raise BadInput("nothing to do: give a prompt")
        if kind == "batch" and len(params_list) > MAX_BATCH_TASKS:
            raise BadInput(
                f"a batch holds at most {MAX_BATCH_TASKS} tasks; you gave {len(params_list)}"
            )
        if kind == "img2img" and init_image is None:
            raise BadInput(
                "img2img needs a picture: reply to one, attach one, or give a path or URL"
            )
        routes: list[Route] = [self.router.resolve(p, kind, init_size) for p in params_list]
        costs = [
            r.unit_price * (1 if kind == "batch" else p.n)
            for r, p in zip(routes, params_list, strict=True)
        ]
        total = sum(costs)
        input_sha = None
        if init_image is not None:
            stored = await asyncio.to_thread(self.files.put, init_image, kind="inputs", ext="png")
            input_sha = stored.sha256
        t = now()
        async with self.db.write() as s:
            user = await repos.ensure_user(
                s,
                ref.platform,
                ref.id,
                name=ref.name,
                starting_grant=self.config.credits.starting_grant,
                now=t,
            )
            if user.banned:
                raise Forbidden(
                    "you are not allowed to use this bot; ask an admin if this is a mistake"
                )
            if idem_key is not None:
                first = await s.scalar(_select_jobs().where(Job.idem_key == idem_key))
                if first is not None:
                    existing = [first]
                    if first.batch_id is not None:
                        existing = list(
                            await s.scalars(
                                _select_jobs()
                                .where(Job.batch_id == first.batch_id)
                                .order_by(Job.id)
                            )
                        )
                    return await self._receipt_for(s, user, kind, existing, duplicate=True)
            active = await repos.active_count(s, user.id)
            limit = self.config.queue.max_queued_per_user
            if active + len(params_list) > limit:
                raise LimitReached(
                    f"you have {active} jobs waiting or running and the limit is {limit}; "
                    "wait for some to finish or /cancel one"
                )
            if user.balance < total:
                raise InsufficientCredits(_short_of(total, user.balance))
            batch_id = None
            if kind == "batch":
                batch = Batch(user_id=user.id, size=len(params_list), created_at=t)
                s.add(batch)
                await s.flush()
                batch_id = batch.id
            jobs: list[Job] = []
            for i, (p, r, cost) in enumerate(zip(params_list, routes, costs, strict=True)):
                resolved = p.with_(
                    seed=r.seed, width=r.width, height=r.height, model=r.model, provider=r.provider
                )
                job = Job(
                    user_id=user.id,
                    batch_id=batch_id,
                    batch_index=i,
                    kind=kind,
                    status="queued",
                    params=resolved.to_dict(),
                    provider=r.provider,
                    model=r.model,
                    input_sha256=input_sha,
                    cost=cost,
                    progress=10,
                    stage="received",
                    attempts=0,
                    reply_to=reply_to,
                    retry_of=retry_of,
                    run_after=0.0,
                    idem_key=(idem_key if i == 0 else f"{idem_key}#{i}") if idem_key else None,
                    created_at=t,
                )
                s.add(job)
                await s.flush()
                balance = await repos.charge(s, user.id, cost, job_id=job.id, now=t)
                if balance is None:  # lost a race with another submission: roll it all back
                    raise InsufficientCredits(_short_of(total, user.balance))
                jobs.append(job)
            await s.refresh(user)
            receipt = await self._receipt_for(s, user, kind, jobs, notes=notes)
        for provider in {r.provider for r in routes}:
            self.on_submit(provider)
        return receipt

    async def _receipt_for(
        self,
        s: Any,
        user: User,
        kind: str,
        jobs: list[Job],
        *,
        duplicate: bool = False,
        notes: Sequence[str] = (),
    ) -> Receipt:
        positions: dict[int, int] = {}
        for provider in {j.provider for j in jobs}:
            queued = await repos.queued_counts_by_user(s, provider)
            for j in jobs:
                if j.provider == provider:
                    positions[j.id] = queue_position(queued, user.id, j.id)
        tickets = tuple(
            JobTicket(
                id=j.id,
                provider=j.provider,
                model=j.model or "",
                width=j.params.get("width") or 0,
                height=j.params.get("height") or 0,
                n=j.params.get("n", 1),
                seed=j.params.get("seed") or 0,
                cost=j.cost,
                position=positions.get(j.id, 0),
            )
            for j in jobs
        )
        return Receipt(
            kind=kind,
            jobs=tickets,
            batch_id=jobs[0].batch_id if jobs else None,
            cost=sum(j.cost for j in jobs),
            balance=user.balance,
            duplicate=duplicate,
            notes=tuple(notes),
        )

    # --- cancel and retry -------------------------------------------------------------------

    async def _own_job(self, s: Any, ref: UserRef, job_id: int, *, admin: bool) -> tuple[User, Job]:
        # Only looks the person up: this runs inside read transactions too, and someone
        # the bot has never seen owns no jobs.
        user = await repos.get_user(s, ref.platform, ref.id)
        job = await s.get(Job, job_id)
        if job is None or ((user is None or job.user_id != user.id) and not admin):
            raise NotFound(f"no job #{job_id} of yours; /jobs lists them")
        return user, job

    async def cancel(self, ref: UserRef, job_id: int, *, admin: bool = False) -> str:
        """Cancel a queued job at once (refunded) or ask the worker to stop a running one."""
        async with self.db.write() as s:
            _, job = await self._own_job(s, ref, job_id, admin=admin)
            if job.status in repos.TERMINAL:
                raise UserError(f"job #{job_id} has already {_past(job.status)}")
            if job.status == "queued":
                refunded = await finish_job(
                    s,
                    self.config,
                    job,
                    status="cancelled",
                    failure=FailureClass.CANCELLED,
                    message="cancelled before it started",
                    images_made=0,
                )
                self.on_event()
                return f"job #{job_id} cancelled; {refunded} credits refunded"
            job.cancel_requested = True
        self.on_cancel(job_id)
        return f"cancelling job #{job_id}…"

    async def retry(self, ref: UserRef, job_id: int, reply_to: dict[str, Any]) -> Receipt:
        async with self.db.read() as s:
            _, job = await self._own_job(s, ref, job_id, admin=False)
            if job.status not in ("failed", "cancelled", "quarantined"):
                raise UserError(
                    f"job #{job_id} is {job.status}; only failed or cancelled jobs can be retried"
                )
            params = GenerationParams.from_dict(job.params)
            init = None
            if job.input_sha256:
                init = await asyncio.to_thread(
                    self.files.get, job.input_sha256, kind="inputs", ext="png"
                )
        return await self.submit(
            ref,
            job.kind,
            [params],
            reply_to or job.reply_to,
            init_image=init,
            retry_of=job_id,
            notes=(f"retry of job #{job_id}",),
        )

    # --- looking things up ------------------------------------------------------------------

    async def job(self, ref: UserRef | None, job_id: int) -> JobView:
        async with self.db.read() as s:
            if ref is None:
                job = await s.get(Job, job_id)
                if job is None:
                    raise NotFound(f"no job #{job_id}")
            else:
                _, job = await self._own_job(s, ref, job_id, admin=False)
            view = JobView.of(job)
            view.images = [
                {
                    "idx": im.idx,
                    "sha256": im.sha256,
                    "width": im.width,
                    "height": im.height,
                    "seed": im.seed,
                    "path": str(self.files.path_for(im.sha256)),
                }
                for im in await repos.images_for_job(s, job_id)
            ]
            view.ledger = [(e.reason, e.delta) for e in await repos.ledger_for_job(s, job_id)]
            if job.batch_id is not None:
                view.batch_counts = await repos.batch_counts(s, job.batch_id)
            return view

    async def jobs(self, ref: UserRef, limit: int = 10) -> list[JobView]:
        async with self.db.read() as s:
            user = await repos.get_user(s, ref.platform, ref.id)
            if user is None:
                return []
            return [JobView.of(j) for j in await repos.jobs_for_user(s, user.id, limit)]

    async def all_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobView]:
        async with self.db.read() as s:
            q = _select_jobs().order_by(Job.id.desc()).limit(limit)
            if status:
                q = q.where(Job.status == status)
            return [JobView.of(j) for j in await s.scalars(q)]

    async def is_idle(self, ref: UserRef) -> bool:
        """No job of this person is active and nothing is left to tell them."""
        async with self.db.read() as s:
            user = await repos.get_user(s, ref.platform, ref.id)
            if user is None:
                return True
            if await repos.active_count(s, user.id):
                return False
            recent = [j.id for j in await repos.jobs_for_user(s, user.id, limit=10_000)]
            return await repos.pending_event_count(s, job_ids=recent) == 0


def _select_jobs() -> Any:
    from sqlalchemy import select

    return select(Job)


def queue_position(queued: dict[int, list[int]], user_id: int, job_id: int) -> int:
    """1-based place in a round-robin queue: each other person gets one turn per turn of ours."""
    mine = queued.get(user_id, [])
    if job_id not in mine:
        return 0
    k = mine.index(job_id)
    first = mine[0] if mine else job_id
    ahead = k
    for other, ids in queued.items():
        if other == user_id:
            continue
        # whoever has been waiting longer goes first within a round
        turns = k + 1 if ids[0] < first else k
        ahead += min(len(ids), turns)
    return ahead + 1


def _short_of(cost: int, balance: int) -> str:
    return (
        f"not enough credits: this costs {cost} and you have {balance}. "
        "Ask an admin for more, or ask for fewer pictures (--n 1)"
    )


def _past(status: str) -> str:
    return {
        "succeeded": "finished",
        "failed": "failed",
        "cancelled": "been cancelled",
        "quarantined": "been stopped (quarantined)",
    }.get(status, status)


async def finish_job(
    s: Any,
    config: Config,
    job: Job,
    *,
    status: str,
    failure: FailureClass | None,
    message: str | None,
    images_made: int,
) -> int:
    """Move a job to a terminal state, refund by policy, and queue the event. Returns refund."""
    t = now()
    refund = 0
    if failure is not None:
        refund = refund_due(config, job, failure, images_made)
    elif images_made < int(job.params.get("n", 1)) and job.cost:
        # succeeded with fewer pictures than asked: pay back the missing ones
        n = max(1, int(job.params.get("n", 1)))
        refund = (job.cost // n) * (n - images_made)
    job.status = status
    job.failure = failure.value if failure else None
    job.error = message
    job.finished_at = t
    job.lease_owner = None
    job.lease_until = None
    if status == "succeeded":
        job.progress, job.stage = 100, "done"
    if refund:
        await repos.credit(s, job.user_id, refund, reason="refund", job_id=job.id, now=t)
    user = await s.get(User, job.user_id)
    await s.refresh(user)
    kind = {"succeeded": "finished", "cancelled": "cancelled"}.get(status, "failed")
    payload: dict[str, Any] = {
        "reply_to": job.reply_to,
        "status": status,
        "refunded": refund,
        "balance": user.balance,
        "images": images_made,
        "n": int(job.params.get("n", 1)),
        "batch_id": job.batch_id,
        "batch_index": job.batch_index,
        "prompt": job.params.get("prompt", ""),
        "elapsed": round(t - (job.started_at or job.created_at), 2),
    }
    if failure is not None:
        payload["failure"] = failure.value
        payload["message"] = message or ""
    await repos.add_event(
        s,
        job_id=job.id,
        platform=job.reply_to.get("platform", ""),
        kind=kind,
        idx=0,
        payload=payload,
        created_at=t,
    )
    return refund
