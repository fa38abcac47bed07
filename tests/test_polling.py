"""Polling that picks results up when they are ready (adapters/providers/cloud.py): the
schedule on its own, and the polls the BFL fake receives for long and for learnt tasks."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from adapters.providers.bfl import BflProvider
from adapters.providers.cloud import Estimate, TaskTimes, next_poll_at, poll_window
from bot.config import ApiKeyConfig, BflConfig
from bot.providers import ResolvedRequest
from tests.fakes.bfl import FakeBfl
from tests.fakes.provider_run import Recorder


def schedule(cfg: BflConfig, est: Estimate | None, until: float, phase: float = 0.0) -> list[float]:
    """The poll times of a task that ends at ``until`` (the last one sees it done)."""
    times: list[float] = []
    last: float | None = None
    while last is None or last < until:
        last = next_poll_at(cfg, est, last, len(times), phase)
        times.append(last)
        assert len(times) < 100
    return times


def test_a_30_second_task_costs_at_most_8_polls_learnt_or_not() -> None:
    cfg = BflConfig()  # the defaults
    for phase in (0.0, 0.25, 0.5, 0.75):  # side-by-side tasks of an unlearnt model
        cold = schedule(cfg, None, 30.0, phase)
        assert len(cold) <= 8, cold
    est = Estimate(30.0, 0.0, 5)
    warm = schedule(cfg, est, 30.0)
    assert len(warm) <= 8, warm
    # After learning, the poll that sees the end comes within the window after it.
    assert 30.0 <= warm[-1] <= 30.0 + 2 * poll_window(est) + 1e-9
    assert warm[-2] < 30.0  # ... and the one before it just before the end
    # A task far longer than learnt still costs a bounded number of polls.
    assert len(schedule(cfg, Estimate(10.0, 0.5, 5), 120.0)) <= 30


def test_estimates_follow_a_model_getting_slower() -> None:
    times = TaskTimes()
    times.learn("m", 10.0)
    for _ in range(20):
        times.learn("m", 20.0)
    est = times.expected("m")
    assert est is not None and abs(est.mean - 20.0) < 0.1
    assert times.expected("other") is None


def request(job_id: int) -> ResolvedRequest:
    return ResolvedRequest(
        job_id=job_id,
        kind="txt2img",
        prompt="a lighthouse",
        negative="",
        width=512,
        height=512,
        seed=job_id,
        n=1,
        model="flux-pro-1.1",
    )


# The default schedule at 1/20 scale: a 1.5 s task here is a 30 s task with the defaults.
SCALE = 20
SCALED: dict[str, Any] = {
    "poll_first_s": 1.0 / SCALE,
    "poll_factor": 1.6,
    "poll_max_interval_s": 8.0 / SCALE,
}


async def test_the_fake_sees_few_polls_and_a_learnt_task_is_picked_up_at_once() -> None:
    # A 26 s task: the unlearnt schedule (polls at 23.8 s and 31.8 s) sees it end 5.8 s late.
    duration = 26.0 / SCALE
    async with FakeBfl(keys={"k1"}, delay_s=duration) as fake:
        cfg = BflConfig(
            base_url=fake.base_url,
            keys=[ApiKeyConfig(key="k1", name="k1")],
            key_hosts=[urlsplit(fake.regional_url).netloc],
            **SCALED,
        )
        provider = BflProvider(cfg)
        try:
            lags: list[float] = []
            counts: list[int] = []
            windows: list[float] = []
            for job in range(1, 7):
                before = len(fake.calls)
                run = Recorder(request(job))
                await provider.generate(run)
                assert 0 in run.images
                task = fake.tasks[run.task_id or ""]
                polls = [c for c in fake.calls[before:] if c.path.endswith("/get_result")]
                assert len(polls) <= 8, [round(c.at - task.created, 3) for c in polls]
                counts.append(len(polls))
                late = [c.at - task.done_at for c in polls if c.at >= task.done_at]
                lags.append(late[0])
                windows.append(poll_window(provider.task_times.expected("flux-pro-1.1")))
                await asyncio.sleep(0)
            # The first task, on a model not seen yet, lands late (the geometric schedule);
            # the next ones are polled just before and just after the learnt end, in a
            # window that narrows as the estimate settles (3 % of the duration either side).
            assert lags[0] > 0.2, lags  # what learning saves
            assert all(c <= 3 for c in counts[1:]), counts  # early, just before, just after
            assert windows[-1] <= max(0.05, 0.05 * duration), windows
            for lag, window in zip(lags[3:], windows[2:], strict=False):
                assert lag <= 2 * window + 0.03, (lags, windows)
        finally:
            await provider.aclose()
