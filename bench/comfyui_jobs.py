"""Jobs per second through one ComfyUI instance that answers at once (tests/fakes/comfyui.py).

    python bench/comfyui_jobs.py [--jobs 100] [--people 10]

The whole bot (SQLite): submit, claim, the workflow filled in, upload nothing, submit the
prompt, follow its websocket, read /history, fetch the picture with /view, store, deliver.
The fake spends no time on a sampler step, so what is measured is sdhost's own cost (and
the fake's). Prints jobs per second and the time from submit to the delivered outcome.
Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from bot.app import App
from bot.chat import ChatAdapter, Delivery, UserRef
from bot.config import Config
from bot.params import GenerationParams
from tests.fakes.comfyui import ComfyUIFake


class Outcomes(ChatAdapter):
    platform = "bench"

    def __init__(self) -> None:
        self.done: dict[int, float] = {}

    async def deliver(self, d: Delivery) -> None:
        if d.kind != "image":
            self.done[d.job_id] = time.perf_counter()


async def run(jobs: int, people: int) -> tuple[float, list[float], int]:
    fake = ComfyUIFake(time_per_step_s=0.0)
    await fake.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Config.model_validate(
                {
                    "data": {"dir": str(Path(tmp) / "data")},
                    "queue": {"poll_idle_s": 0.05, "max_running_per_user": 10},
                    "credits": {"starting_grant": 10_000},
                    "providers": {
                        "default": "comfyui",
                        "comfyui": {"instances": [{"url": fake.base_url}]},
                    },
                    "logging": {"level": "ERROR"},
                }
            )
            app = App(config)
            outcomes = Outcomes()
            app.add_adapter(outcomes)
            await app.start()
            try:
                submitted: dict[int, float] = {}
                t0 = time.perf_counter()
                for i in range(jobs):
                    who = UserRef("bench", f"p{i % people}", f"p{i % people}")
                    params = GenerationParams(f"job {i}", width=512, height=512, steps=4)
                    receipt = await app.jobs.submit(who, "txt2img", [params], {"platform": "bench"})
                    submitted[receipt.job_ids[0]] = time.perf_counter()
                while len(outcomes.done) < jobs:
                    await asyncio.sleep(0.02)
                took = time.perf_counter() - t0
                views = [await app.jobs.job(None, j) for j in submitted]
                ok = sum(1 for v in views if v.status == "succeeded")
                latencies = [outcomes.done[j] - t for j, t in submitted.items()]
            finally:
                await app.stop()
    finally:
        await fake.stop()
    return took, latencies, ok


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--people", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    took, latencies, ok = await run(args.jobs, args.people)
    table = Table(title="One ComfyUI instance that answers at once, through the whole bot")
    for col in ("jobs", "succeeded", "wall time", "jobs/s", "per job (one at a time)"):
        table.add_column(col, justify="right")
    table.add_row(
        str(args.jobs),
        str(ok),
        f"{took:.1f} s",
        f"{args.jobs / took:.1f}",
        f"{took / args.jobs * 1000:.0f} ms (median submit-to-outcome "
        f"{statistics.median(latencies):.1f} s in a queue of {args.jobs})",
    )
    Console(width=140).print(table)


if __name__ == "__main__":
    asyncio.run(main())
