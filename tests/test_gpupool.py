"""The GPU pool on its own: one job per instance, affinity, health, waiting and giving up.

The instances here are plain objects whose ``check`` says up or down; what reaches a real
web UI is tested in tests/test_provider_a1111.py against tests/fakes/a1111.py.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.providers.gpupool import GpuPool, Member, NoInstance


def _pool(
    names: list[str], *, up: set[str] | None = None, **kw: object
) -> tuple[GpuPool[str], dict[str, bool]]:
    alive = {n: (up is None or n in up) for n in names}

    async def check(m: Member[str]) -> bool:
        return alive[m.name]

    members = [Member(n, n) for n in names]
    return GpuPool(members, check=check, recheck_s=0.05, recheck_max_s=0.1, **kw), alive  # type: ignore[arg-type]


async def test_an_instance_is_lent_to_one_job_at_a_time() -> None:
    pool, _ = _pool(["gpu1"])
    await pool.recheck()
    first = await pool.acquire(None)
    second = asyncio.create_task(pool.acquire(None))
    await asyncio.sleep(0.2)
    assert not second.done()  # gpu1 is busy: the second job waits
    await pool.release(first)
    got = await second
    assert got is first
    await pool.release(got)
    await pool.aclose()


async def test_a_freed_instance_takes_the_job_that_needs_no_switch() -> None:
    pool, _ = _pool(["gpu1", "gpu2"])
    await pool.recheck()
    pool.members[0].loaded, pool.members[1].loaded = "a", "b"
    a1 = await pool.acquire("a")
    b1 = await pool.acquire("b")
    assert (a1.name, b1.name) == ("gpu1", "gpu2")
    # waiting, oldest first: b, b, a
    waiting = [asyncio.create_task(pool.acquire(w)) for w in ("b", "b", "a")]
    await asyncio.sleep(0.05)
    await pool.release(a1)  # gpu1 has "a": it skips the two older "b" jobs
    await asyncio.sleep(0.05)
    assert waiting[2].done() and waiting[2].result().name == "gpu1"
    assert not waiting[0].done() and not waiting[1].done()
    await pool.release(b1)
    await asyncio.sleep(0.05)
    assert waiting[0].done() and waiting[0].result().name == "gpu2"
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await pool.aclose()


async def test_a_free_instance_switches_rather_than_idle_when_the_queue_is_long() -> None:
    pool, _ = _pool(["gpu1", "gpu2"], job_s=1.0, switch_s=2.0)
    await pool.recheck()
    pool.members[0].loaded, pool.members[1].loaded = "a", "b"
    b1 = await pool.acquire("b")
    waiting = [asyncio.create_task(pool.acquire("b")) for _ in range(6)]
    await asyncio.sleep(0.05)
    # gpu1 (with "a") is idle; six "b" jobs wait for gpu2: 6 x 1 s is more than a 2 s
    # switch there and one back later
    assert sum(t.done() for t in waiting) == 1
    assert next(t for t in waiting if t.done()).result().name == "gpu1"
    await pool.release(b1)
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await pool.aclose()


async def test_a_short_queue_waits_for_the_instance_that_has_its_checkpoint() -> None:
    pool, _ = _pool(["gpu1", "gpu2"], job_s=1.0, switch_s=20.0)
    await pool.recheck()
    pool.members[0].loaded, pool.members[1].loaded = "a", "b"
    b1 = await pool.acquire("b")
    waiting = asyncio.create_task(pool.acquire("b"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # one job of 1 s is not worth a 20 s switch on gpu1
    await pool.release(b1)
    assert (await waiting).name == "gpu2"
    await pool.aclose()


async def test_a_dead_instance_is_skipped_checked_again_and_put_back() -> None:
    pool, alive = _pool(["gpu1", "gpu2"])
    await pool.recheck()
    gpu1 = await pool.acquire(None)
    alive["gpu1"] = False
    pool.mark_down(gpu1, "connection refused")
    await pool.release(gpu1)
    got = await pool.acquire(None)
    assert got.name == "gpu2"  # gpu1 is out
    other = asyncio.create_task(pool.acquire(None))
    await asyncio.sleep(0.3)
    assert not other.done()
    alive["gpu1"] = True  # back: the recheck finds it and lends it
    async with asyncio.timeout(5):
        assert (await other).name == "gpu1"
    await pool.aclose()


async def test_no_instance_up_gives_up_after_the_wait() -> None:
    pool, _ = _pool(["gpu1"], up=set(), wait_for_instance_s=0.3)
    await pool.recheck()
    with pytest.raises(NoInstance, match="no GPU instance is answering"):
        async with asyncio.timeout(5):
            await pool.acquire(None)
    assert pool.waiting == 0
    await pool.aclose()


async def test_a_job_cancelled_while_waiting_leaves_no_trace() -> None:
    pool, _ = _pool(["gpu1"])
    await pool.recheck()
    held = await pool.acquire(None)
    waiter = asyncio.create_task(pool.acquire(None))
    await asyncio.sleep(0.05)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert pool.waiting == 0
    await pool.release(held)
    again = await pool.acquire(None)  # not lent to the cancelled job
    assert again is held and again.busy
    await pool.aclose()


async def test_only_instances_that_fit_are_lent() -> None:
    pool, _ = _pool(["gpu1", "gpu2"])
    await pool.recheck()
    got = await pool.acquire("x", fits=lambda m: m.name == "gpu2")
    assert got.name == "gpu2"
    await pool.aclose()


async def test_instances_that_share_a_checkpoint_spread_to_the_ones_nobody_has() -> None:
    pool, alive = _pool(["gpu1", "gpu2"], job_s=1.0, switch_s=20.0)
    await pool.recheck()
    pool.members[0].loaded = pool.members[1].loaded = "a"
    a1 = await pool.acquire("a")
    alive["gpu2"] = pool.members[1].up = False  # both jobs wait before gpu2 may choose
    waiting = [asyncio.create_task(pool.acquire(w)) for w in ("a", "b")]
    await asyncio.sleep(0.05)
    alive["gpu2"] = pool.members[1].up = True
    pool._assign()
    await asyncio.sleep(0.05)
    # gpu2 also has "a": the "b" job nobody has goes first, though the "a" job is older
    assert waiting[1].done() and waiting[1].result().name == "gpu2"
    assert not waiting[0].done()
    await pool.release(a1)
    assert (await waiting[0]).name == "gpu1"
    await pool.aclose()
