"""The fair-share policy on its own: examples, then properties over any queue."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.fairness import plan_fair_share


def test_a_batch_of_ten_takes_turns_with_a_single_job() -> None:
    heads = [(1, 10, 1), (2, 1, 11)]
    assert plan_fair_share(heads, {}, {}, 2, 4) == {1: 1, 2: 1}


def test_fewest_running_first_then_least_recently_served_then_longest_waiting() -> None:
    heads = [(1, 3, 5), (2, 3, 6), (3, 3, 7)]
    # 1 runs one already; 2 was served after 3: 3 first, then 2, then (all at one) 1
    plan = plan_fair_share(heads, {1: 1}, {2: 200.0, 3: 100.0}, 1, 4)
    assert plan == {3: 1}
    assert plan_fair_share(heads, {1: 1}, {2: 200.0, 3: 100.0}, 2, 4) == {3: 1, 2: 1}
    # never served by anyone: the oldest queued job decides
    assert plan_fair_share([(1, 1, 9), (2, 1, 4)], {}, {}, 1, 4) == {2: 1}


def test_those_served_in_this_plan_go_behind_in_the_order_served() -> None:
    heads = [(1, 5, 1), (2, 5, 2)]
    # 1 served earlier: 1, 2, then 1 again (served first in this plan)
    assert plan_fair_share(heads, {}, {1: 10.0, 2: 20.0}, 3, 4) == {1: 2, 2: 1}


def test_nobody_past_the_cap_and_no_slot_without_a_queued_job() -> None:
    heads = [(1, 5, 1), (2, 0, 2), (3, 5, 3)]
    assert plan_fair_share(heads, {1: 2, 3: 1}, {}, 10, 2) == {3: 1}
    assert plan_fair_share(heads, {}, {}, 0, 2) == {}


# --- properties ---------------------------------------------------------------------------


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], dict, dict, int, int]:
    n = draw(st.integers(0, 8))
    uids = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    firsts = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    heads = [(u, draw(st.integers(0, 6)), f) for u, f in zip(uids, firsts, strict=True)]
    running = {u: draw(st.integers(0, 5)) for u in uids if draw(st.booleans())}
    served = {u: float(draw(st.integers(0, 3))) for u in uids if draw(st.booleans())}
    return heads, running, served, draw(st.integers(0, 12)), draw(st.integers(1, 5))


@settings(max_examples=500, deadline=None)
@given(queues())
def test_plan_keeps_every_limit_and_shares_evenly(case) -> None:
    heads, running, served, slots, cap = case
    plan = plan_fair_share(heads, running, served, slots, cap)
    queued = {u: q for u, q, _ in heads}
    have = {u: running.get(u, 0) for u in queued}
    # room: how many more each person could run at all
    room = {u: max(0, min(queued[u], cap - have[u])) for u in queued}

    assert all(n > 0 for n in plan.values())
    assert set(plan) <= set(queued)  # only people in the queue
    assert sum(plan.values()) <= slots
    for u, n in plan.items():
        assert n <= queued[u]  # never more than they have queued (none if nothing queued)
        assert have[u] + n <= cap  # never past max_running_per_user
    # no slot left idle while someone could still use it
    assert sum(plan.values()) == min(slots, sum(room.values()))
    # evenly: whoever got a slot had no more running (before that slot) than anyone who
    # could still take one, so people with equal running and enough queued differ by <= 1
    for u, n in plan.items():
        for v in queued:
            if plan.get(v, 0) < room[v]:
                assert have[u] + n - 1 <= have[v] + plan.get(v, 0), (u, v)


@settings(max_examples=300, deadline=None)
@given(queues())
def test_people_alike_but_for_their_turn_differ_by_at_most_one(case) -> None:
    heads, _, served, slots, _ = case
    cap = 100  # nobody capped, nobody running: only the turns differ
    heads = [(u, 20, f) for u, _, f in heads]  # all with enough queued
    plan = plan_fair_share(heads, {}, served, slots, cap)
    counts = [plan.get(u, 0) for u, _, _ in heads]
    if counts:
        assert max(counts) - min(counts) <= 1
    # the one slot short go to those served longest ago (then waiting longest)
    order = sorted(heads, key=lambda h: (served.get(h[0], 0.0), h[2]))
    assert counts == [] or [plan.get(u, 0) for u, _, _ in order] == sorted(
        (plan.get(u, 0) for u, _, _ in order), reverse=True
    )
