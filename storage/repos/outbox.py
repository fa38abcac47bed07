"""The outbox: what chat adapters still have to tell someone, claimed like jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)

from storage import notify
from storage.repos.common import (
    _ids,
    _upsert,
    jobs,
    outbox,
)
from storage.status import (
    OUTBOX_UNSENT,
    OutboxStatus,
)

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
    """Queue things to tell people; a duplicate (same job, kind, idx) is dropped. The
    deliverers of other processes are woken at commit (PostgreSQL)."""
    if rows:
        conn.execute(
            _upsert(conn, outbox, ("job_id", "kind", "idx"), returning=False),
            [{**EVENT_DEFAULTS, **row} for row in rows],
        )
        notify.events_added(conn, (row.get("platform") for row in rows))


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
    n = int(conn.execute(_RELEASE_EVENTS, {"dead": list(dead_owners)}).rowcount)
    if n:
        notify.events_added(conn, [None])  # any process may deliver them now
    return n


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


_IMAGE_EVENT_PAYLOAD = select(outbox.c.payload).where(
    outbox.c.job_id == bindparam("jid"), outbox.c.kind == "image", outbox.c.idx == bindparam("idx")
)


def picture_flagged_nsfw(conn: Connection, job_id: int, idx: int) -> bool:
    """Whether the provider flagged a picture NSFW, as its delivery event says (the images
    table keeps no such column; no event: not flagged)."""
    payload = conn.execute(_IMAGE_EVENT_PAYLOAD, {"jid": job_id, "idx": idx}).scalar()
    return bool(isinstance(payload, dict) and payload.get("nsfw"))
