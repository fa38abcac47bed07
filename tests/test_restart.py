"""Kill ``sdhost chat`` with SIGKILL while jobs run, start it again, and count everything.

Every job must finish exactly once, be charged exactly once, and every image must be
reported exactly once across the two runs.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.test_console import ROOT, write_config


def _start(cfg: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "chat", "--user", "ann"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_sigkill_mid_batch_then_restart(tmp_path: Path) -> None:
    # 2 workers, 0.6 s per job: results arrive in waves, so a kill 0.3 s after a wave lands
    # while pictures are being made, not while one is being printed.
    cfg = write_config(
        tmp_path, latency=0.6, extra="concurrency = 2\n[credits]\nstarting_grant = 50\n"
    )
    first = _start(cfg)
    assert first.stdin and first.stdout
    first.stdin.write("/batch " + " | ".join(f"task {i} --size 64x64" for i in range(6)) + "\n")
    first.stdin.write("/imagine a pair --size 64x64 --n 2\n")
    first.stdin.flush()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = first.stdout.readline()
        seen.append(line)
        if line.startswith("image:"):
            break
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # Read the rest through the same buffered reader: readline() may already hold lines
    # that communicate(), which reads the raw pipe, would never see.
    rest = first.stdout.read()
    first.stdin.close()
    first.stderr.close()
    out1 = "".join(seen) + rest
    assert first.returncode == -signal.SIGKILL
    done_before = len(re.findall(r"^done: ", out1, re.M))
    assert done_before < 7, "the kill came too late to interrupt anything"

    second = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "chat", "--user", "ann"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert second.returncode == 0, second.stderr
    out = out1 + second.stdout

    finals = Counter(re.findall(r"^(?:done|failed|cancelled): job #(\d+)", out, re.M))
    assert sorted(int(j) for j in finals) == list(range(1, 8)), out
    assert set(finals.values()) == {1}, finals
    images = Counter(
        re.findall(r"^image: job #(\d+)(?: \(batch #\d+ task \d+\))? (\d+)/\d+", out, re.M)
    )
    expected = {(str(j), "1") for j in range(1, 7)} | {("7", "1"), ("7", "2")}
    assert set(images) == expected, out
    assert set(images.values()) == {1}, images

    db = sqlite3.connect(tmp_path / "data" / "sdhost.db")
    charges = db.execute(
        "select job_id, count(*) from ledger where reason='charge' group by job_id"
    ).fetchall()
    assert sorted(charges) == [(j, 1) for j in range(1, 8)]
    (balance,) = db.execute("select balance from users where platform_user_id='ann'").fetchone()
    (total,) = db.execute("select sum(delta) from ledger").fetchone()
    assert balance == total == 50 - 6 - 2
    statuses = db.execute("select distinct status from jobs").fetchall()
    assert statuses == [("succeeded",)]
    assert db.execute("select count(*) from images").fetchone() == (8,)
