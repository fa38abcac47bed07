"""Jobs: creating them, looking them up, and what people see of the queue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    func,
    insert,
    select,
    update,
)

from storage import notify
from storage.repos.common import (
    batches,
    jobs,
)
from storage.status import (
    JOB_ACTIVE,
    JobStatus,
)

# --- jobs: creating and looking up ---------------------------------------------------------

_INSERT_BATCH = insert(batches).returning(batches.c.id)
_INSERT_JOBS = insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True)
_JOB = select(jobs).where(jobs.c.id == bindparam("jid"))
_LOCK_JOB = _JOB.with_for_update()
_QUEUED_OF_USER = (
    select(jobs.c.id)
    .where(
        jobs.c.user_id == bindparam("uid"),
        jobs.c.status == JobStatus.QUEUED,
        jobs.c.provider == bindparam("provider"),
    )
    .order_by(jobs.c.id)
)
_JOB_BY_IDEM = select(jobs).where(jobs.c.idem_key == bindparam("key"))
_JOBS_OF_BATCH = select(jobs).where(jobs.c.batch_id == bindparam("bid")).order_by(jobs.c.id)
_ACTIVE_COUNT = select(func.count()).where(
    jobs.c.user_id == bindparam("uid"), jobs.c.status.in_(JOB_ACTIVE)
)
_JOBS_OF_USER = (
    select(jobs)
    .where(jobs.c.user_id == bindparam("uid"))
    .order_by(jobs.c.id.desc())
    .limit(bindparam("lim"))
)
_RECENT_JOBS = select(jobs).order_by(jobs.c.id.desc()).limit(bindparam("lim"))
_RECENT_JOBS_BY_STATUS = _RECENT_JOBS.where(jobs.c.status == bindparam("status"))
_BATCH_COUNTS = (
    select(jobs.c.status, func.count())
    .where(jobs.c.batch_id == bindparam("bid"))
    .group_by(jobs.c.status)
)
_QUEUE = (
    select(jobs.c.user_id, func.count(), func.min(jobs.c.id))
    .where(jobs.c.status == JobStatus.QUEUED, jobs.c.provider == bindparam("provider"))
    .group_by(jobs.c.user_id)
)
_CANCEL_FLAG = (
    update(jobs)
    .where(jobs.c.id == bindparam("jid"), jobs.c.status == JobStatus.RUNNING)
    .values(cancel_requested=True)
)

# Every column a new job row needs, so executemany sees one shape.
JOB_DEFAULTS: dict[str, Any] = {
    "batch_id": None,
    "batch_index": 0,
    "model": None,
    "input_sha256": None,
    "cost": 0,
    "progress": 10,
    "stage": "received",
    "provider_task_id": None,
    "provider_state": None,
    "attempts": 0,
    "failure": None,
    "error": None,
    "idem_key": None,
    "retry_of": None,
    "cancel_requested": False,
    "lease_owner": None,
    "lease_until": None,
    "run_after": 0.0,
    "deadline": None,
    "started_at": None,
    "submitted_at": None,
    "finished_at": None,
}


def insert_batch(conn: Connection, user_id: int, size: int, now: float) -> int:
    return int(
        conn.execute(
            _INSERT_BATCH, {"user_id": user_id, "size": size, "created_at": now}
        ).scalar_one()
    )


def insert_jobs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert job rows (missing columns take JOB_DEFAULTS); ids in the order given. Idle
    workers of other processes are woken at commit (PostgreSQL)."""
    full = [{**JOB_DEFAULTS, **row} for row in rows]
    ids = [int(i) for i in conn.execute(_INSERT_JOBS, full).scalars().all()]
    notify.jobs_queued(conn, (row.get("provider") for row in full))
    return ids


def get_job(conn: Connection, job_id: int) -> Row[Any] | None:
    return conn.execute(_JOB, {"jid": job_id}).first()


def lock_job(conn: Connection, job_id: int) -> Row[Any] | None:
    """The job, locked until the transaction ends (PostgreSQL; SQLite holds the write lock)."""
    return conn.execute(_LOCK_JOB, {"jid": job_id}).first()


def queued_ids(conn: Connection, user_id: int, provider: str) -> list[int]:
    """The person's queued job ids for ``provider``, oldest first."""
    return [
        int(i)
        for i in conn.execute(_QUEUED_OF_USER, {"uid": user_id, "provider": provider}).scalars()
    ]


def jobs_by_idem_key(conn: Connection, key: str) -> list[Row[Any]]:
    """The jobs a command with this idempotency key created (the whole batch, if one)."""
    first = conn.execute(_JOB_BY_IDEM, {"key": key}).first()
    if first is None:
        return []
    if first.batch_id is None:
        return [first]
    return list(conn.execute(_JOBS_OF_BATCH, {"bid": first.batch_id}).all())


def active_count(conn: Connection, user_id: int) -> int:
    return int(conn.execute(_ACTIVE_COUNT, {"uid": user_id}).scalar_one())


def jobs_for_user(conn: Connection, user_id: int, limit: int = 10) -> list[Row[Any]]:
    return list(conn.execute(_JOBS_OF_USER, {"uid": user_id, "lim": limit}).all())


def recent_jobs(conn: Connection, *, status: str | None = None, limit: int = 50) -> list[Row[Any]]:
    if status is None:
        return list(conn.execute(_RECENT_JOBS, {"lim": limit}).all())
    return list(conn.execute(_RECENT_JOBS_BY_STATUS, {"lim": limit, "status": status}).all())


def batch_counts(conn: Connection, batch_id: int) -> dict[str, int]:
    return {s: int(n) for s, n in conn.execute(_BATCH_COUNTS, {"bid": batch_id}).all()}


def queue_by_user(conn: Connection, provider: str) -> dict[int, tuple[int, int]]:
    """Queued jobs for ``provider`` per user: ``{user_id: (count, oldest job id)}``."""
    rows = conn.execute(_QUEUE, {"provider": provider}).all()
    return {int(u): (int(n), int(first)) for u, n, first in rows}


def request_cancel(conn: Connection, job_id: int) -> bool:
    return conn.execute(_CANCEL_FLAG, {"jid": job_id}).rowcount == 1
