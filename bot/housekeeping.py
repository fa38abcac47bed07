"""Upkeep of the picture store: files no row refers to are removed now and then.

A picture is stored before its row is written (the row goes in with the job's outcome), and
an input before its job's row, so a kill or a job ending badly at the wrong moment leaves a
file nobody will ever ask for. The sweep runs when a long-lived process starts and every
``SWEEP_INTERVAL_S`` after, in every process (two sweeping at once do no harm), and from
``sdhost store sweep``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from storage import repos
from storage.db import Database
from storage.files import PictureStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
# Files younger than this are kept whatever the rows say: an input is stored just before
# its job's row is inserted, and a clock may be a little off between machines.
SWEEP_GRACE_S = 600.0


async def sweep_store(
    db: Database, files: PictureStore, *, grace_s: float = SWEEP_GRACE_S
) -> Sequence[object]:
    """Remove the store's files no row refers to; return what went."""
    t = time.time()
    # The oldest running job first, then the rows: a job that finishes in between has its
    # rows in the second read, and one that starts after wrote its files after ``t``.
    oldest = await db.run_read(repos.oldest_running_start)
    referenced = await db.run_read(repos.referenced_files)
    keep_since = min(t - grace_s, oldest if oldest is not None else t)
    removed = await asyncio.to_thread(files.sweep, referenced, keep_since=keep_since)
    if removed:
        log.info("removed %d file(s) from the store that no row refers to", len(removed))
    return removed


async def sweep_forever(
    db: Database, files: PictureStore, *, interval_s: float = SWEEP_INTERVAL_S
) -> None:
    while True:
        try:
            await sweep_store(db, files)
        except Exception:
            log.exception("sweeping the store failed; trying again later")
        await asyncio.sleep(interval_s)
