"""Several real ``sdhost`` processes on one database: the work is shared, never doubled."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import empty_database, process_env, query_db
from tests.test_console import ROOT


@pytest.mark.postgres
def test_two_workers_behind_a_chat_front_end_share_one_queue(tmp_path: Path, db_url: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[data]
dir = "{tmp_path / "data"}"
[database]
url = "{db_url}"
[credits]
starting_grant = 100
[queue]
poll_idle_s = 0.05
max_queued_per_user = 100
max_running_per_user = 6
[providers.demo]
latency_s = 0.1
concurrency = 4
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    asyncio.run(empty_database(db_url))  # a fresh install: the processes migrate it
    cmd = [sys.executable, "-m", "bot.cli", "--config", str(cfg)]
    workers = [
        subprocess.Popen(
            [*cmd, "run"],
            cwd=ROOT,
            env=process_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for w in workers:  # both are up (migrated, claiming) before any work arrives
            assert w.stdout is not None
            line = w.stdout.readline()
            assert "sdhost running" in line, w.communicate(timeout=10)[1]
        batches = "".join(
            f"/batch {' | '.join(f'b{b} t{i} --size 64x64' for i in range(10))}\n" for b in range(3)
        )
        # The chat takes the commands and delivers the pictures; only the workers run jobs.
        chat = subprocess.run(
            [*cmd, "chat", "--user", "ann"],
            input=batches,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=process_env(SDHOST_QUEUE__RUN_WORKERS="false"),
        )
        assert chat.returncode == 0, chat.stderr
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        logs = [w.communicate(timeout=30)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    out = chat.stdout
    assert "Traceback" not in out + chat.stderr + "".join(logs)

    # Each job delivered once, by the chat process.
    images = Counter(re.findall(r"^image: job #(\d+) ", out, re.M))
    done = Counter(re.findall(r"^done: job #(\d+) ", out, re.M))
    assert set(images) == set(done) == {str(i) for i in range(1, 31)}
    assert set(images.values()) == set(done.values()) == {1}

    # Each job run by exactly one worker, and both workers did some of them.
    ran = [set(re.findall(r"job (\d+) succeeded", log)) for log in logs]
    assert ran[0].isdisjoint(ran[1])
    assert ran[0] | ran[1] == {str(i) for i in range(1, 31)}
    assert ran[0] and ran[1], "one worker did everything"
    assert "job " not in chat.stderr  # the front end ran nothing itself

    # And the database agrees: claimed once, charged once, one picture each.
    attempts = asyncio.run(query_db(db_url, "select status, attempts from jobs"))
    charges = asyncio.run(
        query_db(
            db_url, "select job_id, count(*) from ledger where reason='charge' group by job_id"
        )
    )
    pictures = asyncio.run(query_db(db_url, "select job_id, count(*) from images group by job_id"))
    assert sorted(attempts) == [("succeeded", 1)] * 30
    assert sorted(n for _, n in charges) == [1] * 30
    assert sorted(n for _, n in pictures) == [1] * 30
