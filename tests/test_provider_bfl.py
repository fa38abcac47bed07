"""Contract tests of the BFL FLUX provider against a loopback fake of the API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from adapters.providers.bfl import BflProvider, fit_side, nearest_ratio
from bot.config import ApiKeyConfig, BflConfig
from bot.errors import FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ResolvedRequest, ResultImage
from bot.routing import resolve_size
from tests.conftest import REPLY, user
from tests.fakes.bfl import FakeBfl
from tests.fakes.provider_run import Recorder, Restart

FAST_POLLS = {"poll_first_s": 0.02, "poll_factor": 1.5, "poll_max_interval_s": 0.08}


def request(**kw: Any) -> ResolvedRequest:
    base: dict[str, Any] = {
        "job_id": 1,
        "kind": "txt2img",
        "prompt": "a red fox in the snow",
        "negative": "",
        "width": 1024,
        "height": 768,
        "seed": 42,
        "n": 1,
        "model": "flux-pro-1.1",
    }
    return ResolvedRequest(**{**base, **kw})


def config(fake: FakeBfl, keys: tuple[str, ...] = ("k1",), concurrency: int = 2, **kw: Any):
    settings: dict[str, Any] = {**FAST_POLLS, "max_retries": 4, **kw}
    settings.setdefault("key_hosts", [urlsplit(fake.regional_url).netloc])  # "api.us1.bfl.ai"
    return BflConfig(
        base_url=fake.base_url,
        keys=[ApiKeyConfig(key=k, name=k, concurrency=concurrency) for k in keys],
        **settings,
    )


@contextlib.asynccontextmanager
async def bfl(cfg: BflConfig) -> AsyncIterator[BflProvider]:
    provider = BflProvider(cfg)
    try:
        yield provider
    finally:
        await provider.aclose()


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def size_of(result: ResultImage) -> tuple[int, int]:
    assert result.data is not None
    return Image.open(io.BytesIO(result.data)).size


async def failure_of(provider: BflProvider, run: Recorder) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await provider.generate(run)
    return info.value


# --- capabilities and request bodies ----------------------------------------------------------


async def test_capabilities_make_the_core_resolve_sizes_in_steps_of_32() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        caps = provider.capabilities()
    assert caps.kinds == {"txt2img", "img2img"}
    names = [m.name for m in caps.models]
    assert names[:4] == ["flux-pro-1.1", "flux-dev", "flux-pro-1.1-ultra", "flux-kontext-pro"]
    assert {"flux-kontext-max", "flux-2-pro", "flux-2-max", "flux-2-flex"} <= set(names)
    assert caps.default_model == "flux-pro-1.1"
    assert (caps.min_size, caps.max_size, caps.size_multiple) == (256, 1440, 32)
    assert caps.max_images == 4
    assert resolve_size(GenerationParams(aspect="16:9"), caps, 1024) == (1024, 576)
    assert resolve_size(GenerationParams(width=1000, height=700), caps, 1024) == (992, 704)
    assert resolve_size(GenerationParams(aspect="9:16"), caps, 2048) == (800, 1440)


async def test_txt2img_body_is_exactly_the_documented_one() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        # Sizes not on the grid (an old job, a failover) are still rounded to 32 and clamped.
        run = Recorder(request(width=1000, height=700))
        await provider.generate(run)
        wide = Recorder(request(width=3000, height=100, seed=5))
        await provider.generate(wide)

    assert fake.submits[0].path == "/v1/flux-pro-1.1"
    assert fake.submits[0].key == "k1"
    assert fake.submits[0].body == {
        "prompt": "a red fox in the snow",
        "seed": 42,
        "width": 992,
        "height": 704,
        "output_format": "png",
        "safety_tolerance": 2,
    }
    assert (fake.submits[1].body["width"], fake.submits[1].body["height"]) == (1440, 256)
    assert fake.submits[0].status == 200
    picture = run.images[0]
    assert picture.seed == 42 and size_of(picture) == (992, 704)
    task_id, state = run.submissions[0]
    assert state["key"] == "k1"
    assert state["polling_url"] == f"{fake.regional_url}/get_result?id={task_id}"
    # Polled on the regional origin with the key; the result fetched from the delivery
    # origin without it.
    assert {c.origin for c in fake.polls} == {"regional"}
    assert {c.key for c in fake.polls} == {"k1"}
    assert [c.origin for c in fake.downloads] == ["delivery", "delivery"]
    assert all(c.key is None for c in fake.downloads)


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        ((1024, 1024), "1:1"),
        ((1024, 576), "16:9"),
        ((1440, 608), "21:9"),
        ((768, 1024), "3:4"),
        ((1024, 672), "3:2"),
        ((576, 1024), "9:16"),
        ((640, 1440), "9:21"),
        ((1440, 256), "21:9"),
    ],
)
def test_ultra_size_maps_to_nearest_ratio(size: tuple[int, int], ratio: str) -> None:
    assert nearest_ratio(*size) == ratio


def test_sides_round_to_32_within_the_documented_range() -> None:
    assert [fit_side(v) for v in (100, 256, 1000, 1023, 1440, 2000)] == [
        256,
        256,
        992,
        1024,
        1440,
        1440,
    ]


async def test_ultra_and_kontext_send_an_aspect_ratio_instead_of_a_size() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        ultra = Recorder(request(model="flux-pro-1.1-ultra", width=1024, height=576))
        await provider.generate(ultra)
        kontext = Recorder(request(model="flux-kontext-pro", width=768, height=1024))
        await provider.generate(kontext)
    assert fake.submits[0].path == "/v1/flux-pro-1.1-ultra"
    assert fake.submits[0].body == {
        "prompt": "a red fox in the snow",
        "seed": 42,
        "aspect_ratio": "16:9",
        "output_format": "png",
        "safety_tolerance": 2,
    }
    assert fake.submits[1].body["aspect_ratio"] == "3:4"
    assert "width" not in fake.submits[1].body
    w, h = size_of(ultra.images[0])
    assert abs(w / h - 16 / 9) < 0.05


async def test_flux_dev_passes_steps_and_guidance() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        await provider.generate(Recorder(request(model="flux-dev", steps=20, cfg=3.5)))
        # The other models document neither: never sent there.
        await provider.generate(Recorder(request(steps=20, cfg=3.5)))
    assert fake.submits[0].body["steps"] == 20
    assert fake.submits[0].body["guidance"] == 3.5
    assert "steps" not in fake.submits[1].body and "guidance" not in fake.submits[1].body


async def test_img2img_sends_the_input_picture() -> None:
    picture = png()
    async with FakeBfl(delay_s=0.05) as first, bfl(config(first)) as provider:
        base = {"kind": "img2img", "init_image": picture, "strength": 0.7}
        await provider.generate(Recorder(request(**base)))
        await provider.generate(Recorder(request(model="flux-pro-1.1-ultra", **base)))
        await provider.generate(Recorder(request(model="flux-kontext-pro", **base)))
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake, edit_model="")) as provider:
        await provider.generate(Recorder(request(**base)))
    edit, ultra, kontext = list(first.tasks.values())
    # img2img on the default model goes to FLUX.2 [pro] (BFL's recommendation for editing)
    assert edit.model == "flux-2-pro" and edit.images["input_image"] == picture
    (pro,) = fake.tasks.values()
    assert fake.submits[0].body["image_prompt"] == base64.b64encode(picture).decode()
    assert pro.images["image_prompt"] == picture
    # flux-pro-1.1 documents no strength; ultra weighs the input picture (1 keeps it), the
    # opposite of --strength (1 changes it completely)
    assert "image_prompt_strength" not in fake.submits[0].body
    assert ultra.images["image_prompt"] == picture
    assert first.submits[1].body["image_prompt_strength"] == pytest.approx(0.3)
    assert kontext.images["input_image"] == picture
    assert "image_prompt" not in first.submits[2].body


# --- polling, resume, keys -------------------------------------------------------------------


async def test_polls_back_off_and_report_progress() -> None:
    async with FakeBfl(delay_s=0.6) as fake:
        cfg = config(fake, poll_first_s=0.05, poll_factor=2.0, poll_max_interval_s=0.4)
        async with bfl(cfg) as provider:
            run = Recorder(request())
            await provider.generate(run)
    times = [fake.submits[0].at] + [c.at for c in fake.polls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05, 0.1, 0.2, 0.4 (capped), ... with +-10% jitter: each wait longer than the last
    assert len(gaps) >= 4
    assert all(later > earlier * 1.25 for earlier, later in itertools.pairwise(gaps[:4]))
    assert provider.polls == [len(fake.polls)]
    assert 4 <= provider.polls[0] <= 6  # a fixed 0.05 s interval would take a dozen
    assert run.fractions == sorted(run.fractions) and run.fractions[-1] == 1.0
    assert 0 < run.fractions[0] < 1


async def test_resume_polls_the_stored_url_and_never_resubmits() -> None:
    async with FakeBfl(delay_s=0.15) as fake, bfl(config(fake)) as first:
        run = Recorder(request(), restart_after_submissions=1)
        with pytest.raises(Restart):
            await first.generate(run)
        assert len(fake.submits) == 1 and not fake.polls

        async with bfl(config(fake)) as second:  # a new process
            again = run.resumed()
            await second.generate(again)
    assert len(fake.submits) == 1
    assert fake.tasks[run.task_id].polls >= 1  # type: ignore[index]
    assert {c.origin for c in fake.polls} == {"regional"}
    assert again.images[0].seed == 42
    assert again.submissions == []


async def test_resume_with_only_an_id_polls_get_result() -> None:
    async with FakeBfl(delay_s=0.05, regional=False) as fake, bfl(config(fake)) as provider:
        task_id, _ = fake.submit_direct("k1")
        run = Recorder(request(), task_id=task_id, state={"key": "k1"})
        await provider.generate(run)
    assert not fake.submits and run.images[0].data
    assert {c.origin for c in fake.polls} == {"api"}


async def test_a_resumed_task_is_polled_with_the_key_that_submitted_it() -> None:
    async with FakeBfl(keys={"k1", "k2"}, delay_s=0.1) as fake:
        async with bfl(config(fake, keys=("k1", "k2"))) as provider:
            task_id, url = fake.submit_direct("k2")
            run = Recorder(request(), task_id=task_id, state={"key": "k2", "polling_url": url})
            await provider.generate(run)
            # Polled with k1 (the pool's first choice), the same task is not found.
            stray = Recorder(request(), task_id=task_id, state={"key": "k1", "polling_url": url})
            failure = await failure_of(provider, stray)
    assert {c.key for c in fake.polls[:-1]} == {"k2"}
    assert run.images[0].data
    assert provider.pool.used == {"k1": 1, "k2": 1}
    assert failure.failure is FailureClass.PROVIDER_ERROR and "Task not found" in failure.message


async def test_two_keys_of_concurrency_one_never_run_two_tasks_on_a_key() -> None:
    async with FakeBfl(keys={"k1", "k2"}, max_active_per_key=2, delay_s=0.12) as fake:
        async with bfl(config(fake, keys=("k1", "k2"), concurrency=1)) as provider:
            runs = [Recorder(request(job_id=i, seed=100 + i)) for i in range(4)]
            await asyncio.gather(*(provider.generate(r) for r in runs))
    assert all(r.images[0].seed == 100 + i for i, r in enumerate(runs))
    assert fake.max_running_per_key == {"k1": 1, "k2": 1}
    assert provider.pool.used == {"k1": 2, "k2": 2}
    assert all(c.status == 200 for c in fake.submits)
    assert sorted(r.state["key"] for r in runs) == ["k1", "k1", "k2", "k2"]


async def test_several_pictures_are_one_task_each_run_in_turn() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        run = Recorder(request(n=3))
        await provider.generate(run)
    assert [c.body["seed"] for c in fake.submits] == [42, 43, 44]
    assert sorted(run.images) == [0, 1, 2]
    assert [run.images[i].seed for i in range(3)] == [42, 43, 44]
    assert fake.max_running_per_key == {"k1": 1}
    ids = run.state["ids"]
    assert len(ids) == 3 and len(set(ids)) == 3 and run.task_id == ids[2]
    assert len(run.state["polling_urls"]) == 3
    assert run.fractions[-1] == 1.0
    assert provider.polls == [sum(t.polls for t in fake.tasks.values())]


async def test_a_job_resumed_midway_polls_its_open_task_and_keeps_its_pictures() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        run = Recorder(request(n=3), restart_after_submissions=2)
        with pytest.raises(Restart):
            await provider.generate(run)
        assert sorted(run.images) == [0] and len(fake.submits) == 2
        again = run.resumed()
        await provider.generate(again)
    assert len(fake.submits) == 3  # only the picture that never had a task
    assert sorted(again.images) == [0, 1, 2]
    assert len(fake.downloads) == 3
    assert len(again.state["ids"]) == 3 and again.state["ids"][:2] == run.state["ids"]


# --- outcomes and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["Request Moderated", "Content Moderated"])
async def test_moderation_is_a_refusal(outcome: str) -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        fake.next_outcome(outcome)
        failure = await failure_of(provider, Recorder(request()))
    assert failure.failure is FailureClass.REFUSED
    assert failure.message.startswith("FLUX refused")
    assert f"({outcome})" in failure.message and "Derivative Works" in failure.message
    assert failure.retry_after is None


@pytest.mark.parametrize("outcome", ["Error", "Task not found"])
async def test_task_errors_are_provider_errors(outcome: str) -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        fake.next_outcome(outcome, details="GPU fell over" if outcome == "Error" else None)
        failure = await failure_of(provider, Recorder(request()))
    assert failure.failure is FailureClass.PROVIDER_ERROR
    assert outcome in failure.message and failure.retry_after is None
    if outcome == "Error":
        assert "GPU fell over" in failure.message


async def test_too_many_active_tasks_is_retried_after_retry_after() -> None:
    async with FakeBfl(max_active_per_key=1, delay_s=0.05, retry_after_s=0.1) as fake:
        async with bfl(config(fake)) as provider:
            fake.submit_direct("k1", delay_s=0.3)  # another client's task holds the key's slot
            run = Recorder(request())
            await provider.generate(run)
    statuses = [c.status for c in fake.submits]
    assert statuses[0] == 429 and statuses[-1] == 200 and set(statuses) == {429, 200}
    assert run.images[0].data


async def test_throttled_past_the_retries_is_transient() -> None:
    async with FakeBfl() as fake, bfl(config(fake, max_retries=1)) as provider:
        fake.fail_next(429, headers={"Retry-After": "0.01"}, times=3)
        failure = await failure_of(provider, Recorder(request()))
    assert len(fake.submits) == 2
    assert failure.failure is FailureClass.PROVIDER_ERROR and failure.retry_after is not None


async def test_server_errors_are_retried() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        fake.fail_next(503, headers={"Retry-After": "0.01"}, times=2)
        fake.fail_next(500, on="poll", headers={"Retry-After": "0.01"})
        run = Recorder(request())
        await provider.generate(run)
    assert [c.status for c in fake.submits] == [503, 503, 200]
    assert 500 in [c.status for c in fake.polls]
    assert run.images[0].data


async def test_out_of_credits_is_a_provider_error_not_retried() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        fake.no_credits.add("k1")
        failure = await failure_of(provider, Recorder(request()))
    assert len(fake.submits) == 1 and fake.submits[0].status == 402
    assert failure.failure is FailureClass.PROVIDER_ERROR
    assert "out of credits" in failure.message and failure.retry_after is None


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_is_a_provider_error(status: int) -> None:
    async with FakeBfl() as fake:
        cfg = config(fake) if status == 401 else config(fake, keys=("wrong",))
        async with bfl(cfg) as provider:
            if status == 401:
                fake.fail_next(401, {"detail": "Not authenticated"})
            failure = await failure_of(provider, Recorder(request()))
    assert fake.submits[0].status == status and len(fake.submits) == 1
    assert failure.failure is FailureClass.PROVIDER_ERROR
    assert "the BFL key was rejected" in failure.message and failure.retry_after is None


async def test_validation_errors_are_bad_input_naming_the_field() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        failure = await failure_of(provider, Recorder(request(model="flux-dev", steps=80)))
    assert fake.submits[0].status == 422
    assert failure.failure is FailureClass.BAD_INPUT
    assert "steps (--steps)" in failure.message and "less than or equal to 50" in failure.message
    assert failure.retry_after is None


async def test_an_expired_result_link_is_a_clear_failure() -> None:
    async with FakeBfl(delay_s=0.05, result_ttl_s=0.0) as fake, bfl(config(fake)) as provider:
        failure = await failure_of(provider, Recorder(request()))
    assert [c.status for c in fake.downloads] == [403]  # not retried: it will not come back
    assert failure.failure is FailureClass.PROVIDER_ERROR
    assert "expired" in failure.message and failure.retry_after is None


async def test_polling_urls_must_be_http_and_never_downgrade_https() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        fake.polling_base = "ftp://127.0.0.1:1/v1/get_result"
        failure = await failure_of(provider, Recorder(request()))
        assert failure.failure is FailureClass.PROVIDER_ERROR and not fake.polls
    secure = BflConfig(keys=[ApiKeyConfig(key="x")], base_url="https://api.bfl.ai/v1")
    async with bfl(secure) as provider:
        assert provider._check_polling_url("https://api.us1.bfl.ai/v1/get_result?id=1")
        with pytest.raises(ProviderFailure):
            provider._check_polling_url("http://api.us1.bfl.ai/v1/get_result?id=1")


async def test_the_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "bfl-secret-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    async with FakeBfl(keys={secret}, delay_s=0.05) as fake:
        cfg = BflConfig(
            base_url=fake.base_url,
            keys=[ApiKeyConfig(key=secret, name="main")],
            key_hosts=[urlsplit(fake.regional_url).netloc],
            **FAST_POLLS,
        )
        async with bfl(cfg) as provider:
            fake.fail_next(429, headers={"Retry-After": "0.01"})
            fake.fail_next(502, on="poll", headers={"Retry-After": "0.01"})
            run = Recorder(request())
            await provider.generate(run)
            assert secret not in repr(provider.pool.keys)
            fake.no_credits.add(secret)
            failure = await failure_of(provider, Recorder(request()))
    assert run.state["key"] == "main" and secret not in str(run.state)
    assert secret not in failure.message
    assert secret not in caplog.text


async def test_the_fake_validates_like_the_api() -> None:
    async with FakeBfl() as fake, httpx.AsyncClient() as client:
        bad = await client.post(
            f"{fake.base_url}/flux-pro-1.1",
            headers={"x-key": "k1"},
            json={"prompt": "x", "width": 1000, "height": 64, "output_format": "gif"},
        )
        no_key = await client.post(f"{fake.base_url}/flux-pro-1.1", json={"prompt": "x"})
        unknown = await client.post(
            f"{fake.base_url}/flux-nope", headers={"x-key": "k1"}, json={"prompt": "x"}
        )
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert {(tuple(d["loc"]), d["type"]) for d in detail} == {
        (("body", "width"), "multiple_of"),
        (("body", "height"), "greater_than_equal"),
        (("body", "output_format"), "enum"),
    }
    assert no_key.status_code == 401 and unknown.status_code == 404


async def test_aclose_closes_the_clients() -> None:
    async with FakeBfl() as fake:
        provider = BflProvider(config(fake))
        await provider.aclose()
    assert provider.client.is_closed and provider.downloads.is_closed


async def test_a_job_of_two_pictures_through_the_core(app_factory: Any) -> None:
    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(provider_objs={"bfl": BflProvider(config(fake))})
        adapter = app.adapters["test"]
        params = GenerationParams(prompt="a lighthouse", provider="bfl", aspect="16:9", n=2, seed=7)
        receipt = await app.jobs.submit(user(), "txt2img", [params], REPLY)
        (ticket,) = receipt.jobs
        assert (ticket.width, ticket.height) == (1024, 576)
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
        view = await app.jobs.job(user(), ticket.id)
    assert view.status == "succeeded" and len(view.images) == 2
    assert [c.body["seed"] for c in fake.submits] == [7, 8]
    assert all((c.body["width"], c.body["height"]) == (1024, 576) for c in fake.submits)


# --- issue 17: what providers.md documents ---------------------------------------------------


async def test_webp_output_is_asked_for_and_delivered() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake, output_format="webp")) as provider:
        run = Recorder(request())
        await provider.generate(run)
    assert fake.submits[0].body["output_format"] == "webp"
    data = run.images[0].data
    assert data is not None and Image.open(io.BytesIO(data)).format == "WEBP"


async def test_each_task_reports_its_cost_in_credits() -> None:
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        run = Recorder(request(n=2))
        await provider.generate(run)
        ultra = Recorder(request(model="flux-pro-1.1-ultra"))
        await provider.generate(ultra)
        # GET /v1/credits: what is left after 4 + 4 + 6 credits
        assert await provider.account_status() == "986 credits left"
    assert run.costs == [(4.0, "credits"), (4.0, "credits")]
    assert ultra.costs == [(6.0, "credits")]


async def test_account_status_fails_quietly() -> None:
    async with FakeBfl() as fake:
        cfg = config(fake)
    # the fake is gone: nothing listens there any more
    async with bfl(cfg) as provider:
        assert await provider.account_status() is None


async def test_raw_and_prompt_upsampling_go_where_documented() -> None:
    cfg_kw = {"raw": True, "prompt_upsampling": True}
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake, **cfg_kw)) as provider:
        for model in ("flux-pro-1.1-ultra", "flux-pro-1.1", "flux-2-pro", "flux-2-flex"):
            await provider.generate(Recorder(request(model=model)))
    ultra, pro, two_pro, flex = (c.body for c in fake.submits)
    assert ultra["raw"] is True and ultra["prompt_upsampling"] is True
    assert "raw" not in pro and pro["prompt_upsampling"] is True
    # flux-2-pro does not take prompt_upsampling (the fake answers 422 to unknown fields)
    assert "prompt_upsampling" not in two_pro and "raw" not in two_pro
    assert flex["prompt_upsampling"] is True
    assert all(c.status == 200 for c in fake.submits)


async def test_flux2_takes_several_input_pictures() -> None:
    pictures = tuple(png(40 + i, 30) for i in range(6))
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        for model in ("flux-2-pro", "flux-2-klein-4b", "flux-kontext-max"):
            run = Recorder(request(model=model, kind="img2img", init_images=pictures))
            await provider.generate(run)
            assert 0 in run.images
    pro, klein, kontext = fake.tasks.values()
    assert [pro.images[k] for k in ["input_image"] + [f"input_image_{i}" for i in range(2, 7)]] == [
        *pictures
    ]
    assert len(klein.images) == 4  # klein takes up to 4
    assert len(kontext.images) == 4 and kontext.images["input_image"] == pictures[0]
    assert pro.body["safety_tolerance"] == 2 and "width" in pro.body


async def test_the_key_goes_only_to_bfl_hosts() -> None:
    """A polling URL on another host (here another loopback port) never gets the key."""
    from aiohttp import web

    seen: list[dict[str, str]] = []

    async def spy(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"status": "Pending"})

    spy_app = web.Application()
    spy_app.router.add_get("/{tail:.*}", spy)
    runner = web.AppRunner(spy_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
            fake.polling_base = f"http://127.0.0.1:{port}/v1/get_result"
            failure = await failure_of(provider, Recorder(request()))
            assert "not a BFL host" in failure.message
            # a resumed task whose stored URL names another host is refused the same way
            resumed = Recorder(
                request(), task_id="t1", state={"key": "k1", "polling_url": fake.polling_base}
            )
            failure = await failure_of(provider, resumed)
            assert "not a BFL host" in failure.message
    finally:
        await runner.cleanup()
    assert seen == []  # nothing reached it, key or not
    assert provider._key_goes_to("https://api.us1.bfl.ai/v1/get_result?id=x")
    assert provider._key_goes_to("https://api.bfl.ai/v1/get_result?id=x")
    assert not provider._key_goes_to("https://api.bfl.ai.evil.example/v1/get_result")
    assert not provider._key_goes_to("https://notbfl.ai/v1/get_result")


async def test_cost_is_recorded_per_job_and_shown_in_stats(app_factory) -> None:
    from sqlalchemy import select

    from bot.chat import UserRef
    from bot.commands import Incoming
    from storage.models import Job

    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(
            providers={
                "default": "bfl",
                "bfl": {
                    "base_url": fake.base_url,
                    "keys": [{"key": "k1"}],
                    "key_hosts": [urlsplit(fake.regional_url).netloc],
                    **FAST_POLLS,
                },
            }
        )
        adapter = app.adapters["test"]
        boss = UserRef("test", "1", "@boss")
        r = await app.commands.handle(
            Incoming(user=boss, text="/imagine a fox --n 2", reply_to=REPLY, is_admin=True)
        )
        assert not r.error, r.text
        await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 1)
        async with app.db.session() as s:
            row = (await s.execute(select(Job.provider_cost, Job.provider_cost_unit))).one()
        assert tuple(row) == (8.0, "credits")
        r = await app.commands.handle(
            Incoming(user=boss, text="/stats", reply_to=REPLY, is_admin=True)
        )
        lines = r.text.splitlines()
        assert "bfl billed in the last 24 h: 8 credits" in lines
        assert "bfl account: 992 credits left" in lines
        fake.keys.clear()  # the balance cannot be read now: /stats still answers
        r = await app.commands.handle(
            Incoming(user=boss, text="/stats", reply_to=REPLY, is_admin=True)
        )
        assert not r.error and "bfl billed in the last 24 h: 8 credits" in r.text.splitlines()
        assert not any("account" in line for line in r.text.splitlines())


async def test_fill_and_expand_inpaint_and_outpaint_at_the_provider_level() -> None:
    picture, mask = png(64, 48), png(64, 48)
    async with FakeBfl(delay_s=0.05) as fake, bfl(config(fake)) as provider:
        base = {"kind": "img2img", "init_image": picture}
        fill = Recorder(request(model="flux-pro-1.0-fill", mask=mask, steps=10, **base))
        await provider.generate(fill)
        grow = Recorder(request(model="flux-pro-1.0-expand", expand=(0, 0, 32, 16), **base))
        await provider.generate(grow)
    filled, grown = fake.tasks.values()
    assert filled.images == {"image": picture, "mask": mask}
    assert filled.body["steps"] == 15  # the documented minimum
    assert (grown.body["left"], grown.body["right"], grown.body["top"]) == (32, 16, 0)
    assert size_of(grow.images[0]) == (64 + 48, 48)
    assert size_of(fill.images[0]) == (64, 48)
