"""The comfyui provider against loopback ComfyUI servers (tests/fakes/comfyui.py): what the
submitted graph holds (shipped and the operator's own workflows), previews, a socket that
drops, failures, cancel queued and running, several instances. The fake itself is proven
faithful in tests/test_fake_comfyui.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.providers.comfyui import ComfyUIProvider
from adapters.providers.comfyui.workflows import Values, WorkflowError, apply
from bot.config import ComfyUIConfig
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import ResolvedRequest
from tests.fakes.comfyui import ComfyUIFake
from tests.fakes.provider_run import Recorder

FAST = {"recheck_s": 0.1, "recheck_max_s": 0.3, "lists_ttl_s": 60}


def cfg(*fakes: ComfyUIFake, **kw: Any) -> ComfyUIConfig:
    headers = kw.pop("headers", {})
    instances = [
        {"name": f"gpu{i}", "url": f.base_url, "headers": headers} for i, f in enumerate(fakes, 1)
    ]
    return ComfyUIConfig.model_validate({"instances": instances, **FAST, **kw})


@contextlib.asynccontextmanager
async def provider(config: ComfyUIConfig) -> AsyncIterator[ComfyUIProvider]:
    p = ComfyUIProvider(config)
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
        "negative": "blurry",
        "width": 512,
        "height": 384,
        "seed": 42,
        "n": 1,
        "model": "sd15",
    }
    return ResolvedRequest(**{**base, **kw})


def size_of(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    return Image.open(io.BytesIO(data)).size


def png(w: int = 96, h: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


# --- what the graph holds -----------------------------------------------------------------------


async def test_the_shipped_txt2img_takes_every_value_of_the_command() -> None:
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        run = Recorder(
            request(
                sampler="dpmpp_2m",
                scheduler="karras",
                steps=12,
                cfg=5.5,
                n=2,
                loras=(("add_detail", 0.6),),
            )
        )
        await p.generate(run)
        assert sorted(run.images) == [0, 1]
        assert {size_of(im.data) for im in run.images.values()} == {(512, 384)}
        [done] = gpu.executed
        assert done["checkpoint"].startswith("sd15")
        assert done["positive"] == "a lighthouse at dusk" and done["negative"] == "blurry"
        assert (done["seed"], done["steps"], done["cfg"]) == (42, 12, 5.5)
        assert (done["sampler"], done["scheduler"], done["batch"]) == ("dpmpp_2m", "karras", 2)
        assert done["loras"] and done["loras"][0][0].startswith("add_detail")
        assert done["client_id"]  # never without: events would go to every socket


async def test_an_operators_titled_workflow_gets_the_mapped_inputs(tmp_path: Path) -> None:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"},
              "_meta": {"title": "sdhost:checkpoint"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "sdhost:prompt"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "sdhost:negative"}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1},
              "_meta": {"title": "sdhost:size,count"}},
        "5": {"class_type": "KSampler", "_meta": {"title": "sdhost:seed,steps,cfg,denoise"},
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                         "latent_image": ["4", 0], "seed": 1, "steps": 3, "cfg": 1.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "mine"}},
    }  # fmt: skip
    (tmp_path / "Mine.json").write_text(json.dumps(graph))
    async with ComfyUIFake() as gpu, provider(cfg(gpu, workflows_dir=str(tmp_path))) as p:
        assert "mine" in p.capabilities().lists["workflows"]
        run = Recorder(request(workflow="mine", steps=9, cfg=3.5, seed=77, width=640))
        await p.generate(run)
        sent = gpu.executed[0]["graph"]
        assert sent["5"]["inputs"]["seed"] == 77 and sent["5"]["inputs"]["steps"] == 9
        assert sent["5"]["inputs"]["cfg"] == 3.5
        assert sent["4"]["inputs"]["width"] == 640 and sent["4"]["inputs"]["height"] == 384
        assert sent["2"]["inputs"]["text"] == "a lighthouse at dusk"
        assert sent["1"]["inputs"]["ckpt_name"].startswith("sd15")
        assert size_of(run.images[0].data) == (640, 384)


def test_a_workflow_that_maps_no_prompt_is_refused_at_start(tmp_path: Path) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                      "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    (tmp_path / "broken.json").write_text(json.dumps({**graph, "sdhost": {"kind": "txt2img"}}))
    with pytest.raises(WorkflowError, match="prompt"):
        ComfyUIProvider(
            ComfyUIConfig.model_validate(
                {"instances": [{"url": "http://127.0.0.1:9"}], "workflows_dir": str(tmp_path)}
            )
        )


async def test_img2img_uploads_the_picture_and_uses_the_name_the_server_gave() -> None:
    picture = png()
    name = f"sdhost-{hashlib.sha256(picture).hexdigest()[:16]}.png"
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        gpu.put_input(name, png(10, 10))  # another file by that name: the upload is renamed
        run = Recorder(request(kind="img2img", init_image=picture, strength=0.5))
        await p.generate(run)
        graph = gpu.executed[0]["graph"]
        [load] = [n for n in graph.values() if n["class_type"] == "LoadImage"]
        assert load["inputs"]["image"] != name and load["inputs"]["image"].startswith("sdhost-")
        assert gpu.file(load["inputs"]["image"], type="input") == picture
        assert gpu.executed[0]["denoise"] == 0.5
        assert size_of(run.images[0].data) == (512, 384)


async def test_upscale_runs_the_upscale_workflow() -> None:
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        assert p.capabilities().upscale
        run = Recorder(request(kind="img2img", init_image=png(96, 64), upscale=2.0,
                               width=192, height=128))  # fmt: skip
        await p.generate(run)
        assert size_of(run.images[0].data) == (192, 128)


# --- refusing before charging -------------------------------------------------------------------


async def test_unknown_workflow_sampler_and_lora_are_refused_before_charging() -> None:
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        for params in (
            GenerationParams("x", workflow="nope"),
            GenerationParams("x", sampler="Euler z"),
            GenerationParams("x", loras=(("nowhere", 1.0),)),
        ):
            with pytest.raises(BadInput):
                p.check(params, "sd15")
        with pytest.raises(BadInput, match="needs a picture"):
            p.check(GenerationParams("x", workflow="img2img"), "sd15", "txt2img")
        assert p.find_model("sd15.safetensors") is not None
        assert not gpu.executed


# --- previews, sockets, failures, cancel --------------------------------------------------------


async def test_previews_are_ours_and_decoded() -> None:
    async with ComfyUIFake(time_per_step_s=0.05) as gpu, provider(cfg(gpu)) as p:
        run = Recorder(request(steps=6))
        await p.generate(run)
        assert run.previews, "no preview reached the core"
        Image.open(io.BytesIO(run.previews[0])).verify()


async def test_a_socket_that_drops_mid_job_still_delivers_once() -> None:
    async with ComfyUIFake(time_per_step_s=0.05, drop_socket_after_s=0.15) as gpu:
        async with provider(cfg(gpu)) as p:
            run = Recorder(request(steps=10, n=2))
            await p.generate(run)
            assert sorted(run.images) == [0, 1]
            assert len(gpu.executed) == 1  # not submitted again


async def test_a_failing_node_is_logged_for_the_operator_and_said_plainly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        gpu.fail_node("KSampler", "mat1 and mat2 shapes cannot be multiplied")
        with pytest.raises(ProviderFailure) as info:
            async with asyncio.timeout(20):
                await p.generate(Recorder(request()))
        assert info.value.uncharged and "KSampler" in info.value.message
        assert "mat1 and mat2" in caplog.text  # the reason, for the operator


async def test_a_graph_the_server_refuses_is_logged_and_refunded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        run = Recorder(request(model="sd15", sampler="not_a_sampler"))
        with pytest.raises(ProviderFailure) as info:
            await p.generate(run)
        assert info.value.failure == FailureClass.BAD_INPUT and info.value.uncharged
        assert "not_a_sampler" in caplog.text
        assert not gpu.executed


async def test_cancel_of_a_running_prompt_interrupts_it() -> None:
    async with ComfyUIFake(time_per_step_s=0.2) as gpu, provider(cfg(gpu)) as p:
        running = Recorder(request(job_id=1, steps=30))
        task = asyncio.create_task(p.generate(running))
        await running.task_known.wait()
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert gpu.interrupts == 1
        assert not running.images


async def test_cancel_of_a_queued_prompt_deletes_it_and_interrupts_nothing() -> None:
    async with ComfyUIFake(time_per_step_s=0.1) as gpu, provider(cfg(gpu)) as p:
        # someone else's prompt keeps the server busy; ours waits in its queue
        foreign = apply(p.workflows["txt2img"], Values(checkpoint="sd15.safetensors", steps=40))
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{gpu.base_url}/prompt", json={"prompt": foreign, "client_id": "someone"}
            )
            assert answer.status_code == 200, answer.text
        queued = Recorder(request(job_id=2, steps=5))
        task = asyncio.create_task(p.generate(queued))
        await queued.task_known.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        deletes = gpu.calls_to("post.queue")
        assert deletes and deletes[0].json == {"delete": [queued.task_id.split(":", 1)[1]]}
        assert gpu.interrupts == 0  # the foreign prompt runs on


async def test_a_proxy_header_goes_with_requests_and_the_socket() -> None:
    token = {"Authorization": "Bearer s3cret-token-xyz"}
    async with ComfyUIFake(headers_required=token) as gpu:
        async with provider(cfg(gpu)) as p:  # no header: refused, said once
            assert not p.pool.members[0].up
            assert "refused" in p.pool.members[0].down_reason
        async with provider(cfg(gpu, headers=token)) as p:
            run = Recorder(request())
            await p.generate(run)
            assert run.images


async def test_two_instances_each_take_one_prompt_at_a_time() -> None:
    async with (
        ComfyUIFake(time_per_step_s=0.02) as g1,
        ComfyUIFake(time_per_step_s=0.02) as g2,
        provider(cfg(g1, g2)) as p,
    ):
        runs = [Recorder(request(job_id=i, seed=i, steps=5)) for i in range(6)]
        await asyncio.gather(*(p.generate(r) for r in runs))
        assert all(r.images for r in runs)
        assert g1.max_in_flight == 1 and g2.max_in_flight == 1
        assert len(g1.executed) + len(g2.executed) == 6


async def test_an_instance_that_dies_mid_job_hands_it_to_another() -> None:
    async with (
        ComfyUIFake(time_per_step_s=0.1) as g1,
        ComfyUIFake(time_per_step_s=0.1) as g2,
        provider(cfg(g1, g2)) as p,
    ):
        first = Recorder(request(job_id=1, steps=10))
        second = Recorder(request(job_id=2, steps=10))
        task = asyncio.create_task(p.generate(first))
        await first.task_known.wait()
        dying = g1 if first.task_id and first.task_id.startswith("gpu1:") else g2
        await asyncio.gather(dying.die(), p.generate(second))
        await task
        assert first.images and second.images
        assert {d["name"]: d["up"] for d in p.pool.describe()}[
            "gpu1" if dying is g1 else "gpu2"
        ] is False


async def test_a_job_through_the_bot_with_a_workflow(tmp_path: Path, db_url: str) -> None:
    from bot.app import App
    from tests.conftest import REPLY, RecordingAdapter, make_config, user

    async with ComfyUIFake() as gpu:
        config = make_config(
            tmp_path,
            db_url,
            providers={
                "default": "comfyui",
                "comfyui": {"instances": [{"url": gpu.base_url}], **FAST},
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
            start = await app.jobs.balance(user())
            receipt = await app.jobs.submit(
                user(),
                "txt2img",
                [GenerationParams("a fox", model="comfyui:sd15", n=2, sampler="euler")],
                REPLY,
            )
            await adapter.wait_for(lambda: any(d.kind == "finished" for d in adapter.deliveries))
            view = await app.jobs.job(None, receipt.job_ids[0])
            assert view.status == "succeeded" and len(view.images) == 2
            assert await app.jobs.balance(user()) == start - receipt.cost
            with pytest.raises(BadInput, match="workflow"):
                await app.jobs.submit(
                    user(), "txt2img", [GenerationParams("x", workflow="nope")], REPLY
                )
        finally:
            await app.stop()


async def test_a_server_restarted_mid_job_runs_the_job_again() -> None:
    async with ComfyUIFake(time_per_step_s=0.1) as gpu, provider(cfg(gpu)) as p:
        run = Recorder(request(steps=10))
        task = asyncio.create_task(p.generate(run))
        await run.task_known.wait()
        await gpu.die()
        await gpu.revive()  # a fresh process: the queue and history are gone
        async with asyncio.timeout(20):
            await task
        assert run.images and len(run.submissions) == 2  # submitted again, delivered once


async def test_an_identical_graph_answered_from_the_cache_is_delivered() -> None:
    async with ComfyUIFake() as gpu, provider(cfg(gpu)) as p:
        first, again = Recorder(request()), Recorder(request())  # same seed: same graph
        await p.generate(first)
        await p.generate(again)
        assert again.images and gpu.executed[-1]["cached"]
        assert again.images[0].data == first.images[0].data


async def test_models_lists_the_workflows_and_the_instances_lists(
    tmp_path: Path, db_url: str
) -> None:
    from bot.app import App
    from bot.commands import Incoming
    from tests.conftest import REPLY, RecordingAdapter, make_config, user

    async with ComfyUIFake(loras=["add_detail.safetensors"]) as gpu:
        config = make_config(
            tmp_path, db_url, providers={"comfyui": {"instances": [{"url": gpu.base_url}], **FAST}}
        )
        config.database.auto_migrate = False
        app = App(config)
        if db_url.startswith("sqlite"):
            await app.db.create_all()
        app.add_adapter(RecordingAdapter())
        await app.start()
        try:
            reply = await app.commands.handle(
                Incoming(user=user(), text="/models comfyui", reply_to=REPLY)
            )
            text = reply.text
            assert "workflows (--workflow)" in text and "txt2img" in text
            assert "add_detail" in text and "dpmpp_2m" in text and "sd15" in text
        finally:
            await app.stop()
