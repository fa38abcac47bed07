"""Chaos run: kill -9 workers and front ends under a stream of mixed commands, then count.

    python bench/chaos.py [--pg URL] [--kills N] [--jobs M] [--people K] [--seed S]

Starts one ``sdhost chat`` front end per person (``queue.run_workers = false``: they take
commands and deliver results) and two ``sdhost run`` workers on one database, feeds the
front ends a mix of commands (``/imagine`` with ``--n 1..4``, ``/batch``, ``/img2img`` of a
local file, ``/cancel``, ``/retry`` of failed jobs, prompts that fail), and meanwhile
``kill -9``s a random worker or front end every so often, starting it again a moment later.
Then every front end gets end-of-input and waits for its person's jobs; the workers are
stopped; ``sdhost store sweep --grace 0`` runs; and the database, the store and everything
the front ends printed are checked. Every number in the table should be zero.

With ``--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test`` it makes a database of its
own on that server (and drops it afterwards); without, a SQLite file in a temporary folder.
Never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

PEOPLE = ["ann", "bob", "cai", "dee"]


class Proc:
    """One incarnation after another of an ``sdhost`` command; every line it printed."""

    def __init__(self, name: str, args: list[str], cfg: Path, logs: Path, env: dict[str, str]):
        self.name, self.args, self.cfg, self.logs, self.env = name, args, cfg, logs, env
        self.lines: list[str] = []
        self.p: subprocess.Popen[str] | None = None
        self.restart_at: float | None = None
        self.kills = 0
        self._n = 0
        self._lock = threading.Lock()

    def start(self, stdin: bool) -> None:
        self._n += 1
        err: IO[str] = (self.logs / f"{self.name}.{self._n}.log").open("w")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(self.cfg), *self.args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=self.env,
        )
        err.close()
        threading.Thread(target=self._read, args=(self.p,), daemon=True).start()

    def _read(self, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def send(self, line: str) -> bool:
        if not self.alive() or self.p is None or self.p.stdin is None:
            return False
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def kill(self) -> None:
        assert self.p is not None
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()  # reaped: its pid is gone, as after any real kill
        self.kills += 1

    def end_input(self) -> None:
        if self.p is not None and self.p.stdin is not None:
            try:
                self.p.stdin.close()
            except OSError:
                pass


def write_config(tmp: Path, url: str) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""
[data]
dir = "{tmp / "data"}"
[database]
url = "{url}"
[credits]
starting_grant = 100000
[queue]
poll_idle_s = 0.05
max_queued_per_user = 1000
max_running_per_user = 4
lease_s = 6
retry_backoff_s = 0.2
[providers.demo]
latency_s = 0.25
concurrency = 4
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    return cfg


def make_inputs(tmp: Path, rng: random.Random) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(4):
        color = tuple(rng.randrange(256) for _ in range(3))
        path = tmp / f"input-{i}.png"
        Image.new("RGB", (64, 96 if i % 2 else 64), color).save(path)
        paths.append(path)
    return paths


def next_command(rng: random.Random, me: Proc, inputs: list[Path], seq: int) -> tuple[str, int]:
    """A command and how many jobs it asks for."""
    out = me.output()
    size = rng.choice(["64x64", "64x96", "96x64"])
    roll = rng.random()
    if roll < 0.07:
        receipts = [m.group(1) for m in map(RECEIPT.match, out) if m]
        if receipts:
            return f"/cancel {rng.choice(receipts[-5:])}", 0
    elif roll < 0.14:
        failed = [m.group(1) for m in map(FAILED.match, out) if m]
        if failed:
            return f"/retry {rng.choice(failed)}", 1
    elif roll < 0.30:
        k = rng.randint(2, 4)
        tasks = " | ".join(f"c{seq} task {i} --size {size}" for i in range(k))
        return f"/batch {tasks}", k
    elif roll < 0.42:
        return f"/img2img {rng.choice(inputs)} c{seq} redrawn --strength 0.5", 1
    fail = " demo:fail" if rng.random() < 0.08 else ""
    return f"/imagine c{seq} picture{fail} --size {size} --n {rng.randint(1, 4)}", 1


RECEIPT = re.compile(r"^receipt: job #(\d+) ")
BATCH_RECEIPT = re.compile(r"^receipt: batch #\d+: (\d+) tasks")


def jobs_made(fronts: list[Proc]) -> int:
    """Jobs the front ends gave receipts for (a few more may exist: killed before the
    receipt was printed)."""
    n = 0
    for f in fronts:
        for line in f.output():
            if RECEIPT.match(line):
                n += 1
            elif m := BATCH_RECEIPT.match(line):
                n += int(m.group(1))
    return n


FAILED = re.compile(r"^failed: job #(\d+) ")
IMAGE = re.compile(r"^image: job #(\d+)(?: \(batch #\d+ task \d+\))? (\d+)/\d+ ")
FINAL = re.compile(r"^(?:done|failed|cancelled): job #(\d+)")


async def _rows(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


def rows(url: str, sql: str) -> list[Any]:
    return asyncio.run(_rows(url, sql))


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def check(url: str, data: Path, outputs: list[str], swept: int) -> dict[str, int]:
    q = lambda sql: rows(url, sql)  # noqa: E731
    per_job = lambda reason: (  # noqa: E731
        f"select count(*) from (select job_id from ledger where reason = '{reason}' "
        "group by job_id having count(*) > 1) t"
    )
    images = Counter(
        (int(j), int(i)) for m in map(IMAGE.match, outputs) if m for j, i in [m.groups()]
    )
    finals = Counter(int(m.group(1)) for m in map(FINAL.match, outputs) if m)
    referenced = {r[0] for r in q("select sha256 from images")} | {
        r[0] for r in q("select input_sha256 from jobs where input_sha256 is not null")
    }
    orphans = 0
    for kind in ("images", "inputs", "thumbs"):
        for path in (data / kind).glob("*/*"):
            if path.name.startswith(".tmp-") or path.name.split(".", 1)[0] not in referenced:
                orphans += 1
    missing = sum(
        1
        for (sha,) in q("select sha256 from images")
        if not (data / "images" / sha[:2] / f"{sha}.png").is_file()
    )
    return {
        "jobs": q("select count(*) from jobs")[0][0],
        "succeeded": q("select count(*) from jobs where status = 'succeeded'")[0][0],
        "failed / cancelled": q(
            "select count(*) from jobs where status in ('failed', 'cancelled')"
        )[0][0],
        "pictures": q("select count(*) from images")[0][0],
        "runs cut short by a kill": q("select coalesce(sum(lost_runs), 0) from jobs")[0][0],
        "lost jobs (never finished)": q(
            "select count(*) from jobs where status in ('queued', 'running')"
        )[0][0],
        "double charges": q(per_job("charge"))[0][0],
        "double refunds": q(per_job("refund"))[0][0],
        "ledger != balance": q(
            "select count(*) from users u where u.balance != "
            "(select coalesce(sum(delta), 0) from ledger l where l.user_id = u.id)"
        )[0][0],
        "quarantined jobs": q("select count(*) from jobs where status = 'quarantined'")[0][0],
        "undelivered outbox rows": q("select count(*) from outbox where status != 'sent'")[0][0],
        "duplicate outbox rows": q(
            "select count(*) from (select job_id, kind, idx from outbox "
            "group by job_id, kind, idx having count(*) > 1) t"
        )[0][0],
        "pictures printed twice": sum(c - 1 for c in images.values() if c > 1),
        "outcomes printed twice": sum(c - 1 for c in finals.values() if c > 1),
        "pictures never printed": len(
            {(int(j), int(i)) for j, i in q("select job_id, idx + 1 from images")} - set(images)
        ),
        "orphan files (after sweep)": orphans,
        "picture rows without a file": missing,
        "files the sweep removed": swept,
    }


# Rows that describe the run rather than count failures.
INFO = {
    "jobs",
    "succeeded",
    "failed / cancelled",
    "pictures",
    "runs cut short by a kill",
    "files the sweep removed",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg", help="PostgreSQL server URL (a database of its own is made there)")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--people", type=int, default=3, choices=range(1, len(PEOPLE) + 1))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="sdhost-chaos-"))
    logs = tmp / "logs"
    logs.mkdir()
    admin_url = None
    if args.pg:
        admin_url = args.pg
        name = f"sdhost_chaos_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
        url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'data' / 'sdhost.db'}"
    cfg = write_config(tmp, url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("SDHOST_DATABASE__URL", None)
    front_env = {**env, "SDHOST_QUEUE__RUN_WORKERS": "false"}
    started = time.monotonic()
    try:
        table, info = run(args, rng, tmp, logs, cfg, url, env, front_env)
    finally:
        if admin_url:
            asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    db = "PostgreSQL" if args.pg else "SQLite"
    print(
        f"\nchaos run on {db}: {info['kills']} kills ({info['worker kills']} of workers, "
        f"{info['front kills']} of front ends), {info['commands']} commands from "
        f"{args.people} people, seed {seed}, {time.monotonic() - started:.0f} s"
        + (f"; logs in {tmp}" if args.keep else "")
    )
    width = max(len(k) for k in table)
    print(f"\n| {'check':<{width}} | result |\n|{'-' * (width + 2)}|-------:|")
    for key, value in table.items():
        print(f"| {key:<{width}} | {value:>6} |")
    bad = {k: v for k, v in table.items() if k not in INFO and v}
    print("\nall zero" if not bad else f"\nNOT ZERO: {bad}")
    return 1 if bad else 0


def run(
    args: argparse.Namespace,
    rng: random.Random,
    tmp: Path,
    logs: Path,
    cfg: Path,
    url: str,
    env: dict[str, str],
    front_env: dict[str, str],
) -> tuple[dict[str, int], dict[str, int]]:
    inputs = make_inputs(tmp, rng)
    # The database is made by the first process; the others wait until it is there.
    setup = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "db", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert setup.returncode == 0, setup.stderr
    workers = [Proc(f"worker{i}", ["run"], cfg, logs, env) for i in range(2)]
    fronts = [
        Proc(f"chat-{who}", ["chat", "--user", who], cfg, logs, front_env)
        for who in PEOPLE[: args.people]
    ]
    for w in workers:
        w.start(stdin=False)
    for f in fronts:
        f.start(stdin=True)
    commands = kills = 0
    # Spread the kills over the time the commands take, and a little beyond.
    feed_gap = 0.12
    kill_gap = 1.0
    next_kill = time.monotonic() + kill_gap
    seq = 0
    while jobs_made(fronts) < args.jobs or kills < args.kills:
        t = time.monotonic()
        for p in [*workers, *fronts]:  # bring back what was killed, after a moment
            if p.restart_at is not None and t >= p.restart_at:
                p.restart_at = None
                p.start(stdin=p in fronts)
        if kills < args.kills and t >= next_kill:
            victims = [p for p in (workers if rng.random() < 0.6 else fronts) if p.alive()]
            if victims:
                victim = rng.choice(victims)
                victim.kill()
                victim.restart_at = t + rng.uniform(0.2, 1.5)
                kills += 1
            next_kill = t + rng.uniform(0.5, 1.5) * kill_gap
        if jobs_made(fronts) < args.jobs:
            me = rng.choice(fronts)
            seq += 1
            line, _ = next_command(rng, me, inputs, seq)
            if me.send(line):
                commands += 1
        time.sleep(feed_gap * rng.uniform(0.5, 1.5))
    # Drain: everything up again, then end of input; each front end waits for its person.
    for p in [*workers, *fronts]:
        if not p.alive():
            p.restart_at = None
            p.start(stdin=p in fronts)
    for f in fronts:
        f.end_input()
    deadline = time.monotonic() + 900
    for f in fronts:
        assert f.p is not None
        f.p.wait(timeout=max(1.0, deadline - time.monotonic()))
    for w in workers:
        assert w.p is not None
        w.p.send_signal(signal.SIGTERM)
        w.p.wait(timeout=60)
    time.sleep(0.3)  # the reader threads take the last lines
    swept = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "store", "sweep", "--grace", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    n_swept = sum(1 for line in swept.stdout.splitlines() if line.startswith("removed "))
    if swept.returncode != 0:  # an sdhost without `store sweep`
        print(f"store sweep failed: {swept.stderr.strip()[-300:]}", file=sys.stderr)
        n_swept = -1
    outputs = [line for f in fronts for line in f.output()]
    table = check(url, tmp / "data", outputs, n_swept)
    info = {
        "kills": kills,
        "worker kills": sum(w.kills for w in workers),
        "front kills": sum(f.kills for f in fronts),
        "commands": commands,
    }
    return table, info


if __name__ == "__main__":
    raise SystemExit(main())
