"""Tests of the ComfyUI fake (tests/fakes/comfyui.py): driven by Comfy-Org's own ``comfy-cli``
(``comfy run --workflow FILE --host --port --wait``, shared/api/providers.md "Official
clients"), by a client written from ComfyUI's published ``script_examples/
websockets_api_example.py`` flow, and by raw HTTP / websocket for what a provider must cope with.

comfy-cli 1.23.0 is in the ``test`` extra: pip adds it to this project's environment without
changing any installed package (about 20 s; it brings uv, gitpython, cookiecutter, posthog,
mixpanel, imageio-ffmpeg...). Its telemetry is off by ``DO_NOT_TRACK=1`` (its tracking.py) and
its config and job files go to the test's own HOME. It is run as ``python -m comfy_cli``. Note
that it checks a workflow against ``/object_info`` before submitting (an unknown checkpoint
never reaches ``POST /prompt``), so the server-side 400s are tested with raw HTTP.

The fake was compared with the real ComfyUI server (Comfy-Org/ComfyUI a125cd8, 0.3.64) running
on this machine's CPU, by hand, not in CI: the same probe script ran against both and the JSON
answers were diffed. Compared and matching: validation answers (unknown class, missing
class_type, no outputs, missing required input, min/max, combo value not in list, LoadImage's
"Invalid image file", link to a missing node and to a missing output index
(exception_during_validation / exception_during_inner_validation), return type mismatch, a value
that does not convert to INT, a partly invalid graph: 200 with node_errors, only the valid output
runs, no ``prompt`` → no_prompt), the websocket message order and shapes with a client_id
(status with sid, the feature_flags reply, status ×2, execution_start, execution_cached,
progress_state / executing / executed per node, execution_success, status, executing null), an
identical graph resubmitted (all nodes cached, executed with the earlier images, no new file),
a prompt without client_id (only status and progress_state reach a socket), an execution error
(an unknown upscale model passes validation: FileNotFoundError in execution_error and in the
history status), upload rename on a clash ("x (1).png"; the same bytes keep the name; overwrite;
no image → 400), /view (size, 404), history shape (prompt list, outputs, status, meta; unknown →
{}; max_items), /queue shape and ``front`` numbers, POST /queue delete, /interrupt (targeted at
another prompt: nothing; global: execution_interrupted at the next node, history status error),
/free, /features, /object_info/{unknown} → {}. Differences left: traceback texts are stand-ins,
``current_outputs`` order, and timings.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websocket  # websocket-client, as ComfyUI's websockets_api_example.py uses
from PIL import Image

from tests.fakes.comfyui import ComfyUIFake, colour_of

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


def txt2img(
    seed: int = 42,
    *,
    ckpt: str = "sd15.safetensors",
    sampler: str = "euler",
    steps: int = 4,
    width: int = 96,
    height: int = 64,
    batch: int = 2,
) -> dict[str, Any]:
    """ComfyUI's default graph in API format (node ids as the UI exports them)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.5,
                "sampler_name": sampler,
                "scheduler": "karras",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "sdhost", "images": ["8", 0]},
        },
    }


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


async def http(
    fake: ComfyUIFake, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, fake.base_url + path, json=body, **kw) as resp,
    ):
        raw = await resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw


async def upload(fake: ComfyUIFake, name: str, data: bytes, **fields: str) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return await http(fake, "POST", "/upload/image", data=form)


async def messages_until_done(
    ws: aiohttp.ClientWebSocketResponse, prompt_id: str, timeout: float = 10
) -> list[Any]:
    """Every message (JSON dicts, binary frames as bytes) up to ``executing`` null."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen.append(bytes(msg.data))
                continue
            data = json.loads(msg.data)
            seen.append(data)
            if data["type"] == "executing" and data["data"]["node"] is None:
                if data["data"]["prompt_id"] == prompt_id:
                    return seen
    return seen


def types(seen: list[Any]) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "binary" for m in seen]


# --- comfy-cli, Comfy-Org's own client ------------------------------------------------------------


async def comfy_run(fake: ComfyUIFake, workflow: Path, home: Path) -> tuple[int, list[Any]]:
    env = {
        **os.environ,
        "HOME": str(home),  # its config and job files stay in the test's folder
        "DO_NOT_TRACK": "1",  # comfy-cli's telemetry off (tracking.py honours it)
        "COMFY_NO_TELEMETRY": "1",
    }
    args = ["--skip-prompt", "--json-stream", "run", "--workflow", str(workflow)]
    args += ["--host", "127.0.0.1", "--port", str(fake.port), "--wait"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfy_cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("comfy-cli did not finish within 30 s") from None
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, err.decode()[-2000:]
    return proc.returncode or 0, lines


async def test_comfy_cli_runs_the_default_graph_and_fetches_the_pictures(tmp_path: Path) -> None:
    pytest.importorskip("comfy_cli")
    workflow = tmp_path / "txt2img.json"
    workflow.write_text(json.dumps(txt2img(seed=7, steps=3)))
    async with ComfyUIFake(time_per_step_s=0.01) as fake:
        code, events = await comfy_run(fake, workflow, tmp_path)
        assert code == 0, events
        kinds = [e["type"] for e in events]
        assert kinds[:2] == ["prompt_preview", "queued"], kinds
        executing = [e["node"] for e in events if e["type"] == "executing"]
        assert executing[-3:] == ["3", "8", "9"]  # sampler, decode, save run last, in order
        assert any(e["type"] == "progress" and e["node"] == "3" for e in events)
        envelope = events[-1]
        assert envelope["ok"] is True and envelope["data"]["status"] == "completed"
        urls = envelope["data"]["outputs_by_node"]["9"]
        assert len(urls) == 2
        # the URLs comfy-cli built answer with the pictures the fake made
        for index, url in enumerate(urls):
            status, body = await http(fake, "GET", url.removeprefix(fake.base_url))
            assert status == 200
            picture = Image.open(io.BytesIO(body))
            assert picture.size == (96, 64)
            assert picture.getpixel((5, 5)) == colour_of(7, index)
        (record,) = fake.executed
        assert record["prompt_id"] == envelope["data"]["prompt_id"]
        assert record["client_id"] == envelope["data"]["client_id"]
        assert (record["checkpoint"], record["seed"], record["steps"]) == ("sd15.safetensors", 7, 3)

        # an unknown checkpoint: comfy-cli's own preflight refuses it from /object_info's list
        workflow.write_text(json.dumps(txt2img(ckpt="missing.safetensors")))
        code, events = await comfy_run(fake, workflow, tmp_path)
        assert code != 0
        assert events[-1]["ok"] is False
        assert "sd15.safetensors" in json.dumps(events[-1])
        assert len(fake.executed) == 1 and not fake.calls_to("post.prompt", since=0)[1:]

        # a node failing on the server: execution_error reaches comfy-cli as a failed run
        fake.fail_node("VAEDecode", "CUDA error: out of memory")
        workflow.write_text(json.dumps(txt2img(seed=8, steps=2)))
        code, events = await comfy_run(fake, workflow, tmp_path)
        assert code != 0
        assert events[-1]["ok"] is False
        assert "CUDA error: out of memory" in json.dumps(events)
        assert fake.executed[-1]["status"] == "error"


# --- ComfyUI's websockets_api_example.py flow (websocket-client + urllib) -------------------------


def example_client_get_images(
    server_address: str, prompt: dict[str, Any]
) -> dict[str, list[bytes]]:
    """script_examples/websockets_api_example.py's flow, written from that example: connect
    ``/ws?clientId``, queue with urllib POST /prompt (client_id, prompt_id), read until
    ``executing`` with node null for our prompt, then GET /history/{id} and /view each image."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_address}/ws?clientId={client_id}", timeout=10)
    try:
        prompt_id = str(uuid.uuid4())
        body = json.dumps({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id})
        request = urllib.request.Request(f"http://{server_address}/prompt", data=body.encode())
        urllib.request.urlopen(request).read()
        while True:
            out = ws.recv()
            if isinstance(out, str):
                message = json.loads(out)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break
        with urllib.request.urlopen(f"http://{server_address}/history/{prompt_id}") as resp:
            history = json.loads(resp.read())[prompt_id]
        images: dict[str, list[bytes]] = {}
        for node_id, node_output in history["outputs"].items():
            images[node_id] = []
            for image in node_output.get("images", []):
                query = urllib.parse.urlencode(
                    {
                        "filename": image["filename"],
                        "subfolder": image["subfolder"],
                        "type": image["type"],
                    }
                )
                with urllib.request.urlopen(f"http://{server_address}/view?{query}") as resp:
                    images[node_id].append(resp.read())
        return images
    finally:
        ws.close()


async def test_websockets_api_example_flow_gets_the_pictures() -> None:
    async with ComfyUIFake() as fake:
        address = fake.base_url.removeprefix("http://")
        images = await asyncio.to_thread(
            example_client_get_images, address, txt2img(seed=3, batch=3)
        )
        assert list(images) == ["9"]
        pictures = [Image.open(io.BytesIO(data)) for data in images["9"]]
        assert [p.size for p in pictures] == [(96, 64)] * 3
        assert [p.getpixel((0, 0)) for p in pictures] == [colour_of(3, i) for i in range(3)]
        assert len({p.getpixel((0, 0)) for p in pictures}) == 3


# --- validation -----------------------------------------------------------------------------------


async def test_validation_answers_like_execution_validate_prompt() -> None:
    async with ComfyUIFake(
        checkpoints=["sd15.safetensors"], samplers=["euler", "dpmpp_2m"]
    ) as fake:
        graph = txt2img()
        graph["3"]["class_type"] = "KSamplerTurbo"
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        assert status == 400
        assert body["node_errors"] == {}
        assert body["error"]["type"] == "invalid_prompt"
        assert (
            body["error"]["message"] == "Cannot execute because node KSamplerTurbo does not exist."
        )
        assert body["error"]["details"] == "Node ID '#3'"

        graph = txt2img()
        del graph["9"]
        status, body = await http(fake, "POST", "/api/prompt", {"prompt": graph})
        assert (status, body["error"]["type"], body["node_errors"]) == (
            400,
            "prompt_no_outputs",
            {},
        )

        graph = txt2img(ckpt="sdxl.safetensors", sampler="heun")
        del graph["5"]["inputs"]["batch_size"]
        graph["5"]["inputs"]["width"] = 8
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        assert status == 400
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        errors = {n: sorted(e["type"] for e in v["errors"]) for n, v in body["node_errors"].items()}
        assert errors == {
            "4": ["value_not_in_list"],
            "3": ["value_not_in_list"],
            "5": ["required_input_missing", "value_smaller_than_min"],
        }
        ckpt = body["node_errors"]["4"]["errors"][0]
        assert ckpt["details"] == "ckpt_name: 'sdxl.safetensors' not in ['sd15.safetensors']"
        assert ckpt["extra_info"]["received_value"] == "sdxl.safetensors"
        assert body["node_errors"]["4"]["dependent_outputs"] == ["9"]
        assert body["node_errors"]["4"]["class_type"] == "CheckpointLoaderSimple"

        graph = txt2img()
        graph["8"]["inputs"]["samples"] = ["30", 0]
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        assert status == 400
        (error,) = body["node_errors"]["8"]["errors"]
        assert (error["type"], error["details"]) == ("exception_during_inner_validation", "'30'")
        graph["8"]["inputs"]["samples"] = ["3", 4]
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        (error,) = body["node_errors"]["8"]["errors"]
        assert error["extra_info"]["exception_type"] == "IndexError"

        status, body = await http(fake, "POST", "/prompt", {"client_id": "x"})
        assert (status, body["error"]["type"]) == (400, "no_prompt")
        assert fake.executed == [] and fake.in_flight == 0


async def test_a_partly_invalid_graph_runs_its_valid_output_only() -> None:
    async with ComfyUIFake() as fake:
        graph = txt2img(batch=1)
        graph["10"] = {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["8", 0], "upscale_method": "nope", "scale_by": 2.0},
        }
        graph["11"] = {
            "class_type": "SaveImage",
            "inputs": {"images": ["10", 0], "filename_prefix": "big"},
        }
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph, "client_id": "c"})
        assert status == 200
        assert body["node_errors"]["10"]["dependent_outputs"] == ["11"]
        await _wait_history(fake, body["prompt_id"])
        entry = fake.history[body["prompt_id"]]
        assert list(entry["outputs"]) == ["9"]
        assert entry["prompt"][4] == ["9"]
        assert fake.executed[0]["outputs"] == {"9": ["sdhost_00001_.png"]}


async def _wait_history(fake: ComfyUIFake, prompt_id: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while prompt_id not in fake.history:
            await asyncio.sleep(0.01)
    return fake.history[prompt_id]


# --- websocket messages ---------------------------------------------------------------------------


async def test_message_order_progress_and_cached_resubmission() -> None:
    async with ComfyUIFake(loaded="sd15.safetensors") as fake, aiohttp.ClientSession() as session:
        async with session.ws_connect(fake.base_url + "/ws?clientId=me") as ws:
            hello = await ws.receive_json()
            assert hello == {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"},
            }
            status, body = await http(
                fake, "POST", "/prompt", {"prompt": txt2img(steps=3), "client_id": "me"}
            )
            pid = body["prompt_id"]
            assert (status, body["number"], body["node_errors"]) == (200, 0, {})
            seen = await messages_until_done(ws, pid)
            order = [t for t in types(seen) if t != "progress_state"]
            assert order[:4] == ["status", "status", "execution_start", "execution_cached"]
            assert order[-3:] == ["execution_success", "status", "executing"]
            executing = [
                m["data"]["node"] for m in seen if isinstance(m, dict) and m["type"] == "executing"
            ]
            assert executing[0] == "4" and set(executing[1:4]) == {"5", "6", "7"}
            assert executing[4:] == ["3", "8", "9", None]
            progress = [m["data"] for m in seen if isinstance(m, dict) and m["type"] == "progress"]
            assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
                (i, 3, "3", pid) for i in (1, 2, 3)
            ]
            (executed,) = [
                m["data"] for m in seen if isinstance(m, dict) and m["type"] == "executed"
            ]
            images = executed["output"]["images"]
            assert [i["filename"] for i in images] == ["sdhost_00001_.png", "sdhost_00002_.png"]
            assert all(i["type"] == "output" and i["subfolder"] == "" for i in images)
            assert "binary" not in types(seen)  # no previews unless asked
            start = next(m for m in seen if isinstance(m, dict) and m["type"] == "execution_start")
            assert set(start["data"]) == {"prompt_id", "timestamp"}
            assert fake.switches == 0  # sd15 was in memory

            # the same graph again: everything cached, the earlier pictures, nothing new saved
            status, body = await http(
                fake, "POST", "/prompt", {"prompt": txt2img(steps=3), "client_id": "me"}
            )
            seen = await messages_until_done(ws, body["prompt_id"])
            cached = next(
                m for m in seen if isinstance(m, dict) and m["type"] == "execution_cached"
            )
            assert sorted(cached["data"]["nodes"]) == ["3", "4", "5", "6", "7", "8", "9"]
            order = [t for t in types(seen) if t != "progress_state"]
            assert order == [
                "status",
                "status",
                "execution_start",
                "execution_cached",
                "executed",
                "execution_success",
                "status",
                "executing",
            ]
            assert fake.history[body["prompt_id"]]["outputs"]["9"]["images"] == images
            assert fake.executed[-1]["cached"] is True
            assert fake.file("sdhost_00003_.png") is None

            # a new seed: the loader and prompts stay cached, the sampler runs again
            status, body = await http(
                fake, "POST", "/prompt", {"prompt": txt2img(seed=5, steps=3), "client_id": "me"}
            )
            seen = await messages_until_done(ws, body["prompt_id"])
            cached = next(
                m for m in seen if isinstance(m, dict) and m["type"] == "execution_cached"
            )
            assert sorted(cached["data"]["nodes"]) == ["4", "5", "6", "7"]
            executing = [
                m["data"]["node"] for m in seen if isinstance(m, dict) and m["type"] == "executing"
            ]
            assert executing == ["3", "8", "9", None]


async def test_previews_binary_frames_and_feature_flags_handshake() -> None:
    async with ComfyUIFake() as fake, aiohttp.ClientSession() as session:
        old = await session.ws_connect(fake.base_url + "/ws?clientId=old")
        new = await session.ws_connect(fake.base_url + "/ws?clientId=new")
        await old.receive_json()
        await new.receive_json()
        await new.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        reply = await new.receive_json()
        assert reply == {
            "type": "feature_flags",
            "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
        }

        extra = {"preview_method": "auto"}
        _, body = await http(
            fake,
            "POST",
            "/prompt",
            {"prompt": txt2img(steps=2), "client_id": "old", "extra_data": extra},
        )
        seen = await messages_until_done(old, body["prompt_id"])
        frames = [m for m in seen if isinstance(m, bytes)]
        assert len(frames) == 2
        for frame in frames:
            kind, fmt = struct.unpack(">II", frame[:8])
            assert (kind, fmt) == (1, 1)
            assert Image.open(io.BytesIO(frame[8:])).format == "JPEG"
        # a type-1 frame follows its progress message
        assert types(seen).index("binary") == types(seen).index("progress") + 1

        _, body = await http(
            fake,
            "POST",
            "/prompt",
            {"prompt": txt2img(seed=9, steps=2), "client_id": "new", "extra_data": extra},
        )
        seen = await messages_until_done(new, body["prompt_id"])
        frames = [m for m in seen if isinstance(m, bytes)]
        assert len(frames) == 2
        for frame in frames:
            kind, length = struct.unpack(">II", frame[:8])
            meta = json.loads(frame[8 : 8 + length])
            assert kind == 4
            assert meta["prompt_id"] == body["prompt_id"] and meta["node_id"] == "3"
            assert meta["image_type"] == "image/jpeg"
            assert Image.open(io.BytesIO(frame[8 + length :])).size == (12, 8)
        await old.close()
        await new.close()


async def test_a_prompt_without_client_id_reaches_sockets_as_the_real_server_does() -> None:
    async with (
        ComfyUIFake(preview_method_default="latent2rgb") as fake,
        aiohttp.ClientSession() as session,
    ):
        async with session.ws_connect(fake.base_url + "/ws") as ws:
            hello = await ws.receive_json()
            assert len(hello["data"]["sid"]) == 32  # the server made one up
            _, body = await http(fake, "POST", "/prompt", {"prompt": txt2img(steps=2)})
            await _wait_history(fake, body["prompt_id"])
            seen: list[Any] = []
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    async for msg in ws:
                        seen.append(
                            json.loads(msg.data)
                            if msg.type == aiohttp.WSMsgType.TEXT
                            else bytes(msg.data)
                        )
            kinds = set(types(seen))
            assert {"status", "progress", "progress_state", "binary"} <= kinds
            assert not kinds & {"executing", "executed", "execution_start", "execution_success"}
            assert fake.executed[0]["client_id"] is None


# --- uploads, img2img, upscaling ------------------------------------------------------------------


async def test_upload_renames_on_a_clash_and_img2img_uses_the_picture() -> None:
    async with ComfyUIFake(upscale_models=["4x-UltraSharp.pth"]) as fake:
        red, blue = png((80, 48), (200, 0, 0)), png((80, 48), (0, 0, 200))
        assert await upload(fake, "in.png", red) == (
            200,
            {"name": "in.png", "subfolder": "", "type": "input"},
        )
        assert (await upload(fake, "in.png", red))[1]["name"] == "in.png"  # the same file
        assert (await upload(fake, "in.png", blue))[1]["name"] == "in (1).png"
        assert (await upload(fake, "in.png", png((8, 8), (1, 2, 3))))[1]["name"] == "in (2).png"
        assert (await upload(fake, "in.png", blue, overwrite="true"))[1]["name"] == "in.png"
        assert fake.file("in.png", type="input") == blue
        assert (await upload(fake, "s.png", red, subfolder="sub"))[1] == {
            "name": "s.png",
            "subfolder": "sub",
            "type": "input",
        }
        status, _ = await http(
            fake, "POST", "/upload/image", data=aiohttp.FormData({"overwrite": "1"})
        )
        assert status == 400
        _, info = await http(fake, "GET", "/object_info/LoadImage")
        assert info["LoadImage"]["input"]["required"]["image"][0] == [
            "in (1).png",
            "in (2).png",
            "in.png",
        ]

        graph = txt2img(seed=11, batch=1)
        graph["5"] = {"class_type": "LoadImage", "inputs": {"image": "in (1).png"}}
        graph["10"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["4", 2]}}
        graph["3"]["inputs"].update(latent_image=["10", 0], denoise=0.6)
        graph["11"] = {
            "class_type": "UpscaleModelLoader",
            "inputs": {"model_name": "4x-UltraSharp.pth"},
        }
        graph["12"] = {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["11", 0], "image": ["8", 0]},
        }
        graph["13"] = {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["12", 0], "upscale_method": "lanczos", "scale_by": 0.5},
        }
        graph["9"]["inputs"]["images"] = ["13", 0]
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        assert status == 200, body
        entry = await _wait_history(fake, body["prompt_id"])
        (image,) = entry["outputs"]["9"]["images"]
        status, data = await http(fake, "GET", "/view", params=image)
        assert status == 200
        picture = Image.open(io.BytesIO(data))
        assert picture.size == (160, 96)  # 80x48 ×4 ×0.5
        blended = picture.convert("RGB").getpixel((3, 3))
        assert isinstance(blended, tuple)
        assert blended != colour_of(11, 0) and blended[2] > 50  # the blue input shows through
        assert fake.executed[0]["denoise"] == 0.6
        assert (await http(fake, "GET", "/view", params={"filename": "nope.png"}))[0] == 404

        # an unknown upscale model passes validation (an io-schema COMBO) and fails when it runs
        graph["11"]["inputs"]["model_name"] = "missing.pth"
        status, body = await http(fake, "POST", "/prompt", {"prompt": graph})
        assert status == 200
        entry = await _wait_history(fake, body["prompt_id"])
        assert entry["status"]["status_str"] == "error"
        error = next(d for e, d in entry["status"]["messages"] if e == "execution_error")
        assert error["exception_type"] == "FileNotFoundError" and error["node_id"] == "11"


# --- queue, interrupt, failures, auth, death ------------------------------------------------------


async def test_queue_interrupt_and_delete() -> None:
    async with ComfyUIFake(time_per_step_s=0.05) as fake, aiohttp.ClientSession() as session:
        async with session.ws_connect(fake.base_url + "/ws?clientId=q") as ws:
            await ws.receive_json()
            ids = []
            for seed in (1, 2, 3):
                _, body = await http(
                    fake,
                    "POST",
                    "/prompt",
                    {"prompt": txt2img(seed=seed, steps=40), "client_id": "q"},
                )
                ids.append(body["prompt_id"])
            _, body = await http(
                fake,
                "POST",
                "/prompt",
                {"prompt": txt2img(seed=4, steps=40), "client_id": "q", "front": True},
            )
            assert body["number"] == -3
            ids.append(body["prompt_id"])
            await asyncio.sleep(0.1)
            _, queue = await http(fake, "GET", "/queue")
            assert [item[1] for item in queue["queue_running"]] == [ids[0]]
            assert [item[0] for item in queue["queue_pending"]] == [-3, 1, 2]
            assert queue["queue_running"][0][3] == {"client_id": "q"}
            assert (await http(fake, "GET", "/prompt"))[1] == {"exec_info": {"queue_remaining": 4}}
            assert (await http(fake, "POST", "/queue", {"delete": [ids[1]]}))[0] == 200

            assert (await http(fake, "POST", "/interrupt", {"prompt_id": ids[2]}))[
                0
            ] == 200  # not running
            await asyncio.sleep(0.1)
            assert fake.running == ids[0]
            async with session.post(fake.base_url + "/interrupt") as resp:  # no body at all
                assert resp.status == 200
            seen = await messages_until_done(ws, ids[0])
            (stop,) = [
                m["data"]
                for m in seen
                if isinstance(m, dict) and m["type"] == "execution_interrupted"
            ]
            assert (stop["prompt_id"], stop["node_id"], stop["node_type"]) == (
                ids[0],
                "3",
                "KSampler",
            )
            assert fake.history[ids[0]]["status"]["status_str"] == "error"
            assert fake.executed[0]["status"] == "interrupted"
            assert fake.running == ids[3]  # the one queued in front runs next
            assert (await http(fake, "POST", "/queue", {"clear": True}))[0] == 200
            assert (await http(fake, "POST", "/api/interrupt", {"prompt_id": ids[3]}))[0] == 200
            await messages_until_done(ws, ids[3])
            assert fake.running is None and fake.in_flight == 0
            assert [(r["seed"], r["status"]) for r in fake.executed] == [
                (1, "interrupted"),
                (4, "interrupted"),
            ]
            assert fake.max_running == 1 and fake.max_in_flight == 4


async def test_fail_node_drop_sockets_auth_and_death() -> None:
    auth = {"Authorization": "Bearer s3cret"}
    async with (
        ComfyUIFake(headers_required=auth, time_per_step_s=0.02) as fake,
        aiohttp.ClientSession() as session,
    ):
        assert (await http(fake, "GET", "/object_info"))[0] == 401
        assert (await http(fake, "GET", "/api/queue", headers={"Authorization": "Bearer no"}))[
            0
        ] == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(fake.base_url + "/ws?clientId=a")
        assert refused.value.status == 401

        fake.fail_node("KSampler", "CUDA error: out of memory")
        ws = await session.ws_connect(fake.base_url + "/ws?clientId=a", headers=auth)
        await ws.receive_json()
        _, body = await http(
            fake, "POST", "/prompt", {"prompt": txt2img(), "client_id": "a"}, headers=auth
        )
        seen = await messages_until_done(ws, body["prompt_id"])
        (error,) = [
            m["data"] for m in seen if isinstance(m, dict) and m["type"] == "execution_error"
        ]
        assert error["node_id"] == "3" and error["node_type"] == "KSampler"
        assert error["exception_message"] == "CUDA error: out of memory\n"
        assert set(error["executed"]) == {"4", "5", "6", "7"}

        # the socket drops mid-job; the job goes on and its history has the outputs
        fake.drop_socket_after_s = 0.05
        _, body = await http(
            fake, "POST", "/prompt", {"prompt": txt2img(steps=20), "client_id": "a"}, headers=auth
        )
        async with asyncio.timeout(5):
            async for _ in ws:
                pass
        assert ws.closed
        # back with the same client id mid-job: the server says which node runs now
        ws = await session.ws_connect(fake.base_url + "/ws?clientId=a", headers=auth)
        assert (await ws.receive_json())["data"]["sid"] == "a"
        assert await ws.receive_json() == {"type": "executing", "data": {"node": "3"}}
        seen = await messages_until_done(ws, body["prompt_id"])
        assert "executed" in types(seen)
        await ws.close()
        entry = await _wait_history(fake, body["prompt_id"])
        assert entry["status"]["completed"] is True and len(entry["outputs"]["9"]["images"]) == 2

        port = fake.port
        await fake.die()
        with pytest.raises(aiohttp.ClientConnectionError):
            await http(fake, "GET", "/queue", headers=auth)
        await fake.revive()
        assert fake.port == port and fake.deaths == 1
        status, history = await http(fake, "GET", "/history", headers=auth)
        assert (status, history) == (200, {})  # a restarted server forgets its history
        assert fake.calls_to("post.prompt") and all(
            c.headers["Authorization"] == "Bearer ***" for c in fake.calls_to("post.prompt")
        )


async def test_checkpoint_switches_and_object_info_lists() -> None:
    async with ComfyUIFake(
        checkpoints=["a.safetensors", "b.safetensors"],
        loras=["detail.safetensors"],
        samplers=["euler", "dpmpp_2m"],
        schedulers=["normal", "karras"],
        loaded="a.safetensors",
        switch_time_s=0.05,
    ) as fake:
        _, info = await http(fake, "GET", "/api/object_info")
        required = info["CheckpointLoaderSimple"]["input"]["required"]
        assert required["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]
        assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["detail.safetensors"]
        assert info["KSampler"]["input"]["required"]["sampler_name"][0] == ["euler", "dpmpp_2m"]
        assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == "COMBO"
        assert (
            info["SaveImage"]["output_node"] is True and info["PreviewImage"]["output_node"] is True
        )
        assert (await http(fake, "GET", "/object_info/Nope")) == (200, {})
        for ckpt in ("a.safetensors", "b.safetensors", "b.safetensors"):
            graph = txt2img(ckpt=ckpt, seed=len(fake.executed))
            graph["20"] = {
                "class_type": "LoraLoader",
                "inputs": {
                    "model": ["4", 0],
                    "clip": ["4", 1],
                    "lora_name": "detail.safetensors",
                    "strength_model": 0.7,
                    "strength_clip": 1.0,
                },
            }
            graph["3"]["inputs"]["model"] = ["20", 0]
            _, body = await http(fake, "POST", "/prompt", {"prompt": graph})
            await _wait_history(fake, body["prompt_id"])
        assert fake.switches == 1 and fake.loaded == "b.safetensors"
        # the third run's loader was cached (it did not run): the record reads the graph
        assert [r["checkpoint"] for r in fake.executed] == [
            "a.safetensors",
            "b.safetensors",
            "b.safetensors",
        ]
        assert fake.executed[0]["loras"] == [["detail.safetensors", 0.7, 1.0]]
        assert fake.executed[0]["size"] == (96, 64) and fake.executed[0]["batch"] == 2
        assert (await http(fake, "POST", "/free", {"unload_models": True}))[0] == 200
        assert fake.loaded is None
        _, stats = await http(fake, "GET", "/system_stats")
        assert stats["devices"][0]["type"] == "cuda"
