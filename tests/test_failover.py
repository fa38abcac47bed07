"""Routing across providers: aliases, and failover along a configured chain without a
second charge."""

from __future__ import annotations

from adapters.providers.demo import DemoProvider
from bot.config import DemoProviderConfig
from bot.errors import FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ProviderRun
from tests.conftest import REPLY, user
from tests.test_core import ledger_matches_balances


class Flaky(DemoProvider):
    """A provider that is down (transient failures) or refuses outright, on demand."""

    name = "flaky"

    def __init__(self, *, transient: bool = True, after_submit: bool = False) -> None:
        super().__init__(DemoProviderConfig(latency_s=0))
        self.transient = transient
        self.after_submit = after_submit
        self.calls = 0

    async def generate(self, run: ProviderRun) -> None:
        self.calls += 1
        if self.after_submit:
            await run.submitted("flaky-task-1")
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "flaky is throttled",
            retry_after=0.0 if self.transient else None,
        )


def providers(flaky: Flaky) -> dict[str, object]:
    return {"flaky": flaky, "demo": DemoProvider(DemoProviderConfig(latency_s=0))}


CHAIN = {"default": "flaky", "failover": {"flaky": ["demo"]}}


async def _outcome(app, job_id: int) -> str:
    adapter = app.adapters["test"]
    await adapter.wait_for(
        lambda: any(d.job_id == job_id and d.kind != "image" for d in adapter.deliveries)
    )
    return next(d.kind for d in adapter.deliveries if d.job_id == job_id and d.kind != "image")


async def test_a_provider_that_is_down_hands_its_jobs_on_without_a_second_charge(
    app_factory,
) -> None:
    flaky = Flaky()
    app = await app_factory(provider_objs=providers(flaky), providers=CHAIN)
    receipt = await app.jobs.submit(
        user(), "txt2img", [GenerationParams("a kite", aspect="16:9")], REPLY
    )
    (job_id,) = receipt.job_ids
    assert receipt.jobs[0].provider == "flaky" and receipt.balance == 19
    assert await _outcome(app, job_id) == "finished"
    view = await app.jobs.job(None, job_id)
    assert view.status == "succeeded" and view.provider == "demo"
    assert view.params["failed_over"] == ["flaky"]
    assert abs(view.params["width"] / view.params["height"] - 16 / 9) < 0.02
    assert [reason for reason, _ in view.ledger] == ["charge"]  # once, never refunded/again
    assert await app.jobs.balance(user()) == 19
    # the circuit breaker: the next job skips flaky without calling it
    second = await app.jobs.submit(user(), "txt2img", [GenerationParams("a boat")], REPLY)
    assert await _outcome(app, second.job_ids[0]) == "finished"
    assert flaky.calls == 1
    await ledger_matches_balances(app)


async def test_a_permanent_failure_is_not_failed_over(app_factory) -> None:
    app = await app_factory(provider_objs=providers(Flaky(transient=False)), providers=CHAIN)
    receipt = await app.jobs.submit(user(), "txt2img", [GenerationParams("a kite")], REPLY)
    assert await _outcome(app, receipt.job_ids[0]) == "failed"
    assert (await app.jobs.job(None, receipt.job_ids[0])).provider == "flaky"


async def test_a_job_the_provider_took_is_never_moved(app_factory) -> None:
    # it may be running (and billed) there: moving it could pay twice
    app = await app_factory(provider_objs=providers(Flaky(after_submit=True)), providers=CHAIN)
    receipt = await app.jobs.submit(user(), "txt2img", [GenerationParams("a kite")], REPLY)
    assert await _outcome(app, receipt.job_ids[0]) == "failed"
    assert (await app.jobs.job(None, receipt.job_ids[0])).provider == "flaky"


async def test_model_aliases(app_factory) -> None:
    app = await app_factory(providers={"aliases": {"bw": "demo:mono"}})
    receipt = await app.jobs.submit(user(), "txt2img", [GenerationParams("x", model="bw")], REPLY)
    assert (receipt.jobs[0].provider, receipt.jobs[0].model) == ("demo", "mono")


async def test_a_chats_default_model_sits_below_a_persons_own(app_factory) -> None:
    from bot.commands import Incoming

    app = await app_factory(providers={"chat_models": {"test:c1": "demo:mono"}})
    reply = await app.commands.handle(Incoming(user(), "/imagine a kite", dict(REPLY)))
    assert (reply.receipt.jobs[0].model) == "mono"
    elsewhere = await app.commands.handle(
        Incoming(user(), "/imagine a kite", {"platform": "test", "chat": "c2"})
    )
    assert elsewhere.receipt.jobs[0].model == "shapes"
    await app.commands.handle(Incoming(user(), "/settings model demo:shapes", dict(REPLY)))
    mine = await app.commands.handle(Incoming(user(), "/imagine a kite", dict(REPLY)))
    assert mine.receipt.jobs[0].model == "shapes"


def test_keys_from_the_environment_turn_a_provider_on() -> None:
    from bot.config import load_config

    config = load_config(
        None, environ={"SDHOST_PROVIDERS__BFL__KEYS": '[{key = "k1", concurrency = 3}]'}
    )
    assert config.providers.bfl.active and config.providers.bfl.keys[0].concurrency == 3
    assert not config.providers.dashscope.active
