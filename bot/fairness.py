"""The fair-share policy: who gets the free slots of a provider.

A pure function, so it is the core's to decide and easy to test on its own; the claim in
``storage.repos.claim_jobs`` reads the counts it needs and applies its plan in one
transaction (the scheduler passes it in).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping


def plan_fair_share(
    heads: Iterable[tuple[int, int, int]],
    running: Mapping[int, int],
    served: Mapping[int, float],
    slots: int,
    max_running_per_user: int,
) -> dict[int, int]:
    """How many of ``slots`` each user gets: ``{user_id: count}``.

    ``heads`` are ``(user_id, queued count, oldest queued id)``. Each slot goes to the
    person with the fewest jobs running (counting slots already given), then to whoever
    was served least recently, then to whoever has waited longest. So one person's batch of
    ten takes turns with everyone else instead of running ahead of them, and nobody goes
    past ``max_running_per_user``.
    """
    just_now = float("inf")  # later than any stored time: served by this very plan
    heap: list[tuple[int, float, int, int, int]] = []
    for user_id, queued, first_id in heads:
        have = running.get(user_id, 0)
        if queued > 0 and have < max_running_per_user:
            heap.append((have, served.get(user_id, 0.0), first_id, user_id, queued))
    heapq.heapify(heap)
    plan: dict[int, int] = {}
    turn = 0
    while slots > 0 and heap:
        have, _, _, user_id, queued = heapq.heappop(heap)
        plan[user_id] = plan.get(user_id, 0) + 1
        slots -= 1
        turn += 1
        if queued > 1 and have + 1 < max_running_per_user:
            # Behind everyone with as many jobs running; among those served in this plan,
            # in the order they were served.
            heapq.heappush(heap, (have + 1, just_now, turn, user_id, queued - 1))
    return plan
