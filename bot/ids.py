"""Numbers people type that name a row (a job, a picture): what counts as one.

Ids are stored as signed 64-bit integers. ``int()`` is far more generous than that: it reads
non-ASCII digits (``٣``), underscores and numbers of any length (and ``str.isdigit`` passes
``²``, which ``int()`` then refuses with a ValueError), and a number
past the column's range makes the database driver raise (``OverflowError`` on SQLite, a
``DataError`` on PostgreSQL) instead of finding nothing. Everything that turns text or a
button's data into an id goes through ``parse_id``; everything that looks an id up checks
``valid_id``, so no such number ever reaches a query.
"""

from __future__ import annotations

MAX_ID = 2**63 - 1  # the largest value of the BIGINT id columns
_MAX_DIGITS = len(str(MAX_ID))


def valid_id(value: int) -> bool:
    """Whether ``value`` can be the id of a row: 1..2**63-1."""
    return 0 < value <= MAX_ID


def is_digits(text: str) -> bool:
    """Only ASCII digits 0-9, at least one."""
    return text.isascii() and text.isdigit()


def parse_id(text: str) -> int | None:
    """The id ``text`` names (``12`` or ``#12``, spaces around allowed), or None when it is
    not ASCII digits or names no possible row."""
    token = text.strip().removeprefix("#")
    if not is_digits(token) or len(token.lstrip("0")) > _MAX_DIGITS:
        return None
    value = int(token)
    return value if valid_id(value) else None
