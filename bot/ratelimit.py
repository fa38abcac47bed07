"""How often one person may run the commands that cost them nothing and the operator
something (a Civitai lookup: an API call and up to five picture fetches and decodes).

A sliding window per person, in this process's memory: a restart forgets it, and each
process that takes commands counts on its own (a front end usually is the only one).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` uses per ``window_s`` for each key; ``limit`` 0 means no limit."""

    def __init__(
        self, limit: int, window_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._uses: dict[str, deque[float]] = {}

    def take(self, key: str) -> float:
        """Count one use for ``key`` and return 0, or, when its window is full, count
        nothing and return the seconds until a use is free again."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        uses = self._uses.setdefault(key, deque())
        while uses and uses[0] <= now - self.window_s:
            uses.popleft()
        if len(uses) >= self.limit:
            return uses[0] + self.window_s - now
        uses.append(now)
        if len(self._uses) > 10_000:  # forget people whose windows have passed
            self._uses = {k: q for k, q in self._uses.items() if q and q[-1] > now - self.window_s}
        return 0.0
