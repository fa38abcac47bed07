"""The job core end to end on a real database: credits, queue, lifecycle, results, delivery."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import time

import pytest
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from bot.errors import BadInput, InsufficientCredits, LimitReached, NotFound, UserError
from bot.fairness import plan_fair_share
from bot.params import GenerationParams
from storage import repos
from storage.models import Job, LedgerEntry, OutboxEvent, StoredImage, User
from tests.conftest import REPLY, user


def P(prompt: str = "a lighthouse at dusk", **kw: object) -> GenerationParams:
    return GenerationParams(prompt=prompt, **kw)  # type: ignore[arg-type]


async def ledger_matches_balances(app) -> None:
    def check(conn) -> int:
        rows = conn.execute(select(User.id, User.balance, User.platform_user_id)).all()
        for uid, balance, name in rows:
            assert balance == repos.ledger_sum(conn, uid), name
            assert balance >= 0
        return len(rows)

    assert await app.db.run_read(check) > 0


async def test_txt2img_stores_png_with_parameters_and_delivers(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    receipt = await app.jobs.submit(user(), "txt2img", [P(aspect="16:9", n=2, seed=42)], REPLY)
    assert receipt.cost == 2 and receipt.balance == 18
    (ticket,) = receipt.jobs
    assert (ticket.width, ticket.height, ticket.seed) == (1024, 576, 42)
    await adapter.wait_for(lambda: adapter.of_kind("finished"))
    images = adapter.of_kind("image")
    assert sorted(d.payload["index"] for d in images) == [0, 1]
    for d in images:
        data = open(d.payload["path"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == d.payload["sha256"]
        im = Image.open(io.BytesIO(data))
        assert im.format == "PNG" and im.size == (1024, 576)
        params = im.text["parameters"]
        assert params.startswith("a lighthouse at dusk\n")
        assert f"Seed: {42 + d.payload['index']}" in params and "Size: 1024x576" in params
        assert f"sdhost job: {ticket.id}" in params
        thumb = app.files.path_for(d.payload["sha256"], kind="thumbs", ext="webp")
        assert max(Image.open(thumb).size) <= 256
    # the image events came before the "finished" event
    kinds = [d.kind for d in adapter.deliveries]
    assert kinds.index("finished") == len(kinds) - 1
    view = await app.jobs.job(user(), ticket.id)
    assert view.status == "succeeded" and view.progress == 100 and len(view.images) == 2
    stages = [u.percent for u in adapter.progress_updates if u.job_id == ticket.id]
    assert stages[0] == 10 and 30 in stages and stages == sorted(stages)
    await ledger_matches_balances(app)


async def test_unknown_model_and_bad_sizes_cost_nothing(app_factory) -> None:
    app = await app_factory()
    with pytest.raises(BadInput, match="unknown model"):
        await app.jobs.submit(user(), "txt2img", [P(model="nope")], REPLY)
    with pytest.raises(BadInput, match="unknown provider"):
        await app.jobs.submit(user(), "txt2img", [P(provider="dalle")], REPLY)
    with pytest.raises(BadInput, match="at most 4"):
        await app.jobs.submit(user(), "txt2img", [P(n=5)], REPLY)
    with pytest.raises(BadInput, match="between"):
        await app.jobs.submit(user(), "txt2img", [P(width=4096, height=512)], REPLY)
    with pytest.raises(BadInput, match="needs a picture"):
        await app.jobs.submit(user(), "img2img", [P()], REPLY)
    assert await app.jobs.balance(user()) == 20
    async with app.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Job)) == 0


async def test_model_by_provider_prefix(app_factory) -> None:
    app = await app_factory()
    r = await app.jobs.submit(user(), "txt2img", [P(model="demo:mono")], REPLY)
    assert r.jobs[0].model == "mono" and r.jobs[0].provider == "demo"


@pytest.mark.parametrize("balance", [50])
async def test_concurrent_submissions_never_overdraw(app_factory, balance: int) -> None:
    """200 submissions at once against 50 credits: exactly 50 charged, ledger == balance."""
    app = await app_factory(
        credits={"starting_grant": balance},
        queue={"max_queued_per_user": 1000},
        providers={"demo": {"latency_s": 0.0, "concurrency": 1}},
    )
    await app.scheduler.stop()  # only the charging is under test here
    u = user("rich")
    await app.jobs.user(u)

    async def one(i: int) -> str:
        try:
            await app.jobs.submit(u, "txt2img", [P(f"p{i}", width=64, height=64)], REPLY)
            return "ok"
        except InsufficientCredits:
            return "short"

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results.count("ok") == balance and results.count("short") == 200 - balance

    def check(conn) -> None:
        u_row = repos.get_user(conn, "test", "rich")
        assert u_row.balance == 0
        assert repos.ledger_sum(conn, u_row.id) == 0
        charges = conn.execute(
            select(func.count()).where(
                LedgerEntry.user_id == u_row.id, LedgerEntry.reason == "charge"
            )
        ).scalar()
        assert charges == balance
        assert conn.execute(select(func.count()).select_from(Job)).scalar() == balance

    await app.db.run_read(check)


async def test_credit_is_idempotent_per_job_and_reason(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P()], REPLY)
    job_id = r.job_ids[0]
    u = await app.jobs.user(user())

    def refund_twice(conn) -> list[bool]:
        return [
            repos.credit(conn, u.id, 1, reason="refund", job_id=job_id, now=0),
            repos.credit(conn, u.id, 1, reason="refund", job_id=job_id, now=0),
        ]

    assert await app.db.run_write(refund_twice) == [True, False]
    assert await app.jobs.balance(user()) == 20
    with pytest.raises(IntegrityError):  # a second charge for one job cannot happen
        await app.db.run_write(lambda conn: repos.charge(conn, u.id, [(job_id, 1)], now=0))
    assert await app.jobs.balance(user()) == 20
    await ledger_matches_balances(app)


async def test_per_user_queue_limit(app_factory) -> None:
    app = await app_factory(queue={"max_queued_per_user": 3})
    await app.scheduler.stop()
    await app.jobs.submit(user(), "batch", [P("a"), P("b")], REPLY)
    with pytest.raises(LimitReached, match="limit is 3"):
        await app.jobs.submit(user(), "batch", [P("c"), P("d")], REPLY)
    await app.jobs.submit(user("bob"), "txt2img", [P()], REPLY)  # others are unaffected


async def test_duplicate_message_is_not_charged_twice(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()
    a = await app.jobs.submit(user(), "batch", [P("a"), P("b")], REPLY, idem_key="msg-1")
    b = await app.jobs.submit(user(), "batch", [P("a"), P("b")], REPLY, idem_key="msg-1")
    assert b.duplicate and b.job_ids == a.job_ids and b.balance == 18
    assert await app.jobs.balance(user()) == 18


async def test_fair_scheduling_one_job_after_a_batch_of_ten(app_factory) -> None:
    app = await app_factory(
        providers={"demo": {"latency_s": 0.15, "concurrency": 2}},
        queue={"max_running_per_user": 2},
        credits={"starting_grant": 30},
    )
    adapter = app.adapters["test"]
    batch = await app.jobs.submit(
        user("a"), "batch", [P(f"t{i}", width=64, height=64) for i in range(10)], REPLY
    )
    await asyncio.sleep(0.05)
    single = await app.jobs.submit(user("b"), "txt2img", [P("b", width=64, height=64)], REPLY)
    assert single.jobs[0].position <= 2  # B is next, not behind A's whole batch
    # and A's last task is told it waits behind B
    last = await app.jobs.job(user("a"), batch.job_ids[-1])
    assert last.status == "queued" and last.position >= 7
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 11, timeout=20)
    async with app.db.session() as s:
        b_job = await s.get(Job, single.job_ids[0])
        a_jobs = [await s.get(Job, i) for i in batch.job_ids]
    last_a_finish = max(j.finished_at for j in a_jobs)
    assert b_job.started_at < last_a_finish
    # B started before most of A's batch did
    assert sum(j.started_at < b_job.started_at for j in a_jobs) <= 4
    # and the batch ran in parallel, not one task after another
    starts = sorted(j.started_at for j in a_jobs)
    assert any(abs(x - y) < 0.1 for x, y in itertools.pairwise(starts))


async def test_batch_tasks_run_in_parallel(app_factory) -> None:
    app = await app_factory(providers={"demo": {"latency_s": 0.4, "concurrency": 4}})
    adapter = app.adapters["test"]
    t0 = time.monotonic()
    await app.jobs.submit(
        user(), "batch", [P(f"t{i}", width=64, height=64) for i in range(4)], REPLY
    )
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 4)
    assert time.monotonic() - t0 < 1.2  # four 0.4 s tasks, sequential would be 1.6 s


async def test_refund_policy_by_kind(app_factory, tmp_path) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    t = await app.jobs.submit(user(), "txt2img", [P("demo:fail", n=2, width=64, height=64)], REPLY)
    b = await app.jobs.submit(
        user(),
        "batch",
        [P("demo:fail x", width=64, height=64), P("ok", width=64, height=64)],
        REPLY,
    )
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    i = await app.jobs.submit(
        user(), "img2img", [P("demo:fail", width=64, height=64)], REPLY, init_image=png.getvalue()
    )
    await adapter.wait_for(
        lambda: len(adapter.deliveries) >= 5 and len(adapter.of_kind("failed")) == 3
    )
    by_job = {d.job_id: d for d in adapter.deliveries if d.kind in ("failed", "finished")}
    assert by_job[t.job_ids[0]].payload["refunded"] == 2  # txt2img: refunded
    assert by_job[b.job_ids[0]].payload["refunded"] == 0  # batch: provider used, not refunded
    assert by_job[b.job_ids[1]].kind == "finished"
    assert by_job[i.job_ids[0]].payload["refunded"] == 2  # img2img: refunded (seed 003)
    assert by_job[t.job_ids[0]].payload["failure"] == "provider_error"
    # 20 - 2 (txt2img, refunded) - 2 (batch, one refunded? no) - 2 (img2img, refunded)
    assert await app.jobs.balance(user()) == 20 - 2
    await ledger_matches_balances(app)


async def test_refused_prompt_is_classified(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    await app.jobs.submit(user(), "txt2img", [P("demo:refuse", width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: adapter.of_kind("failed"))
    (ev,) = adapter.of_kind("failed")
    assert ev.payload["failure"] == "refused" and "refused" in ev.payload["message"]


async def test_cancel_queued_job_refunds(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P(n=3)], REPLY)
    assert await app.jobs.balance(user()) == 17
    with pytest.raises(NotFound):
        await app.jobs.cancel(user("mallory"), r.job_ids[0])
    msg = await app.jobs.cancel(user(), r.job_ids[0])
    assert "refunded" in msg and "3" in msg
    assert await app.jobs.balance(user()) == 20
    await adapter.wait_for(lambda: adapter.of_kind("cancelled"))
    with pytest.raises(UserError, match="already"):
        await app.jobs.cancel(user(), r.job_ids[0])
    await ledger_matches_balances(app)


async def test_cancel_running_job(app_factory) -> None:
    app = await app_factory(providers={"demo": {"latency_s": 5.0}})
    adapter = app.adapters["test"]
    r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: any(u.stage == "submitted" for u in adapter.progress_updates))
    said = await app.jobs.cancel(user(), r.job_ids[0])
    assert said.startswith("cancelling job #") and "refunded in full" in said
    await adapter.wait_for(lambda: adapter.of_kind("cancelled"), timeout=3)
    view = await app.jobs.job(user(), r.job_ids[0])
    assert view.status == "cancelled"
    # it reached the provider, but the demo provider bills nothing for an unfinished
    # picture (hosted ones: tests/test_cancel_refund.py)
    assert await app.jobs.balance(user()) == 20
    await ledger_matches_balances(app)


async def test_timeout_fails_and_refunds(app_factory) -> None:
    app = await app_factory(providers={"demo": {"latency_s": 5.0}}, queue={"job_timeout_s": 0.3})
    adapter = app.adapters["test"]
    await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: adapter.of_kind("failed"), timeout=5)
    (ev,) = adapter.of_kind("failed")
    assert ev.payload["failure"] == "timeout" and ev.payload["refunded"] == 1
    assert await app.jobs.balance(user()) == 20


async def test_crashing_job_is_quarantined_and_does_not_block(app_factory) -> None:
    app = await app_factory(
        queue={"max_attempts": 3, "retry_backoff_s": 0.0},
        providers={"demo": {"latency_s": 0.0, "concurrency": 1}},
    )
    adapter = app.adapters["test"]
    bad = await app.jobs.submit(user(), "txt2img", [P("demo:crash", width=64, height=64)], REPLY)
    good = await app.jobs.submit(user("bob"), "txt2img", [P("fine", width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: adapter.of_kind("failed") and adapter.of_kind("finished"))
    view = await app.jobs.job(user(), bad.job_ids[0])
    assert view.status == "quarantined" and view.attempts == 3 and view.failure == "crash"
    assert (await app.jobs.job(user("bob"), good.job_ids[0])).status == "succeeded"
    assert await app.jobs.balance(user()) == 20  # our fault: refunded


async def test_retry_failed_job_charges_again(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    r = await app.jobs.submit(user(), "batch", [P("demo:fail", width=64, height=64)], REPLY)
    await adapter.wait_for(lambda: adapter.of_kind("failed"))
    assert await app.jobs.balance(user()) == 19
    again = await app.jobs.retry(user(), r.job_ids[0], REPLY)
    assert again.cost == 1 and again.balance == 18 and again.job_ids[0] != r.job_ids[0]
    with pytest.raises(UserError, match="only failed or cancelled"):
        await app.jobs.retry(user(), again.job_ids[0], REPLY)


async def test_batch_status_counts(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    r = await app.jobs.submit(
        user(), "batch", [P("ok", width=64, height=64), P("demo:fail", width=64, height=64)], REPLY
    )
    await adapter.wait_for(
        lambda: len(adapter.of_kind("finished")) + len(adapter.of_kind("failed")) == 2
    )
    view = await app.jobs.job(user(), r.job_ids[0])
    assert view.batch_counts == {"succeeded": 1, "failed": 1}


async def test_recovery_resumes_known_provider_task(app_factory) -> None:
    """A job left running by a dead process resumes its provider task instead of resubmitting."""
    app = await app_factory()
    adapter = app.adapters["test"]
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    job_id = r.job_ids[0]
    async with app.db.session(write=True) as s:
        await s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="running",
                lease_owner="otherhost:1:dead",
                lease_until=time.time() - 1,
                provider_task_id="demo-resume-me",
                submitted_at=time.time(),
                attempts=1,
            )
        )
    await app.scheduler.start()
    await adapter.wait_for(lambda: adapter.of_kind("finished"))
    async with app.db.session() as s:
        job = await s.get(Job, job_id)
        assert job.status == "succeeded" and job.provider_task_id == "demo-resume-me"
        # Its process vanished without a crash report: bad luck, not an attempt.
        assert job.attempts == 1 and job.lost_runs == 1
        assert await s.scalar(select(func.count()).where(StoredImage.job_id == job_id)) == 1
        charges = list(await s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job_id)))
        assert [(e.reason, e.delta) for e in charges] == [("charge", -1)]


async def test_job_its_process_keeps_dying_under_is_set_aside_after_max_lost_runs(
    app_factory,
) -> None:
    """No crash report (an OOM kill every time): not attempts, but not forever either."""
    app = await app_factory(queue={"max_lost_runs": 4})
    adapter = app.adapters["test"]
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    job_id = r.job_ids[0]

    async def died_under_it(lost_before: int) -> None:
        async with app.db.session(write=True) as s:
            await s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status="running",
                    lease_owner="otherhost:1:dead",
                    lease_until=time.time() - 1,
                    submitted_at=time.time(),
                    attempts=1,
                    lost_runs=lost_before,
                )
            )
        await app.scheduler.recover()

    await died_under_it(2)
    async with app.db.session() as s:
        job = await s.get(Job, job_id)
        assert (job.status, job.attempts, job.lost_runs, job.run_after) == ("queued", 0, 3, 0.0)
    await died_under_it(3)
    await adapter.wait_for(lambda: adapter.of_kind("failed"))
    async with app.db.session() as s:
        job = await s.get(Job, job_id)
        assert (job.status, job.failure, job.lost_runs) == ("quarantined", "crash", 4)
        assert "died under it 4 times" in job.error
    assert await app.jobs.balance(user()) == 20  # crash: refunded by the default policy


async def test_undelivered_events_are_delivered_after_restart(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    await app.deliverer.stop()  # results are made but nobody delivers them
    await app.jobs.submit(user(), "txt2img", [P(width=64, height=64, n=2)], REPLY)
    async with asyncio.timeout(10):
        while True:
            async with app.db.session() as s:
                n = await s.scalar(select(func.count()).select_from(OutboxEvent))
            if n == 3:
                break
            await asyncio.sleep(0.05)
    assert adapter.deliveries == []
    app2 = await app_factory()
    adapter2 = app2.adapters["test"]
    await adapter2.wait_for(lambda: len(adapter2.deliveries) == 3)
    await asyncio.sleep(0.3)
    assert len(adapter2.deliveries) == 3  # once each
    async with app2.db.session() as s:
        statuses = set(await s.scalars(select(OutboxEvent.status)))
    assert statuses == {"sent"}


async def test_two_processes_never_run_one_job_twice(app_factory) -> None:
    """Two cores (each its own engines, as two processes would have) share one database."""
    a = await app_factory(
        providers={"demo": {"latency_s": 0.02, "concurrency": 4}},
        credits={"starting_grant": 100},
        queue={"max_queued_per_user": 100, "max_running_per_user": 8},
    )
    b = await app_factory(
        providers={"demo": {"latency_s": 0.02, "concurrency": 4}},
        credits={"starting_grant": 100},
        queue={"max_queued_per_user": 100, "max_running_per_user": 8},
    )
    for i in range(6):
        await a.jobs.submit(
            user(f"u{i}"), "batch", [P(f"t{i}-{k}", width=64, height=64) for k in range(5)], REPLY
        )
    b.scheduler.wake()
    async with asyncio.timeout(30):
        while True:
            async with a.db.session() as s:
                done = await s.scalar(select(func.count()).where(Job.status == "succeeded"))
            if done == 30:
                break
            await asyncio.sleep(0.1)
    async with a.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(StoredImage)) == 30
        owners = await s.scalar(select(func.count(func.distinct(Job.attempts))))
        assert owners == 1  # every job was claimed exactly once
    total = len(a.adapters["test"].deliveries) + len(b.adapters["test"].deliveries)
    async with asyncio.timeout(10):
        while total < 60:
            await asyncio.sleep(0.05)
            total = len(a.adapters["test"].deliveries) + len(b.adapters["test"].deliveries)
    await asyncio.sleep(0.3)
    ids = [d.id for d in a.adapters["test"].deliveries + b.adapters["test"].deliveries]
    assert len(ids) == len(set(ids)) == 60


async def test_job_claimed_while_leases_are_renewed_is_not_judged_lost(
    app_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewal's answer cannot know jobs claimed while it ran (other connections on
    PostgreSQL); those must not be cancelled as lost."""
    app = await app_factory(providers={"demo": {"latency_s": 0.3}})
    adapter = app.adapters["test"]
    sched = app.scheduler
    real_run_write = app.db.run_write
    claimed: list[int] = []

    async def stale_renewal(fn, *args, **kw):
        if fn is repos.renew_leases:
            answer = await real_run_write(fn, *args, **kw)  # runs before the claim below
            r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
            claimed.extend(r.job_ids)
            async with asyncio.timeout(5):
                while r.job_ids[0] not in sched.running_jobs:
                    await asyncio.sleep(0.01)
            return answer
        return await real_run_write(fn, *args, **kw)

    app.db.run_write = stale_renewal  # type: ignore[method-assign]
    await sched._renew()
    app.db.run_write = real_run_write  # type: ignore[method-assign]
    await adapter.wait_for(lambda: adapter.of_kind("finished"))
    assert (await app.jobs.job(user(), claimed[0])).status == "succeeded"
    assert "lease lost" not in caplog.text


async def test_a_job_wrongly_given_up_as_lost_goes_back_to_the_queue(app_factory) -> None:
    app = await app_factory(providers={"demo": {"latency_s": 0.5}})
    adapter = app.adapters["test"]
    sched = app.scheduler
    r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    job_id = r.job_ids[0]
    async with asyncio.timeout(5):
        while job_id not in sched.running_jobs:
            await asyncio.sleep(0.01)
    sched._lost.add(job_id)  # as if the lease loop had judged it lost, wrongly
    sched._running[job_id].cancel()
    await adapter.wait_for(lambda: adapter.of_kind("finished"), timeout=10)
    view = await app.jobs.job(user(), job_id)
    assert view.status == "succeeded" and view.attempts == 1  # given back without counting
    await ledger_matches_balances(app)


async def test_max_running_caps_a_provider_across_processes(app_factory) -> None:
    shared = {
        "providers": {"demo": {"latency_s": 0.2, "concurrency": 4, "max_running": 2}},
        "queue": {"max_queued_per_user": 50, "max_running_per_user": 8},
        "credits": {"starting_grant": 50},
    }
    a = await app_factory(**shared)
    b = await app_factory(**shared)
    await a.jobs.submit(user(), "batch", [P(f"t{i}", width=64, height=64) for i in range(8)], REPLY)
    b.scheduler.wake()
    peak = 0

    def running(conn) -> tuple[int, int]:
        return (
            conn.execute(select(func.count()).where(Job.status == "running")).scalar(),
            conn.execute(select(func.count()).where(Job.status == "succeeded")).scalar(),
        )

    async with asyncio.timeout(20):
        while True:
            now_running, done = await a.db.run_read(running)
            peak = max(peak, now_running)
            if done == 8:
                break
            await asyncio.sleep(0.02)
    assert peak == 2


async def test_jobs_claimed_as_the_scheduler_stops_are_given_back(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    await app.scheduler.stop()
    r = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    # A claim that committed although its dispatcher was cancelled: held, never started.
    claimed = await app.db.run_write(
        lambda conn: repos.claim_jobs(
            conn,
            provider="demo",
            owner=app.scheduler.owner,
            now=time.time(),
            lease_s=60,
            timeout_s=60,
            slots=4,
            max_running_per_user=4,
            plan=plan_fair_share,
        )
    )
    assert [j.id for j in claimed] == r.job_ids
    await app.scheduler.start()
    await app.scheduler.stop()
    await app.scheduler.start()
    await adapter.wait_for(lambda: adapter.of_kind("finished"), timeout=10)
    view = await app.jobs.job(user(), r.job_ids[0])
    assert view.status == "succeeded" and view.attempts == 1


async def test_shared_cap_holds_when_two_processes_claim_at_once(app_factory, db_url) -> None:
    """One claim still open (uncommitted) while another starts: the second must wait for
    it and see the cap reached, not count the first's jobs as not running yet."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's write lock already makes claims one at a time")
    app = await app_factory(queue={"max_queued_per_user": 10, "max_running_per_user": 8})
    await app.scheduler.stop()
    await app.jobs.submit(
        user(), "batch", [P(f"t{i}", width=64, height=64) for i in range(4)], REPLY
    )

    def claim(owner: str):
        return lambda conn: repos.claim_jobs(
            conn,
            provider="demo",
            owner=owner,
            now=time.time(),
            lease_s=60,
            timeout_s=60,
            slots=4,
            max_running_per_user=8,
            plan=plan_fair_share,
            provider_cap=2,
        )

    async with app.db.engine.connect() as other:
        await other.begin()
        assert len(await other.run_sync(claim("process-b"))) == 2
        second = asyncio.create_task(app.db.run_write(claim("process-a")))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first claim to commit
        await other.commit()
    assert await second == []
