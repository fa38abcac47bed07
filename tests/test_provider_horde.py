"""Contract tests of the AI Horde provider against a loopback fake of the pool, and of the
fake against Haidra's official ``horde-sdk``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from adapters.providers.horde import HordeProvider, fit_side, sampler_params
from bot.config import HordeConfig
from bot.errors import FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ResolvedRequest
from storage.models import Job, LedgerEntry
from tests.conftest import REPLY, user
from tests.fakes.horde import ANON, FakeHorde
from tests.fakes.provider_run import Recorder, Restart

FAST = {"min_poll_s": 0.05, "status_window_s": 60.0}
KEY = "reg1stered-key-0123456"  # 22 characters, as the pool's keys are


def request(**kw: Any) -> ResolvedRequest:
    base: dict[str, Any] = {
        "job_id": 1,
        "kind": "txt2img",
        "prompt": "a lighthouse at dusk",
        "negative": "",
        "width": 512,
        "height": 512,
        "seed": 42,
        "n": 1,
        "model": "stable_diffusion",
    }
    return ResolvedRequest(**{**base, **kw})


def config(fake: FakeHorde, **kw: Any) -> HordeConfig:
    return HordeConfig(enabled=True, base_url=fake.base_url, **kw)


@contextlib.asynccontextmanager
async def horde(cfg: HordeConfig, **kw: Any) -> AsyncIterator[HordeProvider]:
    provider = HordeProvider(cfg, **{**FAST, **kw})
    try:
        yield provider
    finally:
        await provider.aclose()


async def failure_of(provider: HordeProvider, run: Recorder) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await asyncio.wait_for(provider.generate(run), 10)  # a provider that polls forever
    return info.value


def size_of(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    return Image.open(io.BytesIO(data)).size


# --- the request ------------------------------------------------------------------------------


async def test_success_sends_the_documented_body_and_headers() -> None:
    async with FakeHorde(check_cache_s=0) as fake, horde(config(fake)) as provider:
        run = Recorder(
            request(negative="blurry", n=2, steps=20, cfg=6.55, sampler="DPM++ 2M Karras")
        )
        await provider.generate(run)
    (submit,) = fake.submits
    assert submit.status == 202
    assert submit.apikey == ANON  # the anonymous key by default
    assert submit.client_agent is not None and submit.client_agent.startswith("sdhost:")
    assert submit.client_agent.count(":") == 2 and submit.client_agent.endswith(":unknown")
    assert submit.body == {
        "prompt": "a lighthouse at dusk ### blurry",
        "params": {
            "width": 512,
            "height": 512,
            "n": 2,
            "seed": "42",
            "seed_variation": 1,
            "steps": 20,
            "cfg_scale": 6.55,
            "sampler_name": "k_dpmpp_2m",
            "karras": True,
        },
        "models": ["stable_diffusion"],
        "nsfw": False,
        "censor_nsfw": True,
        "trusted_workers": False,
        "slow_workers": True,
        "shared": False,
        "r2": True,
    }
    assert sorted(run.images) == [0, 1]
    assert [run.images[i].seed for i in (0, 1)] == [42, 43]
    assert size_of(run.images[0].data) == (512, 512)
    assert not run.images[0].nsfw
    ((task_id, state),) = run.submissions
    assert fake.requests[task_id].statuses == 1  # the pictures fetched once, when done
    assert len([c for c in fake.calls if "/r2/" in c.path]) == 2
    assert run.costs == [(20.0, "kudos")]
    assert state["kudos_estimate"] == 20.0
    assert run.fractions[-1] == 1.0


async def test_the_chats_nsfw_policy_sets_nsfw_and_censorship() -> None:
    async with FakeHorde(check_cache_s=0) as fake, horde(config(fake)) as provider:
        allowed = Recorder(request(prompt="nsfw figure study", nsfw_ok=True))
        await provider.generate(allowed)
        guarded = Recorder(request(prompt="nsfw figure study", nsfw_ok=False))
        await provider.generate(guarded)
    assert (fake.submits[0].body["nsfw"], fake.submits[0].body["censor_nsfw"]) == (True, False)
    assert (fake.submits[1].body["nsfw"], fake.submits[1].body["censor_nsfw"]) == (False, True)
    assert not allowed.images[0].nsfw
    # the worker censored it: flagged, so a chat that blurs or blocks NSFW hides it
    assert guarded.images[0].nsfw


async def test_img2img_sends_the_source_picture_and_strength() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    async with FakeHorde(check_cache_s=0) as fake, horde(config(fake)) as provider:
        run = Recorder(request(kind="img2img", init_image=buf.getvalue(), strength=0.6))
        await provider.generate(run)
    body = fake.submits[0].body
    assert body["source_processing"] == "img2img" and body["source_image"]
    assert body["params"]["denoising_strength"] == 0.6
    assert run.images[0].data


def test_sizes_and_samplers() -> None:
    assert [fit_side(v) for v in (10, 500, 1000, 5000)] == [64, 512, 1024, 2048]
    assert sampler_params("Euler a") == {"sampler_name": "k_euler_a"}
    assert sampler_params("k_lms") == {"sampler_name": "k_lms"}
    assert sampler_params("some new sampler") == {}


async def test_a_registered_key_is_sent_and_base64_pictures_decode() -> None:
    async with FakeHorde(keys={KEY: 1000.0}, check_cache_s=0) as fake:
        async with horde(config(fake, api_key=KEY, contact="ops@example.org")) as provider:
            # a pool answering without R2 links sends the picture itself (base64 webp)
            body = provider.body
            provider.body = lambda req: {**body(req), "r2": False}  # type: ignore[method-assign]
            run = Recorder(request())
            await provider.generate(run)
    assert fake.submits[0].apikey == KEY
    assert fake.submits[0].client_agent.endswith(":ops@example.org")  # type: ignore[union-attr]
    assert size_of(run.images[0].data) == (512, 512)
    assert not [c for c in fake.calls if "/r2/" in c.path]


# --- polling, progress, resume -------------------------------------------------------------


async def test_queue_position_and_wait_show_as_progress() -> None:
    async with FakeHorde(queue_s=0.5, run_s=0.3, queue_position=4, check_cache_s=0) as fake:
        async with horde(config(fake)) as provider:
            run = Recorder(request())
            await provider.generate(run)
    assert run.queue, "no queue progress reported"
    positions = [p for p, _ in run.queue]
    assert positions[0] >= 10  # anonymous requests wait behind the registered ones
    assert positions == sorted(positions, reverse=True)
    assert all(w is not None and w >= 0 for _, w in run.queue)
    assert len(fake.statuses) == 1 and fake.statuses[0].status == 200


async def test_checks_are_never_faster_than_once_a_second() -> None:
    async with FakeHorde(queue_s=1.5, run_s=1.0) as fake:
        provider = HordeProvider(config(fake))  # the pool's own limits
        try:
            await provider.generate(Recorder(request()))
        finally:
            await provider.aclose()
    times = [fake.submits[0].at] + [c.at for c in fake.checks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= 0.99
    assert len(fake.statuses) == 1
    assert provider.checks == [len(fake.checks)]


async def test_restart_polls_the_stored_id_and_never_submits_again() -> None:
    async with FakeHorde(queue_s=0.2, check_cache_s=0) as fake:
        async with horde(config(fake)) as first:
            run = Recorder(request(), restart_after_submissions=1)
            with pytest.raises(Restart):
                await first.generate(run)
        async with horde(config(fake)) as second:  # a new process
            again = run.resumed()
            await second.generate(again)
    assert len(fake.submits) == 1
    assert again.submissions == [] and again.images[0].data
    assert fake.requests[run.task_id].checks >= 1  # type: ignore[index]


async def test_the_scheduler_resumes_a_stored_request_after_a_restart(app_factory: Any) -> None:
    async with FakeHorde(queue_s=0.6, check_cache_s=0) as fake:
        app = await app_factory(provider_objs={"horde": HordeProvider(config(fake), **FAST)})
        adapter = app.adapters["test"]
        params = GenerationParams(prompt="a fox", provider="horde", width=512, height=512)
        receipt = await app.jobs.submit(user(), "txt2img", [params], REPLY)
        job_id = receipt.jobs[0].id
        deadline = time.monotonic() + 10
        while not fake.submits and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the id is stored with the submission
        await app.scheduler.stop()  # the process stops: the job goes back, with its id
        async with app.db.session() as s:
            job = await s.get(Job, job_id)
            assert job is not None and job.status == "queued" and job.provider_task_id
        await app.scheduler.start()
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
        async with app.db.session() as s:
            job = await s.get(Job, job_id)
            assert job is not None and job.status == "succeeded"
            assert (job.provider_cost, job.provider_cost_unit) == (10.0, "kudos")
    assert len(fake.submits) == 1


# --- outcomes -------------------------------------------------------------------------------


async def test_a_request_no_worker_can_serve_is_cancelled_and_uncharged() -> None:
    async with FakeHorde(check_cache_s=0) as fake, horde(config(fake)) as provider:
        fake.next_outcome("impossible")
        run = Recorder(request())
        started = time.monotonic()
        failure = await failure_of(provider, run)
    assert time.monotonic() - started < 2  # promptly: the first check says so
    assert failure.uncharged and failure.failure is FailureClass.PROVIDER_ERROR
    assert "no worker" in failure.message and "No available workers" in failure.message
    assert "refunded" in failure.message
    ((task_id, _),) = run.submissions
    assert [c.path for c in fake.deletes] == [f"/api/v2/generate/status/{task_id}"]
    assert fake.requests[task_id].cancelled
    assert not fake.statuses and not run.images


async def test_a_model_nobody_serves_is_impossible_too() -> None:
    async with FakeHorde(models={"stable_diffusion": 3, "Ghost": 0}, check_cache_s=0) as fake:
        async with horde(config(fake)) as provider:
            failure = await failure_of(provider, Recorder(request(model="Ghost")))
    assert failure.uncharged and "model Ghost" in failure.message
    assert len(fake.deletes) == 1


async def test_a_faulted_request_is_cancelled_and_uncharged() -> None:
    async with FakeHorde(check_cache_s=0) as fake, horde(config(fake)) as provider:
        fake.next_outcome("faulted")
        failure = await failure_of(provider, Recorder(request()))
    assert failure.uncharged and "faulted" in failure.message
    assert len(fake.deletes) == 1 and not fake.statuses


async def test_cancel_deletes_the_request() -> None:
    async with FakeHorde(queue_s=5, check_cache_s=0) as fake, horde(config(fake)) as provider:
        run = Recorder(request())
        task = asyncio.create_task(provider.generate(run))
        await asyncio.wait_for(run.task_known.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await provider.cancel(run.task_id)  # type: ignore[arg-type]
    assert len(fake.deletes) == 1 and fake.deletes[0].status == 200
    assert fake.requests[run.task_id].cancelled  # type: ignore[index]


async def test_status_calls_stay_within_the_pools_limit() -> None:
    # 12 jobs finish at once; the pool allows 4 status calls per 0.5 s here (10/min really)
    async with FakeHorde(status_limit=4, status_window_s=0.5, check_cache_s=0) as fake:
        cfg = config(fake, status_calls_per_minute=4)
        async with horde(cfg, status_window_s=0.5) as provider:
            runs = [Recorder(request(job_id=i, seed=i)) for i in range(12)]
            await asyncio.gather(*(provider.generate(r) for r in runs))
    assert all(r.images[0].data for r in runs)
    assert [c.status for c in fake.statuses] == [200] * 12  # never refused
    times = sorted(c.at for c in fake.statuses)
    for i in range(len(times) - 4):
        assert times[i + 4] - times[i] >= 0.5 * 0.98  # no 5 calls inside one window


async def test_a_429_from_status_is_waited_out() -> None:
    # the pool's window is stricter than ours: its Retry-After is honoured
    async with FakeHorde(status_limit=1, status_window_s=1.0, check_cache_s=0) as fake:
        async with horde(config(fake)) as provider:
            runs = [Recorder(request(job_id=i)) for i in range(2)]
            await asyncio.gather(*(provider.generate(r) for r in runs))
    statuses = [c.status for c in fake.statuses]
    assert statuses.count(429) >= 1 and statuses.count(200) == 2
    assert all(r.images[0].data for r in runs)


# --- errors -----------------------------------------------------------------------------------


async def test_a_bad_key_is_a_clear_provider_error() -> None:
    async with FakeHorde() as fake, horde(config(fake, api_key="wrong-key-000000000000")) as p:
        failure = await failure_of(p, Recorder(request()))
    assert fake.submits[0].status == 401 and len(fake.submits) == 1
    assert failure.failure is FailureClass.PROVIDER_ERROR and failure.retry_after is None
    assert "API key was rejected" in failure.message and "InvalidAPIKey" in failure.message


async def test_kudos_up_front_is_the_requests_fault() -> None:
    async with FakeHorde() as fake, horde(config(fake)) as provider:
        failure = await failure_of(provider, Recorder(request(width=1536, height=1536)))
    assert fake.submits[0].status == 403
    assert failure.failure is FailureClass.BAD_INPUT and "KudosUpfront" in failure.message
    assert "--size" in failure.message


async def test_validation_errors_are_bad_input() -> None:
    async with FakeHorde() as fake, horde(config(fake)) as provider:
        failure = await failure_of(provider, Recorder(request(steps=900)))
    assert fake.submits[0].status == 400
    assert failure.failure is FailureClass.BAD_INPUT and "TooManySteps" in failure.message


async def test_an_expired_request_is_a_clear_failure() -> None:
    async with FakeHorde() as fake, horde(config(fake)) as provider:
        run = Recorder(request(), task_id="no-such-request")
        failure = await failure_of(provider, run)
    assert failure.failure is FailureClass.PROVIDER_ERROR and "RequestNotFound" in failure.message


# --- models -------------------------------------------------------------------------------


async def test_models_come_from_the_pool_and_are_cached() -> None:
    served = {"AlbedoBase XL (SDXL)": 30, "stable_diffusion": 5, "Nobody": 0}
    async with FakeHorde(models=served) as fake, horde(config(fake)) as provider:
        first = provider.capabilities()  # empty cache: the default only, a fetch starts
        assert [m.name for m in first.models] == ["stable_diffusion"]
        await asyncio.sleep(0.2)
        names = [m.name for m in provider.capabilities().models]
        await provider.refresh_models()
    assert names == ["AlbedoBase XL (SDXL)", "stable_diffusion"]
    assert len([c for c in fake.calls if c.path.endswith("/status/models")]) == 1


async def test_model_names_route_with_the_horde_prefix(app_factory: Any) -> None:
    async with FakeHorde(models={"Deliberate": 4, "stable_diffusion": 2}, check_cache_s=0) as fake:
        provider = HordeProvider(config(fake), **FAST)
        await provider.refresh_models()
        app = await app_factory(provider_objs={"horde": provider})
        adapter = app.adapters["test"]
        params = GenerationParams(prompt="a fox", model="horde:Deliberate", width=512, height=512)
        receipt = await app.jobs.submit(user(), "txt2img", [params], REPLY)
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
    assert receipt.jobs[0].provider == "horde"
    assert fake.submits[0].body["models"] == ["Deliberate"]


async def test_an_impossible_job_is_refunded_in_full_even_for_a_batch(app_factory: Any) -> None:
    # the batch policy refunds no provider errors; the pool charged nothing, so all goes back
    async with FakeHorde(check_cache_s=0) as fake:
        app = await app_factory(provider_objs={"horde": HordeProvider(config(fake), **FAST)})
        adapter = app.adapters["test"]
        fake.next_outcome("impossible")
        params = GenerationParams(prompt="a fox", provider="horde", width=512, height=512)
        receipt = await app.jobs.submit(user(), "batch", [params], REPLY)
        await adapter.wait_for(lambda: adapter.of_kind("failed"))
        (event,) = adapter.of_kind("failed")
        async with app.db.session() as s:
            rows = await s.scalars(
                select(LedgerEntry).where(LedgerEntry.job_id == receipt.jobs[0].id)
            )
            ledger = [(e.reason, e.delta) for e in rows]
    assert ledger == [("charge", -1), ("refund", 1)]
    assert "no worker" in event.payload["message"]
    assert len(fake.deletes) == 1


# --- the fake, driven by Haidra's official SDK ------------------------------------------------

SDK_SCRIPT = textwrap.dedent(
    """
    from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPISimpleClient
    from horde_sdk.ai_horde_api.apimodels import (
        ImageGenerateAsyncRequest,
        ImageGenerationInputPayload,
    )

    client = AIHordeAPISimpleClient()
    status, job_id = client.image_generate_request(
        ImageGenerateAsyncRequest(
            apikey="0000000000",
            prompt="a lighthouse",
            models=["stable_diffusion"],
            params=ImageGenerationInputPayload(width=512, height=512, steps=20, n=1, seed="7"),
            nsfw=False,
            censor_nsfw=True,
        ),
        timeout=30,
    )
    (generation,) = status.generations
    image = client.download_image_from_generation(generation)
    print("JOB", job_id, "SIZE", image.size[0], image.size[1], "SEED", generation.seed)
    """
)


async def test_the_official_horde_sdk_generates_through_the_fake() -> None:
    pytest.importorskip("horde_sdk")
    async with FakeHorde(check_cache_s=0) as fake:
        env = {
            **os.environ,
            "AI_HORDE_URL": fake.base_url + "/",
            "HORDE_SDK_DISABLE_CUSTOM_SINKS": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SDK_SCRIPT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    words = out.decode().split()
    assert words[words.index("SIZE") + 1 : words.index("SIZE") + 3] == ["512", "512"]
    assert words[words.index("SEED") + 1] == "7"
    (submit,) = fake.submits
    assert submit.apikey == ANON
    # horde-sdk 0.18 names its agent in a "client_agent" header, not the documented
    # "Client-Agent" that sdhost sends (see test_success_sends_the_documented_body...)
    assert submit.headers.get("client_agent", "").startswith("horde_sdk:")
    assert submit.body["prompt"] == "a lighthouse" and submit.body["params"]["n"] == 1
    assert fake.checks and len(fake.statuses) == 1


# --- through the core: the chat's policy in, the queue place out ------------------------------


@pytest.mark.parametrize("nsfw_ok", [True, False])
async def test_a_chats_nsfw_policy_reaches_the_pool(app_factory: Any, nsfw_ok: bool) -> None:
    from bot.commands import Incoming

    async with FakeHorde(check_cache_s=0) as fake:
        app = await app_factory(provider_objs={"horde": HordeProvider(config(fake), **FAST)})
        adapter = app.adapters["test"]
        text = "/imagine a fox --provider horde --size 512x512"
        await app.commands.handle(Incoming(user(), text, dict(REPLY), nsfw_ok=nsfw_ok))
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
    body = fake.submits[0].body
    assert (body["nsfw"], body["censor_nsfw"]) == (nsfw_ok, not nsfw_ok)


async def test_the_queue_place_reaches_the_chat_as_the_jobs_stage(app_factory: Any) -> None:
    from bot import i18n
    from bot.commands import Incoming

    async with FakeHorde(queue_s=0.8, queue_position=2, check_cache_s=0) as fake:
        app = await app_factory(provider_objs={"horde": HordeProvider(config(fake), **FAST)})
        adapter = app.adapters["test"]
        text = "/imagine a fox --provider horde --size 512x512"
        await app.commands.handle(Incoming(user(), text, dict(REPLY)))
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
    stages = [u.stage for u in adapter.progress_updates if u.stage.startswith("queued:")]
    assert stages, [u.stage for u in adapter.progress_updates]
    first = i18n.term("stage", stages[0])
    assert str(first).startswith("in the provider's queue (position 1")  # 2 + 10 anonymous
    assert "about" in str(first) and "s)" in str(first)
    assert "排队" not in str(first) and "队列" in i18n.render(first, "zh")
