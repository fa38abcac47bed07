"""Repositories: the SQL the core needs, written once for SQLite and PostgreSQL.

Every function takes a session that is already inside a transaction (``Database.write()``
or ``.read()``); none commits. Money moves only through ``charge``/``credit``, which keep
the invariant balance == sum(ledger.delta) and make double charges or refunds impossible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Job, LedgerEntry, OutboxEvent, StoredImage, User

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "quarantined")


def _insert(session: AsyncSession, table: Any) -> Any:
    if session.bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# --- users and credits -------------------------------------------------------------------


async def get_user(session: AsyncSession, platform: str, platform_user_id: str) -> User | None:
    return await session.scalar(
        select(User).where(User.platform == platform, User.platform_user_id == platform_user_id)
    )


async def ensure_user(
    session: AsyncSession,
    platform: str,
    platform_user_id: str,
    *,
    name: str,
    starting_grant: int,
    now: float,
) -> User:
    """Create the user on first sight, with the starting grant as a ledger entry."""
    user = await get_user(session, platform, platform_user_id)
    if user is not None:
        if name and user.name != name:
            user.name = name
        return user
    stmt = (
        _insert(session, User)
        .values(
            platform=platform,
            platform_user_id=platform_user_id,
            name=name,
            balance=0,
            banned=False,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["platform", "platform_user_id"])
    )
    await session.execute(stmt)
    user = await get_user(session, platform, platform_user_id)
    assert user is not None
    if starting_grant:
        await credit(
            session,
            user.id,
            starting_grant,
            reason="grant",
            key=f"start:{platform}:{platform_user_id}",
            note="starting grant",
            now=now,
        )
        await session.refresh(user)
    return user


async def charge(
    session: AsyncSession, user_id: int, amount: int, *, job_id: int, now: float
) -> int | None:
    """Take ``amount`` if the balance covers it. Returns the new balance, or None if short.

    The conditional UPDATE is what makes concurrent charges safe; the ledger row's unique
    (job_id, reason) makes a repeated charge for one job fail instead of paying twice.
    """
    new_balance = await session.scalar(
        update(User)
        .where(User.id == user_id, User.balance >= amount)
        .values(balance=User.balance - amount)
        .returning(User.balance)
    )
    if new_balance is None:
        return None
    session.add(
        LedgerEntry(
            user_id=user_id, delta=-amount, reason="charge", job_id=job_id, note="", created_at=now
        )
    )
    await session.flush()
    return int(new_balance)


async def credit(
    session: AsyncSession,
    user_id: int,
    amount: int,
    *,
    reason: str,
    now: float,
    job_id: int | None = None,
    key: str | None = None,
    note: str = "",
) -> bool:
    """Add (or, with a negative amount, remove) credits once per (job, reason) or key.

    The ledger insert goes first and the balance moves only if it was new, so replays are
    no-ops. Returns whether anything changed.
    """
    if job_id is None and key is None:
        raise ValueError("a credit needs a job_id or an idempotency key")
    index = ["job_id", "reason"] if job_id is not None else ["key"]
    stmt = (
        _insert(session, LedgerEntry)
        .values(
            user_id=user_id,
            delta=amount,
            reason=reason,
            job_id=job_id,
            key=key,
            note=note,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=index)
        .returning(LedgerEntry.id)
    )
    inserted = await session.scalar(stmt)
    if inserted is None:
        return False
    await session.execute(
        update(User).where(User.id == user_id).values(balance=User.balance + amount)
    )
    return True


async def ledger_sum(session: AsyncSession, user_id: int) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.delta), 0)).where(LedgerEntry.user_id == user_id)
    )
    return int(total or 0)


async def ledger_for_job(session: AsyncSession, job_id: int) -> list[LedgerEntry]:
    rows = await session.scalars(
        select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
    )
    return list(rows)


# --- jobs ----------------------------------------------------------------------------------


def _running_count(user_col: Any) -> Any:
    r = Job.__table__.alias("r")
    return (
        select(func.count())
        .select_from(r)
        .where(r.c.user_id == user_col, r.c.status == "running")
        .scalar_subquery()
    )


def _last_started(user_col: Any) -> Any:
    r = Job.__table__.alias("ls")
    return (
        select(func.coalesce(func.max(r.c.started_at), 0.0))
        .where(r.c.user_id == user_col)
        .scalar_subquery()
    )


async def claim_job(
    session: AsyncSession,
    *,
    provider: str,
    owner: str,
    now: float,
    lease_s: float,
    max_running_per_user: int,
    provider_cap: int | None = None,
) -> Job | None:
    """Claim the next job for ``provider`` fairly, or None.

    Fair means round-robin across people: first the users with the fewest running jobs,
    then whoever was served least recently, then the oldest job. One person's batch of ten
    therefore never holds back someone who asked for one picture afterwards. Step two locks
    the chosen person's oldest job with SKIP LOCKED, so on PostgreSQL several processes can
    claim at once without waiting on or double-claiming each other's rows.
    """
    if provider_cap is not None:
        running = await session.scalar(
            select(func.count()).where(Job.provider == provider, Job.status == "running")
        )
        if (running or 0) >= provider_cap:
            return None
    candidates = (
        select(Job.user_id, func.min(Job.id).label("first_id"))
        .where(Job.status == "queued", Job.provider == provider, Job.run_after <= now)
        .group_by(Job.user_id)
        .subquery()
    )
    users = await session.execute(
        select(candidates.c.user_id)
        .where(_running_count(candidates.c.user_id) < max_running_per_user)
        .order_by(
            _running_count(candidates.c.user_id),
            _last_started(candidates.c.user_id),
            candidates.c.first_id,
        )
        .limit(4)
    )
    for (user_id,) in users.all():
        job_id = await session.scalar(
            select(Job.id)
            .where(
                Job.user_id == user_id,
                Job.status == "queued",
                Job.provider == provider,
                Job.run_after <= now,
            )
            .order_by(Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job_id is None:
            continue
        claimed = await session.scalar(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                lease_owner=owner,
                lease_until=now + lease_s,
                attempts=Job.attempts + 1,
                started_at=now,
            )
            .returning(Job)
        )
        if claimed is not None:
            return claimed
    return None


async def queued_counts_by_user(session: AsyncSession, provider: str) -> dict[int, list[int]]:
    """Queued job ids per user for ``provider``, oldest first (for queue positions)."""
    rows = await session.execute(
        select(Job.user_id, Job.id)
        .where(Job.status == "queued", Job.provider == provider)
        .order_by(Job.id)
    )
    out: dict[int, list[int]] = {}
    for user_id, job_id in rows.all():
        out.setdefault(user_id, []).append(job_id)
    return out


async def expired_leases(
    session: AsyncSession, now: float, dead_owners: Sequence[str]
) -> list[Job]:
    cond = Job.lease_until < now
    if dead_owners:
        cond = or_(cond, Job.lease_owner.in_(list(dead_owners)))
    rows = await session.scalars(
        select(Job).where(Job.status == "running", cond).with_for_update(skip_locked=True)
    )
    return list(rows)


async def running_owners(session: AsyncSession) -> list[str]:
    rows = await session.scalars(select(Job.lease_owner).where(Job.status == "running").distinct())
    return [r for r in rows if r]


async def active_count(session: AsyncSession, user_id: int) -> int:
    n = await session.scalar(
        select(func.count()).where(Job.user_id == user_id, Job.status.in_(ACTIVE))
    )
    return int(n or 0)


async def jobs_for_user(session: AsyncSession, user_id: int, limit: int = 10) -> list[Job]:
    rows = await session.scalars(
        select(Job).where(Job.user_id == user_id).order_by(Job.id.desc()).limit(limit)
    )
    return list(rows)


async def batch_counts(session: AsyncSession, batch_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    )
    return {status: int(n) for status, n in rows.all()}


async def images_for_job(session: AsyncSession, job_id: int) -> list[StoredImage]:
    rows = await session.scalars(
        select(StoredImage).where(StoredImage.job_id == job_id).order_by(StoredImage.idx)
    )
    return list(rows)


async def add_image(session: AsyncSession, **values: Any) -> bool:
    stmt = (
        _insert(session, StoredImage)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["job_id", "idx"])
        .returning(StoredImage.id)
    )
    return (await session.scalar(stmt)) is not None


# --- outbox --------------------------------------------------------------------------------


async def add_event(session: AsyncSession, **values: Any) -> bool:
    """Queue something to tell the person; a duplicate (same job, kind, idx) is dropped."""
    values.setdefault("status", "pending")
    values.setdefault("attempts", 0)
    values.setdefault("next_try", 0.0)
    stmt = (
        _insert(session, OutboxEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["job_id", "kind", "idx"])
        .returning(OutboxEvent.id)
    )
    return (await session.scalar(stmt)) is not None


async def claim_events(
    session: AsyncSession,
    *,
    platforms: Sequence[str],
    owner: str,
    now: float,
    lease_s: float,
    limit: int = 100,
) -> list[OutboxEvent]:
    """Claim pending events (and ones whose sender died) for the platforms we serve."""
    ids = list(
        await session.scalars(
            select(OutboxEvent.id)
            .where(
                OutboxEvent.platform.in_(list(platforms)),
                or_(
                    and_(OutboxEvent.status == "pending", OutboxEvent.next_try <= now),
                    and_(OutboxEvent.status == "sending", OutboxEvent.next_try <= now),
                ),
            )
            .order_by(OutboxEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return []
    rows = await session.scalars(
        update(OutboxEvent)
        .where(OutboxEvent.id.in_(ids))
        .values(status="sending", owner=owner, next_try=now + lease_s)
        .returning(OutboxEvent)
    )
    return sorted(rows, key=lambda e: e.id)


async def pending_event_count(session: AsyncSession, *, job_ids: Sequence[int]) -> int:
    if not job_ids:
        return 0
    n = await session.scalar(
        select(func.count()).where(
            OutboxEvent.job_id.in_(list(job_ids)), OutboxEvent.status.in_(("pending", "sending"))
        )
    )
    return int(n or 0)
