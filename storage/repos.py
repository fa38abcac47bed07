"""Repositories: the SQL the core needs, written once for SQLite and PostgreSQL.

Every function takes a ``Connection`` that is already inside a transaction (see
``Database.run_write`` / ``run_read``) and none commits. Statements are built once, with
bound parameters, because building SQLAlchemy constructs costs more than running them.

Money moves only through ``charge`` and ``credit``, which keep the invariant
balance == sum(ledger.delta): the ledger row is unique per (job, reason), or per key for
entries without a job, so a charge or refund can never happen twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.models import (
    Batch,
    DownloadTask,
    Job,
    LedgerEntry,
    ModelFileRecord,
    ModelRecord,
    OutboxEvent,
    StoredImage,
    User,
)
from storage.status import (
    DOWNLOAD_ACTIVE,
    JOB_ACTIVE,
    OUTBOX_UNSENT,
    DownloadStatus,
    JobStatus,
    OutboxStatus,
)

users = User.__table__
ledger = LedgerEntry.__table__
jobs = Job.__table__
batches = Batch.__table__
images = StoredImage.__table__
outbox = OutboxEvent.__table__


def _ids(name: str = "ids") -> Any:
    return bindparam(name, expanding=True)


@cache
def _insert_ignore(dialect: str, table_name: str, index: tuple[str, ...], returning: bool) -> Any:
    """``INSERT ... ON CONFLICT (index) DO NOTHING [RETURNING id]`` for one dialect."""
    table = {t.name: t for t in (users, ledger, images, outbox)}[table_name]
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(table).on_conflict_do_nothing(index_elements=list(index))
    return stmt.returning(table.c.id) if returning else stmt


def _upsert(conn: Connection, table: Any, index: tuple[str, ...], *, returning: bool) -> Any:
    return _insert_ignore(conn.dialect.name, table.name, index, returning)


# --- users and credits -------------------------------------------------------------------

_USER = select(
    users.c.id,
    users.c.balance,
    users.c.banned,
    users.c.name,
    users.c.locale,
    users.c.settings,
    users.c.platform,
    users.c.platform_user_id,
)
_USER_BY_IDENTITY = _USER.where(
    users.c.platform == bindparam("platform"), users.c.platform_user_id == bindparam("pid")
)
_RENAME = update(users).where(users.c.id == bindparam("uid")).values(name=bindparam("new_name"))
_CHARGE = (
    update(users)
    .where(users.c.id == bindparam("uid"), users.c.balance >= bindparam("amount"))
    .values(balance=users.c.balance - bindparam("amount"))
    .returning(users.c.balance)
)
_ADD = (
    update(users)
    .where(users.c.id == bindparam("uid"))
    .values(balance=users.c.balance + bindparam("amount"))
)
_BAN = update(users).where(users.c.id == bindparam("uid")).values(banned=bindparam("flag"))
_SET_LOCALE = (
    update(users).where(users.c.id == bindparam("uid")).values(locale=bindparam("new_locale"))
)
_USER_SETTINGS_FOR_UPDATE = (
    select(users.c.settings).where(users.c.id == bindparam("uid")).with_for_update()
)
_SET_SETTINGS = (
    update(users).where(users.c.id == bindparam("uid")).values(settings=bindparam("new_settings"))
)
_USERS_NAMED = (
    _USER.where(
        users.c.platform == bindparam("platform"),
        func.lower(users.c.name) == func.lower(bindparam("name")),
    )
    .order_by(users.c.id)
    .limit(bindparam("lim"))
)
_LEDGER_KEY = select(ledger.c.id).where(ledger.c.key == bindparam("key"))
_BALANCE = select(users.c.balance).where(users.c.id == bindparam("uid"))
_LEDGER_SUM = select(func.coalesce(func.sum(ledger.c.delta), 0)).where(
    ledger.c.user_id == bindparam("uid")
)
_LEDGER_FOR_JOB = select(ledger).where(ledger.c.job_id == bindparam("jid")).order_by(ledger.c.id)
_INSERT_LEDGER = insert(ledger)


def get_user(conn: Connection, platform: str, platform_user_id: str) -> Row[Any] | None:
    # SQLAlchemy 2.1 types this select's rows column by column; callers take any row.
    row = conn.execute(_USER_BY_IDENTITY, {"platform": platform, "pid": platform_user_id}).first()
    return cast("Row[Any] | None", row)


def ensure_user(
    conn: Connection,
    platform: str,
    platform_user_id: str,
    *,
    name: str,
    starting_grant: int,
    now: float,
) -> Row[Any]:
    """The person's row, created on first sight with the starting grant as a ledger entry."""
    row = get_user(conn, platform, platform_user_id)
    if row is not None:
        if name and row.name != name:
            conn.execute(_RENAME, {"uid": row.id, "new_name": name[:128]})
            row = get_user(conn, platform, platform_user_id)
        assert row is not None
        return row
    conn.execute(
        _upsert(conn, users, ("platform", "platform_user_id"), returning=False),
        {
            "platform": platform,
            "platform_user_id": platform_user_id,
            "name": name[:128],
            "balance": 0,
            "banned": False,
            "last_served_at": 0.0,
            "created_at": now,
        },
    )
    row = get_user(conn, platform, platform_user_id)
    assert row is not None
    if starting_grant:
        credit(
            conn,
            row.id,
            starting_grant,
            reason="grant",
            key=f"start:{platform}:{platform_user_id}",
            note="starting grant",
            now=now,
        )
        row = get_user(conn, platform, platform_user_id)
        assert row is not None
    return row


def set_banned(conn: Connection, user_id: int, banned: bool) -> None:
    conn.execute(_BAN, {"uid": user_id, "flag": banned})


def set_locale(conn: Connection, user_id: int, locale: str | None) -> None:
    """The person's chosen language (None: follow what their platform says)."""
    conn.execute(_SET_LOCALE, {"uid": user_id, "new_locale": locale})


def lock_settings(conn: Connection, user_id: int) -> dict[str, Any] | None:
    """The person's stored defaults, locked until the transaction ends (PostgreSQL; SQLite
    holds the write lock), so a read-modify-write of them loses nothing."""
    return conn.execute(_USER_SETTINGS_FOR_UPDATE, {"uid": user_id}).scalar_one_or_none()


def set_settings(conn: Connection, user_id: int, settings: Mapping[str, Any] | None) -> None:
    """Store the person's defaults; empty or None stores NULL (no defaults)."""
    conn.execute(
        _SET_SETTINGS, {"uid": user_id, "new_settings": dict(settings) if settings else None}
    )


def users_named(conn: Connection, platform: str, name: str, *, limit: int = 2) -> list[Row[Any]]:
    """People on ``platform`` whose stored name is ``name``, ignoring case (oldest first)."""
    return list(conn.execute(_USERS_NAMED, {"platform": platform, "name": name, "lim": limit}))


def ledger_has_key(conn: Connection, key: str) -> bool:
    return conn.execute(_LEDGER_KEY, {"key": key}).first() is not None


def balance(conn: Connection, user_id: int) -> int:
    return int(conn.execute(_BALANCE, {"uid": user_id}).scalar_one())


def charge(
    conn: Connection, user_id: int, charges: Sequence[tuple[int, int]], *, now: float
) -> int | None:
    """Take the sum of ``(job_id, amount)`` if the balance covers it; one ledger row per job.

    Returns the new balance, or None (and changes nothing) when the balance is short. The
    conditional UPDATE is what keeps concurrent submissions from overdrawing; a second
    charge for the same job violates the ledger's unique key and aborts the transaction.
    """
    total = sum(amount for _, amount in charges)
    new_balance = conn.execute(_CHARGE, {"uid": user_id, "amount": total}).scalar()
    if new_balance is None:
        return None
    conn.execute(
        _INSERT_LEDGER,
        [
            {
                "user_id": user_id,
                "delta": -amount,
                "reason": "charge",
                "job_id": job_id,
                "key": None,
                "note": "",
                "created_at": now,
            }
            for job_id, amount in charges
        ],
    )
    return int(new_balance)


def credit(
    conn: Connection,
    user_id: int,
    amount: int,
    *,
    reason: str,
    now: float,
    job_id: int | None = None,
    key: str | None = None,
    note: str = "",
) -> bool:
    """Add (or with a negative amount remove) credits once per (job, reason) or per key.

    The ledger insert goes first and the balance moves only if it was new, so replays are
    no-ops. Returns whether anything changed.
    """
    if job_id is None and key is None:
        raise ValueError("a credit needs a job_id or an idempotency key")
    index = ("job_id", "reason") if job_id is not None else ("key",)
    inserted = conn.execute(
        _upsert(conn, ledger, index, returning=True),
        {
            "user_id": user_id,
            "delta": amount,
            "reason": reason,
            "job_id": job_id,
            "key": key,
            "note": note[:256],
            "created_at": now,
        },
    ).first()
    if inserted is None:
        return False
    conn.execute(_ADD, {"uid": user_id, "amount": amount})
    return True


def ledger_sum(conn: Connection, user_id: int) -> int:
    return int(conn.execute(_LEDGER_SUM, {"uid": user_id}).scalar_one())


def ledger_for_job(conn: Connection, job_id: int) -> list[Row[Any]]:
    return list(conn.execute(_LEDGER_FOR_JOB, {"jid": job_id}).all())


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
    """Insert job rows (missing columns take JOB_DEFAULTS); ids in the order given."""
    full = [{**JOB_DEFAULTS, **row} for row in rows]
    return [int(i) for i in conn.execute(_INSERT_JOBS, full).scalars().all()]


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
)


def release_held(conn: Connection, owner: str) -> int:
    """Give back, uncounted, every job ``owner`` still holds (at shutdown, when none of its
    tasks runs any more: these were claimed but never started)."""
    return conn.execute(_RELEASE_HELD, {"owner": owner}).rowcount


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


def referenced_files(conn: Connection) -> set[str]:
    """The sha256 of every stored file a row refers to (for the store's sweep)."""
    return {str(s) for s in conn.execute(_REFERENCED_FILES).scalars().all()}


def oldest_running_start(conn: Connection) -> float | None:
    """When the run of the longest-running job began: its pictures may not have rows yet."""
    t = conn.execute(_OLDEST_RUNNING_START).scalar_one_or_none()
    return float(t) if t is not None else None


# --- outbox --------------------------------------------------------------------------------

_earlier = outbox.alias("earlier")
# An earlier event of the same job that is waiting for a retry, or being sent by another
# process. (One this process is sending is fine: its delivery chain keeps them in order.)
_WAITING_ON_EARLIER = (
    exists()
    .where(
        _earlier.c.job_id == outbox.c.job_id,
        _earlier.c.id < outbox.c.id,
        _earlier.c.next_try > bindparam("now"),
        or_(
            _earlier.c.status == OutboxStatus.PENDING,
            and_(_earlier.c.status == OutboxStatus.SENDING, _earlier.c.owner != bindparam("me")),
        ),
    )
    .correlate(outbox)
)
_CLAIMABLE_EVENTS = (
    select(outbox.c.id)
    .where(
        # Every platform this process delivers (one index range), and of those bound to
        # their process only the audiences it serves.
        outbox.c.platform.in_(_ids("platforms")),
        or_(outbox.c.platform.not_in(_ids("bound")), outbox.c.audience.in_(_ids("audiences"))),
        outbox.c.status.in_(OUTBOX_UNSENT),
        outbox.c.next_try <= bindparam("now"),
        ~_WAITING_ON_EARLIER,
    )
    .order_by(outbox.c.id)
    .limit(bindparam("lim"))
    .with_for_update(skip_locked=True)
)
_CLAIM_EVENTS = (
    update(outbox)
    .where(outbox.c.id.in_(_ids()))
    .values(status=OutboxStatus.SENDING, owner=bindparam("me"), next_try=bindparam("until"))
    .returning(*outbox.c)
)
_MARK_EVENT = (
    update(outbox)
    .where(outbox.c.id == bindparam("eid"), outbox.c.owner == bindparam("me"))
    .values(
        status=bindparam("new_status"),
        attempts=bindparam("new_attempts"),
        next_try=bindparam("new_next_try"),
        error=bindparam("new_error"),
        sent_at=bindparam("new_sent_at"),
    )
)
_SENDING_OWNERS = select(outbox.c.owner).where(outbox.c.status == OutboxStatus.SENDING).distinct()
_RELEASE_EVENTS = (
    update(outbox)
    .where(outbox.c.status == OutboxStatus.SENDING, outbox.c.owner.in_(_ids("dead")))
    .values(status=OutboxStatus.PENDING, next_try=0.0)
)
_UNADDRESSED = select(outbox.c.id, outbox.c.payload).where(
    outbox.c.status.in_(("pending", "sending")),
    outbox.c.platform.in_(_ids("platforms")),
    outbox.c.audience.is_(None),
)
_ADDRESS = (
    update(outbox)
    .where(outbox.c.id == bindparam("eid"), outbox.c.audience.is_(None))
    .values(audience=bindparam("aud"))
)
_UNSENT_FOR_USER = (
    select(func.count())
    .select_from(outbox.join(jobs, jobs.c.id == outbox.c.job_id))
    .where(jobs.c.user_id == bindparam("uid"), outbox.c.status.in_(OUTBOX_UNSENT))
)
EVENT_DEFAULTS: dict[str, Any] = {
    "idx": 0,
    "status": OutboxStatus.PENDING,
    "attempts": 0,
    "owner": None,
    "audience": None,
    "next_try": 0.0,
    "error": None,
    "sent_at": None,
}


def add_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Queue things to tell people; a duplicate (same job, kind, idx) is dropped."""
    if rows:
        conn.execute(
            _upsert(conn, outbox, ("job_id", "kind", "idx"), returning=False),
            [{**EVENT_DEFAULTS, **row} for row in rows],
        )


def claim_events(
    conn: Connection,
    *,
    platforms: Sequence[str],
    bound_platforms: Sequence[str] = (),
    audiences: Sequence[str] = (),
    owner: str,
    now: float,
    lease_s: float,
    limit: int = 100,
) -> list[Row[Any]]:
    """Claim deliverable events for ``platforms``, and those of ``bound_platforms`` whose
    audience is one of ``audiences`` (the people this process serves), oldest first.

    An event waits while an earlier event of the same job is still out (being sent by
    another process, or waiting to be retried), so a person never sees "done" before the
    picture it is about; this process's own delivery chains order the rest.
    Events whose sender died are claimable again once their lease has run out.
    """
    ids = list(
        conn.execute(
            _CLAIMABLE_EVENTS,
            {
                "platforms": [*platforms, *bound_platforms],
                "bound": list(bound_platforms),
                "audiences": list(audiences),
                "now": now,
                "lim": limit,
                "me": owner,
            },
        ).scalars()
    )
    if not ids:
        return []
    rows = conn.execute(_CLAIM_EVENTS, {"ids": ids, "me": owner, "until": now + lease_s}).all()
    return sorted(rows, key=lambda r: r.id)


def mark_events(conn: Connection, owner: str, marks: Sequence[Mapping[str, Any]]) -> None:
    """Record delivery outcomes: each mark has eid, status, attempts, next_try, error,
    sent_at. Only events still held by ``owner`` change."""
    if marks:
        conn.execute(
            _MARK_EVENT,
            [
                {
                    "eid": m["eid"],
                    "me": owner,
                    "new_status": m["status"],
                    "new_attempts": m["attempts"],
                    "new_next_try": m["next_try"],
                    "new_error": m["error"],
                    "new_sent_at": m["sent_at"],
                }
                for m in marks
            ],
        )


def sending_owners(conn: Connection) -> list[str]:
    return [o for o in conn.execute(_SENDING_OWNERS).scalars().all() if o]


def release_events(conn: Connection, dead_owners: Sequence[str]) -> int:
    if not dead_owners:
        return 0
    return conn.execute(_RELEASE_EVENTS, {"dead": list(dead_owners)}).rowcount


def unaddressed_events(conn: Connection, platforms: Sequence[str]) -> list[Row[Any]]:
    """Undelivered events of ``platforms`` written without an audience (before it existed)."""
    if not platforms:
        return []
    rows = conn.execute(_UNADDRESSED, {"platforms": list(platforms)}).all()
    return cast("list[Row[Any]]", list(rows))


def address_events(conn: Connection, audiences: Mapping[int, str]) -> None:
    if audiences:
        conn.execute(_ADDRESS, [{"eid": eid, "aud": aud} for eid, aud in audiences.items()])


def unsent_for_user(conn: Connection, user_id: int) -> int:
    return int(conn.execute(_UNSENT_FOR_USER, {"uid": user_id}).scalar_one())


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


def stats(conn: Connection, since: float) -> dict[str, Any]:
    """The queue now (``queued``, ``running``); jobs created since ``since`` by status
    (``jobs_by_status``); credits ``charged`` and ``refunded`` since then; ``people``."""
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
    }


# --- model downloads and the model registry ---------------------------------------------------

download_tasks = DownloadTask.__table__
model_records = ModelRecord.__table__
model_files = ModelFileRecord.__table__

_DOWNLOAD = select(download_tasks).where(download_tasks.c.id == bindparam("tid"))
_DOWNLOADS_FOR_FILE = (
    select(download_tasks)
    .where(download_tasks.c.version_id == bindparam("vid"))
    .order_by(download_tasks.c.id.desc())
)
_CLAIM_DOWNLOAD = (
    update(download_tasks)
    .where(
        download_tasks.c.id == bindparam("tid"),
        or_(
            download_tasks.c.status == DownloadStatus.QUEUED,
            and_(
                download_tasks.c.status == DownloadStatus.RUNNING,
                or_(
                    download_tasks.c.owner == bindparam("me"),
                    download_tasks.c.updated_at < bindparam("stale_before"),
                ),
            ),
        ),
    )
    .values(
        status=DownloadStatus.RUNNING,
        owner=bindparam("me"),
        error=None,
        started_at=func.coalesce(download_tasks.c.started_at, bindparam("now")),
        updated_at=bindparam("now"),
    )
)
_INTERRUPTED_DOWNLOADS = (
    select(download_tasks.c.id)
    .where(
        or_(
            download_tasks.c.status == DownloadStatus.QUEUED,
            and_(
                download_tasks.c.status == DownloadStatus.RUNNING,
                download_tasks.c.updated_at < bindparam("stale_before"),
            ),
        )
    )
    .order_by(download_tasks.c.id)
)
_ACTIVE_DOWNLOAD_PATHS = select(download_tasks.c.id, download_tasks.c.path).where(
    download_tasks.c.status.in_(DOWNLOAD_ACTIVE), download_tasks.c.path.is_not(None)
)
_MODEL = select(model_records).where(model_records.c.sha256 == bindparam("sha"))
_MODELS_BY_SHA = select(model_records).where(model_records.c.sha256.in_(_ids("shas")))
_MODEL_FILES = select(model_files)


def insert_download_task(conn: Connection, values: Mapping[str, Any]) -> int:
    """A new download task (``status`` queued unless given); its id."""
    row = {"bytes_done": 0, "attempts": 0, "status": DownloadStatus.QUEUED, "options": {}, **values}
    return int(
        conn.execute(insert(download_tasks).returning(download_tasks.c.id), row).scalar_one()
    )


def get_download_task(conn: Connection, task_id: int) -> Row[Any] | None:
    return conn.execute(_DOWNLOAD, {"tid": task_id}).first()


def download_tasks_for_version(
    conn: Connection, version_id: int, file_id: int | None = None
) -> list[Row[Any]]:
    """Every task for a model version (of one file, if given), newest first."""
    rows = conn.execute(_DOWNLOADS_FOR_FILE, {"vid": version_id}).all()
    return [r for r in rows if file_id is None or r.file_id == file_id]


def list_download_tasks(
    conn: Connection, *, statuses: Sequence[str] | None = None, limit: int = 50
) -> list[Row[Any]]:
    """The newest tasks first, optionally only those in ``statuses``."""
    stmt = select(download_tasks).order_by(download_tasks.c.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(download_tasks.c.status.in_(list(statuses)))
    return list(conn.execute(stmt).all())


def claim_download_task(
    conn: Connection, task_id: int, owner: str, now: float, stale_before: float
) -> Row[Any] | None:
    """Make a queued task (or a running one whose owner stopped writing progress before
    ``stale_before``) running under ``owner``; the row, or ``None`` if it was not claimable."""
    claimed = conn.execute(
        _CLAIM_DOWNLOAD, {"tid": task_id, "me": owner, "now": now, "stale_before": stale_before}
    ).rowcount
    return get_download_task(conn, task_id) if claimed else None


def update_download_task(
    conn: Connection,
    task_id: int,
    *,
    if_owner: str | None = None,
    if_status: Sequence[str] | None = None,
    **values: Any,
) -> bool:
    """Set ``values`` on a task; only while it belongs to ``if_owner`` and/or is in one of
    ``if_status`` when those are given. Whether a row changed."""
    stmt = update(download_tasks).where(download_tasks.c.id == task_id)
    if if_owner is not None:
        stmt = stmt.where(download_tasks.c.owner == if_owner)
    if if_status is not None:
        stmt = stmt.where(download_tasks.c.status.in_(list(if_status)))
    return bool(conn.execute(stmt.values(**values)).rowcount)


def interrupted_download_ids(conn: Connection, stale_before: float) -> list[int]:
    """Tasks waiting to run: queued ones, and running ones whose process went quiet."""
    return [
        int(i)
        for i in conn.execute(_INTERRUPTED_DOWNLOADS, {"stale_before": stale_before}).scalars()
    ]


def active_download_paths(conn: Connection) -> dict[str, int]:
    """Target paths of unfinished tasks (queued, running, paused) -> their task id."""
    return {str(path): int(tid) for tid, path in conn.execute(_ACTIVE_DOWNLOAD_PATHS).all()}


def _upsert_on(
    conn: Connection, table: Any, key: str, row: Mapping[str, Any], keep: Sequence[str]
) -> None:
    make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = make(table).values(**row)
    changes = {k: stmt.excluded[k] for k in row if k != key and k not in keep}
    conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changes))


def upsert_model(conn: Connection, values: Mapping[str, Any]) -> None:
    """Insert a registry row, or update the one with this ``sha256`` (``created_at`` kept)."""
    _upsert_on(conn, model_records, "sha256", values, keep=("created_at",))


def get_model(conn: Connection, sha256: str) -> Row[Any] | None:
    return conn.execute(_MODEL, {"sha": sha256.lower()}).first()


def models_by_sha(conn: Connection, shas: Iterable[str]) -> dict[str, Row[Any]]:
    wanted = sorted({s.lower() for s in shas})
    out: dict[str, Row[Any]] = {}
    for start in range(0, len(wanted), 500):
        for row in conn.execute(_MODELS_BY_SHA, {"shas": wanted[start : start + 500]}).all():
            out[row.sha256] = row
    return out


def list_models(
    conn: Connection, *, type: str | None = None, status: str | None = None
) -> list[Row[Any]]:
    """Registry rows by name, optionally of one ``type`` and/or ``status``."""
    stmt = select(model_records).order_by(model_records.c.name, model_records.c.sha256)
    if type is not None:
        stmt = stmt.where(model_records.c.type == type)
    if status is not None:
        stmt = stmt.where(model_records.c.status == status)
    return list(conn.execute(stmt).all())


def update_model(conn: Connection, sha256: str, **values: Any) -> bool:
    stmt = update(model_records).where(model_records.c.sha256 == sha256.lower()).values(**values)
    return bool(conn.execute(stmt).rowcount)


def all_model_files(conn: Connection) -> list[Row[Any]]:
    """The scan's hash cache: (path, sha256, size_bytes, mtime_ns, hashed_at) rows."""
    return list(conn.execute(_MODEL_FILES).all())


def upsert_model_files(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        _upsert_on(conn, model_files, "path", row, keep=())


def delete_model_files(conn: Connection, paths: Iterable[str]) -> int:
    wanted = list(paths)
    if not wanted:
        return 0
    return conn.execute(delete(model_files).where(model_files.c.path.in_(wanted))).rowcount
