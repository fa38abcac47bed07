"""Kill ``sdhost chat`` with SIGKILL while jobs run, start it again, and count everything.

Every job must finish exactly once, be charged exactly once, and every image must be
reported exactly once across the two runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import empty_database, process_env, query_db
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


# --- a kill is not the job's fault; a job that kills its process is -----------------------


def _config(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[data]
dir = "{tmp_path / "data"}"
[database]
url = "{db_url}"
[credits]
starting_grant = 50
[queue]
poll_idle_s = 0.05
max_attempts = 3
max_queued_per_user = 50
{extra}
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    return cfg


def _popen(cfg: Path, *args: str, stdin: Any = subprocess.DEVNULL, **env: str) -> Any:
    """Standard error goes to a file (a pipe nobody reads while it runs could fill up)."""
    log = (cfg.parent / f"{args[0]}-{time.monotonic_ns()}.log").open("w+")
    p = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
        env=process_env(**env),
    )
    p.log = log  # type: ignore[attr-defined]
    return p


def _stderr(p: Any) -> str:
    p.log.seek(0)
    return str(p.log.read())


def _front_end(cfg: Path, who: str, commands: str) -> Any:
    """A chat that takes commands and delivers results but runs no job itself."""
    chat = _popen(
        cfg, "chat", "--user", who, stdin=subprocess.PIPE, SDHOST_QUEUE__RUN_WORKERS="false"
    )
    chat.stdin.write(commands)
    chat.stdin.close()
    return chat


def _worker(cfg: Path) -> Any:
    w = _popen(cfg, "run")
    line = w.stdout.readline()
    assert "sdhost running" in line, _stderr(w)
    return w


def _end(p: Any, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[str, str]:
    """Signal ``p``, reap it (its pid is gone, as after any real kill); its output."""
    if p.poll() is None:
        p.send_signal(sig)
    out = p.stdout.read()
    p.wait(timeout=timeout)
    return out, _stderr(p)


def _sql(url: str, sql: str) -> list[Any]:

    return asyncio.run(query_db(url, sql))


@pytest.mark.postgres
def test_kill_9_mid_job_again_and_again_costs_the_job_nothing(tmp_path: Path, db_url: str) -> None:
    """The issue's repro, with six kills: the job finally succeeds, charged once."""
    asyncio.run(empty_database(db_url))
    cfg = _config(tmp_path, db_url, "retry_backoff_s = 0\n[providers.demo]\nlatency_s = 0.3\n")
    chat = _front_end(cfg, "ann", "/imagine x demo:slow --size 64x64\n")
    kills = 6
    try:
        for _ in range(kills):
            w = _worker(cfg)
            time.sleep(1.5)
            _end(w, signal.SIGKILL)
            # It was killed mid-job: the job is still marked running under the dead worker.
            assert _sql(db_url, "select status, stage from jobs") == [("running", "generating")]
        last = _worker(cfg)
        chat.wait(timeout=60)
    finally:
        out, err = _end(chat, signal.SIGKILL)
    log = _end(last)[1]
    assert chat.returncode == 0, err
    assert re.search(r"^done: job #1 ", out, re.M), out
    assert "failed:" not in out and "Traceback" not in err + log
    ((status, attempts, lost, error),) = _sql(
        db_url, "select status, attempts, lost_runs, failure from jobs"
    )
    assert (status, attempts, lost, error) == ("succeeded", 1, kills, None)
    ledger = _sql(db_url, "select reason, delta from ledger where job_id = 1")
    assert ledger == [("charge", -1)]
    assert not list((tmp_path / "data" / "crashes").glob("*")), "crash files left behind"


@pytest.mark.postgres
def test_a_job_that_segfaults_its_worker_is_set_aside_and_the_queue_goes_on(
    tmp_path: Path, db_url: str
) -> None:
    asyncio.run(empty_database(db_url))
    cfg = _config(
        tmp_path,
        db_url,
        "retry_backoff_s = 0.2\n[providers.demo]\nlatency_s = 0.3\nconcurrency = 4\n",
    )
    # Alice's poison job among her ordinary ones; Bob's batch runs beside them.
    alice = _front_end(
        cfg,
        "alice",
        "/imagine a demo:segfault --size 64x64\n/imagine b --size 64x64 --n 2\n"
        "/imagine c --size 64x64\n",
    )
    bob = _front_end(cfg, "bob", "/batch " + " | ".join(f"t{i} --size 64x64" for i in range(5)))
    deaths: list[int] = []
    worker = _worker(cfg)
    deadline = time.monotonic() + 90
    try:
        while alice.poll() is None or bob.poll() is None:
            assert time.monotonic() < deadline, "the front ends never finished"
            if worker.poll() is not None:  # a supervisor starts it again
                deaths.append(worker.returncode)
                _end(worker)
                worker = _worker(cfg)
            time.sleep(0.05)
    finally:
        for chat in (alice, bob):
            _end(chat, signal.SIGKILL)
        log = _end(worker)[1]
    assert worker.returncode == 0, log
    # Each run of the poison job took its process down, alone or not: max_attempts deaths.
    assert deaths == [-signal.SIGSEGV] * 3
    rows = _sql(
        db_url,
        "select j.id, u.platform_user_id, j.status, j.attempts, j.error "
        "from jobs j join users u on u.id = j.user_id order by j.id",
    )
    poison = [r for r in rows if r[2] != "succeeded"]
    assert [(r[1], r[2], r[3]) for r in poison] == [("alice", "quarantined", 3)], rows
    assert "failed 3 times" in poison[0][4]
    assert len(rows) == 1 + 2 + 5  # everyone else's jobs succeeded
    # Quarantine is a crash: refunded by the default policy; money adds up.
    ledger = _sql(db_url, "select job_id, reason, delta from ledger where job_id is not null")
    assert sorted((r for r in ledger if r[0] == poison[0][0]), key=str) == sorted(
        [(poison[0][0], "charge", -1), (poison[0][0], "refund", 1)], key=str
    )
    balances = _sql(
        db_url,
        "select u.balance, (select sum(delta) from ledger l where l.user_id = u.id) from users u",
    )
    assert all(b == s for b, s in balances), balances
    assert sorted(b for b, _ in balances) == [50 - 5, 50 - 3]
    assert not list((tmp_path / "data" / "crashes").glob("*")), "crash files left behind"
