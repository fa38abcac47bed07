"""Claiming jobs, leases, state changes of a running job, and the files its rows
refer to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    func,
    or_,
    select,
    union,
    update,
)

from storage import notify
from storage.repos.common import (
    _ids,
    _upsert,
    images,
    jobs,
    users,
)
from storage.status import (
    JobStatus,
)

# --- jobs: claiming, leases, state changes ------------------------------------------------

_RUNNING_FOR_PROVIDER = select(func.count()).where(
    jobs.c.status == JobStatus.RUNNING, jobs.c.provider == bindparam("provider")
)
_LOCK_PROVIDER_CLAIMS = select(func.pg_advisory_xact_lock(func.hashtext(bindparam("key"))))
_CLAIMABLE = (
    jobs.c.status == JobStatus.QUEUED,
    jobs.c.provider == bindparam("provider"),
    jobs.c.run_after <= bindparam("now"),
    # Fresh jobs (0 counted attempts) and retried ones (a run of theirs crashed) are
    # claimed apart: a retried job runs alone in its process (see claim_jobs).
    jobs.c.attempts.between(bindparam("min_attempts"), bindparam("max_attempts")),
)
_RETRIED_WAITING = select(jobs.c.id).where(*_CLAIMABLE).limit(1)
_CLAIM_HEADS = (
    select(jobs.c.user_id, func.count(), func.min(jobs.c.id))
    .where(*_CLAIMABLE)
    .group_by(jobs.c.user_id)
)
_RUNNING_BY_USER = (
    select(jobs.c.user_id, func.count())
    .where(jobs.c.user_id.in_(_ids("uids")), jobs.c.status == JobStatus.RUNNING)
    .group_by(jobs.c.user_id)
)
_LAST_SERVED = select(users.c.id, users.c.last_served_at).where(users.c.id.in_(_ids("uids")))
_ranked = (
    select(
        jobs.c.id,
        jobs.c.user_id,
        func.row_number().over(partition_by=jobs.c.user_id, order_by=jobs.c.id).label("rn"),
    )
    .where(*_CLAIMABLE, jobs.c.user_id.in_(_ids("uids")))
    .subquery()
)
_OLDEST_PER_USER = select(_ranked.c.id, _ranked.c.user_id, _ranked.c.rn).where(
    _ranked.c.rn <= bindparam("k")
)
_LOCK_QUEUED = (
    select(jobs.c.id)
    .where(jobs.c.id.in_(_ids()), jobs.c.status == JobStatus.QUEUED)
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(jobs)
    .where(jobs.c.id.in_(_ids()), jobs.c.status == JobStatus.QUEUED)
    .values(
        status=JobStatus.RUNNING,
        lease_owner=bindparam("owner"),
        lease_until=bindparam("until"),
        attempts=jobs.c.attempts + 1,
        started_at=bindparam("now"),
        deadline=func.coalesce(jobs.c.deadline, bindparam("new_deadline")),
    )
    .returning(*jobs.c)
)
_SERVED = update(users).where(users.c.id.in_(_ids("uids"))).values(last_served_at=bindparam("now"))


# The fair-share policy (``bot.fairness.plan_fair_share``): from the queue heads
# ``(user_id, queued count, oldest queued id)``, the jobs running per user, when each was last
# served, the free slots and the per-user cap, how many jobs each user gets now.
FairShare = Callable[
    [Sequence[tuple[int, int, int]], Mapping[int, int], Mapping[int, float], int, int],
    dict[int, int],
]


def claim_jobs(
    conn: Connection,
    *,
    provider: str,
    owner: str,
    now: float,
    lease_s: float,
    timeout_s: float,
    slots: int,
    max_running_per_user: int,
    plan: FairShare,
    provider_cap: int | None = None,
    retried: bool = False,
) -> list[Row[Any]]:
    """Claim up to ``slots`` queued jobs for ``provider``, as ``plan`` shares them out; return
    the claimed rows. The policy is the core's; the counts it needs and the claim are read and
    written here, in the caller's one transaction.

    ``retried``: claim among jobs a crash already cost an attempt (suspects of taking their
    process down, which the caller runs alone so a second crash names the culprit) instead
    of among the others.

    On PostgreSQL the chosen rows are locked with SKIP LOCKED and the claiming UPDATE
    re-checks ``status = 'queued'``, so processes claiming at the same time never get the
    same job and never wait on each other; on SQLite the write lock does the same.
    """
    if slots <= 0:
        return []
    if provider_cap is not None:
        if conn.dialect.name == "postgresql":
            # Count and claim as one step across processes, or two claiming at once both
            # see the provider below its cap and together go over it. (SQLite's write lock
            # already makes claims one at a time.)
            conn.execute(_LOCK_PROVIDER_CLAIMS, {"key": f"sdhost-claim:{provider}"})
        busy = int(conn.execute(_RUNNING_FOR_PROVIDER, {"provider": provider}).scalar_one())
        slots = min(slots, provider_cap - busy)
        if slots <= 0:
            return []
    which = _attempt_range(retried)
    heads = [
        (int(u), int(n), int(first))
        for u, n, first in conn.execute(
            _CLAIM_HEADS, {"provider": provider, "now": now, **which}
        ).all()
    ]
    if not heads:
        return []
    uids = [h[0] for h in heads]
    running = {int(u): int(n) for u, n in conn.execute(_RUNNING_BY_USER, {"uids": uids}).all()}
    served = {int(u): float(t or 0.0) for u, t in conn.execute(_LAST_SERVED, {"uids": uids}).all()}
    shares = plan(heads, running, served, slots, max_running_per_user)
    if not shares:
        return []
    ranked = conn.execute(
        _OLDEST_PER_USER,
        {
            "provider": provider,
            "now": now,
            "uids": list(shares),
            "k": max(shares.values()),
            **which,
        },
    ).all()
    ids = [int(r.id) for r in ranked if r.rn <= shares[int(r.user_id)]]
    if conn.dialect.name == "postgresql":
        ids = [int(i) for i in conn.execute(_LOCK_QUEUED, {"ids": ids}).scalars().all()]
    if not ids:
        return []
    rows = conn.execute(
        _CLAIM,
        {
            "ids": ids,
            "owner": owner,
            "until": now + lease_s,
            "now": now,
            "new_deadline": now + timeout_s,
        },
    ).all()
    if rows:
        conn.execute(_SERVED, {"uids": sorted({int(r.user_id) for r in rows}), "now": now})
    return sorted(rows, key=lambda r: r.id)


def _attempt_range(retried: bool) -> dict[str, int]:
    return (
        {"min_attempts": 1, "max_attempts": 2**31 - 1}
        if retried
        else {
            "min_attempts": 0,
            "max_attempts": 0,
        }
    )


def retried_waiting(conn: Connection, provider: str, now: float) -> bool:
    """Whether a retried job (see ``claim_jobs``) is due on ``provider``."""
    params = {"provider": provider, "now": now, **_attempt_range(True)}
    return conn.execute(_RETRIED_WAITING, params).first() is not None


_RENEW = (
    update(jobs)
    .where(jobs.c.lease_owner == bindparam("owner"), jobs.c.status == JobStatus.RUNNING)
    .values(lease_until=bindparam("until"))
    .returning(jobs.c.id, jobs.c.cancel_requested)
)
_RUNNING_OWNERS = select(jobs.c.lease_owner).where(jobs.c.status == JobStatus.RUNNING).distinct()
_LAPSED = (
    select(jobs)
    .where(
        jobs.c.status == JobStatus.RUNNING,
        or_(jobs.c.lease_until < bindparam("now"), jobs.c.lease_owner.in_(_ids("dead"))),
    )
    .with_for_update(skip_locked=True)
)
_OWNED = and_(
    jobs.c.id == bindparam("jid"),
    jobs.c.lease_owner == bindparam("owner"),
    jobs.c.status == JobStatus.RUNNING,
)
_OWNED_JOB = select(jobs).where(_OWNED)
_OWNED_FOR_UPDATE = _OWNED_JOB.with_for_update()
_IMAGES_OF_JOB = select(images).where(images.c.job_id == bindparam("jid")).order_by(images.c.idx)


def renew_leases(conn: Connection, owner: str, until: float) -> dict[int, bool]:
    """Extend every lease ``owner`` holds; ``{job_id: cancel requested}`` of those it still
    holds (a job missing from the answer was taken over after our lease lapsed)."""
    rows = conn.execute(_RENEW, {"owner": owner, "until": until}).all()
    return {int(i): bool(c) for i, c in rows}


_RELEASE_HELD = (
    update(jobs)
    .where(jobs.c.lease_owner == bindparam("owner"), jobs.c.status == JobStatus.RUNNING)
    .values(
        status=JobStatus.QUEUED,
        lease_owner=None,
        lease_until=None,
        attempts=jobs.c.attempts - 1,
        run_after=0.0,
    )
    .returning(jobs.c.provider)
)


def release_held(conn: Connection, owner: str) -> int:
    """Give back, uncounted, every job ``owner`` still holds (at shutdown, when none of its
    tasks runs any more: these were claimed but never started)."""
    providers = list(conn.execute(_RELEASE_HELD, {"owner": owner}).scalars())
    notify.jobs_queued(conn, providers)  # other processes may run them now
    return len(providers)


def running_owners(conn: Connection) -> list[str]:
    return [o for o in conn.execute(_RUNNING_OWNERS).scalars().all() if o]


def lapsed_jobs(conn: Connection, now: float, dead_owners: Sequence[str]) -> list[Row[Any]]:
    """Running jobs whose lease ran out or whose owner is known to be gone (locked)."""
    return list(conn.execute(_LAPSED, {"now": now, "dead": list(dead_owners)}).all())


@cache
def _owned_update(keys: tuple[str, ...]) -> Any:
    return update(jobs).where(_OWNED).values({k: bindparam(f"v_{k}") for k in keys})


@cache
def _update_by_id(keys: tuple[str, ...]) -> Any:
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("jid"))
        .values({k: bindparam(f"v_{k}") for k in keys})
    )


def update_owned(conn: Connection, job_id: int, owner: str, **values: Any) -> bool:
    """Change a running job we hold the lease of; False if we no longer hold it."""
    keys = tuple(sorted(values))
    params = {"jid": job_id, "owner": owner, **{f"v_{k}": values[k] for k in keys}}
    return conn.execute(_owned_update(keys), params).rowcount == 1


def update_job(conn: Connection, job_id: int, **values: Any) -> None:
    keys = tuple(sorted(values))
    conn.execute(_update_by_id(keys), {"jid": job_id, **{f"v_{k}": values[k] for k in keys}})


def owned_job(conn: Connection, job_id: int, owner: str, *, lock: bool = False) -> Row[Any] | None:
    stmt = _OWNED_FOR_UPDATE if lock else _OWNED_JOB
    return conn.execute(stmt, {"jid": job_id, "owner": owner}).first()


def images_for_job(conn: Connection, job_id: int) -> list[Row[Any]]:
    return list(conn.execute(_IMAGES_OF_JOB, {"jid": job_id}).all())


def add_images(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(_upsert(conn, images, ("job_id", "idx"), returning=False), list(rows))


# Every file the store holds is named by one of these: a picture's row (its thumbnail goes
# with it) or a job's input. Nothing else puts files in the store.
_REFERENCED_FILES = union(
    select(images.c.sha256), select(jobs.c.input_sha256).where(jobs.c.input_sha256.is_not(None))
)
_OLDEST_RUNNING_START = select(func.min(jobs.c.started_at)).where(jobs.c.status == "running")


# An img2img job's input pictures after the first are named in its params ("more_inputs",
# see bot.jobs.MORE_INPUTS): read from the jobs that can have them.
_MULTI_INPUT_PARAMS = select(jobs.c.params).where(
    jobs.c.kind == "img2img", jobs.c.input_sha256.is_not(None)
)


def referenced_files(conn: Connection) -> set[str]:
    """The sha256 of every stored file a row refers to (for the store's sweep)."""
    found = {str(s) for s in conn.execute(_REFERENCED_FILES).scalars().all()}
    for params in conn.execute(_MULTI_INPUT_PARAMS).scalars():
        more = (params or {}).get("more_inputs") if isinstance(params, dict) else None
        if isinstance(more, list):
            found.update(str(s) for s in more if isinstance(s, str))
    return found


def oldest_running_start(conn: Connection) -> float | None:
    """When the run of the longest-running job began: its pictures may not have rows yet."""
    t = conn.execute(_OLDEST_RUNNING_START).scalar_one_or_none()
    return float(t) if t is not None else None
