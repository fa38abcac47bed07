"""Waiting for an event with a timeout, without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 returns normally, swallowing the cancellation, when the
awaited thing completes in the same loop iteration as the cancel (bpo-42130, fixed in 3.12
by rebuilding ``wait_for`` on ``asyncio.timeout``). A worker loop that is cancelled just as
it is woken would then run on forever and hang shutdown, so loops use this instead.
"""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
