"""A hosted provider inside the whole core: a batch of ten across two API keys, with
failover when the provider starts throttling; charges, refunds and pictures checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.app import App
from bot.params import GenerationParams
from tests.conftest import REPLY, RecordingAdapter, make_config, user
from tests.fakes.dashscope import FakeDashScope
from tests.test_core import ledger_matches_balances


async def test_batch_of_ten_across_two_keys_with_failover(tmp_path: Path, db_url: str) -> None:
    async with FakeDashScope(keys={"sk-a", "sk-b"}, queue_delay_s=0.05, run_delay_s=0.3) as ds:
        config = make_config(
            tmp_path,
            db_url,
            providers={
                "default": "dashscope",
                "failover": {"dashscope": ["demo"]},
                "dashscope": {
                    "base_url": ds.base_url,
                    "keys": [{"key": "sk-a", "concurrency": 1}, {"key": "sk-b", "concurrency": 1}],
                    "poll_first_s": 0.05,
                    "poll_max_interval_s": 0.2,
                    "max_retries": 1,
                },
            },
        )
        config.database.auto_migrate = False
        app = App(config)
        if db_url.startswith("sqlite"):
            await app.db.create_all()
        adapter = RecordingAdapter()
        app.add_adapter(adapter)
        await app.start()
        try:
            ds.fail_task("InvalidParameter")  # the first task DashScope takes fails: refunded
            tasks = [GenerationParams(f"tile {i}", width=512, height=512) for i in range(10)]
            receipt = await app.jobs.submit(user(), "batch", tasks, REPLY)
            assert receipt.cost == 10 and {j.provider for j in receipt.jobs} == {"dashscope"}

            async with asyncio.timeout(20):  # four tasks reach DashScope, then it throttles
                while len([c for c in ds.submits if c.status == 200]) < 4:
                    await asyncio.sleep(0.01)
            ds.throttle(1000, retry_after=0)

            def outcomes() -> list[str]:
                return [d.kind for d in adapter.deliveries if d.kind != "image"]

            await adapter.wait_for(lambda: len(outcomes()) == 10, timeout=30)
            assert sorted(outcomes()) == ["failed"] + ["finished"] * 9
            assert len(adapter.of_kind("image")) == 9

            views = [await app.jobs.job(None, i) for i in receipt.job_ids]
            on_dashscope = [v for v in views if v.provider == "dashscope"]
            moved = [v for v in views if v.provider == "demo"]
            assert len(on_dashscope) >= 4 and moved
            assert all(v.params["failed_over"] == ["dashscope"] for v in moved)
            # each key ran at most one task at a time, and both were used
            assert ds.max_running_per_key == {"sk-a": 1, "sk-b": 1}
            # charged once per task; the task DashScope rejected as invalid was refunded
            assert await app.jobs.balance(user()) == 20 - 10 + 1
            reasons = sorted(r for v in views for r, _ in v.ledger)
            assert reasons.count("charge") == 10 and reasons.count("refund") == 1
            await ledger_matches_balances(app)
        finally:
            await app.stop()
