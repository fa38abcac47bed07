"""Numbers for the operator's /stats."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
)

from storage.repos.common import (
    jobs,
    ledger,
    users,
)
from storage.status import (
    JOB_ACTIVE,
    JobStatus,
)

# --- statistics ----------------------------------------------------------------------------

_ACTIVE_BY_STATUS = (
    select(jobs.c.status, func.count()).where(jobs.c.status.in_(JOB_ACTIVE)).group_by(jobs.c.status)
)
_JOBS_SINCE = (
    select(jobs.c.status, func.count())
    .where(jobs.c.created_at >= bindparam("since"))
    .group_by(jobs.c.status)
)
_MONEY_SINCE = (
    select(ledger.c.reason, func.coalesce(func.sum(ledger.c.delta), 0))
    .where(ledger.c.created_at >= bindparam("since"), ledger.c.reason.in_(("charge", "refund")))
    .group_by(ledger.c.reason)
)
_PEOPLE = select(func.count()).select_from(users)
_PROVIDER_SPEND = (
    select(jobs.c.provider, jobs.c.provider_cost_unit, func.sum(jobs.c.provider_cost))
    .where(jobs.c.created_at >= bindparam("since"), jobs.c.provider_cost.is_not(None))
    .group_by(jobs.c.provider, jobs.c.provider_cost_unit)
    .order_by(jobs.c.provider, jobs.c.provider_cost_unit)
)


def stats(conn: Connection, since: float) -> dict[str, Any]:
    """The queue now (``queued``, ``running``); jobs created since ``since`` by status
    (``jobs_by_status``); credits ``charged`` and ``refunded`` since then; ``people``;
    what providers billed the operator for jobs created since then (``provider_spend``:
    ``(provider, unit, amount)``)."""
    active = {s: int(n) for s, n in conn.execute(_ACTIVE_BY_STATUS).all()}
    recent = {s: int(n) for s, n in conn.execute(_JOBS_SINCE, {"since": since}).all()}
    money = {r: int(total) for r, total in conn.execute(_MONEY_SINCE, {"since": since}).all()}
    return {
        "queued": active.get(JobStatus.QUEUED, 0),
        "running": active.get(JobStatus.RUNNING, 0),
        "jobs_by_status": recent,
        "charged": -money.get("charge", 0),
        "refunded": money.get("refund", 0),
        "people": int(conn.execute(_PEOPLE).scalar_one()),
        "provider_spend": [
            (str(p), str(u or ""), float(total or 0.0))
            for p, u, total in conn.execute(_PROVIDER_SPEND, {"since": since}).all()
        ],
    }
