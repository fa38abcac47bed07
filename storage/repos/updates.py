"""Incoming updates: what a chat platform pushed to any of the processes (a webhook behind
a load balancer), handled once, by whichever process claims it, in order per chat.

A second copy of an update (the same ``update_id`` posted again, or to another process)
is dropped on insert. An update is claimable while nobody holds its lease and no earlier
update of its chat is still unhandled, so one chat's updates run one after the other
across all processes; a process that dies mid-update loses its lease and another one
takes the update again (at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    delete,
    exists,
    select,
    update,
)

from storage.repos.common import _ids, _upsert, incoming

_earlier = incoming.alias("earlier")
_WAITING_ON_EARLIER = (
    exists()
    .where(
        _earlier.c.source == incoming.c.source,
        _earlier.c.chat == incoming.c.chat,
        _earlier.c.update_id < incoming.c.update_id,
        _earlier.c.done_at.is_(None),
    )
    .correlate(incoming)
)
_CLAIMABLE = (
    select(incoming.c.id)
    .where(
        incoming.c.source == bindparam("source"),
        incoming.c.done_at.is_(None),
        incoming.c.claimed_until <= bindparam("now"),
        ~_WAITING_ON_EARLIER,
    )
    .order_by(incoming.c.update_id)
    .limit(bindparam("lim"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(incoming)
    .where(incoming.c.id.in_(_ids()))
    .values(claimed_by=bindparam("me"), claimed_until=bindparam("until"))
    .returning(incoming.c.id, incoming.c.update_id, incoming.c.chat, incoming.c.raw)
)
_FINISH = (
    update(incoming)
    .where(incoming.c.id == bindparam("uid"), incoming.c.claimed_by == bindparam("me"))
    .values(done_at=bindparam("now"), claimed_until=0.0)
)
_RELEASE = (
    update(incoming)
    .where(
        incoming.c.source == bindparam("src"),
        incoming.c.claimed_by == bindparam("me"),
        incoming.c.done_at.is_(None),
    )
    .values(claimed_until=0.0)
)
_FORGET = delete(incoming).where(incoming.c.received_at < bindparam("before"))


def store_update(
    conn: Connection, *, source: str, update_id: int, chat: str, raw: Any, now: float
) -> bool:
    """Keep an update until it is handled; False when it was already there (a copy)."""
    row = conn.execute(
        _upsert(conn, incoming, ("source", "update_id"), returning=True),
        {
            "source": source,
            "update_id": update_id,
            "chat": chat,
            "raw": raw,
            "received_at": now,
            "claimed_by": None,
            "claimed_until": 0.0,
            "done_at": None,
        },
    ).first()
    return row is not None


def claim_updates(
    conn: Connection, *, source: str, owner: str, now: float, lease_s: float, limit: int = 50
) -> list[Row[Any]]:
    """Claim the oldest unhandled updates of ``source``, at most one per chat (the next of
    each chat waits until it is done), ordered by ``update_id``."""
    ids = list(conn.execute(_CLAIMABLE, {"source": source, "now": now, "lim": limit}).scalars())
    if not ids:
        return []
    rows = conn.execute(_CLAIM, {"ids": ids, "me": owner, "until": now + lease_s}).all()
    return sorted(rows, key=lambda r: r.update_id)


def finish_updates(conn: Connection, *, ids: Sequence[int], owner: str, now: float) -> int:
    """Mark updates handled; only those still held by ``owner`` change."""
    if not ids:
        return 0
    return conn.execute(_FINISH, [{"uid": i, "me": owner, "now": now} for i in ids]).rowcount


def release_updates(conn: Connection, *, source: str, owner: str) -> int:
    """Give back the unhandled updates ``owner`` holds (it is stopping): claimable at once."""
    return conn.execute(_RELEASE, {"src": source, "me": owner}).rowcount


def forget_updates(conn: Connection, *, before: float) -> int:
    """Drop updates received before ``before``, handled or not (ids are reused later)."""
    return conn.execute(_FORGET, {"before": before}).rowcount
