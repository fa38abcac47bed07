"""Wake-ups across processes on PostgreSQL (LISTEN/NOTIFY).

Two Apps on one database, each with a Database of its own (separate processes as far as
PostgreSQL knows), polling only every 30 s: a fast pickup can be explained only by a
notification.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.demo import DemoProvider
from bot.app import App
from bot.chat import Delivery, DeliveryRetry
from bot.config import DemoProviderConfig
from bot.params import GenerationParams as P
from bot.providers import ProviderRun
from storage.notify import APPLICATION_NAME
from tests.conftest import REPLY, RecordingAdapter, empty_database, make_config, query_db, user

SLOW_POLL = {"poll_idle_s": 30.0}


@pytest.fixture
async def pg_apps(tmp_path: Path, pg_url: str | None) -> AsyncIterator[Callable[..., Any]]:
    """Started Apps on a fresh PostgreSQL database; all are stopped at the end."""
    if not pg_url:
        pytest.skip("set SDHOST_TEST_DATABASE_URL to run on PostgreSQL")
    await empty_database(pg_url, then_create=True)
    apps: list[App] = []

    async def make(
        *, chat: bool, workers: bool, providers: Any = None, adapter: Any = None, **queue: Any
    ) -> App:
        config = make_config(tmp_path, pg_url, queue={**SLOW_POLL, "run_workers": workers, **queue})
        config.database.auto_migrate = False
        app = App(config, providers=providers)
        if chat:
            app.add_adapter(adapter or RecordingAdapter())
        await app.start()
        apps.append(app)
        if app.listener is not None:
            async with asyncio.timeout(10):
                await app.listener.connected.wait()
        return app

    yield make
    for app in reversed(apps):
        await app.stop()


def _adapter(app: App) -> RecordingAdapter:
    adapter = app.adapters["test"]
    assert isinstance(adapter, RecordingAdapter)
    return adapter


async def _claim_delay(app: App, job_id: int, within: float) -> float:
    """Seconds from the job's creation to its claim, waiting up to ``within`` for the claim."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = await query_db(
            app.config.database_url, f"SELECT created_at, started_at FROM jobs WHERE id={job_id}"
        )
        if rows and rows[0].started_at is not None:
            return float(rows[0].started_at - rows[0].created_at)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was not claimed within {within} s")


@pytest.mark.postgres
async def test_a_job_wakes_another_process_and_its_result_wakes_the_chat(pg_apps) -> None:
    front = await pg_apps(chat=True, workers=False)  # takes commands, delivers, runs nothing
    worker = await pg_apps(chat=False, workers=True)  # runs jobs, delivers nothing
    assert front.listener is not None and worker.listener is not None
    # while notifications come, the poll is only the safety net: ten times rarer
    assert worker.scheduler.idle_poll() == front.deliverer.idle_poll() == 300.0
    adapter = _adapter(front)
    await asyncio.sleep(0.3)  # both have made their start-up claims and now wait 30 s
    t0 = time.monotonic()
    receipt = await front.jobs.submit(user(), "txt2img", [P(n=2, width=64, height=64)], REPLY)
    (ticket,) = receipt.jobs
    assert await _claim_delay(front, ticket.id, within=2.0) < 2.0
    # the worker wrote the pictures and the outcome; the front's deliverer hears of them
    await adapter.wait_for(lambda: bool(adapter.of_kind("finished")), timeout=3.0)
    assert time.monotonic() - t0 < 3.0
    assert sorted(d.payload["index"] for d in adapter.of_kind("image")) == [0, 1]
    rows = await query_db(
        front.config.database_url, f"SELECT lease_owner, status FROM jobs WHERE id={ticket.id}"
    )
    assert rows[0].status == "succeeded"


@pytest.mark.postgres
async def test_without_listening_the_other_process_waits_for_its_poll(pg_apps) -> None:
    """The control: the same set-up with ``queue.listen = false`` is not woken."""
    front = await pg_apps(chat=True, workers=False, listen=False)
    worker = await pg_apps(chat=False, workers=True, listen=False)
    assert front.listener is None and worker.listener is None
    await asyncio.sleep(0.3)
    receipt = await front.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    with pytest.raises(AssertionError, match="not claimed"):
        await _claim_delay(front, receipt.jobs[0].id, within=2.0)


@pytest.mark.postgres
async def test_the_listener_comes_back_after_its_connection_is_killed(pg_apps) -> None:
    front = await pg_apps(chat=True, workers=False)
    worker = await pg_apps(chat=False, workers=True)
    listener = worker.listener
    assert listener is not None and listener.backend_pid is not None
    url = worker.config.database_url
    # the listener's own backend, as an operator finds it
    found = await query_db(
        url,
        "SELECT pid FROM pg_stat_activity "
        f"WHERE application_name = '{APPLICATION_NAME}' AND pid = {listener.backend_pid}",
    )
    assert len(found) == 1
    killed = await query_db(url, f"SELECT pg_terminate_backend({listener.backend_pid})")
    assert killed[0][0] is True
    async with asyncio.timeout(10):
        while listener.connects < 2:
            await asyncio.sleep(0.05)
    assert listener.healthy
    await asyncio.sleep(0.3)
    receipt = await front.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    assert await _claim_delay(front, receipt.jobs[0].id, within=2.0) < 2.0
    adapter = _adapter(front)
    await adapter.wait_for(lambda: bool(adapter.of_kind("finished")), timeout=3.0)


@pytest.mark.postgres
async def test_a_job_given_back_at_shutdown_wakes_another_process(pg_apps) -> None:
    """A requeue notifies too: jobs a stopping worker gives back go to another at once."""
    front = await pg_apps(chat=True, workers=False)
    slow = await pg_apps(chat=False, workers=True)
    slow.config.providers.demo.latency_s = 60.0  # holds its job until it stops
    receipt = await front.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    job_id = receipt.jobs[0].id
    await _claim_delay(front, job_id, within=2.0)
    other = await pg_apps(chat=False, workers=True)  # its start-up claim finds nothing
    assert other.listener is not None
    await asyncio.sleep(0.3)
    await slow.stop()  # gives the job back
    t0 = time.monotonic()
    adapter = _adapter(front)
    await adapter.wait_for(lambda: bool(adapter.of_kind("finished")), timeout=3.0)
    assert time.monotonic() - t0 < 3.0
    rows = await query_db(
        front.config.database_url, f"SELECT lease_owner, status FROM jobs WHERE id={job_id}"
    )
    assert rows[0].status == "succeeded"


class CrashesOnce(DemoProvider):
    """The demo provider, whose first run raises (a bug in sdhost's code, as it looks)."""

    def __init__(self) -> None:
        super().__init__(DemoProviderConfig(latency_s=0))
        self.calls = 0

    async def generate(self, run: ProviderRun) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug")
        await super().generate(run)


class BusyOnce(RecordingAdapter):
    """A chat that answers its first delivery with "retry in half a second"."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def deliver(self, delivery: Delivery) -> None:
        if not self.refused:
            self.refused += 1
            raise DeliveryRetry(0.5)
        await super().deliver(delivery)


@pytest.mark.postgres
async def test_work_due_later_is_not_left_to_the_rare_poll(pg_apps) -> None:
    """A crashed job's retry after its backoff, and a delivery the chat asked to retry
    later, go on time although the poll waits 300 s while notifications come: nothing
    announces that moment, so the process sets itself a timer."""
    provider = CrashesOnce()
    adapter = BusyOnce()
    app = await pg_apps(
        chat=True,
        workers=True,
        providers={"demo": provider},
        adapter=adapter,
        retry_backoff_s=0.5,
    )
    assert app.scheduler.idle_poll() == 300.0
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: bool(adapter.of_kind("finished")), timeout=4.0)
    assert provider.calls == 2 and adapter.refused == 1
    assert len(adapter.of_kind("image")) == 1
    assert time.monotonic() - t0 < 4.0


async def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'sdhost.db'}")
    config.database.auto_migrate = False
    app = App(config)
    await app.db.create_all()
    app.add_adapter(RecordingAdapter())
    async with app:
        assert app.listener is None
        await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
        adapter = _adapter(app)
        await adapter.wait_for(lambda: bool(adapter.of_kind("finished")))
