"""Cancelling a running job: refunded in full where the provider bills nothing for an
unfinished picture (the demo provider, self-hosted backends), by config
``credits.refunds`` where a hosted provider may already have billed it (issue 13). The
cancel reply says which and why; the refund the worker gives when it stops the job agrees,
is given once, and the ledger still sums to the balance."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from adapters.providers.demo import DemoProvider
from bot.config import DemoProviderConfig
from bot.errors import UserError
from bot.jobs import cancel_refund_reason
from bot.params import GenerationParams
from bot.routing import Router
from storage import repos
from storage.models import User
from tests.conftest import REPLY, make_config, user

SLOW = {"demo": {"latency_s": 5.0}}  # a job runs for 5 s: long enough to cancel it


class BilledDemo(DemoProvider):
    """The demo provider posing as a hosted service that may bill a task it started."""

    bills_when_cancelled = True


def billed() -> dict[str, Any]:
    return {"demo": BilledDemo(DemoProviderConfig(latency_s=5.0))}


def P(n: int = 1) -> GenerationParams:
    return GenerationParams(prompt="a lighthouse at dusk", width=64, height=64, n=n)


async def ledger_matches_balances(app: Any) -> None:
    def check(conn: Any) -> None:
        rows = conn.execute(select(User.id, User.balance)).all()
        assert rows
        for uid, balance in rows:
            assert balance == repos.ledger_sum(conn, uid) and balance >= 0

    await app.db.run_read(check)


async def running(app: Any, n: int = 1) -> int:
    """Submit a job and wait until its provider has it (it has a task id)."""
    adapter = app.adapters["test"]
    r = await app.jobs.submit(user(), "txt2img", [P(n)], REPLY)
    (job_id,) = r.job_ids
    await adapter.wait_for(
        lambda: any(u.stage == "submitted" and u.job_id == job_id for u in adapter.progress_updates)
    )
    return job_id


async def cancelled_event(app: Any, job_id: int) -> dict[str, Any]:
    adapter = app.adapters["test"]
    await adapter.wait_for(lambda: adapter.of_kind("cancelled"), timeout=5)
    (ev,) = adapter.of_kind("cancelled")
    assert ev.job_id == job_id
    return dict(ev.payload)


async def test_cancel_running_demo_job_refunds_in_full(app_factory) -> None:
    app = await app_factory(providers=SLOW)
    job_id = await running(app, n=2)
    assert await app.jobs.balance(user()) == 18
    said = await app.jobs.cancel(user(), job_id)
    assert said == (
        f"cancelling job #{job_id}; the pictures it has not made are refunded in full: "
        "the demo backend bills nothing for an unfinished picture"
    )
    assert "全额退还" in said.render("zh")  # type: ignore[attr-defined]
    payload = await cancelled_event(app, job_id)
    assert payload["refunded"] == 2 and payload["balance"] == 20
    view = await app.jobs.job(user(), job_id)
    assert view.status == "cancelled" and view.failure == "cancelled"
    assert sorted(view.ledger) == [("charge", -2), ("refund", 2)]
    assert await app.jobs.balance(user()) == 20
    await ledger_matches_balances(app)


@pytest.mark.parametrize("refunds_cancel", [False, True])
async def test_hosted_provider_cancel_follows_the_config(app_factory, refunds_cancel) -> None:
    policy = ["provider_error", "cancelled"] if refunds_cancel else ["provider_error"]
    app = await app_factory(provider_objs=billed(), credits={"refunds": {"txt2img": policy}})
    job_id = await running(app)
    said = await app.jobs.cancel(user(), job_id)
    payload = await cancelled_event(app, job_id)
    if refunds_cancel:
        assert said.endswith(
            "the pictures it has not made are refunded: "
            "config credits.refunds.txt2img refunds a cancel"
        )
        assert payload["refunded"] == 1 and await app.jobs.balance(user()) == 20
    else:
        assert said.endswith(
            "not refunded: the hosted provider demo may already have billed it; "
            "see config credits.refunds.txt2img"
        )
        assert "可能已经为它计费" in said.render("zh")  # type: ignore[attr-defined]
        assert payload["refunded"] == 0 and await app.jobs.balance(user()) == 19
    assert (await app.jobs.job(user(), job_id)).status == "cancelled"
    await ledger_matches_balances(app)


@pytest.mark.parametrize("hosted", [False, True])
async def test_cancel_queued_job_refunds_in_full(app_factory, hosted) -> None:
    app = await app_factory(provider_objs=billed() if hosted else None, providers=SLOW)
    await app.scheduler.stop()  # nothing runs: the job stays queued
    r = await app.jobs.submit(user(), "txt2img", [P(3)], REPLY)
    assert await app.jobs.balance(user()) == 17
    said = await app.jobs.cancel(user(), r.job_ids[0])
    assert said == f"job #{r.job_ids[0]} cancelled; 3 credits refunded"
    assert await app.jobs.balance(user()) == 20
    view = await app.jobs.job(user(), r.job_ids[0])
    assert view.status == "cancelled" and sorted(view.ledger) == [("charge", -3), ("refund", 3)]
    await ledger_matches_balances(app)


async def test_double_cancel_refunds_once(app_factory) -> None:
    app = await app_factory(providers=SLOW)
    job_id = await running(app, n=2)
    answers = await asyncio.gather(
        *(app.jobs.cancel(user(), job_id) for _ in range(3)), return_exceptions=True
    )
    for said in answers:  # each either asks the worker to stop, or finds it stopped
        assert isinstance(said, str | UserError), said
    assert any(isinstance(said, str) and "refunded in full" in said for said in answers)
    payload = await cancelled_event(app, job_id)
    assert payload["refunded"] == 2
    with pytest.raises(UserError, match="already"):
        await app.jobs.cancel(user(), job_id)
    await asyncio.sleep(0.3)  # nothing more comes
    assert len(app.adapters["test"].of_kind("cancelled")) == 1
    view = await app.jobs.job(user(), job_id)
    assert sorted(view.ledger) == [("charge", -2), ("refund", 2)]
    assert await app.jobs.balance(user()) == 20
    await ledger_matches_balances(app)


def test_the_rule_the_reply_and_the_refund_share(tmp_path) -> None:
    config = make_config(tmp_path, "sqlite+aiosqlite:///unused.db")
    router = Router(
        config, {"demo": DemoProvider(config.providers.demo), "hosted": billed()["demo"]}
    )
    assert router.bills_when_cancelled("demo") is False
    assert router.bills_when_cancelled("hosted") is True
    # a provider no longer configured: taken to be hosted, it may have billed
    assert router.bills_when_cancelled("gone") is True

    class Job:
        kind = "txt2img"
        submitted_at: float | None = 1.0

    job = Job()
    assert cancel_refund_reason(config, job, billed=False) == "unbilled"
    assert cancel_refund_reason(config, job, billed=True) is None
    job.submitted_at = None
    assert cancel_refund_reason(config, job, billed=True) == "unsubmitted"


async def test_cancel_from_another_process_is_refunded_by_the_worker(app_factory) -> None:
    """``sdhost jobs cancel`` only marks the job; the worker sees it when it renews its
    lease, stops the job and refunds it by the same rule."""
    app = await app_factory(providers={"demo": {"latency_s": 1.0}}, queue={"lease_s": 1.5})
    adapter = app.adapters["test"]
    r = await app.jobs.submit(
        user(), "txt2img", [P().with_(prompt="a lighthouse demo:slow")], REPLY
    )
    (job_id,) = r.job_ids
    await adapter.wait_for(lambda: any(u.stage == "submitted" for u in adapter.progress_updates))
    app.jobs.on_cancel = lambda job_id: False  # as from the CLI: no worker in this process
    said = await app.jobs.cancel(user(), job_id)
    assert "refunded in full" in said
    payload = await cancelled_event(app, job_id)
    assert payload["refunded"] == 1 and await app.jobs.balance(user()) == 20
    await ledger_matches_balances(app)


async def test_cancel_requeued_job_keeps_what_it_delivered(app_factory) -> None:
    """A job requeued after an attempt that delivered one of its two pictures: cancelled
    while queued, only the missing picture is refunded, also where nothing is billed."""
    app = await app_factory(providers=SLOW)
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P(2)], REPLY)
    (job_id,) = r.job_ids

    def delivered(conn: Any) -> None:
        repos.update_job(conn, job_id, submitted_at=1.0, provider_task_id="demo-earlier")
        repos.add_images(
            conn,
            [
                {
                    "job_id": job_id,
                    "idx": 0,
                    "sha256": "0" * 64,
                    "width": 64,
                    "height": 64,
                    "seed": 1,
                    "size_bytes": 1,
                    "created_at": 1.0,
                }
            ],
        )

    await app.db.run_write(delivered)
    said = await app.jobs.cancel(user(), job_id)
    assert said == f"job #{job_id} cancelled; 1 credits refunded"
    assert await app.jobs.balance(user()) == 19
    await ledger_matches_balances(app)


class SlowToCancel(BilledDemo):
    """A hosted provider whose cancel call takes a while, as a real HTTP call does."""

    def __init__(self, config: DemoProviderConfig) -> None:
        super().__init__(config)
        self.cancels: list[str] = []

    async def cancel(self, task_id: str) -> None:
        self.cancels.append(task_id)
        await asyncio.sleep(0.5)


async def test_second_cancel_does_not_cut_the_first_short(app_factory) -> None:
    """A cancel while the worker is telling the provider to stop must not interrupt it:
    the job would be left running, neither finished nor refunded."""
    provider = SlowToCancel(DemoProviderConfig(latency_s=5.0))
    app = await app_factory(provider_objs={"demo": provider})
    job_id = await running(app)
    await app.jobs.cancel(user(), job_id)
    async with asyncio.timeout(5):
        while not provider.cancels:
            await asyncio.sleep(0.02)
    again = await app.jobs.cancel(user(), job_id)  # the provider is being told to stop
    assert "may already have billed" in again
    payload = await cancelled_event(app, job_id)
    assert payload["refunded"] == 0 and len(provider.cancels) == 1
    assert (await app.jobs.job(user(), job_id)).status == "cancelled"
    await ledger_matches_balances(app)
