"""How long a job waits for an idle worker in another process: polling alone against
LISTEN/NOTIFY, on PostgreSQL.

    python bench/claim_latency.py [--jobs 200] [--pg URL] [--poll 0.5]

For each setting of ``queue.listen`` (false, then true) it starts a worker, ``sdhost run``
as an operator starts it (the demo provider at zero latency, no chat), in a process of its
own on a fresh database; this process takes the part of a chat front end that runs no jobs
(``queue.run_workers = false``) and submits jobs one at a time, with random gaps, through
``JobService.submit``. The latency of a job is the time from its submitting transaction
(the job's ``created_at``) to its claim by the worker (``started_at``; one clock, one
machine). It prints p50, p99 and the worst, in a table. Both processes keep the default
idle poll (``queue.poll_idle_s``, 0.5 s), the safety net in both settings.
Not part of CI: timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.core import drop_pg, fresh_pg
from bot.app import App
from bot.chat import UserRef
from bot.config import load_config
from bot.params import GenerationParams

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5  # first jobs of a run, left out (connections being opened)


def config_text(url: str, data: Path, *, listen: bool, poll: float, workers: bool) -> str:
    return f"""
[data]
dir = "{data}"
[database]
url = "{url}"
[credits]
starting_grant = 1000000
[queue]
poll_idle_s = {poll}
listen = {str(listen).lower()}
run_workers = {str(workers).lower()}
max_queued_per_user = 100000
[providers.demo]
latency_s = 0.0
[logging]
level = "WARNING"
"""


def start_worker(cfg: Path, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SDHOST_DATABASE__URL", None)
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(cfg), "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "sdhost running" not in line:
        proc.kill()
        raise SystemExit(f"the worker did not start: {line!r}\n{log.read_text()}")
    return proc


async def run_setting(url: str, tmp: Path, *, listen: bool, poll: float, jobs: int) -> list[float]:
    """Claim latencies in ms of ``jobs`` jobs (after the warm-up ones)."""
    tag = "listen" if listen else "poll"
    data = tmp / tag
    worker_cfg = tmp / f"worker-{tag}.toml"
    worker_cfg.write_text(config_text(url, data, listen=listen, poll=poll, workers=True))
    worker = start_worker(worker_cfg, tmp / f"worker-{tag}.log")
    front_cfg = tmp / f"front-{tag}.toml"
    front_cfg.write_text(config_text(url, data, listen=listen, poll=poll, workers=False))
    front = App(load_config(front_cfg, environ={}))
    await front.start()
    ids: list[int] = []
    try:
        who = UserRef("bench", f"latency-{tag}")
        rng = random.Random(18)
        for j in range(jobs + WARMUP):
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            receipt = await front.jobs.submit(
                who,
                "txt2img",
                [GenerationParams(prompt=f"latency {j}", width=64, height=64)],
                {"platform": "bench"},
            )
            ids.append(receipt.jobs[0].id)
        async with asyncio.timeout(30):
            while True:
                rows = await _claims(front, ids)
                if all(started is not None for _, started in rows):
                    break
                await asyncio.sleep(0.2)
    finally:
        await front.stop()
        worker.terminate()
        worker.wait(timeout=30)
    return sorted((started - created) * 1000 for created, started in rows[WARMUP:])


async def _claims(app: App, ids: list[int]) -> list[tuple[float, Any]]:
    def read(conn: Any) -> list[tuple[float, Any]]:
        rows = conn.execute(
            text("SELECT id, created_at, started_at FROM jobs WHERE id = ANY(:ids) ORDER BY id"),
            {"ids": ids},
        ).all()
        return [(float(r.created_at), r.started_at) for r in rows]

    return await app.db.run_read(read)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, max(0, round(len(values) * p) - 1))]


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--poll", type=float, default=0.5, help="queue.poll_idle_s, both processes")
    ap.add_argument("--pg", default=os.environ.get("SDHOST_TEST_DATABASE_URL", ""))
    args = ap.parse_args()
    if not args.pg:
        raise SystemExit("give a PostgreSQL URL: --pg or SDHOST_TEST_DATABASE_URL")
    results = []
    for listen in (False, True):
        url, name = await fresh_pg(args.pg)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                lat = await run_setting(
                    url, Path(tmp), listen=listen, poll=args.poll, jobs=args.jobs
                )
        finally:
            await drop_pg(args.pg, name)
        results.append((listen, lat))
    table = Table(
        title=f"submit to claim by an idle worker in another process, PostgreSQL, "
        f"{args.jobs} jobs one at a time, poll {args.poll} s"
    )
    for col in ("wake-up", "jobs", "p50 ms", "p99 ms", "max ms", "mean ms"):
        table.add_column(col, justify="right")
    for listen, lat in results:
        table.add_row(
            "LISTEN/NOTIFY + poll" if listen else "poll only",
            str(len(lat)),
            f"{statistics.median(lat):.1f}",
            f"{pct(lat, 0.99):.1f}",
            f"{max(lat):.1f}",
            f"{statistics.fmean(lat):.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
