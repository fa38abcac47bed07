"""The a1111 provider against loopback web UIs (tests/fakes/a1111.py): what reaches the
instance, the pool across several, instances that die, cancel, previews, and the three
flavours. The fake itself is proven faithful by webuiapi in tests/test_fake_a1111.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.providers.a1111 import A1111Provider
from bot.app import App
from bot.config import A1111Config
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ResolvedRequest
from tests.conftest import REPLY, RecordingAdapter, make_config, user
from tests.fakes.a1111 import A1111Fake
from tests.fakes.provider_run import Recorder

FAST = {"progress_interval_s": 0.05, "recheck_s": 0.1, "recheck_max_s": 0.3, "lists_ttl_s": 60}


def cfg(*fakes: A1111Fake, **kw: Any) -> A1111Config:
    instances = [
        {"name": f"gpu{i}", "url": f.base_url, **(kw.pop(f"auth{i}", {}))}
        for i, f in enumerate(fakes, 1)
    ]
    return A1111Config.model_validate({"instances": instances, **FAST, **kw})


@contextlib.asynccontextmanager
async def provider(config: A1111Config) -> AsyncIterator[A1111Provider]:
    p = A1111Provider(config)
    await p.start()
    try:
        yield p
    finally:
        await p.aclose()


def request(**kw: Any) -> ResolvedRequest:
    base: dict[str, Any] = {
        "job_id": 7,
        "kind": "txt2img",
        "prompt": "a lighthouse at dusk",
        "negative": "",
        "width": 512,
        "height": 384,
        "seed": 42,
        "n": 1,
        "model": "loaded",
    }
    return ResolvedRequest(**{**base, **kw})


def size_of(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    return Image.open(io.BytesIO(data)).size


def png(w: int = 96, h: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


# --- what reaches the instance ---------------------------------------------------------------


async def test_checkpoint_vae_loras_sampler_and_size_reach_the_instance() -> None:
    async with A1111Fake(loaded="sd15.safetensors") as gpu, provider(cfg(gpu)) as p:
        model = p.find_model("dreamshaper_8.safetensors")
        assert model is not None and model.name == "dreamshaper_8"
        run = Recorder(
            request(
                model=model.name,
                prompt="a cat <lora:add_detail:0.6>",
                loras=(("lcm_lora_sdxl", 0.8),),
                vae="sdxl_vae.safetensors",
                sampler="Euler a",
                scheduler="karras",
                steps=12,
                cfg=5.5,
                n=2,
            )
        )
        await p.generate(run)
        assert sorted(run.images) == [0, 1]
        assert {size_of(im.data) for im in run.images.values()} == {(512, 384)}
        jobs = gpu.rendered
        assert len(jobs) == 2  # one request per picture: each delivered as soon as it exists
        first = jobs[0]
        assert first["checkpoint"].startswith("dreamshaper_8")
        assert first["vae"] == "sdxl_vae.safetensors"
        assert first["sampler"] == "Euler a" and first["scheduler"].lower() == "karras"
        assert "<lora:add_detail:0.6>" in first["prompt"]
        assert "<lora:lcm_lora_sdxl:0.8>" in first["prompt"]
        assert [j["seed"] for j in jobs] == [42, 43]
        assert gpu.switches == 1 and gpu.max_concurrent == 1


async def test_img2img_always_sends_the_size() -> None:
    async with A1111Fake() as gpu, provider(cfg(gpu)) as p:
        run = Recorder(
            request(kind="img2img", init_image=png(96, 64), width=768, height=512, strength=0.4)
        )
        await p.generate(run)
        assert size_of(run.images[0].data) == (768, 512)  # not the 512x512 of a missing size
        body = gpu.calls_of("img2img")[0].json
        assert body["width"] == 768 and body["denoising_strength"] == 0.4


async def test_upscale_uses_the_instances_upscaler() -> None:
    async with A1111Fake() as gpu, provider(cfg(gpu)) as p:
        run = Recorder(request(kind="img2img", init_image=png(96, 64), upscale=2.0))
        await p.generate(run)
        assert size_of(run.images[0].data) == (192, 128)
        body = gpu.calls_of("extra-single-image")[0].json
        assert body["upscaler_1"] == "R-ESRGAN 4x+" and body["upscaling_resize"] == 2.0


async def test_names_match_by_title_file_hash_and_the_loaded_pseudo_model() -> None:
    async with A1111Fake(hashed=["sd15.safetensors"]) as gpu, provider(cfg(gpu)) as p:
        sd15 = gpu.checkpoint("sd15.safetensors")
        for name in (sd15.title, "sd15", "SD15.safetensors", sd15.shorthash, sd15.sha256):
            found = p.find_model(str(name))
            assert found is not None and found.name == "sd15", name
        assert p.find_model("nope") is None
        assert p.capabilities().default_model == "loaded"
        # not hashed yet: no hash, the title has none, the name still finds it
        assert p.find_model("sdxl_base") is not None


async def test_unknown_sampler_lora_vae_and_scheduler_are_refused_before_charging() -> None:
    async with A1111Fake() as gpu, provider(cfg(gpu)) as p:
        for params in (
            GenerationParams("x", sampler="Euler z"),
            GenerationParams("x <lora:nowhere:1>"),
            GenerationParams("x", loras=(("nowhere", 1.0),)),
            GenerationParams("x", vae="novae"),
            GenerationParams("x", scheduler="zigzag"),
        ):
            with pytest.raises(BadInput, match="no GPU instance has"):
                p.check(params, "sd15")
        p.check(GenerationParams("x", sampler="DPM++ 2M Karras"), "sd15")  # name + schedule
        assert not gpu.rendered


async def test_out_of_memory_is_the_requests_fault_with_a_clear_message() -> None:
    async with A1111Fake(oom_above_pixels=512 * 512) as gpu, provider(cfg(gpu)) as p:
        with pytest.raises(ProviderFailure) as info:
            await p.generate(Recorder(request(width=1024, height=1024)))
        assert info.value.failure == FailureClass.BAD_INPUT
        assert "out of memory" in info.value.message and "--size" in info.value.message
        assert gpu.ooms == 1


# --- the pool ----------------------------------------------------------------------------------


async def test_jobs_go_to_the_instance_that_has_their_checkpoint_loaded() -> None:
    async with (
        A1111Fake(loaded="sd15.safetensors", time_per_image_s=0.1, switch_time_s=0.5) as g1,
        A1111Fake(loaded="sdxl_base.safetensors", time_per_image_s=0.1, switch_time_s=0.5) as g2,
        provider(cfg(g1, g2)) as p,
    ):
        runs = [
            Recorder(request(job_id=i, model="sdxl_base" if i % 2 else "sd15", seed=i))
            for i in range(8)
        ]
        await asyncio.gather(*(p.generate(r) for r in runs))
        assert all(r.images for r in runs)
        assert g1.switches == 0 and g2.switches == 0
        assert {j["checkpoint"].split(".")[0] for j in g1.rendered} == {"sd15"}
        assert {j["checkpoint"].split(".")[0] for j in g2.rendered} == {"sdxl_base"}
        assert g1.max_in_flight == 1 and g2.max_in_flight == 1  # never a second request


async def test_an_instance_that_dies_mid_job_hands_the_job_to_another() -> None:
    async with (
        A1111Fake(time_per_image_s=0.6) as g1,
        A1111Fake(time_per_image_s=0.6) as g2,
        provider(cfg(g1, g2)) as p,
    ):
        first = Recorder(request(job_id=1))
        second = Recorder(request(job_id=2, n=2))
        g1.die_after_s = 0.3  # g1 takes the first job and dies under it
        await asyncio.gather(p.generate(first), p.generate(second))
        assert sorted(first.images) == [0] and sorted(second.images) == [0, 1]
        assert g1.dead and len(g2.rendered) == 3
        states = {d["name"]: d["up"] for d in p.pool.describe()}
        assert states == {"gpu1": False, "gpu2": True}
        await g1.revive()
        async with asyncio.timeout(5):
            while not p.pool.members[0].up:
                await asyncio.sleep(0.05)


async def test_all_instances_down_fails_retryably_with_nothing_charged() -> None:
    async with A1111Fake() as gpu:
        config = cfg(gpu, wait_for_instance_s=0.3)
        await gpu.die()
        async with provider(config) as p:
            with pytest.raises(ProviderFailure) as info:
                async with asyncio.timeout(10):
                    await p.generate(Recorder(request()))
            assert info.value.uncharged and info.value.retry_after is not None
            assert "no GPU instance is answering" in info.value.message


async def test_cancel_interrupts_only_the_instance_running_that_job() -> None:
    async with (
        A1111Fake(time_per_image_s=3.0) as g1,
        A1111Fake(time_per_image_s=0.5) as g2,
        provider(cfg(g1, g2)) as p,
    ):
        mine = Recorder(request(job_id=1))
        task = asyncio.create_task(p.generate(mine))
        await mine.task_known.wait()
        other = asyncio.create_task(p.generate(Recorder(request(job_id=2))))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await p.cancel(mine.task_id or "")  # what the scheduler does next: a no-op now
        await other
        busy = g1 if g1.interrupts else g2
        assert busy.interrupts == 1 and (g1.interrupts + g2.interrupts) == 1
        assert not mine.images


async def test_progress_carries_the_live_preview() -> None:
    async with A1111Fake(time_per_image_s=0.6) as gpu, provider(cfg(gpu)) as p:
        run = Recorder(request())
        await p.generate(run)
        assert run.previews, "no preview reached the core"
        Image.open(io.BytesIO(run.previews[0])).verify()
        assert len(run.previews) == len(set(run.previews))  # an unchanged preview is not sent again


# --- flavours and probing ------------------------------------------------------------------


async def test_forge_switches_through_options_and_sdnext_lists_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.providers.a1111.provider")
    async with (
        A1111Fake(flavour="forge", loaded="sd15.safetensors") as forge,
        A1111Fake(flavour="sdnext") as sdnext,
        provider(cfg(forge, sdnext)) as p,
    ):
        assert p.infos["gpu1"].flavour == "forge" and p.infos["gpu1"].switch_by_options
        assert p.infos["gpu2"].flavour == "sdnext" and p.infos["gpu2"].schedulers is None
        assert p.find_model("sdxl_base") is not None  # SD.Next's "name" key is read
        lines = [r.getMessage() for r in caplog.records if "instance gpu" in r.getMessage()]
        assert any("Forge" in line and "/options" in line for line in lines)
        assert any("SD.Next" in line for line in lines)
        run = Recorder(request(model="sdxl_base"))
        p.pool.members[1].up = False  # only Forge may take it
        await p.generate(run)
        assert forge.rendered[-1]["checkpoint"].startswith("sdxl_base")
        assert any(
            c.json.get("sd_model_checkpoint") for c in forge.calls_of("options", method="POST")
        )


async def test_an_instance_that_ignores_override_settings_is_learnt() -> None:
    # a Forge build whose /options lacks the forge markers: sdhost sees the wrong
    # checkpoint rendered, switches through /options and renders the picture again
    async with A1111Fake(flavour="forge", loaded="sd15.safetensors") as gpu:
        for key in [k for k in gpu.options if k.startswith("forge_")]:
            del gpu.options[key]
        async with provider(cfg(gpu)) as p:
            assert not p.infos["gpu1"].switch_by_options
            run = Recorder(request(model="sdxl_base"))
            await p.generate(run)
            assert p.infos["gpu1"].switch_by_options
            assert gpu.rendered[-1]["checkpoint"].startswith("sdxl_base")
            assert len(run.images) == 1


async def test_basic_auth_is_sent_up_front_and_a_wrong_password_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        A1111Fake(auth=("me", "s3cret-pass")) as good,
        A1111Fake(auth=("me", "other")) as bad,
    ):
        config = cfg(
            good,
            bad,
            auth1={"user": "me", "password": "s3cret-pass"},
            auth2={"user": "me", "password": "wrong-pass"},
        )
        async with provider(config) as p:
            assert p.pool.members[0].up and not p.pool.members[1].up
            assert "credentials" in p.pool.members[1].down_reason
            await p.generate(Recorder(request()))
            assert len(good.rendered) == 1
        assert "s3cret-pass" not in caplog.text and "wrong-pass" not in caplog.text


async def test_new_model_files_are_found_after_models_changed() -> None:
    async with A1111Fake() as gpu, provider(cfg(gpu)) as p:
        assert p.find_model("fresh_from_civitai") is None
        gpu.checkpoints.append("fresh_from_civitai.safetensors")
        await p.models_changed()
        assert gpu.refreshes["checkpoints"] == 1
        assert p.find_model("fresh_from_civitai") is not None


# --- through the whole bot --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bot_on(
    tmp_path: Path, db_url: str, *fakes: A1111Fake, default: bool = True
) -> AsyncIterator[tuple[App, RecordingAdapter]]:
    """The whole bot (SQLite or PostgreSQL), with these instances as [providers.a1111]."""
    instances = [{"name": f"gpu{i}", "url": f.base_url} for i, f in enumerate(fakes, 1)]
    providers: dict[str, Any] = {"a1111": {"instances": instances, **FAST}}
    if default:
        providers["default"] = "a1111"
    config = make_config(tmp_path, db_url, providers=providers)
    config.database.auto_migrate = False
    app = App(config)
    if db_url.startswith("sqlite"):
        await app.db.create_all()
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    await app.start()
    try:
        yield app, adapter
    finally:
        await app.stop()


async def test_a_job_through_the_bot_is_charged_once_when_its_instance_dies(
    tmp_path: Path, db_url: str
) -> None:
    async with (
        A1111Fake(time_per_image_s=0.5) as g1,
        A1111Fake(time_per_image_s=0.5) as g2,
        bot_on(tmp_path, db_url, g1, g2) as (app, adapter),
    ):
        start = await app.jobs.balance(user())
        g1.die_after_s = 0.25
        g2.die_after_s = None
        receipt = await app.jobs.submit(
            user(), "txt2img", [GenerationParams("a fox", model="sd15", n=2)], REPLY
        )
        second = await app.jobs.submit(
            user("bob"), "txt2img", [GenerationParams("a cat", model="a1111:sd15")], REPLY
        )
        await adapter.wait_for(
            lambda: len([d for d in adapter.deliveries if d.kind == "finished"]) == 2,
            timeout=30,
        )
        view = await app.jobs.job(None, receipt.job_ids[0])
        assert view.status == "succeeded" and len(view.images) == 2
        assert view.attempts <= 1  # an instance dying is not the job's crash
        assert await app.jobs.balance(user()) == start - receipt.cost
        assert [r for r, _ in view.ledger] == ["charge"]
        other = await app.jobs.job(None, second.job_ids[0])
        assert other.status == "succeeded"


async def test_an_unknown_checkpoint_is_refused_before_charging(
    tmp_path: Path, db_url: str
) -> None:
    async with A1111Fake() as gpu, bot_on(tmp_path, db_url, gpu, default=False) as (app, _):
        start = await app.jobs.balance(user())
        with pytest.raises(BadInput, match="unknown model"):
            await app.jobs.submit(
                user(), "txt2img", [GenerationParams("x", model="a1111:missing")], REPLY
            )
        with pytest.raises(BadInput, match="sampler"):
            await app.jobs.submit(
                user(),
                "txt2img",
                [GenerationParams("x", model="a1111:sd15", sampler="Euler z")],
                REPLY,
            )
        assert await app.jobs.balance(user()) == start
        assert not gpu.rendered


async def test_hires_renders_the_asked_size_through_a_second_pass() -> None:
    async with A1111Fake() as gpu, provider(cfg(gpu, hires_scale=2.0)) as p:
        run = Recorder(request(width=1024, height=768, hires=True))
        await p.generate(run)
        assert size_of(run.images[0].data) == (1024, 768)
        body = gpu.calls_of("txt2img")[0].json
        assert (body["width"], body["height"], body["enable_hr"]) == (512, 384, True)
        assert body["hr_scale"] == 2.0 and body["hr_upscaler"] == "Latent"


async def test_cancel_through_the_bot_interrupts_and_refunds_in_full(
    tmp_path: Path, db_url: str
) -> None:
    async with (
        A1111Fake(time_per_image_s=5.0) as gpu,
        bot_on(tmp_path, db_url, gpu) as (app, adapter),
    ):
        start = await app.jobs.balance(user())
        receipt = await app.jobs.submit(user(), "txt2img", [GenerationParams("a fox", n=2)], REPLY)
        async with asyncio.timeout(10):
            while not gpu.running:
                await asyncio.sleep(0.02)
        await app.jobs.cancel(user(), receipt.job_ids[0])
        await adapter.wait_for(
            lambda: any(d.kind != "image" for d in adapter.deliveries), timeout=15
        )
        view = await app.jobs.job(None, receipt.job_ids[0])
        assert view.status == "cancelled" and not view.images
        assert gpu.interrupts == 1
        assert await app.jobs.balance(user()) == start  # nothing was billed: all back


async def test_forge_gets_the_extra_modules_a_flux_checkpoint_needs() -> None:
    modules = ["clip_l.safetensors", "t5xxl_fp8.safetensors", "ae.safetensors"]
    async with (
        A1111Fake(flavour="forge", checkpoints=["sd15.safetensors", "flux1-dev.safetensors"]) as g,
        provider(cfg(g, forge_modules={"flux1-dev": modules})) as p,
    ):
        await p.generate(Recorder(request(model="flux1-dev")))
        [switch] = [c for c in g.calls_of("options", method="POST")]
        assert switch.json["forge_additional_modules"] == modules
        body = g.calls_of("txt2img")[0].json
        assert body["override_settings"]["forge_additional_modules"] == modules
