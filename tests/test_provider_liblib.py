"""Contract tests of the LiblibAI provider against the loopback fake (tests/fakes/liblib.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.providers.liblib import (
    CUSTOM_IMG2IMG_TEMPLATE_UUID,
    SAMPLERS,
    LiblibProvider,
    sampler_number,
)
from bot.config import ApiKeyConfig, LiblibConfig, LiblibModelConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import ResolvedRequest, ResultImage
from tests.fakes import liblib as fl
from tests.fakes.liblib import FakeLiblib
from tests.fakes.provider_run import Recorder


def request(**kw: Any) -> ResolvedRequest:
    values: dict[str, Any] = {
        "job_id": 7,
        "kind": "txt2img",
        "prompt": "a lighthouse at dawn",
        "negative": "blurry",
        "width": 768,
        "height": 1024,
        "seed": 1234,
        "n": 1,
        "model": "star3",
    }
    values.update(kw)
    return ResolvedRequest(**values)


def png(width: int = 640, height: int = 512) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


ANIME = LiblibModelConfig(
    checkpoint_id="0ea388c7eb854be3ba3c6f65aac6bfd3",
    loras=[
        {"model_id": "31360f2f031b4ff6b589412a52713fcf", "weight": 0.6},
        {"model_id": "365e700254dd40bbb90d5e78c152ec7f", "weight": 0.3},
    ],
    sampler=15,
    description="anime checkpoint",
)


def config(fake: FakeLiblib, keys: list[tuple[str, str, str, int]] | None = None, **kw: Any):
    keys = keys or [("k1", "ak1", "sk1", 2)]
    values: dict[str, Any] = {
        "base_url": fake.base_url,
        "keys": [
            ApiKeyConfig(name=name, key=ak, secret=sk, concurrency=c) for name, ak, sk, c in keys
        ],
        "poll_first_s": 0.02,
        "poll_factor": 1.5,
        "poll_max_interval_s": 0.1,
        "max_retries": 3,
        "request_timeout_s": 5,
        "models": {"anime": ANIME},
    }
    values.update(kw)
    return LiblibConfig(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLiblib]:
    async with FakeLiblib(keys={"ak1": "sk1", "ak2": "sk2"}) as f:
        yield f


async def provider_for(fake: FakeLiblib, **kw: Any) -> LiblibProvider:
    p = LiblibProvider(config(fake, **kw))
    p.submit_interval_s = 0.0
    return p


async def run_job(p: LiblibProvider, req: ResolvedRequest, **kw: Any) -> Recorder:
    run = Recorder(req, **kw)
    await p.generate(run)
    return run


async def failure_of(p: LiblibProvider, req: ResolvedRequest) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await p.generate(Recorder(req))
    return info.value


def signed(fake: FakeLiblib, path: str, ak: str = "ak1", sk: str = "sk1", **over: str):
    ts = str(int(time.time() * 1000))
    nonce = uuid.uuid4().hex
    query = {
        "AccessKey": ak,
        "Signature": fl.liblib_signature(sk, path, ts, nonce),
        "Timestamp": ts,
        "SignatureNonce": nonce,
    }
    query.update(over)
    return query


# --- capabilities ------------------------------------------------------------------------


async def test_capabilities(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        caps = p.capabilities()
        assert caps.kinds == frozenset({"txt2img", "img2img"})
        assert [m.name for m in caps.models] == ["star3", "anime"]
        assert caps.default_model == "star3"
        assert (caps.max_images, caps.min_size, caps.max_size, caps.size_multiple) == (
            4,
            512,
            2048,
            8,
        )
    finally:
        await p.aclose()


def test_sampler_mapping() -> None:
    assert sampler_number("DPM++ 2M Karras") == 15
    assert sampler_number("Euler a") == 0
    assert sampler_number("  euler   A ") == 0
    assert sampler_number("DDIM") == 17
    assert sampler_number("15") == 15
    assert sampler_number("Restart") == 29
    assert sampler_number("DPM++ 2M SDE Karras") == 20
    assert sampler_number("DPM++ 3M SDE Exponential") == 28
    assert sampler_number("LCM") == 30
    assert sampler_number("22") is None and sampler_number("26") is None
    assert sorted(SAMPLERS.values()) == [*range(22), 24, 25, 27, 28, 29, 30]


# --- signing ------------------------------------------------------------------------------


async def test_every_request_is_signed_as_documented(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        await run_job(p, request())
    finally:
        await p.aclose()
    assert fake.calls and all(c.code == 0 for c in fake.calls)
    now_ms = time.time() * 1000
    for call in fake.calls:
        q = call.query
        assert set(q) == {"AccessKey", "Signature", "Timestamp", "SignatureNonce"}
        assert q["AccessKey"] == "ak1"
        content = f"{call.path}&{q['Timestamp']}&{q['SignatureNonce']}".encode()
        digest = hmac.new(b"sk1", content, hashlib.sha1).digest()
        assert q["Signature"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert "=" not in q["Signature"] and "+" not in q["Signature"]
        assert abs(now_ms - int(q["Timestamp"])) < 60_000
    nonces = [c.query["SignatureNonce"] for c in fake.calls]
    assert len(set(nonces)) == len(nonces)


async def test_fake_refuses_bad_stale_and_replayed_signatures(fake: FakeLiblib) -> None:
    url = fake.base_url + fl.STATUS
    body = {"generateUuid": "nope"}
    async with httpx.AsyncClient() as client:
        bad = await client.post(url, params=signed(fake, fl.STATUS, sk="wrong"), json=body)
        stale_ts = str(int(time.time() * 1000) - 6 * 60 * 1000)
        nonce = "n1"
        stale = {
            "AccessKey": "ak1",
            "Timestamp": stale_ts,
            "SignatureNonce": nonce,
            "Signature": fl.liblib_signature("sk1", fl.STATUS, stale_ts, nonce),
        }
        old = await client.post(url, params=stale, json=body)
        once = signed(fake, fl.STATUS)
        first = await client.post(url, params=once, json=body)
        again = await client.post(url, params=once, json=body)
        stranger = await client.post(url, params=signed(fake, fl.STATUS, ak="ak9"), json=body)
    assert bad.status_code == 401 and bad.json()["code"] == fl.CODE_SIGNATURE
    assert old.json()["code"] == fl.CODE_SIGNATURE and "Timestamp" in old.json()["msg"]
    assert first.json()["code"] == fl.CODE_NOT_FOUND  # signature fine, no such task
    assert again.json()["code"] == fl.CODE_SIGNATURE and "Nonce" in again.json()["msg"]
    assert stranger.json()["code"] == fl.CODE_SIGNATURE


async def test_wrong_secret_is_a_clear_key_error_that_never_shows_the_key(
    fake: FakeLiblib,
) -> None:
    p = await provider_for(fake, keys=[("k1", "ak1", "not-the-secret", 1)])
    try:
        exc = await failure_of(p, request())
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR
    assert exc.retry_after is None
    assert "LiblibAI key was rejected" in exc.message
    assert "not-the-secret" not in exc.message and "ak1" not in exc.message
    assert not fake.tasks


# --- Star-3 Alpha -------------------------------------------------------------------------


async def test_star3_txt2img(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        run = await run_job(p, request(n=2, sampler="Euler a"))
    finally:
        await p.aclose()
    (submit,) = fake.submits()
    assert submit.path == "/api/generate/webui/text2img/ultra"
    assert submit.body == {
        "templateUuid": "5d7e67009b344550bc1aa6ccbfa1d7f4",
        "generateParams": {
            "prompt": "a lighthouse at dawn",
            "imageSize": {"width": 768, "height": 1024},
            "imgCount": 2,
            "steps": 30,
        },
    }
    task = fake.tasks[run.task_id]
    assert {task_id for task_id, _ in run.submissions} == {task.uuid}
    assert run.state["key"] == "k1"
    assert sorted(run.images) == [0, 1]
    for i, result in run.images.items():
        with Image.open(io.BytesIO(result.data)) as img:
            assert img.size == (768, 1024)
        assert result.seed == task.seeds[i]
    assert len(fake.downloads) == 2
    assert run.fractions == sorted(run.fractions) and 0 < run.fractions[-1] <= 0.95


async def test_star3_img2img_uploads_the_input_first(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    source = png(640, 512)
    try:
        run = await run_job(p, request(kind="img2img", init_image=source, strength=0.5))
    finally:
        await p.aclose()
    (sig_call,) = fake.calls_to(fl.UPLOAD_SIGNATURE)
    assert sig_call.body["extension"] == "png" and sig_call.body["name"].startswith("sdhost-7-")
    (key,) = fake.uploads
    assert fake.uploads[key] == source
    (submit,) = fake.submits()
    assert submit.path == "/api/generate/webui/img2img/ultra"
    assert submit.body == {
        "templateUuid": "07e00af4fc464c7ab55ff906f8acf1b7",
        "generateParams": {
            "prompt": "a lighthouse at dawn",
            "sourceImage": f"{fake.cdn_url}/{key}",
            "imgCount": 1,
        },
    }
    with Image.open(io.BytesIO(run.images[0].data)) as img:
        assert img.size == (640, 512)  # Star-3 img2img follows the source picture


async def test_fake_refuses_a_data_url_as_source_image(fake: FakeLiblib) -> None:
    body = {
        "templateUuid": fl.STAR3_IMG2IMG_TEMPLATE,
        "generateParams": {
            "prompt": "x",
            "sourceImage": "data:image/png;base64," + base64.b64encode(png()).decode(),
            "imgCount": 1,
        },
    }
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            fake.base_url + fl.STAR3_IMG2IMG, params=signed(fake, fl.STAR3_IMG2IMG), json=body
        )
    assert answer.json()["code"] == fl.CODE_PARAM
    assert "sourceImage" in answer.json()["msg"]


# --- custom models ------------------------------------------------------------------------


async def test_custom_model_with_loras_and_sampler_mapping(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        run = await run_job(
            p, request(model="anime", sampler="Euler a", steps=25, cfg=6.5, n=3, seed=99)
        )
        default = await run_job(p, request(model="anime"))
    finally:
        await p.aclose()
    first, second = fake.submits()
    assert first.path == "/api/generate/webui/text2img"
    assert first.body == {
        "templateUuid": "e10adc3949ba59abbe56e057f20f883e",
        "generateParams": {
            "checkPointId": "0ea388c7eb854be3ba3c6f65aac6bfd3",
            "prompt": "a lighthouse at dawn",
            "negativePrompt": "blurry",
            "sampler": 0,
            "steps": 25,
            "cfgScale": 6.5,
            "clipSkip": 2,
            "width": 768,
            "height": 1024,
            "imgCount": 3,
            "seed": 99,
            "randnSource": 0,
            "additionalNetwork": [
                {"modelId": "31360f2f031b4ff6b589412a52713fcf", "weight": 0.6},
                {"modelId": "365e700254dd40bbb90d5e78c152ec7f", "weight": 0.3},
            ],
        },
    }
    assert [run.images[i].seed for i in range(3)] == [99, 100, 101]
    params = second.body["generateParams"]
    assert (params["sampler"], params["steps"], params["cfgScale"]) == (15, 20, 7.0)
    assert len(default.images) == 1


async def test_custom_img2img(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        await run_job(
            p,
            request(model="anime", kind="img2img", init_image=png(), strength=0.35, sampler="DDIM"),
        )
    finally:
        await p.aclose()
    (submit,) = fake.submits()
    (key,) = fake.uploads
    assert submit.path == "/api/generate/webui/img2img"
    assert submit.body["templateUuid"] == CUSTOM_IMG2IMG_TEMPLATE_UUID
    params = submit.body["generateParams"]
    assert params["sourceImage"] == f"{fake.cdn_url}/{key}"
    assert params["denoisingStrength"] == 0.35
    assert (params["resizedWidth"], params["resizedHeight"]) == (768, 1024)
    assert params["sampler"] == 17
    assert "width" not in params


async def test_unknown_sampler_is_refused_before_any_request(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    run = Recorder(request(model="anime", sampler="DPM++ 2M SDE"))
    try:
        with pytest.raises(ProviderFailure) as info:
            await p.generate(run)
    finally:
        await p.aclose()
    assert info.value.failure is FailureClass.BAD_INPUT
    assert "DPM++ 2M SDE" in info.value.message and "DPM++ 2M Karras" in info.value.message
    assert fake.calls == [] and run.task_id is None


async def test_unknown_model_is_refused_before_any_request(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request(model="nope"))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.BAD_INPUT and "star3, anime" in exc.message
    assert fake.calls == []


# --- polling, resuming, keys --------------------------------------------------------------


async def test_polls_back_off(fake: FakeLiblib) -> None:
    fake.wait_s, fake.run_s = 0.2, 0.5
    p = await provider_for(fake, poll_first_s=0.05, poll_factor=2.0, poll_max_interval_s=0.4)
    try:
        await run_job(p, request())
    finally:
        await p.aclose()
    times = [c.t for c in fake.calls_to(fl.STATUS)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert p.polls == [len(times)]
    assert 3 <= len(times) <= 7  # a fixed 0.05 s interval would have taken ~14
    assert gaps[1] > gaps[0] * 1.4  # the wait grows ...
    assert max(gaps) < 0.4 * 1.1 + 0.1  # ... up to the cap


async def test_resume_polls_the_stored_task_with_its_own_key(fake: FakeLiblib) -> None:
    keys = [("k1", "ak1", "sk1", 1), ("k2", "ak2", "sk2", 1)]
    fake.wait_s, fake.run_s = 0.3, 0.2
    first = await provider_for(fake, keys=keys)
    run = Recorder(request(n=2))
    try:
        async with first.pool.use("k1"):  # k1 busy: the task goes to k2
            job = asyncio.create_task(first.generate(run))
            await asyncio.wait_for(run.task_known.wait(), 5)
            job.cancel()  # the process "restarts" while the task runs remotely
            with pytest.raises(asyncio.CancelledError):
                await job
    finally:
        await first.aclose()
    assert run.state["key"] == "k2"
    second = await provider_for(fake, keys=keys)  # a fresh process: k1 would be picked
    resumed = Recorder(run.request, task_id=run.task_id, state=run.state)
    resumed.images[0] = ResultImage(data=b"kept")  # delivered before the restart
    try:
        await second.generate(resumed)
    finally:
        await second.aclose()
    assert len(fake.submits()) == 1
    assert {task_id for task_id, _ in resumed.submissions} <= {run.task_id}  # no new task
    statuses = fake.calls_to(fl.STATUS)
    assert statuses and {c.access_key for c in statuses} == {"ak2"}
    assert all(c.code == 0 for c in statuses)
    assert resumed.images[0].data == b"kept" and resumed.images[1].data
    assert len(fake.downloads) == 1  # only the picture it did not have yet


async def test_two_keys_one_slot_each_never_run_two_tasks_on_a_key(fake: FakeLiblib) -> None:
    keys = [("k1", "ak1", "sk1", 1), ("k2", "ak2", "sk2", 1)]
    p = await provider_for(fake, keys=keys)
    try:
        runs = await asyncio.gather(*(run_job(p, request(job_id=i)) for i in range(4)))
    finally:
        await p.aclose()
    assert all(len(r.images) == 1 for r in runs)
    assert fake.max_running_per_key == {"ak1": 1, "ak2": 1}
    assert {s.access_key for s in fake.submits()} == {"ak1", "ak2"}
    assert sum(p.pool.used.values()) == 4
    assert len(p.polls) == 4


async def test_submissions_on_a_key_are_spaced(fake: FakeLiblib) -> None:
    fake.submit_qps = 10  # at most one submission per 0.1 s per key, or "too many requests"
    p = await provider_for(fake, keys=[("k1", "ak1", "sk1", 3)])
    p.submit_interval_s = 0.2
    try:
        await asyncio.gather(*(run_job(p, request(job_id=i)) for i in range(3)))
    finally:
        await p.aclose()
    assert [c.code for c in fake.calls if c.path in fl.SUBMIT_PATHS] == [0, 0, 0]


# --- results ------------------------------------------------------------------------------


async def test_points_cost_and_balance_are_recorded(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        run = await run_job(p, request(n=2))
    finally:
        await p.aclose()
    assert fake.balance["ak1"] == 100_000 - 20
    for result in run.images.values():
        assert result.extra == {"points_cost": 20, "account_balance": 100_000 - 20}


async def test_audit_rejected_pictures_are_withheld(fake: FakeLiblib) -> None:
    fake.audit_s = 0.05
    fake.reject_next_task_images(1)
    p = await provider_for(fake)
    try:
        run = await run_job(p, request(n=3))
    finally:
        await p.aclose()
    assert sorted(run.images) == [0, 1]  # the third picture in the second slot
    assert not any(d.endswith("-1.png") for d in fake.downloads)
    assert len(fake.downloads) == 2


async def test_all_pictures_withheld_is_refused(fake: FakeLiblib) -> None:
    fake.reject_next_task_images(0)
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request())
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.REFUSED
    assert exc.message == "the picture did not pass LiblibAI's review"
    assert fake.downloads == []


async def test_expired_result_url_is_a_clear_failure() -> None:
    async with FakeLiblib(keys={"ak1": "sk1"}, result_ttl_s=0.0) as fake:
        p = await provider_for(fake)
        try:
            exc = await failure_of(p, request())
        finally:
            await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR
    assert "HTTP 403" in exc.message and "expired" in exc.message
    assert exc.retry_after is None


# --- errors -------------------------------------------------------------------------------


# Every documented code (§8), the class the refund policy sees and whether it is retried.
# The message is the same meaningless text for all: classification goes by the code.
DOCUMENTED = [
    (fl.CODE_SIGNATURE, 401, "provider_error", "key was rejected", False),
    (fl.CODE_FORBIDDEN, 403, "provider_error", "denied access", False),
    (fl.CODE_RATE_LIMIT, 429, "provider_error", "throttling", True),
    (fl.CODE_SIGNATURE, 200, "provider_error", "key was rejected", False),
    (fl.CODE_FORBIDDEN, 200, "provider_error", "denied access", False),
    (fl.CODE_RATE_LIMIT, 200, "provider_error", "throttling", True),
    (fl.CODE_PARAM, 200, "bad_input", "did not accept", False),
    (fl.CODE_KEY_EXPIRED, 200, "provider_error", "API plan has expired", False),
    (fl.CODE_USER_NOT_FOUND, 200, "provider_error", "key was rejected", False),
    (fl.CODE_POINTS, 200, "provider_error", "out of points", False),
    (fl.CODE_IMAGE_URL, 200, "bad_input", "over 10 MB", False),
    (fl.CODE_IMAGE_PROHIBITED, 200, "refused", "input picture", False),
    (fl.CODE_IMAGE_DOWNLOAD, 200, "provider_error", "could not download", True),
    (fl.CODE_COMPLETENESS, 200, "provider_error", "do not fit together", False),
    (fl.CODE_NOT_FOUND, 200, "provider_error", "no longer knows", False),
    (fl.CODE_SENSITIVE_PROMPT, 200, "refused", "refused the prompt", False),
    (fl.CODE_MODEL_NOT_ALLOWED, 200, "provider_error", "may not use this model", False),
    (fl.CODE_CONCURRENCY, 200, "provider_error", "too many tasks", True),
    (fl.CODE_SENSITIVE_RESULT, 200, "refused", "refused the result", False),
    (fl.CODE_TEMPLATE_NOT_FOUND, 200, "provider_error", "template", False),
    (fl.CODE_INTERNAL, 200, "provider_error", "internal error", True),
    (fl.CODE_MODEL_NOT_FOUND, 200, "provider_error", "does not know this model", False),
    (fl.CODE_RETRY, 200, "provider_error", "try again", True),
    (fl.CODE_INTERNAL, 502, "provider_error", "internal error", True),
    (1, 502, "provider_error", "server error", True),
    (1, 200, "provider_error", "LiblibAI failed", False),
]


@pytest.mark.parametrize(("code", "status", "failure", "text", "retryable"), DOCUMENTED)
async def test_submit_errors_are_classified_by_code(
    fake: FakeLiblib, code: int, status: int, failure: str, text: str, retryable: bool
) -> None:
    fake.fail_next(code, "访问受限 (not what it seems)", status, times=10, retry_after=0.01)
    p = await provider_for(fake, max_retries=1)
    run = Recorder(request())
    try:
        with pytest.raises(ProviderFailure) as info:
            await p.generate(run)
    finally:
        await p.aclose()
    exc = info.value
    assert exc.failure == failure
    assert text in exc.message
    assert (exc.retry_after is not None) is retryable
    assert "sk1" not in exc.message and "ak1" not in exc.message
    assert "\n" not in exc.message
    assert run.task_id is None
    assert len(fake.calls) == (2 if retryable else 1)


async def test_fake_answers_signature_failures_both_ways() -> None:
    """401/403/429 as HTTP statuses (default) or as envelope codes; the provider reads both."""
    for http in (True, False):
        async with FakeLiblib(keys={"ak1": "sk1"}, http_statuses=http) as fake:
            p = await provider_for(fake, keys=[("k1", "ak1", "wrong", 1)])
            try:
                exc = await failure_of(p, request())
            finally:
                await p.aclose()
            [call] = fake.calls
            assert (call.status, call.code) == ((401 if http else 200), 401)
            assert "key was rejected" in exc.message and exc.retry_after is None


async def test_out_of_points_account(fake: FakeLiblib) -> None:
    fake.balance["ak1"] = 5
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request())
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR and "out of points" in exc.message


async def test_moderated_prompt_is_refused(fake: FakeLiblib) -> None:
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request(prompt="forbidden-word"))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.REFUSED


async def test_failed_task(fake: FakeLiblib) -> None:
    fake.fail_next_task("GPU 显存不足 (out of GPU memory)")
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request())
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.PROVIDER_ERROR
    assert exc.message == "LiblibAI could not make the picture: GPU 显存不足 (out of GPU memory)"
    assert exc.retry_after is None


async def test_timed_out_task(fake: FakeLiblib) -> None:
    fake.time_out_next_task()
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request())
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.TIMEOUT
    assert "LiblibAI timed out" in exc.message


async def test_throttled_then_ok(fake: FakeLiblib) -> None:
    fake.throttle(2, retry_after=0.01, path=fl.STAR3_TXT2IMG)
    fake.throttle(1, retry_after=0.01, path=fl.STATUS)
    p = await provider_for(fake)
    try:
        run = await run_job(p, request())
    finally:
        await p.aclose()
    assert len(run.images) == 1
    submits = [c.status for c in fake.calls_to(fl.STAR3_TXT2IMG)]
    assert submits == [429, 429, 200]
    assert fake.calls_to(fl.STATUS)[0].status == 429
    assert len(fake.tasks) == 1


async def test_status_errors_keep_the_task(fake: FakeLiblib) -> None:
    fake.fail_next(fl.CODE_NOT_FOUND, fl.MSG_NOT_FOUND, path=fl.STATUS)
    p = await provider_for(fake)
    run = Recorder(request())
    try:
        with pytest.raises(ProviderFailure) as info:
            await p.generate(run)
    finally:
        await p.aclose()
    assert run.task_id is not None  # submitted, so the core will not fail it over
    assert info.value.failure is FailureClass.PROVIDER_ERROR
    assert "no longer knows this task" in info.value.message
    assert p.polls == [1]


# --- issue 17: limits, five tasks, identity of listed pictures, F.1 templates ----------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"model": "anime", "width": 1600, "height": 1024}, "128 to 1536"),
        ({"model": "anime", "width": 120, "height": 512}, "128 to 1536"),
        ({"model": "star3", "width": 256, "height": 512}, "512 to 2048"),
        ({"model": "anime", "cfg": 15.5}, "CFG scale of 1 to 15"),
        ({"model": "anime", "steps": 61}, "1 to 60 steps"),
    ],
)
async def test_limits_are_refused_before_any_request(fake: FakeLiblib, kw, words) -> None:
    p = await provider_for(fake)
    try:
        exc = await failure_of(p, request(**kw))
    finally:
        await p.aclose()
    assert exc.failure is FailureClass.BAD_INPUT and words in exc.message
    assert fake.calls == []


async def test_limits_within_range_reach_the_fake(fake: FakeLiblib) -> None:
    clip1 = ANIME.model_copy(update={"clip_skip": 1})
    p = await provider_for(fake, models={"anime": ANIME, "clip1": clip1})
    try:
        await run_job(p, request(model="anime", width=1536, height=128, cfg=15.0, steps=60))
        await run_job(
            p, request(model="anime", kind="img2img", init_image=png(), width=2048, height=2048)
        )
        await run_job(p, request(model="clip1", sampler="LCM"))
    finally:
        await p.aclose()
    first, second, third = (c.body["generateParams"] for c in fake.submits())
    assert (first["width"], first["height"], first["clipSkip"]) == (1536, 128, 2)
    assert (second["resizedWidth"], second["resizedHeight"]) == (2048, 2048)
    assert (third["clipSkip"], third["sampler"]) == (1, 30)


async def test_fake_refuses_samplers_that_do_not_exist(fake: FakeLiblib) -> None:
    for number, code in ((22, fl.CODE_PARAM), (26, fl.CODE_PARAM), (27, 0)):
        body = {
            "templateUuid": fl.CUSTOM_TXT2IMG_TEMPLATE,
            "generateParams": {
                "checkPointId": "c",
                "prompt": "x",
                "sampler": number,
                "steps": 20,
                "cfgScale": 7,
                "clipSkip": 2,
                "width": 512,
                "height": 512,
                "imgCount": 1,
            },
        }
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                fake.base_url + fl.CUSTOM_TXT2IMG, params=signed(fake, fl.CUSTOM_TXT2IMG), json=body
            )
        assert answer.json()["code"] == code


def test_router_refuses_custom_sizes_before_charging(fake: FakeLiblib) -> None:
    from bot.config import Config, ProvidersConfig
    from bot.errors import BadInput
    from bot.params import GenerationParams
    from bot.routing import Router

    p = LiblibProvider(config(fake))
    router = Router(Config(providers=ProvidersConfig(default="liblib")), {"liblib": p})
    with pytest.raises(BadInput):
        router.resolve(
            GenerationParams(prompt="x", model="anime", width=2048, height=1024), "txt2img"
        )
    small = router.resolve(
        GenerationParams(prompt="x", model="anime", width=256, height=256), "txt2img"
    )
    assert (small.width, small.height) == (256, 256)
    star3 = router.resolve(GenerationParams(prompt="x", width=2048, height=1024), "txt2img")
    assert star3.model == "star3"


async def test_a_key_runs_five_tasks_at_once_by_default(fake: FakeLiblib) -> None:
    fake.wait_s, fake.run_s = 0.1, 0.4
    cfg = LiblibConfig(
        base_url=fake.base_url,
        keys=[{"key": "ak1", "secret": "sk1", "name": "k1"}],  # type: ignore[list-item]
        poll_first_s=0.05,
        poll_max_interval_s=0.1,
    )
    assert cfg.keys[0].concurrency == 5
    explicit = LiblibConfig(keys=[{"key": "a", "secret": "b", "concurrency": 1}])  # type: ignore[list-item]
    assert explicit.keys[0].concurrency == 1
    p = LiblibProvider(cfg)
    p.submit_interval_s = 0.0
    try:
        runs = await asyncio.gather(*(run_job(p, request(job_id=i)) for i in range(7)))
    finally:
        await p.aclose()
    assert all(len(r.images) == 1 for r in runs)
    assert fake.max_running_per_key == {"ak1": 5}  # the documented limit, never past it
    assert all(c.code == 0 for c in fake.calls)


async def test_resume_never_takes_a_list_position_for_a_picture(fake: FakeLiblib) -> None:
    """Picture 1 is withheld at first, so picture 2 is listed second and delivered in slot 1.
    After a restart picture 1 has passed and the list shifts: it must land in the free slot
    and picture 2 must not be delivered twice."""
    fake.reject_next_task_images(1)
    p = await provider_for(fake)
    try:
        first = await run_job(p, request(n=3))
        assert sorted(first.images) == [0, 1]
        task = fake.tasks[first.task_id]
        task.rejected = frozenset()  # its review ends after all
        resumed = first.resumed()
        await p.generate(resumed)
    finally:
        await p.aclose()
    assert sorted(resumed.images) == [0, 1, 2]
    got = {i: resumed.images[i].seed for i in range(3)}
    assert sorted(got.values()) == sorted(task.seeds)  # three different pictures
    assert got[1] == task.seeds[2] and got[2] == task.seeds[1]
    assert sorted(fake.downloads) == sorted(f"/sd-images/{task.uuid}-{i}.png" for i in range(3))


F1 = LiblibModelConfig(checkpoint_id="f1-ckpt", base="f1")


async def test_f1_checkpoints_use_the_f1_templates() -> None:
    async with FakeLiblib(keys={"ak1": "sk1"}, f1_checkpoints=frozenset({"f1-ckpt"})) as fake:
        named = LiblibModelConfig(
            checkpoint_id="f1-ckpt",
            template_uuid=fl.F1_TXT2IMG_TEMPLATE,
            img2img_template_uuid=fl.F1_IMG2IMG_TEMPLATE,
        )
        wrong = LiblibModelConfig(checkpoint_id="f1-ckpt")  # the 1.5/XL templates
        p = await provider_for(fake, models={"flux": F1, "named": named, "wrong": wrong})
        try:
            await run_job(p, request(model="flux"))
            await run_job(p, request(model="flux", kind="img2img", init_image=png()))
            await run_job(p, request(model="named"))
            exc = await failure_of(p, request(model="wrong"))
        finally:
            await p.aclose()
        templates = [c.body["templateUuid"] for c in fake.submits()]
    assert templates == [fl.F1_TXT2IMG_TEMPLATE, fl.F1_IMG2IMG_TEMPLATE, fl.F1_TXT2IMG_TEMPLATE]
    assert exc.failure is FailureClass.PROVIDER_ERROR and "do not fit together" in exc.message
