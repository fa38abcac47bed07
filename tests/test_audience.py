"""One person's pictures go to that person: a console delivers only to the one it serves.

Two ``sdhost chat`` processes (alice and bob) on one database both run workers, so each runs
some of the other's jobs; yet each terminal prints exactly its own receipts, progress,
pictures and outcomes, and every outbox row is sent once, by the right process.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.console import ConsoleAdapter
from bot.app import App
from bot.chat import UserRef
from storage import repos
from storage.db import Database
from tests.conftest import empty_database, make_config, process_env, query_db
from tests.test_console import ROOT

PEOPLE = ("alice", "bob")


def _config(tmp_path: Path, db_url: str, latency: float = 0.3) -> Path:
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
max_running_per_user = 4
[providers.demo]
latency_s = {latency}
concurrency = 1
[logging]
level = "INFO"
""",
        encoding="utf-8",
    )
    return cfg


class _Chat:
    """``sdhost chat --user NAME`` fed through a pipe; both outputs read as they come."""

    def __init__(self, cfg: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(cfg), "chat", "--user", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=process_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def say(self, line: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, prefix: str, *, count: int = 1, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.out) if line.startswith(prefix)]
            if len(found) >= count:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} line in {''.join(self.out)}{''.join(self.err)}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """End its input; wait until it has reported everything and exited."""
        assert self.proc.stdin
        self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(10)
        return code, "".join(self.out), "".join(self.err)

    def kill(self) -> str:
        """SIGKILL it; what it printed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(10)
        return "".join(self.out)


def _migrate(cfg: Path, db_url: str) -> None:
    """A fresh install, migrated once before any console starts."""
    if db_url.startswith("postgresql"):
        asyncio.run(empty_database(db_url))
    migrated = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=process_env(),
    )
    assert migrated.returncode == 0, migrated.stderr


def _ids(pattern: str, out: str) -> Counter[str]:
    return Counter(re.findall(pattern, out, re.M))


def test_two_consoles_on_one_database_each_print_only_their_own(
    tmp_path: Path, db_url: str
) -> None:
    cfg = _config(tmp_path, db_url)
    _migrate(cfg, db_url)
    chats = {name: _Chat(cfg, name) for name in PEOPLE}
    try:
        # Both are up (their deliverers and workers running) before any work arrives.
        for chat in chats.values():
            chat.say("/credits")
            chat.wait_for("info: you have 100 credits")

        def submit(name: str, k: int) -> None:
            chats[name].say(f"/imagine {name} {k} --size 64x64 --n {2 if k % 3 == 0 else 1}")

        # One person at a time first: while a process runs one job of its own person, the
        # other process, idle, takes the rest; so each runs jobs of the other.
        for name in PEOPLE:
            for k in range(4):
                submit(name, k)
            chats[name].wait_for("done:", count=4, timeout=30)
        # Then both at once, interleaved in the queue.
        for k in range(4, 8):
            for name in PEOPLE:
                submit(name, k)
        results = {name: chat.finish() for name, chat in chats.items()}
    finally:
        for chat in chats.values():
            chat.kill()
    for name, (code, _, err) in results.items():
        assert code == 0, (name, err)
    outs = {name: results[name][1] for name in PEOPLE}
    logs = {name: results[name][2] for name in PEOPLE}
    assert "Traceback" not in "".join(outs.values()) + "".join(logs.values())

    mine = {name: set(_ids(r"^receipt: job #(\d+) ", outs[name])) for name in PEOPLE}
    assert len(mine["alice"]) == len(mine["bob"]) == 8
    assert mine["alice"].isdisjoint(mine["bob"])
    pairs = {j for name in PEOPLE for j in _ids(r"^image: job #(\d+) 2/2 ", outs[name])}
    for name in PEOPLE:
        out = outs[name]
        images = _ids(r"^image: job #(\d+) \d/\d ", out)
        done = _ids(r"^done: job #(\d+) ", out)
        progress = set(_ids(r"^progress: job #(\d+) ", out))
        # Every one of its own jobs reported, once, and nothing of the other's.
        assert set(done) == mine[name], (name, out)
        assert set(done.values()) == {1}, (name, out)
        assert set(images) == mine[name], (name, out)
        assert all(images[j] == (2 if j in pairs else 1) for j in images), (name, out)
        assert progress <= mine[name], (name, out)
        # Live progress of its own jobs that its own process ran.
        ran_here = set(re.findall(r"job (\d+) succeeded", logs[name]))
        assert progress and progress >= ran_here & mine[name], (name, out)
    assert len(pairs) == 6
    # Each process ran some of the other's jobs: the case where it went wrong.
    ran = {name: set(re.findall(r"job (\d+) succeeded", logs[name])) for name in PEOPLE}
    assert ran["alice"] & mine["bob"] and ran["bob"] & mine["alice"], ran

    # Every row sent once, addressed to the person whose job it is.
    rows = asyncio.run(
        query_db(
            db_url,
            "select o.status, o.audience, u.platform_user_id, count(*) from outbox o "
            "join jobs j on j.id = o.job_id join users u on u.id = j.user_id "
            "group by o.status, o.audience, u.platform_user_id",
        )
    )
    assert sorted(tuple(r) for r in rows) == [
        ("sent", "console:alice", "alice", 8 + 8 + 3),
        ("sent", "console:bob", "bob", 8 + 8 + 3),
    ]


def test_a_persons_events_wait_for_their_own_console(tmp_path: Path, db_url: str) -> None:
    """Bob's console dies with his jobs under way; alice's console finishes them but prints
    nothing of them; bob's next console prints each of them once."""
    cfg = _config(tmp_path, db_url, latency=0.8)
    _migrate(cfg, db_url)
    bob = _Chat(cfg, "bob")
    alice = again = None
    try:
        bob.say("/imagine bob pair --size 64x64 --n 2")
        bob.say("/imagine bob one --size 64x64")
        bob.wait_for("receipt:", count=2)
        first = bob.kill()  # before any picture is ready
        bobs = set(_ids(r"^receipt: job #(\d+) ", first))
        assert len(bobs) == 2 and not re.search(r"^(image|done):", first, re.M), first

        # Alice's console takes back bob's jobs and runs them, but does not print them.
        alice = _Chat(cfg, "alice")
        alice.say("/imagine alice --size 64x64")
        alice.wait_for("done:")
        deadline = time.monotonic() + 30
        unsent = "select count(*) from outbox where status = 'pending'"
        while asyncio.run(query_db(db_url, unsent)) != [(5,)]:  # 2 + 1 pictures, 2 outcomes
            assert time.monotonic() < deadline, asyncio.run(
                query_db(db_url, "select * from outbox")
            )
            time.sleep(0.1)
        time.sleep(1.0)  # twenty chances to claim them
        code, out, err = alice.finish()
        assert code == 0, err
        assert bobs.isdisjoint(re.findall(r"job #(\d+)", out)), out
        ran = set(re.findall(r"job (\d+) succeeded", err))
        assert bobs <= ran, err  # alice's process did run them
        rows = asyncio.run(
            query_db(db_url, "select status, audience, count(*) from outbox group by 1, 2")
        )
        assert sorted(tuple(r) for r in rows) == [
            ("pending", "console:bob", 5),
            ("sent", "console:alice", 2),
        ]

        # Bob's next console delivers what waited for him, each once, and exits.
        again = _Chat(cfg, "bob")
        code, second, err = again.finish()
        assert code == 0, err
    finally:
        for chat in (bob, alice, again):
            if chat is not None:
                chat.kill()
    images = _ids(r"^image: job #(\d+) \d/\d ", second)
    done = _ids(r"^done: job #(\d+) ", second)
    assert set(done) == bobs and set(done.values()) == {1}, second
    assert sorted(images.values()) == [1, 2] and set(images) == bobs, second
    rows = asyncio.run(query_db(db_url, "select status, count(*) from outbox group by 1"))
    assert [tuple(r) for r in rows] == [("sent", 7)]


# --- claiming by audience ------------------------------------------------------------------


async def _outbox_db(db_url: str) -> Database:
    db = Database(db_url)
    if db_url.startswith("sqlite"):
        await db.create_all()
    return db


def _seed(conn: Any, rows: list[tuple[str, str | None]]) -> list[int]:
    """One user, one job per row, one ``finished`` event each; returns the job ids."""
    uid = repos.ensure_user(
        conn, "console", "someone", name="someone", starting_grant=0, now=0.0
    ).id
    job_ids = repos.insert_jobs(
        conn,
        [
            {
                "user_id": uid,
                "kind": "txt2img",
                "status": "succeeded",
                "params": {},
                "provider": "demo",
                "reply_to": {},
                "cost": 1,
                "created_at": 0.0,
            }
            for _ in rows
        ],
    )
    repos.add_events(
        conn,
        [
            {
                "job_id": jid,
                "platform": platform,
                "audience": audience,
                "kind": "finished",
                "payload": {},
                "created_at": 0.0,
            }
            for jid, (platform, audience) in zip(job_ids, rows, strict=True)
        ],
    )
    return job_ids


async def test_claim_events_hands_a_bound_platform_only_its_audiences(db_url: str) -> None:
    db = await _outbox_db(db_url)
    try:
        rows: list[tuple[str, str | None]] = [
            ("console", "console:alice"),
            ("console", "console:bob"),
            ("console", None),  # addressed to nobody: no console delivers it
            ("telegram", "telegram:7"),
            ("telegram", None),
            ("console", "console:alice"),
        ]
        jobs = await db.run_write(_seed, rows)

        def claim(owner: str, free: list[str], bound: list[str], audiences: list[str]) -> Any:
            return db.run_write(
                repos.claim_events,
                platforms=free,
                bound_platforms=bound,
                audiences=audiences,
                owner=owner,
                now=time.time(),
                lease_s=60,
            )

        alice = await claim("alice-proc", [], ["console"], ["console:alice"])
        assert [r.job_id for r in alice] == [jobs[0], jobs[5]]
        # Telegram (any process) alongside a console serving bob.
        both = await claim("bob-proc", ["telegram"], ["console"], ["console:bob"])
        assert [r.job_id for r in both] == [jobs[1], jobs[3], jobs[4]]
        # A console for carol finds nothing; nor does one that serves nobody.
        assert await claim("carol-proc", [], ["console"], ["console:carol"]) == []
        assert await claim("nobody", [], ["console"], []) == []
        # Alice's rows, left by a process that died, go back to a console for alice only.
        await db.run_write(repos.release_events, ["alice-proc"])
        assert await claim("bob-again", [], ["console"], ["console:bob"]) == []
        again = await claim("alice-again", [], ["console"], ["console:alice"])
        assert [r.job_id for r in again] == [jobs[0], jobs[5]]
    finally:
        await db.dispose()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDHOST_DATABASE__URL", raising=False)


async def test_rows_written_before_audiences_go_to_the_console_of_their_person(
    tmp_path: Path, db_url: str
) -> None:
    """An undelivered row from before migration 0004 (no audience) is printed by the
    console of the person its reply target names, and by no other."""
    db = await _outbox_db(db_url)

    def seed(conn: Any) -> None:
        uid = repos.ensure_user(conn, "console", "bob", name="bob", starting_grant=0, now=0.0).id
        (jid,) = repos.insert_jobs(
            conn,
            [
                {
                    "user_id": uid,
                    "kind": "txt2img",
                    "status": "succeeded",
                    "params": {"prompt": "old"},
                    "provider": "demo",
                    "reply_to": {"platform": "console", "chat": "bob"},
                    "cost": 1,
                    "created_at": 0.0,
                }
            ],
        )
        payload = {
            "reply_to": {"platform": "console", "chat": "bob"},
            "status": "succeeded",
            "refunded": 0,
            "balance": 0,
            "images": 0,
            "n": 1,
            "prompt": "old",
            "elapsed": 1.0,
        }
        repos.add_events(
            conn,
            [
                {
                    "job_id": jid,
                    "platform": "console",
                    "kind": "finished",
                    "payload": payload,
                    "created_at": 0.0,
                }
            ],
        )

    await db.run_write(seed)
    await db.dispose()

    async def console(name: str) -> str:
        config = make_config(tmp_path, db_url)
        config.database.auto_migrate = False
        app = App(config, run_workers=False)
        out = io.StringIO()
        adapter = ConsoleAdapter(app, UserRef("console", name, name), out=out)
        app.add_adapter(adapter)
        await app.start()
        try:
            if name == "bob":
                async with asyncio.timeout(10):
                    await adapter.wait_until_done(poll=0.05)
            else:
                await asyncio.sleep(0.5)  # ten chances to claim it
        finally:
            await app.stop()
        return out.getvalue()

    assert await console("alice") == ""
    assert re.fullmatch(r"done: job #1 succeeded\b.*\n", await console("bob")), "bob"
    rows = await query_db(db_url, "select status, audience from outbox")
    assert [tuple(r) for r in rows] == [("sent", "console:bob")]
