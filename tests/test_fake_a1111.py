"""Tests of the AUTOMATIC1111 web UI fake (tests/fakes/a1111.py): driven by ``webuiapi`` (the
de-facto client, shared/api/providers.md "Official clients") and by raw HTTP for the behaviours
a provider must cope with (one job at a time, checkpoint overrides, flavours, errors, death)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from typing import Any

import aiohttp
import pytest
import webuiapi
from PIL import Image

from tests.fakes.a1111 import A1111Fake

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

API = "/sdapi/v1"


def b64png(size: tuple[int, int] = (300, 200), colour: tuple[int, int, int] = (200, 10, 10)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


async def client(fake: A1111Fake, **kw: Any) -> webuiapi.WebUIApi:
    return await asyncio.to_thread(webuiapi.WebUIApi, host="127.0.0.1", port=fake.port, **kw)


async def call(
    fake: A1111Fake,
    method: str,
    route: str,
    body: Any = None,
    *,
    auth: tuple[str, str] | None = None,
) -> tuple[int, Any, Any]:
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    url = f"{fake.base_url}{API}/{route}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


# --- driven by webuiapi ------------------------------------------------------------------------


async def test_webuiapi_txt2img_lists_and_options() -> None:
    async with A1111Fake() as fake:
        api = await client(fake)
        result = await asyncio.to_thread(
            api.txt2img,
            prompt="a cat <lora:add_detail:0.6>",
            negative_prompt="blurry",
            width=256,
            height=320,
            batch_size=2,
            n_iter=2,
            seed=1234,
            sampler_name="Euler a",
        )
        assert [im.size for im in result.images] == [(256, 320)] * 4
        assert len({im.getpixel((0, 0)) for im in result.images}) == 4  # all different
        assert result.info["all_seeds"] == [1234, 1235, 1236, 1237]
        assert result.info["sampler_name"] == "Euler a"
        assert result.info["sd_model_name"] == "sd15"
        assert result.info["sd_model_hash"] == fake.checkpoint("sd15.safetensors").shorthash
        assert "Negative prompt: blurry" in result.info["infotexts"][0]
        assert "Seed: 1234" in result.info["infotexts"][0]
        assert result.images[0].info["parameters"] == result.info["infotexts"][0]
        assert fake.rendered[-1]["prompt"] == "a cat <lora:add_detail:0.6>"
        assert fake.rendered[-1]["n"] == 4

        models = await asyncio.to_thread(api.get_sd_models)
        assert [m["model_name"] for m in models] == ["sd15", "sdxl_base", "dreamshaper_8"]
        samplers = await asyncio.to_thread(api.util_get_sampler_names)
        assert "DPM++ 2M" in samplers and "Euler a" in samplers
        schedulers = await asyncio.to_thread(api.util_get_scheduler_names)
        assert {"automatic", "karras", "sgm_uniform"} <= set(schedulers)

        await asyncio.to_thread(api.set_options, {"sd_vae": "sdxl_vae.safetensors"})
        options = await asyncio.to_thread(api.get_options)
        assert options["sd_vae"] == "sdxl_vae.safetensors"
        await asyncio.to_thread(api.txt2img, prompt="x", width=64, height=64)
        assert fake.rendered[-1]["vae"] == "sdxl_vae.safetensors"

        fake.checkpoints.append("new_one.safetensors")
        assert len(await asyncio.to_thread(api.get_sd_models)) == 3  # not before a refresh
        await asyncio.to_thread(api.refresh_checkpoints)
        names = [m["model_name"] for m in await asyncio.to_thread(api.get_sd_models)]
        assert names[-1] == "new_one"
        assert fake.refreshes["checkpoints"] == 1
        assert fake.calls_of("refresh-checkpoints", method="POST")


async def test_webuiapi_img2img_renders_512_without_a_size() -> None:
    async with A1111Fake() as fake:
        api = await client(fake)
        init = Image.new("RGB", (300, 200), (0, 0, 255))
        result = await asyncio.to_thread(api.img2img, images=[init], prompt="sea", seed=7)
        assert [im.size for im in result.images] == [(512, 512)]
        assert fake.rendered[-1]["kind"] == "img2img"
        # webuiapi's aiohttp path (use_async=True) runs on this loop
        result = await api.img2img(images=[init], width=64, height=80, use_async=True)
        assert [im.size for im in result.images] == [(64, 80)]
        assert result.info["denoising_strength"] == pytest.approx(0.75)
        # the init image went in: the picture leans blue
        _r, _g, b = result.images[0].convert("RGB").getpixel((10, 10))
        assert b >= 255 * 0.25 - 1
        # with a data: URL prefix and an explicit size
        status, body, _ = await call(
            fake,
            "POST",
            "img2img",
            {"init_images": ["data:image/png;base64," + b64png()], "width": 128, "height": 96},
        )
        assert status == 200
        assert picture(body["images"][0]).size == (128, 96)
        assert body["parameters"]["init_images"] is None  # include_init_images false
        status, body, _ = await call(fake, "POST", "img2img", {"prompt": "no image"})
        assert (status, body["detail"]) == (404, "Init image not found")


async def test_webuiapi_progress_and_interrupt() -> None:
    async with A1111Fake(time_per_image_s=0.1) as fake:
        api = await client(fake)
        idle = await asyncio.to_thread(api.get_progress)
        assert idle["progress"] == 0 and idle["current_image"] is None
        assert idle["state"]["job_count"] == 0

        job = asyncio.create_task(
            asyncio.to_thread(
                api.txt2img, prompt="long", n_iter=30, width=96, height=64, use_async=False
            )
        )
        await fake.wait_for_call("txt2img", answered=False)
        while not fake.running or fake.calls_of("txt2img")[0].time + 0.35 > time.monotonic():
            await asyncio.sleep(0.02)
        progress = await asyncio.to_thread(api.get_progress)
        assert 0 < progress["progress"] < 1
        assert progress["state"]["job"] == "scripts_txt2img"
        assert progress["state"]["job_count"] == 30
        assert progress["current_task"].startswith("task(")
        assert picture(progress["current_image"]).size == (64, 64)
        status, plain, _ = await call(fake, "GET", "progress?skip_current_image=true")
        assert status == 200 and plain["current_image"] is None

        assert await asyncio.to_thread(api.interrupt) == {}
        started = time.monotonic()
        result = await job
        assert time.monotonic() - started < 0.5  # it stopped at once
        done = progress["state"]["job_no"]
        assert done + 1 <= len(result.images) < 30  # the ones done plus the partial one
        assert all(im.size == (96, 64) for im in result.images)
        assert fake.interrupts == 1 and fake.rendered[-1]["interrupted"]
        assert fake.calls_of("txt2img")[0].status == 200
        after = await asyncio.to_thread(api.get_progress)
        assert after["progress"] == 0 and after["state"]["interrupted"] is True


async def test_skip_ends_one_batch_only() -> None:
    async with A1111Fake(time_per_image_s=0.2) as fake:
        api = await client(fake)
        job = asyncio.create_task(
            asyncio.to_thread(api.txt2img, prompt="x", n_iter=3, width=64, height=64)
        )
        while not fake.running:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(api.skip)
        result = await job
        assert len(result.images) == 3  # the skipped batch is kept, the others rendered
        assert time.monotonic() - started < 0.55
        assert fake.skips == 1 and not fake.rendered[-1]["interrupted"]


async def test_webuiapi_util_set_model_switches_the_loaded_checkpoint() -> None:
    async with A1111Fake(switch_time_s=0.05) as fake:
        api = await client(fake)
        sdxl = fake.checkpoint("sdxl_base.safetensors")
        current = await asyncio.to_thread(api.util_get_current_model)
        assert current == fake.checkpoint("sd15.safetensors").title
        await asyncio.to_thread(api.util_set_model, "SDXL_base")
        assert fake.loaded == "sdxl_base.safetensors" and fake.switches == 1
        assert await asyncio.to_thread(api.util_get_current_model) == sdxl.title
        assert (await asyncio.to_thread(api.get_options))["sd_checkpoint_hash"] == sdxl.sha256
        result = await asyncio.to_thread(api.txt2img, prompt="x", width=64, height=64)
        assert result.info["sd_model_name"] == "sdxl_base"


async def test_webuiapi_basic_auth_and_the_lora_exemption() -> None:
    async with A1111Fake(auth=("alice", "s3cret")) as fake:
        api = await client(fake, username="alice", password="s3cret")
        result = await asyncio.to_thread(api.txt2img, prompt="x", width=64, height=64)
        assert result.images[0].size == (64, 64)
        assert fake.calls_of("txt2img")[-1].key == "alice"

        await asyncio.to_thread(api.set_auth, "alice", "wrong")
        with pytest.raises(RuntimeError) as raised:
            await asyncio.to_thread(api.txt2img, prompt="x", width=64, height=64)
        assert raised.value.args[0] == 401
        assert len(fake.rendered) == 1

        status, body, headers = await call(fake, "GET", "sd-models")
        assert status == 401 and body["detail"] == "Not authenticated"
        assert "WWW-Authenticate" not in headers
        status, body, headers = await call(fake, "GET", "options", auth=("alice", "nope"))
        assert (status, body["detail"]) == (401, "Incorrect username or password")
        assert body["error"] == "HTTPException" and "WWW-Authenticate" not in headers
        status, loras, _ = await call(fake, "GET", "loras")
        assert status == 200 and [x["name"] for x in loras] == ["add_detail", "lcm_lora_sdxl"]
        assert set(loras[0]) == {"name", "alias", "path", "metadata"}
        status, _, _ = await call(fake, "POST", "refresh-loras")
        assert status == 200 and fake.refreshes["loras"] == 1
        flags = await asyncio.to_thread(api.get_cmd_flags)
        assert flags["detail"] == "Incorrect username or password"  # the 401's JSON
        status, flags, _ = await call(fake, "GET", "cmd-flags", auth=("alice", "s3cret"))
        assert status == 200 and flags["api_auth"] == "alice:s3cret"


# --- the fake's own behaviours ---------------------------------------------------------------


async def test_one_job_at_a_time() -> None:
    async with A1111Fake(time_per_image_s=0.15) as fake:
        body = {"prompt": "a", "width": 64, "height": 64}
        started = time.monotonic()
        first, second = await asyncio.gather(
            call(fake, "POST", "txt2img", body),
            call(fake, "POST", "txt2img", body | {"prompt": "b"}),
        )
        assert first[0] == second[0] == 200
        assert time.monotonic() - started >= 0.3  # one after the other
        assert fake.max_concurrent == 1
        assert fake.max_in_flight == 2  # two were sent at once: a provider test asserts 1
        assert [r["prompt"] for r in fake.rendered] == ["a", "b"]


async def test_refresh_and_options_wait_behind_the_running_job() -> None:
    async with A1111Fake(time_per_image_s=0.3) as fake:
        job = asyncio.create_task(call(fake, "POST", "txt2img", {"width": 64, "height": 64}))
        await fake.wait_for_call("txt2img", answered=False)
        while not fake.running:
            await asyncio.sleep(0.01)
        await call(fake, "POST", "options", {"sd_model_checkpoint": "dreamshaper_8"})
        assert job.done()  # the option change waited for the job
        assert fake.loaded == "dreamshaper_8.safetensors"
        assert fake.rendered[0]["checkpoint"] == "sd15.safetensors"
        job = asyncio.create_task(call(fake, "POST", "txt2img", {"width": 64, "height": 64}))
        while not fake.running:
            await asyncio.sleep(0.01)
        await call(fake, "POST", "refresh-checkpoints")
        assert job.done()


async def test_override_checkpoint_per_job() -> None:
    async with A1111Fake(switch_time_s=0.02) as fake:
        dream = fake.checkpoint("dreamshaper_8.safetensors")
        sdxl = fake.checkpoint("sdxl_base.safetensors")
        sd15 = fake.checkpoint("sd15.safetensors")
        for alias, expected in [
            ("dreamshaper_8", dream),
            (sdxl.shorthash, sdxl),
            (dream.sha256, dream),
            (sdxl.title, sdxl),
            ("sd15.safetensors", sd15),
        ]:
            status, body, _ = await call(
                fake,
                "POST",
                "txt2img",
                {"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": alias}},
            )
            assert status == 200
            assert json.loads(body["info"])["sd_model_name"] == expected.model_name
            assert fake.rendered[-1]["checkpoint"] == expected.name
        assert fake.switches == 5

        # restore_afterwards puts the option back but keeps the weights loaded ...
        await call(
            fake,
            "POST",
            "txt2img",
            {"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "sdxl_base"}},
        )
        status, options, _ = await call(fake, "GET", "options")
        assert options["sd_model_checkpoint"] == sd15.title
        assert options["sd_checkpoint_hash"] == sdxl.sha256 and fake.loaded == sdxl.name
        # ... and a job without an override loads the option's checkpoint again
        switches = fake.switches
        await call(fake, "POST", "txt2img", {"width": 64, "height": 64})
        assert fake.rendered[-1]["checkpoint"] == sd15.name and fake.switches == switches + 1

        # an unknown checkpoint is no error: the loaded one renders
        status, body, _ = await call(
            fake,
            "POST",
            "txt2img",
            {"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "nope"}},
        )
        assert status == 200 and fake.rendered[-1]["checkpoint"] == sd15.name
        assert fake.switches == switches + 1

        # restore false: the option keeps the value sent
        await call(
            fake,
            "POST",
            "txt2img",
            {
                "width": 64,
                "height": 64,
                "override_settings": {"sd_model_checkpoint": "dreamshaper_8", "sd_vae": "x"},
                "override_settings_restore_afterwards": False,
            },
        )
        assert fake.rendered[-1]["vae"] == "x"
        _, options, _ = await call(fake, "GET", "options")
        assert options["sd_model_checkpoint"] == "dreamshaper_8" and options["sd_vae"] == "x"


async def test_unhashed_checkpoint_gains_its_hash_when_loaded() -> None:
    async with A1111Fake(hashed=set()) as fake:
        _, models, _ = await call(fake, "GET", "sd-models")
        dream = next(m for m in models if m["model_name"] == "dreamshaper_8")
        assert dream["hash"] is None and dream["sha256"] is None
        assert dream["title"] == "dreamshaper_8.safetensors"
        loaded = next(m for m in models if m["model_name"] == "sd15")
        assert loaded["hash"] is not None  # the loaded one was hashed at load
        short = fake.checkpoint("dreamshaper_8.safetensors").full_sha256[:10]
        override = {"override_settings": {"sd_model_checkpoint": short}}
        await call(fake, "POST", "txt2img", {"width": 64, "height": 64} | override)
        assert fake.rendered[-1]["checkpoint"] == "sd15.safetensors"  # not an alias yet
        override = {"override_settings": {"sd_model_checkpoint": "dreamshaper_8.safetensors"}}
        await call(fake, "POST", "txt2img", {"width": 64, "height": 64} | override)
        _, models, _ = await call(fake, "GET", "sd-models")
        dream = next(m for m in models if m["model_name"] == "dreamshaper_8")
        assert dream["title"] == f"dreamshaper_8.safetensors [{short}]"
        assert dream["hash"] == short


async def test_samplers_and_schedulers_resolve_as_since_1_9() -> None:
    async with A1111Fake() as fake:
        for sent, sampler, scheduler in [
            ({"sampler_name": "Heun++ 9000"}, "DPM++ 2M", "Automatic"),
            ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "Automatic"),
            ({"sampler_name": "Euler a", "scheduler": "karras"}, "Euler a", "Karras"),
            ({"sampler_name": "Euler", "scheduler": "SGM Uniform"}, "Euler", "SGM Uniform"),
            ({}, "Euler", "Automatic"),
        ]:
            _, body, _ = await call(fake, "POST", "txt2img", {"width": 64, "height": 64} | sent)
            assert json.loads(body["info"])["sampler_name"] == sampler
            assert (fake.rendered[-1]["sampler"], fake.rendered[-1]["scheduler"]) == (
                sampler,
                scheduler,
            )


async def test_forge_ignores_the_checkpoint_override() -> None:
    async with A1111Fake(flavour="forge") as fake:
        override = {"override_settings": {"sd_model_checkpoint": "sdxl_base"}}
        await call(fake, "POST", "txt2img", {"width": 64, "height": 64} | override)
        assert fake.rendered[-1]["checkpoint"] == "sd15.safetensors" and fake.switches == 0
        _, options, _ = await call(fake, "GET", "options")
        assert "forge_preset" in options and options["forge_additional_modules"] == []
        status, _, _ = await call(fake, "GET", "schedulers")
        assert status == 200
        await call(fake, "POST", "options", {"sd_model_checkpoint": "sdxl_base"})
        await call(fake, "POST", "txt2img", {"width": 64, "height": 64})
        assert fake.rendered[-1]["checkpoint"] == "sdxl_base.safetensors" and fake.switches == 1


async def test_sdnext_drift_and_markers() -> None:
    async with A1111Fake(flavour="sdnext") as sdnext, A1111Fake() as a1111:
        _, models, _ = await call(sdnext, "GET", "sd-models")
        assert "name" in models[0] and "model_name" not in models[0]
        assert (await call(sdnext, "POST", "refresh-vaes"))[0] == 200
        assert (await call(sdnext, "POST", "refresh-vae"))[:2] == (404, {"detail": "Not Found"})
        assert (await call(sdnext, "GET", "schedulers"))[0] == 404
        status, version, _ = await call(sdnext, "GET", "version")
        assert status == 200 and version["app"] == "sd.next"
        assert "sd_backend" in (await call(sdnext, "GET", "options"))[1]

        assert (await call(a1111, "GET", "version"))[:2] == (404, {"detail": "Not Found"})
        assert (await call(a1111, "POST", "refresh-vae"))[0] == 200
        assert "model_name" in (await call(a1111, "GET", "sd-models"))[1][0]
        assert "sd_backend" not in (await call(a1111, "GET", "options"))[1]
        assert sdnext.port != a1111.port


async def test_errors_in_the_web_uis_shape() -> None:
    async with A1111Fake(oom_above_pixels=512 * 512) as fake:
        status, body, _ = await call(fake, "POST", "txt2img", {"width": 1024, "height": 1024})
        assert status == 500
        assert body["error"] == "OutOfMemoryError" and body["detail"] == ""
        assert body["errors"].startswith("CUDA out of memory")
        assert fake.ooms == 1 and fake.rendered == []
        status, body, _ = await call(
            fake, "POST", "txt2img", {"width": 512, "height": 512, "enable_hr": True}
        )
        assert status == 500  # the hires size counts
        status, body, _ = await call(fake, "POST", "txt2img", {"width": 512, "height": 512})
        assert status == 200

        status, body, _ = await call(fake, "POST", "options", {"sd_model_checkpoint": "nope"})
        assert status == 500
        assert body == {
            "error": "RuntimeError",
            "detail": "",
            "body": "",
            "errors": "model 'nope' not found",
        }
        assert (await call(fake, "GET", "nothing-here"))[:2] == (404, {"detail": "Not Found"})


async def test_hires_grid_and_extras() -> None:
    async with A1111Fake() as fake:
        _, body, _ = await call(
            fake,
            "POST",
            "txt2img",
            {"width": 64, "height": 96, "enable_hr": True, "hr_scale": 1.5},
        )
        assert picture(body["images"][0]).size == (96, 144)
        assert fake.rendered[-1]["hr"] is True
        _, body, _ = await call(
            fake,
            "POST",
            "txt2img",
            {"width": 64, "height": 64, "batch_size": 4, "save_images": True},
        )
        assert [picture(i).size for i in body["images"]] == [(128, 128)] + [(64, 64)] * 4
        assert json.loads(body["info"])["index_of_first_image"] == 1

        status, body, _ = await call(
            fake,
            "POST",
            "extra-single-image",
            {"image": b64png((100, 50)), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 3},
        )
        assert status == 200 and picture(body["image"]).size == (300, 150)
        status, body, _ = await call(
            fake, "POST", "extra-single-image", {"image": b64png(), "upscaler_1": "Magic 9x"}
        )
        assert status == 500 and body["errors"] == "could not find upscaler named Magic 9x"
        _, upscalers, _ = await call(fake, "GET", "upscalers")
        assert {"None", "Lanczos", "R-ESRGAN 4x+"} <= {u["name"] for u in upscalers}


async def test_die_and_revive_on_the_same_port() -> None:
    async with A1111Fake(time_per_image_s=0.2) as fake:
        port = fake.port
        job = asyncio.create_task(call(fake, "POST", "txt2img", {"n_iter": 20}))
        while not fake.running:
            await asyncio.sleep(0.01)
        await fake.die()
        with pytest.raises(aiohttp.ClientError):
            await job  # the connection was dropped
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(fake, "GET", "progress")  # refused
        assert fake.dead and fake.rendered == []

        await fake.revive()
        assert fake.port == port and not fake.dead
        status, _, _ = await call(fake, "POST", "txt2img", {"width": 64, "height": 64})
        assert status == 200 and len(fake.rendered) == 1

        fake.die_after_s = 0.1
        with pytest.raises(aiohttp.ClientError):
            await call(fake, "POST", "txt2img", {"n_iter": 20})
        assert fake.dead and fake.deaths == 2
        await fake.revive()
        assert (await call(fake, "GET", "progress"))[0] == 200
