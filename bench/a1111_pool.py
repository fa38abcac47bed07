"""The GPU pool through the whole bot, against three loopback web UIs (tests/fakes/a1111.py).

    python bench/a1111_pool.py [--jobs 60] [--people 10] [--picture 1.0] [--switch 4.0]

Three instances (``--picture`` s per picture, ``--switch`` s to load another checkpoint),
all starting with the first of three checkpoints loaded; ``--jobs`` one-picture jobs from
``--people`` people over the three checkpoints in a shuffled order, submitted at once.

For each run it prints the wall time from the first submit to the last picture against the
ideal (the work divided by three instances, plus the fewest switches that can serve the
order: one load of each checkpoint no instance has, also shared by three), the checkpoint
switches against that minimum, and pictures lost or charged twice. Runs: the pool with
affinity (what sdhost does), plain first-come first-served (round robin: the next free
instance takes the oldest job), and affinity with one instance killed halfway.

Last, the core's own cost per job: one instance that answers at once, jobs one after
another, the time from submit to the delivered outcome. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from bot.app import App
from bot.chat import ChatAdapter, Delivery, UserRef
from bot.config import Config
from bot.params import GenerationParams
from tests.fakes.a1111 import A1111Fake

CHECKPOINTS = ["ckpt_a.safetensors", "ckpt_b.safetensors", "ckpt_c.safetensors"]


class Outcomes(ChatAdapter):
    platform = "bench"

    def __init__(self) -> None:
        self.done: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.changed = asyncio.Event()

    async def deliver(self, d: Delivery) -> None:
        if d.kind != "image":
            self.done[d.job_id] = time.perf_counter()
            self.kinds[d.job_id] = d.kind
            self.changed.set()


def config_for(tmp: str, fakes: list[A1111Fake], **a1111: Any) -> Config:
    return Config.model_validate(
        {
            "data": {"dir": str(Path(tmp) / "data")},
            "queue": {"poll_idle_s": 0.05, "job_timeout_s": 900},
            "credits": {"starting_grant": 1000},
            "providers": {
                "default": "a1111",
                "a1111": {
                    "instances": [
                        {"name": f"gpu{i}", "url": f.base_url} for i, f in enumerate(fakes, 1)
                    ],
                    "progress_interval_s": 0.5,
                    **a1111,
                },
            },
            "logging": {"level": "ERROR"},
        }
    )


async def pool_run(
    args: argparse.Namespace, order: list[str], *, affinity: bool, kill: bool
) -> dict[str, Any]:
    fakes = [
        A1111Fake(
            checkpoints=CHECKPOINTS,
            loaded=CHECKPOINTS[0],
            time_per_image_s=args.picture,
            switch_time_s=args.switch,
            steps_per_image=4,
            live_previews=False,
        )
        for _ in range(3)
    ]
    for f in fakes:
        await f.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = App(config_for(tmp, fakes))
            outcomes = Outcomes()
            app.add_adapter(outcomes)
            await app.start()
            app.providers["a1111"].pool.affinity = affinity  # type: ignore[attr-defined]
            try:
                t0 = time.perf_counter()
                ids = []
                for i, ckpt in enumerate(order):
                    who = UserRef("bench", f"p{i % args.people}", f"p{i % args.people}")
                    params = GenerationParams(
                        f"job {i}", model=ckpt.split(".")[0], width=512, height=512
                    )
                    receipt = await app.jobs.submit(who, "txt2img", [params], {"platform": "bench"})
                    ids.extend(receipt.job_ids)
                if kill:
                    fakes[1].die_after_s = (len(order) * args.picture / 3) / 2
                while len(outcomes.done) < len(ids):
                    outcomes.changed.clear()
                    await asyncio.sleep(0.05)
                took = max(outcomes.done.values()) - t0
                views = [await app.jobs.job(None, i) for i in ids]
            finally:
                await app.stop()
    finally:
        for f in fakes:
            await f.stop()
    charges = [sum(1 for r, _ in v.ledger if r == "charge") for v in views]
    return {
        "took": took,
        "switches": sum(f.switches for f in fakes),
        "succeeded": sum(1 for v in views if v.status == "succeeded"),
        "lost": sum(1 for v in views if v.status != "succeeded"),
        "twice": sum(1 for c in charges if c > 1),
        "pictures": sum(len(v.images) for v in views),
        "max_in_flight": max(f.max_in_flight for f in fakes),
    }


async def core_latency(jobs: int) -> list[float]:
    fake = A1111Fake(time_per_image_s=0.0, switch_time_s=0.0, live_previews=False)
    await fake.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = App(config_for(tmp, [fake]))
            outcomes = Outcomes()
            app.add_adapter(outcomes)
            await app.start()
            out = []
            try:
                for i in range(jobs + 3):
                    t0 = time.perf_counter()
                    receipt = await app.jobs.submit(
                        UserRef("bench", "solo", "solo"),
                        "txt2img",
                        [GenerationParams(f"job {i}", width=512, height=512)],
                        {"platform": "bench"},
                    )
                    job_id = receipt.job_ids[0]
                    while job_id not in outcomes.done:
                        await asyncio.sleep(0.002)
                    if i >= 3:  # warm-up
                        out.append(outcomes.done[job_id] - t0)
            finally:
                await app.stop()
    finally:
        await fake.stop()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--picture", type=float, default=1.0)
    parser.add_argument("--switch", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-jobs", type=int, default=40)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if os.environ.get("POOL_DEBUG"):
        logging.getLogger("adapters.providers.gpupool").setLevel(logging.DEBUG)
    rng = random.Random(args.seed)
    order = [CHECKPOINTS[i % 3] for i in range(args.jobs)]
    rng.shuffle(order)
    missing = len({*order} - {CHECKPOINTS[0]})  # checkpoints no instance has loaded
    min_switches = missing
    # The work divided by three instances, plus the fewest switches: those run on different
    # instances at once, so they add ceil(switches / 3) switch times (24 s for the defaults:
    # two instances load B and C while the third starts on A). Spreading the switch time
    # over the instances too gives a looser bound (22.7 s), shown beside it.
    ideal = args.jobs * args.picture / 3 + math.ceil(min_switches / 3) * args.switch
    spread = (args.jobs * args.picture + min_switches * args.switch) / 3

    table = Table(
        title=f"{args.jobs} jobs from {args.people} people over 3 checkpoints on 3 instances "
        f"({args.picture:g} s a picture, {args.switch:g} s a switch)"
    )
    for col in (
        "pool",
        "wall time",
        "ideal / time",
        "switches (min)",
        "done",
        "lost",
        "charged twice",
        "max at once per GPU",
    ):
        table.add_column(col, justify="left" if col == "pool" else "right")
    runs = (
        ("affinity (sdhost)", True, False),
        ("round robin (FIFO)", False, False),
        ("affinity, 1 of 3 killed halfway", True, True),
    )
    for label, affinity, kill in runs:
        r = await pool_run(args, order, affinity=affinity, kill=kill)
        table.add_row(
            label,
            f"{r['took']:.1f} s",
            (
                f"{ideal / r['took']:.2f} (ideal {ideal:.1f} s; {spread / r['took']:.2f} of "
                f"{spread:.1f} s)"
                if not kill
                else f"{ideal / r['took']:.2f}"
            ),
            f"{r['switches']} ({min_switches})",
            f"{r['succeeded']}/{args.jobs}",
            str(r["lost"]),
            str(r["twice"]),
            str(r["max_in_flight"]),
        )
    console = Console(width=160)
    console.print(table)

    lat = await core_latency(args.latency_jobs)
    lat.sort()
    t2 = Table(title="The core's own time per job (an instance that answers at once)")
    for col in ("jobs", "p50", "p95", "mean"):
        t2.add_column(col, justify="right")
    t2.add_row(
        str(len(lat)),
        f"{statistics.median(lat) * 1000:.0f} ms",
        f"{lat[int(0.95 * (len(lat) - 1))] * 1000:.0f} ms",
        f"{statistics.mean(lat) * 1000:.0f} ms",
    )
    console.print(t2)


if __name__ == "__main__":
    asyncio.run(main())
