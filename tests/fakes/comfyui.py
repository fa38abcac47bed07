"""A loopback fake of the ComfyUI server (HTTP API and ``/ws``), for the ``comfyui`` provider.

Sources: shared/api/providers.md, section "Self-hosted: ComfyUI" (routes, websocket messages,
binary preview frames, validation answers, auth by a proxy in front) and its "Official clients
that can drive a loopback fake" table (``comfy-cli`` 1.23.0). Shapes were read from ComfyUI's own
source (Comfy-Org/ComfyUI at a125cd8, 2025-10-12, version 0.3.64): ``server.py`` (routes, the
``/api`` mirror, ``websocket_handler`` and its feature-flags handshake, ``image_upload``,
``view_image``, ``post_interrupt``, ``send_image`` / ``send_image_with_metadata``),
``execution.py`` (``validate_prompt``, ``validate_inputs``, ``PromptExecutor.execute_async``,
``execute``, ``PromptQueue``), ``main.py`` (``prompt_worker``, ``hijack_progress``),
``comfy_execution/graph.py`` (the execution order), ``comfy_execution/progress.py``
(``progress_state``), ``comfy_api/feature_flags.py``, ``protocol.py``, ``latent_preview.py``,
``nodes.py`` and ``comfy_extras/nodes_upscale_model.py``; and then compared with that server
running on this machine's CPU (tests/test_fake_comfyui.py's module docstring lists what). No
code was copied.

One origin per instance; every piece of state is per object, so a test may run several::

    async with ComfyUIFake(checkpoints=["sd15.safetensors"], loaded="sd15.safetensors") as gpu:
        ... gpu.base_url, gpu.port, gpu.executed, gpu.switches

``/object_info`` comes from tests/fakes/comfyui_object_info.json, the real server's answer for
the node classes the fake runs (CheckpointLoaderSimple, CLIPTextEncode, KSampler,
EmptyLatentImage, VAEDecode, VAEEncode, LoadImage, SaveImage, PreviewImage, LoraLoader,
ImageScale, ImageScaleBy, UpscaleModelLoader, ImageUpscaleWithModel, ImageInvert, EmptyImage).
The current server sends BOTH combo forms, and so does the fake: classic ``nodes.py`` classes
``[[option, ...], {extra}]`` (``ckpt_name``, ``lora_name``, ``sampler_name``, ``scheduler``,
LoadImage's ``image``), the newer io-schema classes ``["COMBO", {"options": [...],
"multiselect": false}]`` (UpscaleModelLoader's ``model_name``). The fake fills those lists from
its knobs (LoadImage's from the uploaded input files).

What it does, as the real server does:

* **validation** (``POST /prompt``): an unknown ``class_type`` or a node without one → 400
  ``invalid_prompt`` with ``node_errors`` ``{}``; no output node → 400 ``prompt_no_outputs``;
  otherwise each output is validated with its inputs (required input missing, bad link, link to
  a missing node or output index → "exception_during_(inner_)validation", type mismatch, a value
  that does not convert to INT/FLOAT, min/max, a classic combo value not in its list, LoadImage's
  own check "Invalid image file"). If NO output is valid → 400
  ``prompt_outputs_failed_validation`` with ``node_errors``; if some are valid → 200 with the
  errors of the others in ``node_errors`` and only the valid outputs run. An io-schema combo
  (``["COMBO", {...}]``) is NOT checked by the real validator: an unknown upscale model passes
  and the run fails with ``FileNotFoundError`` (execution_error). Values are converted in the
  stored prompt (``"8"`` → 8), as the real validator does.
* **queue**: one prompt at a time, lowest ``number`` first (``front`` makes it negative; a given
  ``number`` is used as it is); ``prompt_id`` may be given by the client.
* **websocket messages**, for a prompt with a ``client_id``, to that socket only:
  ``status`` (on queueing, on start, on finishing: ``queue_remaining`` counts queued + running),
  ``execution_start``, ``execution_cached`` (``nodes``), then per node ``progress_state``
  (running), ``executing {node, display_node, prompt_id}``, for a sampler per step
  ``progress_state`` + ``progress {value, max, prompt_id, node}`` (+ previews), ``executed
  {node, display_node, output, prompt_id}`` for output nodes, ``progress_state`` (finished);
  then ``execution_success``, ``status``, and ``executing {node: null, prompt_id}`` last. A cached
  output node gets only ``executed`` (with the earlier output) and ``progress_state``. Failure:
  ``execution_error {prompt_id, node_id, node_type, executed, exception_message,
  exception_type, traceback, current_inputs, current_outputs, timestamp}``; interrupt:
  ``execution_interrupted {prompt_id, node_id, node_type, executed, timestamp}`` (to every
  socket). ``execution_*`` messages carry a ``timestamp`` (ms).
  A prompt WITHOUT ``client_id``: the real server sends ``executing`` / ``executed`` /
  ``execution_*`` to nobody (only ``execution_interrupted`` goes to every socket), while
  ``status``, ``progress``, ``progress_state`` and type-1 previews go to every socket. The fake
  does the same (providers.md's "events sent to all sockets" holds for those only).
* **binary frames**: 4-byte big-endian type, then for type 1 (PREVIEW_IMAGE) a 4-byte format
  (1 JPEG, 2 PNG) and the image; for type 4 (PREVIEW_IMAGE_WITH_METADATA) a 4-byte length, that
  many bytes of JSON ``{node_id, prompt_id, display_node_id, parent_node_id, real_node_id,
  image_type}`` and the image. Type 4 goes only to a socket whose FIRST message was
  ``{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`` (the server answers
  that message with its own ``feature_flags``: ``supports_preview_metadata`` and
  ``max_upload_size``); such a socket gets no type-1 frames. Previews only when the prompt's
  ``extra_data.preview_method`` (newer builds; the a125cd8 source has only the server-wide
  ``--preview-method``) or :attr:`preview_method_default` names a method other than "none".
* **caching**: a node whose class, inputs and upstream nodes are the same as in the previous
  prompt is not run again (``execution_cached``); an identical graph reports the earlier images.
  Only the previous prompt's nodes are kept (the classic cache). ``POST /free
  {"free_memory": true}`` empties it; ``{"unload_models": true}`` unloads the checkpoint.
* **uploads**: ``POST /upload/image`` (multipart ``image``, ``overwrite``, ``subfolder``,
  ``type``): a clash without ``overwrite`` "true"/"1" keeps the name if the bytes are the SAME
  file, else renames to ``"name (1).png"``, ``"name (2).png"``...; no ``image`` → 400.
* ``/interrupt``: with no body (or no ``prompt_id``) stops whatever runs; with ``{"prompt_id"}``
  (present in a125cd8) only if that prompt is the running one. An interrupt while idle is lost
  (each prompt starts with the flag cleared). The interrupt lands when the next node starts or
  at the next sampler step.
* ``/queue``: ``queue_running`` / ``queue_pending`` items are ``[number, prompt_id, prompt,
  extra_data, outputs_to_execute]``; ``POST /queue {"delete": [ids]}`` / ``{"clear": true}``.
  ``/history`` entries: ``{prompt: [...same...], outputs: {node: ui}, status: {status_str,
  completed, messages: [[event, data], ...]}, meta: {node: {...}}}``; unknown id → ``{}``.
* every route is mirrored under ``/api``; ``/object_info/{unknown}`` is 200 ``{}``.

Test switches: ``headers_required`` (every HTTP request and the websocket upgrade must carry
these headers, else 401: a proxy in front), ``fail_node`` (the next execution fails at a node id
or class), :meth:`drop_sockets` (every open websocket loses its connection now; jobs go on and
their history gets the outputs) and ``drop_socket_after_s`` (one shot: that long after the next
prompt starts running, :meth:`drop_sockets`; then it is None again). A socket that comes back
with the same ``clientId`` mid-job first gets ``status`` then ``executing {node}`` (no
prompt_id), as the real server sends,
:meth:`die` / :meth:`revive` (the server stops and comes back on the SAME port, as a restart: the
queue, history and caches are gone, files on disk stay, nothing is loaded).

Public API:

* constructor (keywords only): ``checkpoints`` (:data:`DEFAULT_CHECKPOINTS`), ``loras``,
  ``samplers``, ``schedulers``, ``upscale_models``, ``loaded`` (checkpoint in memory; None),
  ``switch_time_s`` (0), ``time_per_step_s`` (0.01: a sampler step, an upscale),
  ``time_per_node_s`` (0: every other node that runs), ``preview_method_default`` (None = no
  previews unless the prompt asks), ``headers_required`` (None), ``drop_socket_after_s``
  (None), ``shutdown_timeout``, ``latency_s``.
* attributes: the knobs above (change them at will), ``executed`` (one dict per finished
  prompt: prompt_id, client_id, graph (as received), checkpoint, loras ([name, strength_model,
  strength_clip]), sampler, scheduler, seed, steps, cfg, denoise, positive, negative, size
  ((w, h) of the first output picture), batch, outputs ({node: [filename, ...]}), cached (the
  outputs came from the cache), status ("success", "error", "interrupted")), ``history``,
  ``switches``, ``interrupts`` (POST /interrupt calls that stopped something), ``in_flight``
  (prompts queued or running now), ``max_in_flight`` (the most at once), ``max_running`` (the
  most running at once: 1 by construction), ``sockets`` (open websockets by client id),
  ``socket_flags`` (their feature flags), ``running`` (the running prompt's id or None),
  ``deaths``, ``dead``, ``port``, ``base_url``, ``log``.
* methods: :meth:`object_info`, :meth:`fail_node`, :meth:`drop_sockets`, :meth:`die`,
  :meth:`revive`, :meth:`file` (bytes of an input/output/temp file), :meth:`put_input` (a file
  already in the input folder), :meth:`calls_to` (calls of a route with or without ``/api``),
  :func:`colour_of` (the colour of a sampled picture), and the scaffold's ``calls_of``,
  ``wait_for_call``, ``faults``.

Deliberate simplifications: pictures are flat colours from the seed and index (img2img blends
the input picture in by ``1 - denoise``); upscale models scale by the digit in their name ("x4",
"4x"; else 4); ``/system_stats`` is a plausible fixed GPU box; the traceback lists are short
stand-ins; the execution order follows the real heuristic but ``executed`` lists are in run order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import json
import random
import re
import string
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import WSMsgType, web
from PIL import Image, ImageOps, PngImagePlugin

from bot.waiting import wait_for_event
from tests.fakes.scaffold import LoopbackServer

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FIXTURE = Path(__file__).with_name("comfyui_object_info.json")
VERSION = "0.3.64"
MAX_UPLOAD = 100 * 1024 * 1024  # the default --max-upload-size, 100 MB
DEFAULT_CHECKPOINTS = ["sd15.safetensors", "sdxl_base.safetensors"]
DEFAULT_LORAS = ["add_detail.safetensors", "lcm_lora_sdxl.safetensors"]
DEFAULT_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc"]
DEFAULT_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]
DEFAULT_UPSCALE_MODELS = ["RealESRGAN_x4plus.pth"]

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
FORMAT_JPEG = 1
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# Which inputs a class checks itself (VALIDATE_INPUTS): the generic checks skip them.
SELF_VALIDATED = {"LoadImage": ("image",)}
NO_PREVIEW = (None, "", "none", "default")


def colour_of(seed: int, index: int) -> tuple[int, int, int]:
    """The flat colour of the ``index``-th picture a sampler with ``seed`` makes."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _png(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=1)
    return out.getvalue()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _scale_of(model_name: str) -> int:
    found = re.search(r"(?:x(\d)|(\d)x)", model_name.lower())
    return int(found.group(1) or found.group(2)) if found else 4


class _ValidationCrash(Exception):
    """What a real ``validate_inputs`` raises on a bad link (KeyError, IndexError...)."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


class _NodeFailed(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


class _Interrupted(Exception):
    pass


@dataclass
class _Item:
    """A queued prompt, as the real queue holds it (``as_list``)."""

    number: float
    prompt_id: str
    prompt: Json
    extra_data: Json
    outputs: list[str]
    graph: Json  # as received, before the validator converted values

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class _Model:
    ckpt: str
    loras: tuple[tuple[str, float, float], ...] = ()


@dataclass
class _Latent:
    width: int
    height: int
    batch: int
    init: list[Image.Image] | None = None
    sampled: Json | None = None


@dataclass
class _Run:
    """What one execution needs to know and what it found out."""

    item: _Item
    client_id: str | None
    preview: str | None
    progress: dict[str, Json] = field(default_factory=dict)
    record: Json = field(default_factory=dict)


class ComfyUIFake(LoopbackServer):
    """ComfyUI's HTTP API and websocket on one loopback origin. See the module docstring."""

    def __init__(
        self,
        *,
        checkpoints: Iterable[str] | None = None,
        loras: Iterable[str] | None = None,
        samplers: Iterable[str] | None = None,
        schedulers: Iterable[str] | None = None,
        upscale_models: Iterable[str] | None = None,
        loaded: str | None = None,
        switch_time_s: float = 0.0,
        time_per_step_s: float = 0.01,
        time_per_node_s: float = 0.0,
        preview_method_default: str | None = None,
        headers_required: dict[str, str] | None = None,
        drop_socket_after_s: float | None = None,
        shutdown_timeout: float = 1.0,
        latency_s: float = 0.0,
    ) -> None:
        super().__init__(shutdown_timeout=shutdown_timeout, latency_s=latency_s)
        self.checkpoints: list[str] = list(
            DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
        )
        self.loras: list[str] = list(DEFAULT_LORAS if loras is None else loras)
        self.samplers: list[str] = list(DEFAULT_SAMPLERS if samplers is None else samplers)
        self.schedulers: list[str] = list(DEFAULT_SCHEDULERS if schedulers is None else schedulers)
        self.upscale_models: list[str] = list(
            DEFAULT_UPSCALE_MODELS if upscale_models is None else upscale_models
        )
        self.loaded = loaded
        self.switch_time_s = switch_time_s
        self.time_per_step_s = time_per_step_s
        self.time_per_node_s = time_per_node_s
        self.preview_method_default = preview_method_default
        self.headers_required = dict(headers_required or {})
        self.drop_socket_after_s = drop_socket_after_s
        # what tests read
        self.executed: list[Json] = []
        self.history: dict[str, Json] = {}
        self.switches = 0
        self.interrupts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_running = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.socket_flags: dict[str, Json] = {}
        self.dead = False
        self.deaths = 0
        # internals
        self._fixture: Json = json.loads(FIXTURE.read_text())
        self._files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, name) -> bytes
        self._queue: list[_Item] = []
        self._running: _Item | None = None
        self._queue_changed = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._number = 0
        self._cache: dict[str, tuple[Any, Json | None]] = {}  # signature -> (outputs, ui)
        self._fail: list[tuple[str, str, str]] = []  # (node id or class, message, type)
        self._flags: Json = {}
        self._client_id: str | None = None
        self._last_node: str | None = None
        self._worker: asyncio.Task[None] | None = None
        self._dropper: asyncio.Task[None] | None = None
        self._port = 0
        self._random = random.Random(8188)

    # --- knobs and helpers for tests ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The port this instance serves on (the same after :meth:`revive`)."""
        return self._port

    @property
    def running(self) -> str | None:
        """The id of the prompt running now, or None."""
        return self._running.prompt_id if self._running is not None else None

    def object_info(self) -> Json:
        """``/object_info`` as served now: the fixture with the knobs' lists filled in."""
        info = copy.deepcopy(self._fixture)
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(self.checkpoints)
        info["LoraLoader"]["input"]["required"]["lora_name"][0] = list(self.loras)
        ksampler = info["KSampler"]["input"]["required"]
        ksampler["sampler_name"][0] = list(self.samplers)
        ksampler["scheduler"][0] = list(self.schedulers)
        upscale = info["UpscaleModelLoader"]["input"]["required"]["model_name"]
        upscale[1]["options"] = list(self.upscale_models)
        inputs = sorted(n for (t, sub, n) in self._files if t == "input" and sub == "")
        info["LoadImage"]["input"]["required"]["image"][0] = inputs
        return info

    def fail_node(self, target: str, message: str, exception_type: str = "RuntimeError") -> None:
        """The next execution of a node with this id or class fails with ``execution_error``
        (``exception_message`` is ``message`` plus a newline, as the real server formats it)."""
        self._fail.append((target, message, exception_type))

    def put_input(self, name: str, data: bytes, subfolder: str = "") -> None:
        """A file in the input folder, as if uploaded (LoadImage lists it)."""
        self._files[("input", subfolder, name)] = data

    def file(self, name: str, subfolder: str = "", type: str = "output") -> bytes | None:
        """The bytes of a file the server has (uploaded, saved or previewed), or None."""
        return self._files.get((type, subfolder, name))

    def calls_to(self, name: str, **filters: Any) -> list[Any]:
        """The calls of route ``name`` (e.g. "post.prompt", "get.history_id", "ws"), with or
        without the ``/api`` prefix."""
        return self.calls_of(where=lambda c: c.endpoint in (name, f"api.{name}"), **filters)

    async def drop_sockets(self) -> None:
        """Every open websocket loses its connection at once; running jobs go on."""
        for ws in list(self.sockets.values()):
            self._abort_socket(ws)

    @staticmethod
    def _abort_socket(ws: web.WebSocketResponse) -> None:
        # web.WebSocketResponse keeps its request; aborting the transport is a lost connection
        request = getattr(ws, "_req", None)
        transport = request.transport if request is not None else None
        if transport is not None:
            transport.abort()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        await super().start(host, port or self._port)
        self._port = int(self.base_url.rsplit(":", 1)[1])
        self.dead = False
        self._worker = asyncio.get_running_loop().create_task(self._work())
        return self

    async def stop(self) -> None:
        self._closing.set()
        self._interrupt.set()
        for task in (self._worker, self._dropper):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._worker = self._dropper = None
        for ws in list(self.sockets.values()):
            self._abort_socket(ws)
        await super().stop()
        self.sockets.clear()
        self.socket_flags.clear()

    async def die(self) -> None:
        """The server process ends: connections drop, new ones are refused until
        :meth:`revive`; what was queued or running is lost."""
        if self.dead:
            return
        self.dead = True
        self.deaths += 1
        await self.stop()
        self._queue.clear()
        self._running = None
        self.in_flight = 0
        self.history.clear()
        self._cache.clear()
        self.loaded = None
        self._client_id = self._last_node = None
        self.dead = True

    async def revive(self) -> None:
        """The server starts again on the same port (a fresh process, the same disk)."""
        if not self.dead:
            return
        self._interrupt = asyncio.Event()
        self._queue_changed = asyncio.Event()
        await self.start(port=self._port)

    # --- the app -------------------------------------------------------------------------------

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("Authorization")

    def origins(self) -> dict[str, web.Application]:
        app = web.Application(client_max_size=MAX_UPLOAD)
        routes: list[tuple[str, str, str, Handler]] = [
            ("GET", "/ws", "ws", self._ws),
            ("GET", "/prompt", "get.prompt", self._get_prompt),
            ("POST", "/prompt", "post.prompt", self._post_prompt),
            ("GET", "/queue", "get.queue", self._get_queue),
            ("POST", "/queue", "post.queue", self._post_queue),
            ("GET", "/history", "get.history", self._get_history),
            ("GET", "/history/{prompt_id}", "get.history_id", self._get_history_id),
            ("POST", "/history", "post.history", self._post_history),
            ("POST", "/interrupt", "post.interrupt", self._post_interrupt),
            ("POST", "/free", "post.free", self._post_free),
            ("POST", "/upload/image", "post.upload_image", self._upload_image),
            ("GET", "/view", "get.view", self._view),
            ("GET", "/object_info", "get.object_info", self._object_info),
            ("GET", "/object_info/{node_class}", "get.object_info_class", self._object_info_class),
            ("GET", "/system_stats", "get.system_stats", self._system_stats),
            ("GET", "/features", "get.features", self._features),
            ("GET", "/embeddings", "get.embeddings", self._embeddings),
            ("GET", "/models", "get.models", self._models),
            ("GET", "/models/{folder}", "get.models_folder", self._models_folder),
        ]
        for method, path, name, handler in routes:
            app.router.add_route(method, "/api" + path, self._guard(handler), name=f"api.{name}")
            app.router.add_route(method, path, self._guard(handler), name=name)
        return {"comfyui": app}

    def _guard(self, handler: Handler) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            for name, value in self.headers_required.items():
                if request.headers.get(name) != value:
                    return web.Response(status=401, text="401: Unauthorized")
            return await handler(request)

        return serve

    async def _json_body(self, request: web.Request) -> Any:
        raw = self.record(request).raw
        return json.loads(raw) if raw else None

    # --- websocket -----------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        self.sockets[sid] = ws
        self.socket_flags[sid] = {}
        try:
            await self._send_to(ws, {"type": "status", "data": {**self._queue_info(), "sid": sid}})
            if self._client_id == sid and self._last_node is not None:
                await self._send_to(ws, {"type": "executing", "data": {"node": self._last_node}})
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    data = json.loads(msg.data)
                    if first and data.get("type") == "feature_flags":
                        self.socket_flags[sid] = dict(data.get("data") or {})
                        reply = {"type": "feature_flags", "data": self._server_features()}
                        await self._send_to(ws, reply)
                first = False
        finally:
            # The real server pops the id even if a newer socket took it over; the fake only
            # forgets its own socket, so a quick reconnect with the same id is never orphaned.
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.socket_flags.pop(sid, None)
        return ws

    @staticmethod
    def _server_features() -> Json:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD}

    @staticmethod
    async def _send_to(ws: web.WebSocketResponse, message: Json | bytes) -> None:
        with contextlib.suppress(Exception):  # the real server logs and goes on
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_json(message)

    async def _send(self, event: str, data: Json, sid: str | None) -> None:
        """To one socket by client id, or to every socket when ``sid`` is None."""
        message = {"type": event, "data": data}
        if sid is None:
            for ws in list(self.sockets.values()):
                await self._send_to(ws, message)
        elif sid in self.sockets:
            await self._send_to(self.sockets[sid], message)

    async def _send_bytes(self, payload: bytes, sid: str | None) -> None:
        targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for ws in targets:
            if ws is not None:
                await self._send_to(ws, payload)

    def _queue_info(self) -> Json:
        return {"status": {"exec_info": {"queue_remaining": self.in_flight}}}

    async def _queue_updated(self) -> None:
        self.in_flight = len(self._queue) + (1 if self._running is not None else 0)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await self._send("status", self._queue_info(), None)

    # --- prompt and queue ----------------------------------------------------------------------

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info()["status"])

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error")
        if not isinstance(body, dict):
            return web.Response(status=500, text="500 Internal Server Error")
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -self._number if body.get("front") else self._number
            self._number += 1
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        graph = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        prompt = copy.deepcopy(graph)
        ok, problem, outputs, node_errors = self._validate(
            prompt, body.get("partial_execution_targets")
        )
        if not ok:
            return web.json_response({"error": problem, "node_errors": node_errors}, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        item = _Item(number, prompt_id, prompt, extra_data, outputs, copy.deepcopy(graph))
        self._queue.append(item)
        self._queue_changed.set()
        await self._queue_updated()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    def _pending(self) -> list[_Item]:
        return sorted(self._queue, key=lambda i: (i.number, i.prompt_id))

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.as_list()] if self._running is not None else []
        pending = [i.as_list() for i in self._pending()]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) or {}
        if body.get("clear"):
            self._queue.clear()
            await self._queue_updated()
        for prompt_id in body.get("delete", []) or []:
            found = [i for i in self._queue if i.prompt_id == prompt_id]
            if found:
                self._queue.remove(found[0])
                await self._queue_updated()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        offset = int(request.query.get("offset", -1))
        keys = list(self.history)
        if max_items is not None:
            if offset < 0:
                offset = len(keys) - int(max_items)
            keys = keys[max(offset, 0) : max(offset, 0) + int(max_items)]
        elif offset > 0:
            keys = keys[offset:]
        return web.json_response({k: self.history[k] for k in keys})

    async def _get_history_id(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) or {}
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []) or []:
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except ValueError:
            body = None
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        running = self._running
        if running is not None and (not wanted or wanted == running.prompt_id):
            self.interrupts += 1
            self._interrupt.set()
        elif not wanted:
            self._interrupt.set()  # lost: the next prompt starts with the flag cleared
        return web.Response(status=200)

    async def _post_free(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) or {}
        if body.get("unload_models"):
            self._flags["unload_models"] = True
        if body.get("free_memory"):
            self._flags["free_memory"] = True
        if self._running is None:
            self._apply_flags()
        return web.Response(status=200)

    def _apply_flags(self) -> None:
        flags, self._flags = self._flags, {}
        if flags.get("unload_models", flags.get("free_memory", False)):
            self.loaded = None
        if flags.get("free_memory"):
            self._cache.clear()

    # --- files ---------------------------------------------------------------------------------

    async def _upload_image(self, request: web.Request) -> web.Response:
        call = self.record(request)
        image = call.file("image")
        if image is None or not image.filename:
            return web.Response(status=400)
        kind = call.form.get("type") or "input"
        if kind not in ("input", "temp", "output"):
            return web.Response(status=400)
        subfolder = call.form.get("subfolder", "")
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            return web.Response(status=400)
        name = image.filename
        overwrite = call.form.get("overwrite")
        if overwrite not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (ext, "")
            i = 1
            while (kind, subfolder, name) in self._files:
                if self._files[(kind, subfolder, name)] == image.data:
                    break  # the same picture again: no copy, the same name
                name = f"{stem} ({i}){ext}"
                i += 1
        self._files[(kind, subfolder, name)] = image.data
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    @staticmethod
    def _annotated(name: str, default: str) -> tuple[str, str]:
        for kind in ("input", "output", "temp"):
            if name.endswith(f" [{kind}]"):
                return name[: -len(kind) - 3], kind
        return name, default

    async def _view(self, request: web.Request) -> web.Response:
        if "filename" not in request.query:
            return web.Response(status=404)
        name, kind = self._annotated(request.query["filename"], request.query.get("type", "output"))
        if not name or name.startswith("/") or ".." in name:
            return web.Response(status=400)
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        subfolder = request.query.get("subfolder", "")
        if ".." in subfolder.split("/"):
            return web.Response(status=403)
        folder, _, base = name.rpartition("/")
        if folder:
            subfolder = f"{subfolder}/{folder}" if subfolder else folder
        data = self._files.get((kind, subfolder, base))
        if data is None:
            return web.Response(status=404)
        headers = {"Content-Disposition": f'filename="{base}"'}
        if "preview" in request.query:
            fmt, *rest = request.query["preview"].split(";")
            fmt = fmt if fmt in ("webp", "jpeg") else "webp"
            quality = int(rest[-1]) if rest and rest[-1].isdigit() else 90
            with Image.open(io.BytesIO(data)) as img:
                out = io.BytesIO()
                (img.convert("RGB") if fmt == "jpeg" else img).save(
                    out, format=fmt, quality=quality
                )
            return web.Response(body=out.getvalue(), content_type=f"image/{fmt}", headers=headers)
        ctype = "image/png" if base.lower().endswith(".png") else "application/octet-stream"
        if base.lower().endswith((".jpg", ".jpeg")):
            ctype = "image/jpeg"
        return web.Response(body=data, content_type=ctype, headers=headers)

    # --- info ----------------------------------------------------------------------------------

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info())

    async def _object_info_class(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def _system_stats(self, request: web.Request) -> web.Response:
        gib = 1024**3
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 64 * gib,
                    "ram_free": 48 * gib,
                    "comfyui_version": VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": "3.11.7 (main) [GCC 12.2.0]",
                    "pytorch_version": "2.8.0+cu128",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "127.0.0.1", "--port", str(self._port)],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 24 * gib,
                        "vram_free": (12 if self.loaded else 22) * gib,
                        "torch_vram_total": (8 if self.loaded else 0) * gib,
                        "torch_vram_free": 1 * gib,
                    }
                ],
            }
        )

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(self._server_features())

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(["checkpoints", "loras", "upscale_models", "vae", "embeddings"])

    async def _models_folder(self, request: web.Request) -> web.Response:
        lists = {
            "checkpoints": self.checkpoints,
            "loras": self.loras,
            "upscale_models": self.upscale_models,
            "vae": [],
            "embeddings": [],
        }
        folder = request.match_info["folder"]
        if folder not in lists:
            return web.Response(status=404)
        return web.json_response(sorted(lists[folder]))

    # --- validation (execution.validate_prompt / validate_inputs) ------------------------------

    def _validate(
        self, prompt: Any, targets: list[str] | None
    ) -> tuple[bool, Json | None, list[str], Json]:
        info = self.object_info()
        if not isinstance(prompt, dict):
            return False, _error("invalid_prompt", "Prompt is not a JSON object", ""), [], {}
        outputs: list[str] = []
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return False, _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}
            class_type = node["class_type"]
            if class_type not in info:
                message = f"Cannot execute because node {class_type} does not exist."
                return False, _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}
            if info[class_type].get("output_node") is True and (
                targets is None or node_id in targets
            ):
                outputs.append(node_id)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        good: list[str] = []
        failed: list[tuple[str, list[Json]]] = []
        node_errors: Json = {}
        validated: dict[str, tuple[bool, list[Json]]] = {}
        for out in outputs:
            try:
                valid, reasons = self._validate_node(info, prompt, out, validated)
            except _ValidationCrash as crash:
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(crash),
                        "extra_info": {
                            "exception_type": crash.exception_type,
                            "traceback": _traceback("validate_inputs"),
                        },
                    }
                ]
                validated[out] = (False, reasons)
            if valid:
                good.append(out)
                continue
            failed.append((out, reasons))
            for node_id, (ok, why) in validated.items():
                if ok or not why:
                    continue  # a node downstream of an error has no errors of its own
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": why,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, es in failed for e in es)
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
            )
            return False, error, [], node_errors
        return True, None, good, node_errors

    def _validate_node(
        self, info: Json, prompt: Json, node_id: str, validated: dict[str, tuple[bool, list[Json]]]
    ) -> tuple[bool, list[Json]]:
        if node_id in validated:
            return validated[node_id]
        node = prompt[node_id]
        inputs = node.setdefault("inputs", {})
        class_type = node["class_type"]
        spec = info[class_type]["input"]
        required = spec.get("required", {})
        declared = {**spec.get("optional", {}), **required}
        own_check = SELF_VALIDATED.get(class_type, ())
        errors: list[Json] = []
        valid = True
        for name, config in declared.items():
            input_type = config[0]
            extra = config[1] if len(config) > 1 else {}
            if name not in inputs:
                if name in required:
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            input_name=name,
                        )
                    )
                continue
            value = inputs[name]
            input_config = [input_type, extra]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            input_name=name,
                            input_config=input_config,
                            received_value=value,
                        )
                    )
                    continue
                source, slot = value
                if not isinstance(source, str) or source not in prompt:
                    raise _ValidationCrash("KeyError", repr(source))
                returns = info[prompt[source]["class_type"]]["output"]
                if not isinstance(slot, int):
                    raise _ValidationCrash(
                        "TypeError",
                        f"tuple indices must be integers or slices, not {type(slot).__name__}",
                    )
                if not -len(returns) <= slot < len(returns):
                    raise _ValidationCrash("IndexError", "tuple index out of range")
                received = returns[slot]
                if not _types_match(received, input_type):
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({received}) mismatch input_type({input_type})",
                            input_name=name,
                            input_config=input_config,
                            received_type=received,
                            linked_node=value,
                        )
                    )
                    continue
                try:
                    ok, _ = self._validate_node(info, prompt, source, validated)
                except _ValidationCrash as crash:
                    validated[source] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(crash),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": input_config,
                                    "exception_message": str(crash),
                                    "exception_type": crash.exception_type,
                                    "traceback": _traceback("validate_inputs"),
                                    "linked_node": value,
                                },
                            }
                        ],
                    )
                    valid = False
                    continue
                if not ok:
                    valid = False
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = inputs[name] = value["__value__"]
            try:
                value = _convert(input_type, value)
            except (TypeError, ValueError) as exc:
                errors.append(
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {input_type} value",
                        f"{name}, {value}, {exc}",
                        input_name=name,
                        input_config=input_config,
                        received_value=value,
                        exception_message=str(exc),
                    )
                )
                continue
            inputs[name] = value
            if name in own_check:
                continue
            if "min" in extra and value < extra["min"]:
                errors.append(
                    _error(
                        "value_smaller_than_min",
                        f"Value {value} smaller than min of {extra['min']}",
                        name,
                        input_name=name,
                        input_config=input_config,
                        received_value=value,
                    )
                )
                continue
            if "max" in extra and value > extra["max"]:
                errors.append(
                    _error(
                        "value_bigger_than_max",
                        f"Value {value} bigger than max of {extra['max']}",
                        name,
                        input_name=name,
                        input_config=input_config,
                        received_value=value,
                    )
                )
                continue
            if isinstance(input_type, list) and value not in input_type:
                listed = (
                    f"(list of length {len(input_type)})"
                    if len(input_type) > 20
                    else str(input_type)
                )
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {listed}",
                        input_name=name,
                        input_config=None if len(input_type) > 20 else input_config,
                        received_value=value,
                    )
                )
        if (
            class_type == "LoadImage"
            and "image" in inputs
            and not self._input_exists(inputs["image"])
        ):
            errors.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"image - Invalid image file: {inputs['image']}",
                    input_name="image",
                )
            )
        result = (not errors and valid, errors)
        validated[node_id] = result
        return result

    def _input_file(self, name: Any) -> bytes | None:
        if not isinstance(name, str):
            return None
        name, kind = self._annotated(name, "input")
        folder, _, base = name.rpartition("/")
        return self._files.get((kind, folder, base))

    def _input_exists(self, name: Any) -> bool:
        return self._input_file(name) is not None

    # --- execution (main.prompt_worker, execution.PromptExecutor) ------------------------------

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._queue_changed.clear()
                await self._queue_changed.wait()
            item = self._pending()[0]
            self._queue.remove(item)
            self._running = item
            self.max_running = max(self.max_running, 1)
            await self._queue_updated()
            if self.drop_socket_after_s is not None:
                delay, self.drop_socket_after_s = self.drop_socket_after_s, None
                self._dropper = asyncio.get_running_loop().create_task(self._drop_later(delay))
            try:
                await self._execute(item)
            finally:
                self._running = None
            await self._queue_updated()
            client = item.extra_data.get("client_id")
            if client is not None:
                await self._send("executing", {"node": None, "prompt_id": item.prompt_id}, client)
            if self._flags:
                self._apply_flags()

    async def _drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.drop_sockets()

    async def _execute(self, item: _Item) -> None:
        self._interrupt.clear()
        client = item.extra_data.get("client_id")
        self._client_id = client
        preview = item.extra_data.get("preview_method")
        if preview in NO_PREVIEW:
            preview = self.preview_method_default
        run = _Run(item, client, None if preview in NO_PREVIEW else str(preview))
        run.record = {
            "prompt_id": item.prompt_id,
            "client_id": client,
            "graph": item.graph,
            "checkpoint": None,
            "loras": [],
            "sampler": None,
            "scheduler": None,
            "seed": None,
            "steps": None,
            "cfg": None,
            "denoise": None,
            "positive": None,
            "negative": None,
            "size": None,
            "batch": None,
            "outputs": {},
            "cached": False,
            "status": "success",
        }
        messages: list[list[Any]] = []

        async def add(event: str, data: Json, broadcast: bool = False) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            if client is not None or broadcast:
                await self._send(event, data, client)

        prompt = item.prompt
        await add("execution_start", {"prompt_id": item.prompt_id})
        signatures = _signatures(prompt, self._input_file)
        wanted = set(signatures.values())
        self._cache = {k: v for k, v in self._cache.items() if k in wanted}
        cached = [n for n in prompt if signatures[n] in self._cache]
        await add("execution_cached", {"nodes": cached, "prompt_id": item.prompt_id})
        results: dict[str, tuple[Any, Json | None]] = {
            n: self._cache[signatures[n]] for n in cached
        }
        done: list[str] = []
        info = self.object_info()
        plan = _ExecutionList(prompt, info, set(cached), item.outputs)
        success = True
        while not plan.empty():
            node_id = plan.pick()
            class_type = prompt[node_id]["class_type"]
            try:
                await self._run_node(run, node_id, results, signatures)
            except _Interrupted:
                success = False
                run.record["status"] = "interrupted"
                data = {
                    "prompt_id": item.prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(done),
                }
                await add("execution_interrupted", data, broadcast=True)
                break
            except _NodeFailed as failure:
                success = False
                run.record["status"] = "error"
                inputs = prompt[node_id].get("inputs", {})
                data = {
                    "prompt_id": item.prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(done),
                    "exception_message": f"{failure}\n",
                    "exception_type": failure.exception_type,
                    "traceback": _traceback(class_type),
                    "current_inputs": {
                        k: [v if isinstance(v, str | int | float | bool) or v is None else str(v)]
                        for k, v in inputs.items()
                        if not _is_link(v)
                    },
                    "current_outputs": list(prompt),
                }
                await add("execution_error", data)
                break
            done.append(node_id)
            plan.complete(node_id)
        else:
            await add("execution_success", {"prompt_id": item.prompt_id})
        self._last_node = None
        outputs: Json = {}
        meta: Json = {}
        for node_id in prompt:
            entry = self._cache.get(signatures[node_id])
            if entry is not None and entry[1] is not None:
                outputs[node_id] = entry[1]
                meta[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
        extra = {k: v for k, v in item.extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
        self.history[item.prompt_id] = {
            "prompt": [item.number, item.prompt_id, prompt, extra, item.outputs],
            "outputs": outputs,
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": messages,
            },
            "meta": meta,
        }
        _fill_from_graph(run.record, prompt)
        run.record["outputs"] = {
            n: [img["filename"] for img in ui.get("images", [])] for n, ui in outputs.items()
        }
        run.record["cached"] = bool(outputs) and all(n in cached for n in outputs)
        if run.record["size"] is None:
            first = next((ui["images"][0] for ui in outputs.values() if ui.get("images")), None)
            if first is not None:
                saved = self._files.get((first["type"], first["subfolder"], first["filename"]))
                if saved is not None:
                    with Image.open(io.BytesIO(saved)) as img:
                        run.record["size"] = img.size
        self.executed.append(run.record)

    async def _progress_state(self, run: _Run) -> None:
        nodes = {
            node_id: {
                **state,
                "node_id": node_id,
                "prompt_id": run.item.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in run.progress.items()
        }
        await self._send(
            "progress_state", {"prompt_id": run.item.prompt_id, "nodes": nodes}, run.client_id
        )

    async def _run_node(
        self,
        run: _Run,
        node_id: str,
        results: dict[str, tuple[Any, Json | None]],
        signatures: dict[str, str],
    ) -> None:
        prompt = run.item.prompt
        node = prompt[node_id]
        class_type = node["class_type"]
        pid = run.item.prompt_id
        if node_id in results:  # cached: the earlier output, nothing runs
            if run.client_id is not None:
                ui = results[node_id][1]
                data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid}
                await self._send("executed", data, run.client_id)
            run.progress[node_id] = {"value": 1, "max": 1, "state": "finished"}
            await self._progress_state(run)
            return
        run.progress[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        await self._progress_state(run)
        if run.client_id is not None:
            self._last_node = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": pid}
            await self._send("executing", data, run.client_id)
        if self._interrupt.is_set():
            raise _Interrupted
        for index, (target, message, exc_type) in enumerate(self._fail):
            if target in (node_id, class_type):
                del self._fail[index]
                raise _NodeFailed(exc_type, message)
        args: Json = {}
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                args[name] = results[value[0]][0][value[1]]
            else:
                args[name] = value
        await self._pause(self.time_per_node_s)  # an interrupt lands at the next node
        runner = getattr(self, f"_node_{class_type}")
        outputs, ui = await runner(run, node_id, **args)
        results[node_id] = (outputs, ui)
        self._cache[signatures[node_id]] = (outputs, ui)
        if ui is not None and run.client_id is not None:
            data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid}
            await self._send("executed", data, run.client_id)
        state = run.progress[node_id]
        state.update(value=state["max"], state="finished")
        await self._progress_state(run)

    async def _pause(self, seconds: float) -> None:
        """Work for ``seconds``; an interrupt cuts it short (noticed at the next check)."""
        if seconds > 0:
            await wait_for_event(self._interrupt, seconds)

    async def _step(self, run: _Run, node_id: str, value: int, total: int, colour: Any) -> None:
        """One progress tick (main.hijack_progress): interrupt check, progress_state, a type-4
        preview, ``progress``, a type-1 preview."""
        if self._interrupt.is_set():
            raise _Interrupted
        run.progress[node_id] = {"value": value, "max": total, "state": "running"}
        await self._progress_state(run)
        preview = None
        if run.preview is not None and colour is not None:
            out = io.BytesIO()
            Image.new("RGB", colour[0], colour[1]).save(out, format="JPEG", quality=95)
            preview = out.getvalue()
        pid = run.item.prompt_id
        new_style = run.client_id is not None and bool(
            self.socket_flags.get(run.client_id, {}).get("supports_preview_metadata") is True
        )
        if preview is not None and new_style:
            meta = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": pid,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/jpeg",
                }
            ).encode()
            frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + preview
            await self._send_bytes(frame, run.client_id)
        data = {"value": value, "max": total, "prompt_id": pid, "node": node_id}
        await self._send("progress", data, run.client_id)
        if preview is not None and not new_style:
            frame = struct.pack(">II", PREVIEW_IMAGE, FORMAT_JPEG) + preview
            await self._send_bytes(frame, run.client_id)

    # --- the nodes -------------------------------------------------------------------------------

    async def _node_CheckpointLoaderSimple(self, run: _Run, node_id: str, ckpt_name: str) -> Any:
        if ckpt_name not in self.checkpoints:
            raise _NodeFailed(
                "FileNotFoundError",
                f"Model in folder 'checkpoints' with filename '{ckpt_name}' not found.",
            )
        if ckpt_name != self.loaded:
            await self.sleep(self.switch_time_s)
            self.loaded = ckpt_name
            self.switches += 1
        run.record["checkpoint"] = run.record["checkpoint"] or ckpt_name
        model = _Model(ckpt_name)
        return (model, model, {"vae": ckpt_name}), None

    async def _node_LoraLoader(
        self,
        run: _Run,
        node_id: str,
        model: _Model,
        clip: _Model,
        lora_name: str,
        strength_model: float,
        strength_clip: float,
    ) -> Any:
        lora = (lora_name, strength_model, strength_clip)
        run.record["loras"].append(list(lora))
        return (
            _Model(model.ckpt, (*model.loras, lora)),
            _Model(clip.ckpt, (*clip.loras, lora)),
        ), None

    async def _node_CLIPTextEncode(self, run: _Run, node_id: str, text: str, clip: _Model) -> Any:
        return ({"text": text, "clip": clip},), None

    async def _node_EmptyLatentImage(
        self, run: _Run, node_id: str, width: int, height: int, batch_size: int
    ) -> Any:
        return (_Latent(width // 8 * 8, height // 8 * 8, batch_size),), None

    async def _node_LoadImage(self, run: _Run, node_id: str, image: str) -> Any:
        data = self._input_file(image)
        if data is None:
            raise _NodeFailed(
                "FileNotFoundError", f"[Errno 2] No such file or directory: '{image}'"
            )
        with Image.open(io.BytesIO(data)) as img:
            picture = ImageOps.exif_transpose(img).convert("RGB")
        return ([picture], None), None

    async def _node_VAEEncode(
        self, run: _Run, node_id: str, pixels: list[Image.Image], vae: Json
    ) -> Any:
        width, height = pixels[0].width // 8 * 8, pixels[0].height // 8 * 8
        init = [p.crop((0, 0, width, height)) for p in pixels]
        return (_Latent(width, height, len(pixels), init=init),), None

    async def _node_RepeatLatentBatch(
        self, run: _Run, node_id: str, samples: _Latent, amount: int
    ) -> Any:
        init = (samples.init or [])[:1] * amount if samples.init else None
        return (_Latent(samples.width, samples.height, samples.batch * amount, init=init),), None

    async def _node_KSampler(
        self,
        run: _Run,
        node_id: str,
        model: _Model,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: Json,
        negative: Json,
        latent_image: _Latent,
        denoise: float,
    ) -> Any:
        record = run.record
        if record["sampler"] is None:
            record.update(
                sampler=sampler_name,
                scheduler=scheduler,
                seed=seed,
                steps=steps,
                cfg=cfg,
                denoise=denoise,
                positive=positive.get("text"),
                negative=negative.get("text"),
                batch=latent_image.batch,
            )
        size = (max(1, latent_image.width // 8), max(1, latent_image.height // 8))
        for step in range(steps):
            await self._pause(self.time_per_step_s)
            shade = colour_of(seed, 0)
            fade = (step + 1) / steps
            colour = tuple(int(c * fade) for c in shade)
            await self._step(run, node_id, step + 1, steps, (size, colour))
        sampled = {"seed": seed, "ckpt": model.ckpt, "loras": model.loras, "denoise": denoise}
        latent = _Latent(
            latent_image.width, latent_image.height, latent_image.batch, latent_image.init, sampled
        )
        return (latent,), None

    async def _node_VAEDecode(self, run: _Run, node_id: str, samples: _Latent, vae: Json) -> Any:
        size = (max(1, samples.width), max(1, samples.height))
        pictures = []
        for index in range(samples.batch):
            if samples.sampled is None:
                picture = Image.new("RGB", size, (0, 0, 0))
            else:
                picture = Image.new("RGB", size, colour_of(samples.sampled["seed"], index))
                if samples.init is not None:
                    init = samples.init[min(index, len(samples.init) - 1)].resize(size)
                    alpha = max(0.0, min(1.0, float(samples.sampled["denoise"])))
                    picture = Image.blend(init, picture, alpha)
            pictures.append(picture)
        return (pictures,), None

    async def _node_ImageScale(
        self,
        run: _Run,
        node_id: str,
        image: list[Image.Image],
        upscale_method: str,
        width: int,
        height: int,
        crop: str,
    ) -> Any:
        if width == 0 and height == 0:
            return (image,), None
        first = image[0]
        if width == 0:
            width = max(1, round(first.width * height / first.height))
        elif height == 0:
            height = max(1, round(first.height * width / first.width))
        return ([p.resize((width, height), Image.Resampling.NEAREST) for p in image],), None

    async def _node_ImageScaleBy(
        self,
        run: _Run,
        node_id: str,
        image: list[Image.Image],
        upscale_method: str,
        scale_by: float,
    ) -> Any:
        scaled = [
            p.resize(
                (round(p.width * scale_by), round(p.height * scale_by)), Image.Resampling.NEAREST
            )
            for p in image
        ]
        return (scaled,), None

    async def _node_UpscaleModelLoader(self, run: _Run, node_id: str, model_name: str) -> Any:
        if model_name not in self.upscale_models:
            raise _NodeFailed(
                "FileNotFoundError",
                f"Model in folder 'upscale_models' with filename '{model_name}' not found.",
            )
        return ({"name": model_name, "scale": _scale_of(model_name)},), None

    async def _node_ImageUpscaleWithModel(
        self, run: _Run, node_id: str, upscale_model: Json, image: list[Image.Image]
    ) -> Any:
        scale = upscale_model["scale"]
        await self._pause(self.time_per_step_s)
        await self._step(run, node_id, 1, 1, None)
        scaled = [
            p.resize((p.width * scale, p.height * scale), Image.Resampling.NEAREST) for p in image
        ]
        return (scaled,), None

    async def _node_ImageInvert(self, run: _Run, node_id: str, image: list[Image.Image]) -> Any:
        return ([ImageOps.invert(p.convert("RGB")) for p in image],), None

    async def _node_EmptyImage(
        self, run: _Run, node_id: str, width: int, height: int, batch_size: int = 1, color: int = 0
    ) -> Any:
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
        return ([Image.new("RGB", (width, height), rgb) for _ in range(batch_size)],), None

    def _save(self, run: _Run, images: list[Image.Image], prefix: str, kind: str) -> Json:
        subfolder, _, base = prefix.replace("\\", "/").rpartition("/")
        counter = 1 + max(
            (
                int(m.group(1))
                for (t, sub, name) in self._files
                if t == kind
                and sub == subfolder
                and (m := re.fullmatch(re.escape(base) + r"_(\d+)_\.png", name))
            ),
            default=0,
        )
        text = {"prompt": json.dumps(run.item.prompt)}
        found = []
        for picture in images:
            name = f"{base}_{counter:05}_.png"
            self._files[(kind, subfolder, name)] = _png(picture, text)
            found.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        if run.record["size"] is None and images:
            run.record["size"] = images[0].size
        return {"images": found}

    async def _node_SaveImage(
        self, run: _Run, node_id: str, images: list[Image.Image], filename_prefix: str = "ComfyUI"
    ) -> Any:
        return (), self._save(run, images, filename_prefix, "output")

    async def _node_PreviewImage(self, run: _Run, node_id: str, images: list[Image.Image]) -> Any:
        suffix = "".join(self._random.choice(string.ascii_lowercase) for _ in range(5))
        return (), self._save(run, images, f"ComfyUI_temp_{suffix}", "temp")


class _ExecutionList:
    """The order nodes run in (comfy_execution/graph.py ExecutionList): a node runs once what it
    links to has run; among the ready ones, an output node first, then one feeding an output,
    then one two steps from an output, else the first added. Cached nodes are not added."""

    def __init__(self, prompt: Json, info: Json, cached: set[str], outputs: list[str]) -> None:
        self.prompt, self.info, self.cached = prompt, info, cached
        self.pending: dict[str, None] = {}
        self.blocking: dict[str, dict[str, None]] = {}
        self.blocked_by: dict[str, int] = {}
        for output in outputs:
            self._add(output)

    def _add(self, start: str) -> None:
        stack, links = [start], []
        while stack:
            node_id = stack.pop()
            if node_id in self.pending:
                continue
            self.pending[node_id] = None
            self.blocking.setdefault(node_id, {})
            self.blocked_by.setdefault(node_id, 0)
            for value in self.prompt[node_id].get("inputs", {}).values():
                if _is_link(value) and value[0] not in self.cached:
                    stack.append(value[0])
                    links.append((value[0], node_id))
        for source, target in links:
            if target not in self.blocking[source]:
                self.blocking[source][target] = None
                self.blocked_by[target] += 1

    def _is_output(self, node_id: str) -> bool:
        return self.info[self.prompt[node_id]["class_type"]].get("output_node") is True

    def empty(self) -> bool:
        return not self.pending

    def pick(self) -> str:
        ready = [n for n in self.pending if self.blocked_by[n] == 0]
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for b in self.blocking[node_id]:
                if any(self._is_output(c) for c in self.blocking.get(b, {})):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for target in self.blocking.pop(node_id):
            self.blocked_by[target] -= 1


def _fill_from_graph(record: Json, prompt: Json) -> None:
    """What cached nodes did not report (they did not run): read from the graph itself."""
    by_class: dict[str, list[Json]] = {}
    for node in prompt.values():
        by_class.setdefault(node["class_type"], []).append(node.get("inputs", {}))
    if record["checkpoint"] is None and by_class.get("CheckpointLoaderSimple"):
        record["checkpoint"] = by_class["CheckpointLoaderSimple"][0].get("ckpt_name")
    if not record["loras"]:
        record["loras"] = [
            [i.get("lora_name"), i.get("strength_model"), i.get("strength_clip")]
            for i in by_class.get("LoraLoader", [])
        ]
    if record["sampler"] is None and by_class.get("KSampler"):
        ks = by_class["KSampler"][0]
        record.update(
            sampler=ks.get("sampler_name"),
            scheduler=ks.get("scheduler"),
            seed=ks.get("seed"),
            steps=ks.get("steps"),
            cfg=ks.get("cfg"),
            denoise=ks.get("denoise"),
        )
        texts = {
            k: prompt[ks[k][0]].get("inputs", {}).get("text")
            for k in ("positive", "negative")
            if _is_link(ks.get(k)) and ks[k][0] in prompt
        }
        record["positive"], record["negative"] = texts.get("positive"), texts.get("negative")
    if record["batch"] is None and by_class.get("EmptyLatentImage"):
        record["batch"] = by_class["EmptyLatentImage"][0].get("batch_size")


def _error(kind: str, message: str, details: str, **extra_info: Any) -> Json:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _traceback(where: str) -> list[str]:
    return [f'  File "execution.py", line 1, in {where}\n', "    (fake ComfyUI)\n"]


def _types_match(received: Any, wanted: Any) -> bool:
    """execution's validate_node_input: equal, or comma-separated types that overlap
    ("*" matches anything, as the real type's ``__ne__`` makes it)."""
    if received == wanted or received == "*" or wanted == "*":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


def _convert(input_type: Any, value: Any) -> Any:
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


def _signatures(prompt: Json, input_file: Callable[[Any], bytes | None]) -> dict[str, str]:
    """A node's cache key: its class, its constant inputs and its sources' keys (and, for
    LoadImage, the file's hash: its IS_CHANGED)."""
    found: dict[str, str] = {}

    def sign(node_id: str, seen: frozenset[str]) -> str:
        if node_id in found:
            return found[node_id]
        node = prompt[node_id]
        parts: list[Any] = [node["class_type"]]
        for name, value in sorted(node.get("inputs", {}).items()):
            if _is_link(value) and value[0] in prompt and value[0] not in seen:
                parts.append([name, sign(value[0], seen | {node_id}), value[1]])
            else:
                parts.append([name, value])
        if node["class_type"] == "LoadImage":
            data = input_file(node.get("inputs", {}).get("image"))
            parts.append(hashlib.sha256(data or b"").hexdigest())
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        found[node_id] = key
        return key

    for node_id in prompt:
        sign(node_id, frozenset())
    return found
