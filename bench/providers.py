"""Hosted providers through the whole core, against their loopback fakes.

    python bench/providers.py [--queue 0.5] [--run 2.0]

For each provider fake (tasks wait ``--queue`` s, then run ``--run`` s) it runs a batch of
ten with two API keys (two tasks each at once) and the same batch one task after another
(one key, one task at a time), with the default polling settings, and prints the wall time
of each against the ideal (every result picked up the moment it is ready: ceil(10 / 4)
tasks one after another on the busiest slot), and the polls per job. The provider starts
knowing nothing of the model (it learns during the batch). "polls / 30 s task" is the
schedule's count for a 30 s task, on a model not seen yet / once learnt (pure function:
waiting 30 s per provider for it adds nothing). Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from adapters.providers.cloud import Estimate, next_poll_at
from bot.app import App
from bot.chat import ChatAdapter, Delivery, UserRef
from bot.config import Config
from bot.params import GenerationParams


class Outcomes(ChatAdapter):
    platform = "bench"

    def __init__(self) -> None:
        self.done = 0

    async def deliver(self, d: Delivery) -> None:
        if d.kind != "image":
            self.done += 1


def fakes(queue: float, run: float) -> dict[str, tuple[AbstractAsyncContextManager[Any], Any]]:
    out: dict[str, tuple[AbstractAsyncContextManager[Any], Any]] = {}
    from tests.fakes.dashscope import FakeDashScope

    out["dashscope"] = (
        FakeDashScope(keys={"k1", "k2"}, queue_delay_s=queue, run_delay_s=run),
        [{"key": "k1"}, {"key": "k2"}],
    )
    from tests.fakes.liblib import FakeLiblib

    out["liblib"] = (
        FakeLiblib(keys={"k1": "s1", "k2": "s2"}, wait_s=queue, run_s=run),
        [{"key": "k1", "secret": "s1"}, {"key": "k2", "secret": "s2"}],
    )
    try:
        from tests.fakes.bfl import FakeBfl
    except ImportError:
        return out
    # polling URLs on the API's own host (the fake's "regional" one is not a BFL host)
    out["bfl"] = (
        FakeBfl(keys={"k1", "k2"}, delay_s=queue + run, regional=False),
        [{"key": "k1"}, {"key": "k2"}],
    )
    return out


async def batch(name: str, base_url: str, keys: list[dict[str, Any]], per_key: int) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.model_validate(
            {
                "data": {"dir": str(Path(tmp) / "data")},
                "queue": {"max_running_per_user": 10, "poll_idle_s": 0.05},
                "providers": {
                    "default": name,
                    name: {
                        "base_url": base_url,
                        "keys": [{**k, "concurrency": per_key} for k in keys],
                    },
                },
                "logging": {"level": "ERROR"},
            }
        )
        app = App(config)
        counter = Outcomes()
        app.add_adapter(counter)
        await app.start()
        try:
            tasks = [GenerationParams(f"tile {i}", width=512, height=512) for i in range(10)]
            t0 = time.perf_counter()
            await app.jobs.submit(UserRef("bench", "b"), "batch", tasks, {"platform": "bench"})
            while counter.done < 10:
                await asyncio.sleep(0.02)
            took = time.perf_counter() - t0
            polls = list(getattr(app.providers[name], "polls", []))
        finally:
            await app.stop()
    return took, polls


def polls_for(seconds: float, section: Any, est: Estimate | None) -> int:
    last: float | None = None
    n = 0
    while last is None or last < seconds:
        last = next_poll_at(section, est, last, n)
        n += 1
    return n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue", type=float, default=0.5)
    parser.add_argument("--run", type=float, default=2.0)
    args = parser.parse_args()
    table = Table(title=f"Batch of 10 against the fakes (queue {args.queue}s + run {args.run}s)")
    ideal = math.ceil(10 / 4) * (args.queue + args.run)
    cols = (
        "provider",
        "2 keys x 2 at once",
        "x ideal",
        "one after another",
        "speed-up",
        "polls/job",
        "polls / 30 s task",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "provider" else "right")
    for name, (fake, keys) in fakes(args.queue, args.run).items():
        async with fake as server:
            base = server.base_url
            parallel, polls = await batch(name, base, keys, 2)
            serial, _ = await batch(name, base, keys[:1], 1)
        section = getattr(Config().providers, name)
        cold = polls_for(30.0, section, None)
        warm = polls_for(30.0, section, Estimate(30.0, 0.0, 5))
        table.add_row(
            name,
            f"{parallel:.2f} s",
            f"{parallel / ideal:.2f} (ideal {ideal:.1f} s)",
            f"{serial:.1f} s",
            f"{serial / parallel:.1f}x",
            f"{statistics.mean(polls):.1f} (max {max(polls)})" if polls else "-",
            f"{cold} / {warm}",
        )
    Console(width=130).print(table)


if __name__ == "__main__":
    asyncio.run(main())
