"""People and their credits: identities, settings, bans, and the ledger.

Money moves only through ``charge`` and ``credit``, which keep the invariant
balance == sum(ledger.delta): the ledger row is unique per (job, reason), or per key
for entries without a job, so a charge or refund can never happen twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    func,
    insert,
    select,
    update,
)

from storage.repos.common import (
    _upsert,
    ledger,
    users,
)

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
