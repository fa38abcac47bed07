"""The DashScope (Tongyi Wanxiang) provider against a loopback fake, and the fake against the
official ``dashscope`` SDK (which proves the fake speaks the real protocol)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.providers.dashscope import DashScopeProvider, classify
from bot.config import ApiKeyConfig, Config, DashScopeConfig, ProvidersConfig
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ResolvedRequest, ResultImage
from bot.routing import Router
from tests.fakes.dashscope import (
    ALLOCATED_QUOTA_MESSAGE,
    ERR_SYNC,
    FREE_QUOTA_MESSAGE,
    FakeDashScope,
)
from tests.fakes.provider_run import Recorder

KEYS = {"sk-a": "k1", "sk-b": "k2"}


def make_config(
    fake: FakeDashScope,
    keys: dict[str, int] | None = None,
    accounts: dict[str, str] | None = None,
    **kw: Any,
):
    keys = keys if keys is not None else {"sk-a": 2}
    accounts = accounts or {}
    defaults: dict[str, Any] = {
        "base_url": fake.base_url,
        "keys": [
            ApiKeyConfig(key=k, concurrency=c, name=KEYS[k], account=accounts.get(k, ""))
            for k, c in keys.items()
        ],
        "account_submits_per_s": 50.0,
        "poll_first_s": 0.02,
        "poll_factor": 1.5,
        "poll_max_interval_s": 0.1,
        "max_retries": 3,
    }
    return DashScopeConfig(**(defaults | kw))


def request(**kw: Any) -> ResolvedRequest:
    base: dict[str, Any] = {
        "job_id": 1,
        "kind": "txt2img",
        "prompt": "a red fox in the snow",
        "negative": "blurry",
        "width": 768,
        "height": 512,
        "seed": 42,
        "n": 1,
        "model": "wanx2.1-t2i-turbo",
    }
    return ResolvedRequest(**(base | kw))


def png(width: int, height: int, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    im = Image.new("RGB", (width, height), color)
    im.paste((250, 250, 0), (0, 0, width // 2, height // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def size_of(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    with Image.open(io.BytesIO(data)) as im:
        return im.size


async def run_job(provider: DashScopeProvider, rec: Recorder) -> Recorder:
    await asyncio.wait_for(provider.generate(rec), 10)
    return rec


async def failure_of(provider: DashScopeProvider, rec: Recorder) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await run_job(provider, rec)
    assert "sk-" not in info.value.message  # never the key
    return info.value


@pytest.fixture
async def fake():
    async with FakeDashScope(keys=set(KEYS), queue_delay_s=0.02, run_delay_s=0.05) as f:
        yield f


@pytest.fixture
async def provider(fake: FakeDashScope):
    p = DashScopeProvider(make_config(fake))
    yield p
    await p.aclose()


# --- what it offers -------------------------------------------------------------------------------


def test_capabilities(fake: FakeDashScope) -> None:
    caps = DashScopeProvider(make_config(fake)).capabilities()
    assert caps.kinds == {"txt2img", "img2img"}
    assert (caps.max_images, caps.min_size, caps.max_size, caps.size_multiple) == (4, 512, 1440, 8)
    assert "Tongyi Wanxiang" in caps.description
    assert not caps.is_demo
    kinds = {m.name: set(m.kinds) for m in caps.models}
    assert kinds == {
        "wanx2.1-t2i-turbo": {"txt2img", "img2img"},  # the default: img2img goes to the editor
        "wanx2.1-t2i-plus": {"txt2img"},
        "wanx2.0-t2i-turbo": {"txt2img"},
        "wan2.2-t2i-flash": {"txt2img"},
        "wan2.2-t2i-plus": {"txt2img"},
        "wan2.5-t2i-preview": {"txt2img"},
        "wanx2.1-imageedit": {"img2img"},
        "wanx2.1-imageedit:super_resolution": {"img2img"},
        "wanx2.1-imageedit:expand": {"img2img"},
    }
    assert caps.default_model == "wanx2.1-t2i-turbo"


def test_router_sends_img2img_without_model_to_dashscope(fake: FakeDashScope) -> None:
    """The router picks the default model when no --model is given, for img2img too."""
    config = Config(providers=ProvidersConfig(default="dashscope"))
    router = Router(config, {"dashscope": DashScopeProvider(make_config(fake))})
    route = router.resolve(GenerationParams(prompt="x"), "img2img", init_size=(3000, 2000))
    assert route.model == "wanx2.1-t2i-turbo"
    assert (route.width, route.height) == (1440, 960)  # fitted into 512..1440
    plus = GenerationParams(prompt="x", model="wanx2.1-t2i-plus")
    with pytest.raises(BadInput):
        router.resolve(plus, "img2img", init_size=(800, 800))
    edit = router.resolve(plus.with_(model="wanx2.1-imageedit"), "img2img", init_size=(800, 800))
    assert edit.model == "wanx2.1-imageedit"
    with pytest.raises(BadInput):
        router.resolve(GenerationParams(prompt="x", width=2048, height=2048), "txt2img")


# --- txt2img / img2img -----------------------------------------------------------------------


async def test_txt2img_happy_path(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    rec = await run_job(provider, Recorder(request(n=2)))
    assert sorted(rec.images) == [0, 1]
    assert [size_of(rec.images[i].data) for i in (0, 1)] == [(768, 512), (768, 512)]
    assert [rec.images[i].seed for i in (0, 1)] == [42, 43]
    assert rec.images[0].data != rec.images[1].data
    assert rec.images[0].extra == {"model": "wanx2.1-t2i-turbo"}  # no prompt rewriting asked

    [submit] = fake.submits
    assert submit.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert submit.headers["X-DashScope-Async"] == "enable"
    assert submit.headers["Authorization"] == "Bearer ***" and submit.key == "sk-a"
    assert submit.headers["Content-Type"].startswith("application/json")
    assert submit.json == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "a red fox in the snow", "negative_prompt": "blurry"},
        "parameters": {
            "size": "768*512",
            "n": 2,
            "seed": 42,
            "prompt_extend": False,
            "watermark": False,
        },
    }
    task_id = next(iter(fake.tasks))
    assert rec.submissions == [(task_id, {"key": "k1"})]
    assert all(c.path == f"/api/v1/tasks/{task_id}" and c.key == "sk-a" for c in fake.polls)
    assert "X-DashScope-Async" not in fake.polls[0].headers
    assert rec.fractions and rec.fractions == sorted(rec.fractions) and max(rec.fractions) <= 0.9
    assert provider.polls == [len(fake.polls)]
    assert len(fake.downloads) == 2 and all(status == 200 for _, status in fake.downloads)


async def test_txt2img_options_from_config(fake: FakeDashScope) -> None:
    p = DashScopeProvider(make_config(fake, prompt_extend=True, watermark=True))
    try:
        rec = await run_job(p, Recorder(request(negative="", model="wanx2.1-t2i-plus", seed=7)))
    finally:
        await p.aclose()
    body = fake.submits[0].json
    assert body["model"] == "wanx2.1-t2i-plus"
    assert body["input"] == {"prompt": "a red fox in the snow"}  # no empty negative
    assert body["parameters"]["prompt_extend"] is True
    assert body["parameters"]["watermark"] is True
    assert rec.images[0].seed == 7
    assert rec.images[0].extra["actual_prompt"].startswith("a red fox in the snow")


async def test_seed_kept_in_dashscope_range(fake: FakeDashScope, provider: DashScopeProvider):
    rec = await run_job(provider, Recorder(request(seed=2**32 - 5, n=4)))
    sent = fake.submits[0].json["parameters"]["seed"]
    assert 0 <= sent and sent + 3 <= 2**31 - 1
    assert [rec.images[i].seed for i in range(4)] == [sent + i for i in range(4)]


async def test_img2img_with_default_model_goes_to_the_editor(
    fake: FakeDashScope, provider: DashScopeProvider
) -> None:
    init = png(600, 400)
    req = request(kind="img2img", init_image=init, width=768, height=512, strength=0.7)
    rec = await run_job(provider, Recorder(req))
    [submit] = fake.submits
    assert submit.path == "/api/v1/services/aigc/image2image/image-synthesis"
    body = submit.json
    data_url = body["input"].pop("base_image_url")
    assert body == {
        "model": "wanx2.1-imageedit",
        "input": {"function": "stylization_all", "prompt": "a red fox in the snow"},
        "parameters": {"n": 1, "seed": 42, "watermark": False, "strength": 0.7},
    }
    assert data_url.startswith("data:image/png;base64,")
    sent = base64.b64decode(data_url.partition(",")[2])
    with Image.open(io.BytesIO(sent)) as im, Image.open(io.BytesIO(init)) as orig:
        assert im.size == (768, 512)  # resized to what the core resolved
        expected = orig.convert("RGB").resize((768, 512), Image.Resampling.LANCZOS)
        assert im.convert("RGB").getpixel((100, 100)) == expected.getpixel((100, 100))
        assert im.convert("RGB").getpixel((700, 450)) == expected.getpixel((700, 450))
    assert size_of(rec.images[0].data) == (768, 512)


async def test_img2img_with_edit_model_and_no_strength(fake: FakeDashScope) -> None:
    p = DashScopeProvider(make_config(fake, edit_function="remove_watermark"))
    try:
        req = request(kind="img2img", model="wanx2.1-imageedit", init_image=png(512, 512))
        await run_job(p, Recorder(req))
    finally:
        await p.aclose()
    body = fake.submits[0].json
    assert body["input"]["function"] == "remove_watermark"
    assert "strength" not in body["parameters"]  # that function takes none


async def test_edit_model_cannot_do_txt2img(fake: FakeDashScope, provider: DashScopeProvider):
    exc = await failure_of(provider, Recorder(request(model="wanx2.1-imageedit")))
    assert exc.failure is FailureClass.BAD_INPUT and exc.retry_after is None
    assert fake.submits == []


# --- polling, resuming, keys ----------------------------------------------------------------------


async def test_polls_back_off(fake: FakeDashScope) -> None:
    fake.queue_delay_s, fake.run_delay_s = 0.2, 1.0  # a 1.2 s job
    p = DashScopeProvider(
        make_config(fake, poll_first_s=0.1, poll_factor=2.0, poll_max_interval_s=1.0)
    )
    try:
        rec = await run_job(p, Recorder(request()))
    finally:
        await p.aclose()
    # waits of about 0.1, 0.2, 0.4, 0.8 s: four or five polls, not a dozen at a fixed 0.1 s
    assert 3 <= p.polls[0] <= 5
    assert p.polls == [len(fake.polls)]
    assert 0.35 in rec.fractions  # seen PENDING
    assert any(0.4 < f <= 0.9 for f in rec.fractions)  # and RUNNING


async def test_resume_polls_the_stored_task_with_its_key(fake: FakeDashScope) -> None:
    fake.queue_delay_s = 0.3
    cfg = make_config(fake, keys={"sk-a": 1, "sk-b": 1})
    first = DashScopeProvider(cfg)
    first.pool.used["k1"] = 5  # k1 has done more work: this job goes to k2
    rec = Recorder(request(n=2))
    job = asyncio.create_task(first.generate(rec))
    try:
        while not rec.submissions:
            await asyncio.sleep(0.01)
        job.cancel()  # the process stops before the task ends
        with pytest.raises(asyncio.CancelledError):
            await job
    finally:
        await first.aclose()
    task_id, state = rec.submissions[0]
    assert state == {"key": "k2"}

    # restarted: a new provider, given the stored task id and state, one picture already kept;
    # a new task would get k1 now, the resumed one must keep k2 (k1 cannot see its task)
    again = DashScopeProvider(cfg)
    again.pool.used["k2"] = 50
    try:
        kept = ResultImage(data=b"kept")
        resumed = Recorder(request(n=2), task_id=task_id, state=state, images={0: kept})
        await run_job(again, resumed)
    finally:
        await again.aclose()
    assert len(fake.submits) == 1  # nothing new was paid for
    assert resumed.submissions == []
    # the picture it already had is not fetched again
    assert sorted(resumed.images) == [0, 1] and resumed.images[0] is kept
    assert [path for path, _ in fake.downloads] == [f"/{task_id}/1.png"]
    assert fake.submits[0].key == "sk-b"
    assert fake.polls and all(c.key == "sk-b" for c in fake.polls)


async def test_resume_with_everything_delivered_does_nothing(fake: FakeDashScope, provider):
    kept = {i: ResultImage(data=b"kept") for i in range(2)}
    rec = Recorder(request(n=2), task_id="t-done", state={"key": "k1"}, images=kept)
    await run_job(provider, rec)
    assert fake.calls == []


async def test_pool_honours_each_keys_concurrency(fake: FakeDashScope) -> None:
    p = DashScopeProvider(make_config(fake, keys={"sk-a": 1, "sk-b": 1}))
    try:
        recs = [Recorder(request(job_id=i, seed=i)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(p.generate(r) for r in recs)), 10)
    finally:
        await p.aclose()
    assert all(len(r.images) == 1 for r in recs)
    assert len(fake.submits) == 4
    assert dict(fake.max_running_per_key) == {"sk-a": 1, "sk-b": 1}
    assert p.pool.used == {"k1": 2, "k2": 2}
    assert len(p.polls) == 4


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "failure", "words"),
    [
        ("InvalidApiKey", 401, FailureClass.PROVIDER_ERROR, "key was rejected"),
        ("Arrearage", 400, FailureClass.PROVIDER_ERROR, "out of credit"),
        ("AllocationQuota.FreeTierOnly", 403, FailureClass.PROVIDER_ERROR, "account needs"),
        ("DataInspectionFailed", 400, FailureClass.REFUSED, "refused"),
        ("IPInfringementSuspect", 400, FailureClass.REFUSED, "refused"),
        ("InvalidParameter", 400, FailureClass.BAD_INPUT, "did not accept"),
        ("BadRequest.EmptyInput", 400, FailureClass.BAD_INPUT, "did not accept"),
        ("AccessDenied.Unpurchased", 403, FailureClass.PROVIDER_ERROR, "denied access"),
    ],
)
async def test_permanent_submit_errors(
    fake: FakeDashScope, provider: DashScopeProvider, code, status, failure, words
) -> None:
    fake.fail_next(code, status)
    exc = await failure_of(provider, Recorder(request()))
    assert exc.failure is failure
    assert exc.retry_after is None  # not retried, no failover
    assert words in exc.message
    assert "\n" not in exc.message
    assert len(fake.submits) == 1 and fake.tasks == {}


async def test_a_key_dashscope_does_not_know_is_rejected(fake: FakeDashScope) -> None:
    cfg = DashScopeConfig(base_url=fake.base_url, keys=[ApiKeyConfig(key="sk-wrong-123")])
    p = DashScopeProvider(cfg)
    try:
        exc = await failure_of(p, Recorder(request()))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR and exc.retry_after is None
    assert exc.message.startswith("the DashScope key was rejected")


async def test_invalid_size_is_bad_input(fake: FakeDashScope, provider: DashScopeProvider):
    exc = await failure_of(provider, Recorder(request(width=2048, height=2048)))
    assert exc.failure is FailureClass.BAD_INPUT
    assert "size" in exc.message


@pytest.mark.parametrize(
    ("code", "status"),
    [("InternalError", 500), ("InternalError.Algo", 500), ("ServiceUnavailable", 503)],
)
async def test_server_errors_are_transient(fake: FakeDashScope, code: str, status: int) -> None:
    p = DashScopeProvider(make_config(fake, max_retries=0))
    fake.fail_next(code, status)
    try:
        exc = await failure_of(p, Recorder(request()))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR
    assert exc.retry_after == 0.0  # retryable: back off, or fail over


async def test_throttle_retried_then_succeeds(fake: FakeDashScope, provider) -> None:
    fake.throttle(times=2, retry_after=0.2)
    fake.throttle(on="task", retry_after="0.05")
    started = time.monotonic()
    rec = await run_job(provider, Recorder(request()))
    assert rec.images
    assert [c.status for c in fake.submits] == [429, 429, 200]
    assert time.monotonic() - started >= 0.4  # Retry-After honoured
    assert 429 in [c.status for c in fake.polls]


async def test_throttle_past_retries_is_transient(fake: FakeDashScope) -> None:
    p = DashScopeProvider(make_config(fake, max_retries=1))
    fake.throttle(times=5, retry_after="0.01", code="Throttling.AllocationQuota")
    try:
        exc = await failure_of(p, Recorder(request()))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR and exc.retry_after is not None
    assert "rate-limiting" in exc.message
    assert len(fake.submits) == 2


@pytest.mark.parametrize(
    ("code", "failure", "transient"),
    [
        ("DataInspectionFailed", FailureClass.REFUSED, False),
        ("InvalidParameter", FailureClass.BAD_INPUT, False),
        ("InternalError.Algo", FailureClass.PROVIDER_ERROR, True),
        ("Arrearage", FailureClass.PROVIDER_ERROR, False),
    ],
)
async def test_failed_task_is_mapped(fake: FakeDashScope, provider, code, failure, transient):
    fake.fail_task(code)
    rec = Recorder(request())
    exc = await failure_of(provider, rec)
    assert exc.failure is failure
    assert (exc.retry_after is not None) is transient
    assert rec.submissions and rec.images == {}
    assert len(fake.submits) == 1  # a failed task is not paid for again


async def test_unknown_task(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    rec = Recorder(request(), on_submitted=fake.forget)
    exc = await failure_of(provider, rec)
    assert exc.failure is FailureClass.PROVIDER_ERROR and exc.retry_after is None
    assert "expire" in exc.message


async def test_cancelled_on_dashscope(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    def cancel(task_id: str) -> None:
        fake.tasks[task_id].canceled = True

    rec = Recorder(request(), on_submitted=cancel)
    exc = await failure_of(provider, rec)
    assert exc.failure is FailureClass.PROVIDER_ERROR and "cancelled" in exc.message


async def test_some_pictures_failed(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    fake.fail_results({1, 2})
    rec = await run_job(provider, Recorder(request(n=4)))
    assert sorted(rec.images) == [0, 3]  # the core refunds the missing two


async def test_every_picture_failed(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    fake.fail_results({0, 1}, code="DataInspectionFailed")
    exc = await failure_of(provider, Recorder(request(n=2)))
    assert exc.failure is FailureClass.REFUSED


async def test_expired_result_link(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    fake.result_ttl_s = -1.0
    exc = await failure_of(provider, Recorder(request()))
    assert exc.failure is FailureClass.PROVIDER_ERROR
    assert "HTTP 403" in exc.message and "expired" in exc.message
    assert fake.downloads == [(f"/{next(iter(fake.tasks))}/0.png", 403)]  # not retried


async def test_unreachable_service_is_transient(fake: FakeDashScope) -> None:
    cfg = make_config(fake, max_retries=0, base_url="http://127.0.0.1:9")
    p = DashScopeProvider(cfg)
    try:
        exc = await failure_of(p, Recorder(request()))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR and exc.retry_after == 0.0
    assert exc.message.startswith("DashScope could not be reached")


def test_classify_never_leaks_more_than_a_line() -> None:
    exc = classify(400, "InvalidParameter", "bad\nthing " + "x" * 500)
    assert "\n" not in exc.message and len(exc.message) < 220
    assert classify(None, "", "").failure is FailureClass.PROVIDER_ERROR


# --- cancel ---------------------------------------------------------------------------------------


async def test_cancel_a_queued_task(fake: FakeDashScope) -> None:
    fake.queue_delay_s = 5.0
    p = DashScopeProvider(make_config(fake, keys={"sk-a": 1, "sk-b": 1}))
    p.pool.used["k1"] = 3  # so it goes to k2, not the first key
    rec = Recorder(request())
    job = asyncio.create_task(p.generate(rec))
    try:
        while not rec.submissions:
            await asyncio.sleep(0.01)
        job.cancel()  # as the core does: stop waiting, then cancel
        with pytest.raises(asyncio.CancelledError):
            await job
        task_id = rec.task_id
        assert task_id is not None
        await p.cancel(task_id)
    finally:
        await p.aclose()
    [cancel] = fake.calls_to("POST", "/api/v1/tasks/")
    assert cancel.path == f"/api/v1/tasks/{task_id}/cancel"
    assert cancel.key == "sk-b" and cancel.status == 200
    assert fake.tasks[task_id].status(time.monotonic()) == "CANCELED"
    assert p.pool.busy == {"k1": 0, "k2": 0}


async def test_cancel_after_it_started_is_harmless(fake: FakeDashScope, provider) -> None:
    rec = await run_job(provider, Recorder(request()))
    assert rec.task_id is not None
    await provider.cancel(rec.task_id)  # finished: DashScope says no, quietly ignored
    [cancel] = fake.calls_to("POST", "/api/v1/tasks/")
    assert cancel.status == 400


# --- the fake itself ------------------------------------------------------------------------------


async def test_fake_refuses_synchronous_calls(fake: FakeDashScope) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            fake.base_url + "/api/v1/services/aigc/text2image/image-synthesis",
            headers={"Authorization": "Bearer sk-a"},
            json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": "x"}},
        )
    assert r.status_code == 403
    assert r.json()["code"] == "AccessDenied" and r.json()["message"] == ERR_SYNC


async def test_official_sdk_against_the_fake(fake: FakeDashScope, monkeypatch) -> None:
    dashscope = pytest.importorskip("dashscope")
    from dashscope import ImageSynthesis

    monkeypatch.setattr(dashscope, "base_http_api_url", fake.base_url + "/api/v1")
    fake.queue_delay_s = 0.3

    def sdk_flow() -> tuple[Any, Any, Any]:
        task = ImageSynthesis.async_call(
            model="wanx2.1-t2i-turbo",
            prompt="a lighthouse at dusk",
            negative_prompt="text",
            n=2,
            size="640*512",
            seed=9,
            prompt_extend=False,
            api_key="sk-a",
        )
        first = ImageSynthesis.fetch(task, api_key="sk-a")
        done = ImageSynthesis.wait(task, api_key="sk-a")
        return task, first, done

    task, first, done = await asyncio.to_thread(sdk_flow)
    assert task.status_code == 200, task
    assert task.output.task_status == "PENDING" and task.output.task_id
    assert first.status_code == 200 and first.output.task_status in ("PENDING", "RUNNING")
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED"
    assert len(done.output.results) == 2
    assert done.usage.image_count == 2
    submit = fake.submits[0]
    assert submit.headers["X-DashScope-Async"] == "enable"
    assert submit.json["parameters"] == {
        "n": 2,
        "size": "640*512",
        "seed": 9,
        "prompt_extend": False,
    }
    assert submit.json["input"] == {"prompt": "a lighthouse at dusk", "negative_prompt": "text"}
    async with httpx.AsyncClient() as client:
        r = await client.get(done.output.results[0].url)
    assert r.status_code == 200 and size_of(r.content) == (640, 512)

    def sdk_errors() -> tuple[Any, Any, Any]:
        bad_key = ImageSynthesis.async_call(
            model="wanx2.1-t2i-turbo", prompt="x", api_key="sk-nope"
        )
        edit = ImageSynthesis.async_call(
            model="wanx2.1-imageedit",
            function="description_edit",
            prompt="make it night",
            base_image_url="data:image/png;base64," + base64.b64encode(png(512, 640)).decode(),
            n=1,
            api_key="sk-b",
        )
        cancelled = ImageSynthesis.cancel(edit, api_key="sk-b")
        return bad_key, edit, cancelled

    bad_key, edit, cancelled = await asyncio.to_thread(sdk_errors)
    assert bad_key.status_code == 401 and bad_key.code == "InvalidApiKey"
    assert edit.status_code == 200
    assert fake.submits[-1].path.endswith("/image2image/image-synthesis")
    assert cancelled.status_code == 200
    assert fake.tasks[edit.output.task_id].canceled


# --- issue 17: account problems, account limits, regions, limits, newer models ---------------


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("PrepaidBillOverdue", 429, None),
        ("PostpaidBillOverdue", 429, None),
        ("CommodityNotPurchased", 429, None),
        ("Throttling.AllocationQuota", 429, FREE_QUOTA_MESSAGE),
        ("AllocationQuota.FreeTierOnly", 403, None),
    ],
)
async def test_account_problems_fail_at_once(
    fake: FakeDashScope, provider: DashScopeProvider, caplog, code, status, message
) -> None:
    """Retrying cannot cure these 429/403s: one request, no retry, the reason in the log
    for the operator and a plain line for the person, refunded by default."""
    fake.fail_next(code, status, message, times=5)
    with caplog.at_level("ERROR", logger="adapters.providers.dashscope"):
        exc = await failure_of(provider, Recorder(request()))
    assert exc.failure is FailureClass.PROVIDER_ERROR and exc.retry_after is None
    assert len(fake.submits) == 1
    assert "account needs the operator's attention" in exc.message
    assert code not in exc.message and "rate-limiting" not in exc.message
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(code in line and "account problem" in line for line in logged)
    assert exc.failure in Config().credits.refunds.txt2img  # given back by default


async def test_per_minute_allocation_quota_is_retried(fake: FakeDashScope, provider) -> None:
    fake.fail_next(
        "Throttling.AllocationQuota", 429, ALLOCATED_QUOTA_MESSAGE, times=2, retry_after=0.01
    )
    rec = await run_job(provider, Recorder(request()))
    assert rec.images
    assert [c.status for c in fake.submits] == [429, 429, 200]


@pytest.mark.parametrize(
    ("accounts", "expected"),
    [
        ({"sk-a": "acct", "sk-b": "acct"}, {"acct": 2}),
        ({"sk-a": "acct-1", "sk-b": "acct-2"}, {"acct-1": 2, "acct-2": 2}),
    ],
)
async def test_limits_are_per_account(accounts, expected) -> None:
    """2 tasks in progress and paced submissions per Alibaba Cloud account, whatever the
    keys: two keys of one account run 2 tasks at once in all, two accounts 2 each."""
    qps = 10.0
    async with FakeDashScope(
        keys=set(KEYS), accounts=accounts, account_qps=qps, queue_delay_s=0.05, run_delay_s=0.3
    ) as fake:
        cfg = make_config(
            fake,
            keys={"sk-a": 2, "sk-b": 2},
            accounts=accounts,
            account_submits_per_s=qps,
        )
        p = DashScopeProvider(cfg)
        try:
            recs = [Recorder(request(job_id=i, seed=i)) for i in range(6)]
            await asyncio.wait_for(asyncio.gather(*(p.generate(r) for r in recs)), 20)
        finally:
            await p.aclose()
        assert all(len(r.images) == 1 for r in recs)
        assert dict(fake.max_running_per_account) == expected
        assert [c.status for c in fake.submits] == [200] * 6  # never throttled
        for times in fake.submit_times.values():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g >= 1 / qps - 0.01 for g in gaps)


def test_plain_string_keys_still_accepted() -> None:
    cfg = DashScopeConfig(keys=["sk-1", {"key": "sk-2", "account": "a"}])  # type: ignore[list-item]
    assert [(k.key, k.account) for k in cfg.keys] == [("sk-1", ""), ("sk-2", "a")]
    p = DashScopeProvider(cfg)
    assert p.account_of == {"key1": "key1", "key2": "a"}


def test_international_endpoint_never_offers_the_beijing_editor() -> None:
    cfg = DashScopeConfig(base_url="https://dashscope-intl.aliyuncs.com", keys=["sk-1"])  # type: ignore[list-item]
    p = DashScopeProvider(cfg)
    names = {m.name for m in p.capabilities().models}
    assert "wan2.5-i2i-preview" in names
    assert not any(n.startswith("wanx2.1-imageedit") for n in names)
    router = Router(Config(providers=ProvidersConfig(default="dashscope")), {"dashscope": p})
    route = router.resolve(GenerationParams(prompt="x"), "img2img", init_size=(800, 800))
    assert route.model == "wanx2.1-t2i-turbo"  # the default; the job goes to wan2.5 (below)
    with pytest.raises(BadInput) as info:
        router.resolve(
            GenerationParams(prompt="x", model="wanx2.1-imageedit"), "img2img", (800, 800)
        )
    assert "wan2.5-i2i-preview" in info.value.message  # the one it can use, named
    beijing = DashScopeProvider(DashScopeConfig(keys=["sk-1"]))  # type: ignore[list-item]
    assert beijing.edit_model == "wanx2.1-imageedit"


async def test_img2img_in_singapore_goes_to_wan25() -> None:
    async with FakeDashScope(keys=set(KEYS), region="singapore") as fake:
        p = DashScopeProvider(make_config(fake, region="singapore"))
        try:
            req = request(kind="img2img", init_image=png(600, 400), width=768, height=512)
            rec = await run_job(p, Recorder(req))
        finally:
            await p.aclose()
    [submit] = fake.submits
    assert submit.path.endswith("/image2image/image-synthesis") and submit.status == 200
    assert submit.json["model"] == "wan2.5-i2i-preview"
    assert submit.json["input"]["images"][0].startswith("data:image/png;base64,")
    assert "function" not in submit.json["input"]
    assert rec.images[0].extra["model"] == "wan2.5-i2i-preview"


async def test_fake_refuses_the_beijing_editor_in_singapore() -> None:
    async with FakeDashScope(keys=set(KEYS), region="singapore") as fake:
        p = DashScopeProvider(make_config(fake, edit_model="wanx2.1-imageedit"))
        try:  # configured as Beijing (a local URL), but the service is in Singapore
            req = request(kind="img2img", init_image=png(600, 400), width=768, height=512)
            exc = await failure_of(p, Recorder(req))
        finally:
            await p.aclose()
    assert exc.failure is FailureClass.BAD_INPUT


def _router(fake: FakeDashScope, **images: Any) -> Router:
    from bot.config import ImagesConfig

    config = Config(providers=ProvidersConfig(default="dashscope"), images=ImagesConfig(**images))
    return Router(config, {"dashscope": DashScopeProvider(make_config(fake))})


def test_long_prompts_are_refused_before_charging(fake: FakeDashScope) -> None:
    router = _router(fake)
    router.resolve(GenerationParams(prompt="x" * 800, negative="y" * 500), "txt2img")
    with pytest.raises(BadInput) as info:
        router.resolve(GenerationParams(prompt="x" * 801), "txt2img")
    assert "800" in info.value.message and "801" in info.value.message
    with pytest.raises(BadInput) as info:
        router.resolve(GenerationParams(prompt="x", negative="y" * 501), "txt2img")
    assert "500" in info.value.message
    with pytest.raises(BadInput):
        router.resolve(GenerationParams(prompt="x" * 900), "img2img", init_size=(800, 800))


async def test_fake_cuts_long_prompts_silently(fake: FakeDashScope) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            fake.base_url + "/api/v1/services/aigc/text2image/image-synthesis",
            headers={"Authorization": "Bearer sk-a", "X-DashScope-Async": "enable"},
            json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": "p" * 900}},
        )
    assert r.status_code == 200
    assert len(fake.tasks[r.json()["output"]["task_id"]].prompt) == 800


def test_sizes_over_two_megapixels(fake: FakeDashScope) -> None:
    router = _router(fake, default_size=1440)
    with pytest.raises(BadInput) as info:
        router.resolve(GenerationParams(prompt="x", width=1440, height=1440), "txt2img")
    assert "1440x1440" in info.value.message
    square = router.resolve(GenerationParams(prompt="x", aspect="1:1"), "txt2img")
    assert square.width * square.height <= 2_000_000 and square.width % 8 == 0
    ok = router.resolve(GenerationParams(prompt="x", width=1440, height=1384), "txt2img")
    assert (ok.width, ok.height) == (1440, 1384)


async def test_wan25_t2i_size_rule(fake: FakeDashScope, provider: DashScopeProvider) -> None:
    router = _router(fake)
    model = "wan2.5-t2i-preview"
    with pytest.raises(BadInput):  # 0.26 megapixels: below 768*768
        router.resolve(GenerationParams(prompt="x", model=model, width=512, height=512), "txt2img")
    wide = router.resolve(
        GenerationParams(prompt="x", model=model, width=2048, height=512), "txt2img"
    )
    assert (wide.width, wide.height) == (2048, 512)  # its own rule: sides past 1440
    with pytest.raises(BadInput):  # 5:1
        router.resolve(GenerationParams(prompt="x", model=model, width=2560, height=512), "txt2img")
    fitted = router.resolve(GenerationParams(prompt="x", model=model, aspect="2:1"), "txt2img")
    assert fitted.width * fitted.height >= 768 * 768  # 1024x512 scaled up to fit
    rec = await run_job(
        provider, Recorder(request(model=model, width=wide.width, height=wide.height))
    )
    assert size_of(rec.images[0].data) == (wide.width, wide.height)
    assert fake.submits[0].json["parameters"]["size"] == f"{wide.width}*{wide.height}"


@pytest.mark.parametrize("model", ["wan2.2-t2i-flash", "wan2.2-t2i-plus"])
async def test_wan22_models(fake: FakeDashScope, provider: DashScopeProvider, model) -> None:
    rec = await run_job(provider, Recorder(request(model=model)))
    assert fake.submits[0].json["model"] == model and rec.images[0].extra["model"] == model


async def test_upscale_and_outpaint_edit_functions(fake: FakeDashScope) -> None:
    """super_resolution (an upscale) and expand (outpaint) as models the router offers."""
    p = DashScopeProvider(make_config(fake, upscale_factor=3, expand_scale=1.25))
    router = Router(Config(providers=ProvidersConfig(default="dashscope")), {"dashscope": p})
    try:
        for model in ("wanx2.1-imageedit:super_resolution", "wanx2.1-imageedit:expand"):
            route = router.resolve(
                GenerationParams(prompt="x", model=model), "img2img", init_size=(600, 600)
            )
            assert route.model == model
            req = request(
                kind="img2img",
                model=model,
                init_image=png(600, 600),
                width=600,
                height=600,
                strength=0.4,
            )
            await run_job(p, Recorder(req))
    finally:
        await p.aclose()
    up, out = (c.json for c in fake.submits)
    assert up["model"] == out["model"] == "wanx2.1-imageedit"
    assert up["input"]["function"] == "super_resolution"
    assert up["parameters"]["upscale_factor"] == 3 and "strength" not in up["parameters"]
    assert out["input"]["function"] == "expand"
    assert {k: v for k, v in out["parameters"].items() if k.endswith("_scale")} == {
        "top_scale": 1.25,
        "bottom_scale": 1.25,
        "left_scale": 1.25,
        "right_scale": 1.25,
    }


def test_edit_input_stays_under_ten_megabytes() -> None:
    import os

    from adapters.providers.dashscope import _fit_input

    noise = Image.frombytes("RGBA", (1440, 1440), os.urandom(1440 * 1440 * 4))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    url = _fit_input(buf.getvalue(), 1440, 1440)
    assert len(url) <= 10 * 1024 * 1024
    assert url.startswith("data:image/jpeg;base64,")


async def test_inpainting_with_a_mask_at_the_provider(fake: FakeDashScope, provider) -> None:
    """description_edit_with_mask: the provider side (no chat action gives a mask yet)."""
    model = "wanx2.1-imageedit:description_edit_with_mask"
    assert model not in {m.name for m in provider.capabilities().models}
    mask = png(300, 200, (0, 0, 0))
    req = request(kind="img2img", model=model, init_image=png(600, 400), mask=mask)
    rec = await run_job(provider, Recorder(req))
    [submit] = fake.submits
    assert submit.status == 200 and rec.images
    body = submit.json
    assert body["input"]["function"] == "description_edit_with_mask"
    sent = base64.b64decode(body["input"]["mask_image_url"].partition(",")[2])
    assert size_of(sent) == (768, 512)  # resized with the picture
    exc = await failure_of(
        provider, Recorder(request(kind="img2img", model=model, init_image=mask))
    )
    assert exc.failure is FailureClass.BAD_INPUT and len(fake.submits) == 1
