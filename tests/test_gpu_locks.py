"""One job per GPU instance across sdhost processes: the named locks (bot/locks.py) on
SQLite and PostgreSQL, a process killed while it holds one, and two providers (two
processes' pools) sharing one instance."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from adapters.providers.a1111 import A1111Provider
from bot.config import A1111Config
from bot.locks import NamedLocks
from storage.db import Database
from tests.conftest import process_env
from tests.fakes.a1111 import A1111Fake
from tests.fakes.provider_run import Recorder
from tests.test_provider_a1111 import FAST, request


async def _database(db_url: str) -> Database:
    db = Database(db_url)
    if db.is_sqlite:
        await db.create_all()
    return db


async def test_a_lock_one_process_holds_is_refused_to_another(db_url: str) -> None:
    one, two = await _database(db_url), await _database(db_url)
    a, b = NamedLocks(one), NamedLocks(two)
    try:
        held = await a.try_hold("gpu:http://127.0.0.1:7860")
        assert held is not None
        assert await b.try_hold("gpu:http://127.0.0.1:7860") is None
        assert await a.try_hold("gpu:http://127.0.0.1:7860") is None  # not re-entrant
        other = await b.try_hold("gpu:http://127.0.0.1:7861")  # another name: free
        assert other is not None
        await held.release()
        again = await b.try_hold("gpu:http://127.0.0.1:7860")
        assert again is not None
        await again.release()
        await other.release()
    finally:
        await a.aclose()
        await b.aclose()
        await one.dispose()
        await two.dispose()


async def test_a_process_killed_while_holding_a_lock_frees_it(db_url: str) -> None:
    db = await _database(db_url)
    locks = NamedLocks(db)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from bot.locks import NamedLocks
        from storage.db import Database

        async def main():
            locks = NamedLocks(Database({db_url!r}))
            held = await locks.try_hold("gpu:killed")
            print("held" if held else "refused", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - read in a thread below
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env=process_env(),
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == b"held"
        assert await locks.try_hold("gpu:killed") is None
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        async with asyncio.timeout(10):  # the kernel / the server frees it with the process
            while (held := await locks.try_hold("gpu:killed")) is None:
                await asyncio.sleep(0.1)
        await held.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await locks.aclose()
        await db.dispose()


async def test_two_processes_pools_never_send_one_instance_two_jobs(db_url: str) -> None:
    one, two = await _database(db_url), await _database(db_url)
    locks_a, locks_b = NamedLocks(one), NamedLocks(two)
    async with A1111Fake(time_per_image_s=0.15) as gpu:
        cfg = A1111Config.model_validate({"instances": [{"url": gpu.base_url}], **FAST})
        a = A1111Provider(cfg, locks=locks_a)
        b = A1111Provider(cfg, locks=locks_b)
        await a.start()
        await b.start()
        try:
            runs = [Recorder(request(job_id=i, seed=i)) for i in range(6)]
            await asyncio.gather(*(p.generate(r) for p, r in zip([a, b] * 3, runs, strict=True)))
            assert all(r.images for r in runs)
            assert gpu.max_in_flight == 1  # never two requests at once, from either pool
            assert len(gpu.rendered) == 6
        finally:
            await a.aclose()
            await b.aclose()
            await locks_a.aclose()
            await locks_b.aclose()
            await one.dispose()
            await two.dispose()
