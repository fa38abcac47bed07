"""Throughput and overhead of the whole job core, with the demo provider at zero latency.

    python bench/core.py [--jobs 2000] [--users 20] [--size 64] [--pg URL]

For SQLite (and PostgreSQL when --pg or SDHOST_TEST_DATABASE_URL is given) it prints:
- jobs/s through submit -> claim -> generate -> image stored -> delivered, with many jobs in
  flight from many users;
- the core's own overhead per job (p50/p99 ms): one job at a time on an idle system, its
  time from submit to "finished" delivered, minus the time the provider itself spent
  drawing (time in the core's callbacks, such as storing the picture, counts as overhead).
Not part of CI: timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.providers.demo import DemoProvider
from bot.app import App
from bot.chat import ChatAdapter, Delivery, UserRef
from bot.config import Config
from bot.params import GenerationParams
from bot.providers import ProviderRun


class CountingAdapter(ChatAdapter):
    platform = "bench"

    def __init__(self) -> None:
        self.finished: dict[int, float] = {}
        self.event = asyncio.Event()

    async def deliver(self, d: Delivery) -> None:
        if d.kind in ("finished", "failed"):
            self.finished[d.job_id] = time.perf_counter()
            self.event.set()


class _TimedRun:
    """Passes a ProviderRun through, adding up the time spent in the core's callbacks."""

    def __init__(self, run: ProviderRun) -> None:
        self._run = run
        self.request = run.request
        self.task_id = run.task_id
        self.state = run.state
        self.in_core = 0.0

    def has_image(self, index: int) -> bool:
        return self._run.has_image(index)

    async def _timed(self, coro: Any) -> None:
        t = time.perf_counter()
        try:
            await coro
        finally:
            self.in_core += time.perf_counter() - t

    async def submitted(self, task_id: str, state: dict[str, Any] | None = None) -> None:
        await self._timed(self._run.submitted(task_id, state))

    async def progress(self, fraction: float) -> None:
        await self._timed(self._run.progress(fraction))

    async def image(self, index: int, result: Any) -> None:
        await self._timed(self._run.image(index, result))


class TimedDemo(DemoProvider):
    """The demo provider, recording the time it spends itself (drawing), per job.

    Time inside the run's callbacks (storing the picture, recording progress) is the core's
    and is not counted here.
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.spent: dict[int, float] = {}

    async def generate(self, run: ProviderRun) -> None:
        timed = _TimedRun(run)
        t = time.perf_counter()
        try:
            await super().generate(timed)
        finally:
            total = time.perf_counter() - t
            self.spent[run.request.job_id] = total - timed.in_core


def config_for(url: str, data: Path, users: int) -> Config:
    return Config.model_validate(
        {
            "data": {"dir": str(data)},
            "database": {"url": url},
            "credits": {"starting_grant": 1_000_000},
            "queue": {
                "max_queued_per_user": 100_000,
                "max_running_per_user": 8,
                "poll_idle_s": 0.2,
            },
            "providers": {"demo": {"latency_s": 0.0, "concurrency": 8}},
        }
    )


async def run_backend(name: str, url: str, jobs: int, users: int, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(url, Path(tmp), users)
        provider = TimedDemo(config.providers.demo)
        app = App(config, providers={"demo": provider})
        adapter = CountingAdapter()
        app.add_adapter(adapter)
        await app.start()
        reply = {"platform": "bench"}
        try:
            # throughput: everyone submits at once
            refs = [UserRef("bench", f"u{i}") for i in range(users)]
            for r in refs:
                await app.jobs.user(r)
            t0 = time.perf_counter()

            async def submit_many(r: UserRef, k: int) -> None:
                for j in range(k):
                    await app.jobs.submit(
                        r,
                        "txt2img",
                        [GenerationParams(prompt=f"bench {j}", width=size, height=size)],
                        reply,
                    )

            per = jobs // users
            await asyncio.gather(*(submit_many(r, per) for r in refs))
            submitted = time.perf_counter()
            while len(adapter.finished) < per * users:
                adapter.event.clear()
                await asyncio.wait_for(adapter.event.wait(), 60)
            elapsed = time.perf_counter() - t0
            throughput = per * users / elapsed
            submit_rate = per * users / (submitted - t0)

            # overhead: one job at a time on an idle system
            overhead: list[float] = []
            solo = UserRef("bench", "solo")
            for j in range(200):
                start = time.perf_counter()
                rec = await app.jobs.submit(
                    solo,
                    "txt2img",
                    [GenerationParams(prompt=f"solo {j}", width=size, height=size)],
                    reply,
                )
                job_id = rec.job_ids[0]
                while job_id not in adapter.finished:
                    adapter.event.clear()
                    await asyncio.wait_for(adapter.event.wait(), 10)
                total = adapter.finished[job_id] - start
                overhead.append((total - provider.spent.get(job_id, 0.0)) * 1000)
            overhead.sort()
            return {
                "backend": name,
                "jobs": per * users,
                "jobs_s": throughput,
                "submit_s": submit_rate,
                "p50": statistics.median(overhead),
                "p99": overhead[int(len(overhead) * 0.99) - 1],
                "render_ms": statistics.median(provider.spent.values()) * 1000,
            }
        finally:
            await app.stop()


async def fresh_pg(url: str) -> tuple[str, str]:
    from sqlalchemy.engine import make_url

    name = f"sdhost_bench_{uuid.uuid4().hex[:6]}"
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


async def drop_pg(url: str, name: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--size", type=int, default=64, help="picture side in pixels")
    ap.add_argument("--pg", default=os.environ.get("SDHOST_TEST_DATABASE_URL", ""))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(
            await run_backend(
                "sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", args.jobs, args.users, args.size
            )
        )
    if args.pg:
        url, name = await fresh_pg(args.pg)
        try:
            results.append(await run_backend("postgresql", url, args.jobs, args.users, args.size))
        finally:
            await drop_pg(args.pg, name)
    table = Table(
        title=f"sdhost core, demo provider at zero latency, {args.size}x{args.size} pictures"
    )
    for col in (
        "backend",
        "jobs",
        "jobs/s end to end",
        "submits/s",
        "overhead p50 ms",
        "overhead p99 ms",
        "demo drawing ms",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["backend"],
            str(r["jobs"]),
            f"{r['jobs_s']:.0f}",
            f"{r['submit_s']:.0f}",
            f"{r['p50']:.2f}",
            f"{r['p99']:.2f}",
            f"{r['render_ms']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
