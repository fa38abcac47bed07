"""A loopback fake of the AUTOMATIC1111 web UI API (``/sdapi/v1``) and its Forge and SD.Next
flavours, for the ``a1111`` provider.

Sources: shared/api/providers.md, section "Self-hosted: AUTOMATIC1111 / Forge / reForge /
SD.Next" (the route table, "Differences that break clients" and "Behaviours read from the web
UI's source"), and its "Official clients that can drive a loopback fake" table (``webuiapi``
0.9.17 drives this fake in tests/test_fake_a1111.py). Shapes were checked against the web UI's
``modules/api/api.py`` and ``modules/api/models.py`` (route table, ``handle_exception``,
``progressapi``, ``set_config``, ``get_sd_models``), ``modules/processing.py``
(``process_images``: override_settings and the restore), ``modules/sd_samplers.py``
(``get_sampler_and_scheduler``), ``scripts/postprocessing_upscale.py`` and
``extensions-builtin/Lora/scripts/lora_script.py``; no code was copied.

One origin per instance; every piece of state is per object, so a test may run several::

    async with A1111Fake(checkpoints=["sd15.safetensors", "sdxl_base.safetensors"]) as gpu1:
        ...  gpu1.base_url (http://127.0.0.1:PORT), gpu1.port, gpu1.rendered, gpu1.switches

What it does, as the real web UI does:

* **one job at a time**: ``txt2img``, ``img2img``, ``extra-single-image``, ``POST /options``
  with a checkpoint, ``refresh-checkpoints`` and ``refresh-vae`` all take one lock (the real
  ``queue_lock``); a second request waits for the first.
* **checkpoint per job**: ``override_settings.sd_model_checkpoint`` names a checkpoint by any of
  its aliases (``checkpoint_aliases``: title, file name, name without extension and, once the
  hash is known, the 10-hex short hash, the sha256, "name [hash]"). A known, different one is
  loaded (``switch_time_s``, ``switches += 1``) and stays in memory; with
  ``override_settings_restore_afterwards`` (default true) only the option's value is put back.
  A job WITHOUT a (known) override loads the checkpoint the ``sd_model_checkpoint`` option
  names (real ``process_images``: ``reload_model_weights()``), so after an override job a plain
  job switches back. An unknown override is dropped silently (no error). ``sd_checkpoint_hash``
  always names what is really loaded.
* ``/sd-models`` ``hash``/``sha256`` are null for a checkpoint not in :attr:`hashed`, and its
  title has no " [hash]"; loading it once hashes it (the title changes).
* an unknown sampler becomes ``samplers[0]`` ("DPM++ 2M" in the default list, as since 1.9); a
  combined name ("DPM++ 2M Karras") splits into sampler and schedule type; no sampler at all
  gives "Euler" (the API model's ``sampler_index`` default).
* ``/interrupt`` ends the running job at once; its request answers 200 with the pictures done
  plus the current batch, partial. ``/skip`` ends the current batch only.
* errors use the web UI's rebuilt shape ``{"error", "detail", "body", "errors"}`` (its
  ``handle_exception``): an unknown checkpoint posted to ``/options`` is 500 ``RuntimeError``
  with ``errors`` "model 'x' not found"; out of memory is 500 ``OutOfMemoryError`` with an empty
  ``detail``; ``--api-auth`` failures are 401 ``HTTPException`` with ``detail`` "Incorrect
  username or password" (or "Not authenticated" without credentials) and NO
  ``WWW-Authenticate`` header. An unknown route is 404 ``{"detail": "Not Found"}``; a body that
  is not a JSON object is 422 ``{"detail": [...]}``.
* img2img without width/height renders 512x512 whatever the input; ``enable_hr`` multiplies the
  size by ``hr_scale`` (or uses ``hr_resize_x``/``hr_resize_y``); with ``save_images`` and more
  than one picture a grid comes first (``return_grid``; ``info.index_of_first_image`` = 1).
* auth (``auth=("user", "pass")``) guards every ``/sdapi/v1`` route except ``/loras`` and
  ``/refresh-loras`` (the Lora extension registers them on the app directly).

Flavours (``flavour=``) and the markers a probe can use:

* ``"a1111"``: as above. ``GET /sdapi/v1/version`` is 404 ``{"detail": "Not Found"}``.
* ``"forge"``: ignores ``override_settings.sd_model_checkpoint`` (older Forge, issues 1610 and
  1940): the job renders with the loaded checkpoint; only ``POST /options`` switches. Marker:
  ``/options`` carries ``forge_preset`` ("sd"), ``forge_additional_modules`` ([]),
  ``forge_unet_storage_dtype`` and ``forge_inference_memory`` (keys Forge adds; values assumed).
  ``/schedulers`` exists.
* ``"sdnext"``: ``/sd-models`` items carry ``name`` instead of ``model_name`` (issue 2633),
  ``/refresh-vaes`` replaces ``/refresh-vae``, and there is no ``/schedulers`` (404). Markers:
  ``GET /sdapi/v1/version`` answers ``{"app": "sd.next", "updated", "hash", "url", "branch"}``
  (shape assumed, not read from SD.Next's source) and ``/options`` has ``sd_backend``
  ("diffusers").

Test switches: :attr:`oom_above_pixels` (a generate request whose output width*height is above
it answers the out-of-memory 500), :attr:`die_after_s` / :meth:`die` (the server stops: in-flight
requests lose their connection, new ones are refused) and :meth:`revive` (serves again on the
SAME port). Faults, latency and the call log are the scaffold's (tests/fakes/scaffold.py).

Public API (what provider tests use):

* constructor (keywords only): ``flavour`` ("a1111"), ``checkpoints`` (file names;
  :data:`DEFAULT_CHECKPOINTS`), ``hashed`` (names whose hash is known; default all),
  ``loaded`` (default the first), ``samplers`` (:data:`DEFAULT_SAMPLERS`), ``schedulers``
  (names out of automatic, uniform, karras, exponential, polyexponential, sgm_uniform; default
  all), ``loras``, ``vaes``, ``upscalers``, ``time_per_image_s`` (0.05), ``switch_time_s`` (0),
  ``steps_per_image`` (progress ticks per batch, 5), ``live_previews`` (True), ``auth``
  (``("user", "pass")`` or None), ``oom_above_pixels``, ``die_after_s``, ``options`` (merged
  into the default options), ``shutdown_timeout``, ``latency_s``.
* attributes a test may read or change: ``checkpoints``, ``hashed``, ``loaded``, ``options``,
  ``samplers``, ``loras``, ``vaes``, ``upscalers``, ``time_per_image_s``, ``switch_time_s``,
  ``live_previews``, ``auth``, ``oom_above_pixels``, ``die_after_s`` (setting it while serving
  schedules the death); counters and records: ``rendered`` (one dict per job: kind,
  checkpoint, checkpoint_title, vae, sampler, scheduler, prompt, negative_prompt, width and
  height of the output, n, batch_size, n_iter, steps, seed, hr, override, task_id,
  interrupted), ``switches``, ``interrupts``, ``skips``, ``ooms``, ``refreshes``
  ({"checkpoints", "vae", "loras"}), ``max_concurrent`` (jobs rendering at once: 1 by
  construction, it proves the lock), ``max_in_flight`` (generate requests open at once, waiting
  or rendering: what a provider test asserts is 1), ``in_flight``, ``running``, ``dead``,
  ``deaths``, ``port``, ``base_url`` (no path; the API is under ``/sdapi/v1``), ``log``.
* methods: :meth:`checkpoint` (a name's :class:`Checkpoint`: title, model_name, shorthash,
  sha256, full_sha256, aliases()), :meth:`listed`, :meth:`resolve`, :meth:`die`,
  :meth:`revive`, and the scaffold's ``calls_of``, ``wait_for_call``, ``faults``.

Deliberate simplifications: pictures are flat colours from the seed and index (img2img blends
the init image in); the legacy 8-hex model hash is derived like the others; ``/memory``,
``/cmd-flags``, ``/embeddings`` and ``/scripts`` are plausible fixed shapes; an unknown
``/options`` key is stored as it is; ``/extra-single-image`` sizes by ``upscaling_resize`` (or
``upscaling_resize_w``/``_h`` with ``resize_mode`` 1) and an unknown ``upscaler_1`` is 500
``AssertionError`` "could not find upscaler named X" (the real script asserts; no 404).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import random
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from PIL import Image, PngImagePlugin

from bot.waiting import wait_for_event
from tests.fakes.scaffold import LoopbackServer

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/sdapi/v1"
FLAVOURS = ("a1111", "forge", "sdnext")
VERSION = "v1.10.1"
OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity; "
    "5.12 GiB already allocated; 1.20 GiB free; 5.60 GiB reserved in total by PyTorch)"
)

DEFAULT_CHECKPOINTS = ["sd15.safetensors", "sdxl_base.safetensors", "dreamshaper_8.safetensors"]
# Order matters: samplers[0] is what an unknown sampler becomes (1.9+: "DPM++ 2M" first).
DEFAULT_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "Euler a", "Euler", "DDIM", "UniPC"]
SAMPLER_INFO: dict[str, tuple[list[str], Json]] = {
    "DPM++ 2M": (["k_dpmpp_2m"], {"scheduler": "karras"}),
    "DPM++ SDE": (["k_dpmpp_sde"], {"scheduler": "karras", "second_order": True}),
    "Euler a": (["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    "Euler": (["k_euler"], {}),
    "DDIM": (["ddim"], {}),
    "UniPC": (["unipc"], {}),
}
# (name, label, aliases, default_rho, need_inner_model); the first is "Automatic".
DEFAULT_SCHEDULERS: list[tuple[str, str, list[str] | None, float, bool]] = [
    ("automatic", "Automatic", None, -1.0, False),
    ("uniform", "Uniform", None, -1.0, True),
    ("karras", "Karras", None, 7.0, False),
    ("exponential", "Exponential", None, -1.0, False),
    ("polyexponential", "Polyexponential", None, 1.0, False),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1.0, True),
]
DEFAULT_UPSCALERS = ["None", "Lanczos", "Nearest", "R-ESRGAN 4x+", "Latent"]
DEFAULT_VAES = ["vae-ft-mse-840000-ema-pruned.safetensors", "sdxl_vae.safetensors"]
DEFAULT_LORAS = ["add_detail", "lcm_lora_sdxl"]


class _Dropped(Exception):
    """The server is stopping or dying: the request's connection is dropped."""


class _ApiError(Exception):
    """An error answered in the web UI's rebuilt shape."""

    def __init__(self, status: int, error: str, errors: str, detail: Any = "") -> None:
        super().__init__(errors)
        self.status, self.error, self.errors, self.detail = status, error, errors, detail

    @classmethod
    def http(cls, status: int, detail: str) -> _ApiError:
        """A FastAPI HTTPException as ``handle_exception`` rebuilds it."""
        return cls(status, "HTTPException", f"{status}: {detail}", detail)

    def response(self) -> web.Response:
        body = {"error": self.error, "detail": self.detail, "body": "", "errors": self.errors}
        return web.json_response(body, status=self.status)


@dataclass
class Checkpoint:
    """One checkpoint file as the web UI's ``CheckpointInfo`` describes it."""

    name: str  # the file name relative to models/Stable-diffusion, e.g. "sd15.safetensors"
    hashed: bool

    @property
    def model_name(self) -> str:
        return _strip_ext(self.name.replace("/", "_").replace("\\", "_"))

    @property
    def name_for_extra(self) -> str:
        return _strip_ext(self.name.rsplit("/", 1)[-1])

    @property
    def full_sha256(self) -> str:
        return hashlib.sha256(f"a1111-fake:{self.name}".encode()).hexdigest()

    @property
    def sha256(self) -> str | None:
        return self.full_sha256 if self.hashed else None

    @property
    def shorthash(self) -> str | None:
        return self.full_sha256[:10] if self.hashed else None

    @property
    def legacy_hash(self) -> str:
        return hashlib.sha256(f"legacy:{self.name}".encode()).hexdigest()[:8]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.hashed else self.name

    @property
    def filename(self) -> str:
        return f"/models/Stable-diffusion/{self.name}"

    def aliases(self) -> list[str]:
        ids = [self.legacy_hash, self.model_name, self.title, self.name, self.name_for_extra]
        ids.append(f"{self.name} [{self.legacy_hash}]")
        if self.hashed:
            short, sha = self.full_sha256[:10], self.full_sha256
            ids += [short, sha, f"{self.name} [{short}]", f"{self.name_for_extra} [{short}]"]
        return ids


@dataclass
class _Job:
    """The job running now (the web UI's ``shared.state`` while it runs)."""

    kind: str
    task_id: str
    job_count: int
    sampling_steps: int
    started: float
    timestamp: str
    job_no: int = 0
    sampling_step: int = 0
    colour: tuple[int, int, int] = (0, 0, 0)
    skipped: bool = False
    interrupted: bool = False


@dataclass
class _State:
    """What ``/progress`` reports about the last job once none runs."""

    skipped: bool = False
    interrupted: bool = False
    timestamp: str = "0"
    extra: Json = field(default_factory=dict)


def _strip_ext(name: str) -> str:
    head, dot, ext = name.rpartition(".")
    return head if dot and head and "/" not in ext else name


def _png(image: Image.Image, text: str | None = None) -> str:
    buf = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def _colour(*parts: object) -> tuple[int, int, int]:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return digest[0], digest[1], digest[2]


def _decode_image(encoded: Any) -> Image.Image:
    """An image from base64 (optionally a ``data:image/...;base64,`` URL), as the web UI's
    ``decode_base64_to_image``; 500 "Invalid encoded image" otherwise."""
    if not isinstance(encoded, str):
        raise _ApiError.http(500, "Invalid encoded image")
    if encoded.startswith("data:image/"):
        encoded = encoded.split(";", 1)[1].split(",", 1)[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise _ApiError.http(500, "Invalid encoded image") from exc
    return image


def _int(body: Json, key: str, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _invalid(key, "value is not a valid integer")
    try:
        return int(value)
    except ValueError:
        raise _invalid(key, "value is not a valid integer") from None


def _float(body: Json, key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _invalid(key, "value is not a valid float")
    try:
        return float(value)
    except ValueError:
        raise _invalid(key, "value is not a valid float") from None


def _invalid(key: str, msg: str) -> web.HTTPUnprocessableEntity:
    detail = [{"loc": ["body", key], "msg": msg, "type": "type_error"}]
    return web.HTTPUnprocessableEntity(
        text=json.dumps({"detail": detail}), content_type="application/json"
    )


class A1111Fake(LoopbackServer):
    """The web UI's API on one loopback origin. See the module docstring."""

    def __init__(
        self,
        *,
        flavour: str = "a1111",
        checkpoints: Iterable[str] | None = None,
        hashed: Iterable[str] | None = None,
        loaded: str | None = None,
        samplers: Iterable[str] | None = None,
        schedulers: Iterable[str] | None = None,
        loras: Iterable[str] | None = None,
        vaes: Iterable[str] | None = None,
        upscalers: Iterable[str] | None = None,
        time_per_image_s: float = 0.05,
        switch_time_s: float = 0.0,
        steps_per_image: int = 5,
        live_previews: bool = True,
        auth: tuple[str, str] | None = None,
        oom_above_pixels: int | None = None,
        die_after_s: float | None = None,
        options: Json | None = None,
        shutdown_timeout: float = 1.0,
        latency_s: float = 0.0,
    ) -> None:
        super().__init__(shutdown_timeout=shutdown_timeout, latency_s=latency_s)
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        self.flavour = flavour
        # The files on disk; /sd-models shows them as of the last refresh-checkpoints.
        self.checkpoints: list[str] = list(checkpoints or DEFAULT_CHECKPOINTS)
        self.hashed: set[str] = set(self.checkpoints if hashed is None else hashed)
        self.loaded: str = loaded or self.checkpoints[0]
        self.hashed.add(self.loaded)  # it was loaded at start, so it is hashed
        self.samplers: list[str] = list(samplers or DEFAULT_SAMPLERS)
        wanted = set(schedulers) if schedulers is not None else None
        self.schedulers = [s for s in DEFAULT_SCHEDULERS if wanted is None or s[0] in wanted]
        if not self.schedulers or self.schedulers[0][0] != "automatic":
            self.schedulers.insert(0, DEFAULT_SCHEDULERS[0])
        self.loras: list[str] = list(DEFAULT_LORAS if loras is None else loras)
        self.vaes: list[str] = list(DEFAULT_VAES if vaes is None else vaes)
        self.upscalers: list[str] = list(DEFAULT_UPSCALERS if upscalers is None else upscalers)
        self.time_per_image_s = time_per_image_s
        self.switch_time_s = switch_time_s
        self.steps_per_image = max(1, steps_per_image)
        self.live_previews = live_previews
        self.auth = auth
        self.oom_above_pixels = oom_above_pixels
        # what tests read
        self.rendered: list[Json] = []
        self.switches = 0
        self.interrupts = 0
        self.skips = 0
        self.ooms = 0
        self.refreshes: dict[str, int] = {"checkpoints": 0, "vae": 0, "loras": 0}
        self.max_concurrent = 0  # jobs rendering at the same moment (the lock keeps it 1)
        self.max_in_flight = 0  # generate requests open at the same moment (waiting or not)
        self.in_flight = 0
        self.dead = False
        self.deaths = 0
        # internals
        self._listed: list[str] = list(self.checkpoints)
        self._listed_vaes: list[str] = list(self.vaes)
        self._listed_loras: list[str] = list(self.loras)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()  # interrupt, skip or shutdown wakes the render loop
        self._job: _Job | None = None
        self._rendering = 0
        self._state = _State()
        self._random = random.Random(1111)
        self._tasks: dict[asyncio.Task[Any], web.Request] = {}
        self._port = 0
        self._death: asyncio.Task[None] | None = None
        self._die_after_s = die_after_s
        self.options: Json = self._default_options()
        self.options.update(options or {})

    # --- the public knobs that act at once -------------------------------------------------

    @property
    def port(self) -> int:
        """The port this instance serves on (the same after :meth:`revive`)."""
        return self._port

    @property
    def die_after_s(self) -> float | None:
        return self._die_after_s

    @die_after_s.setter
    def die_after_s(self, seconds: float | None) -> None:
        """Setting it while serving schedules :meth:`die` ``seconds`` from now."""
        self._die_after_s = seconds
        if self._runners:
            self._schedule_death()

    def checkpoint(self, name: str) -> Checkpoint:
        """The :class:`Checkpoint` of a file name (hashed or not as now)."""
        return Checkpoint(name, name in self.hashed)

    def listed(self) -> list[Checkpoint]:
        """The checkpoints ``/sd-models`` lists now (as of the last refresh)."""
        return [self.checkpoint(n) for n in self._listed]

    def resolve(self, value: Any) -> str | None:
        """The listed checkpoint a string names through ``checkpoint_aliases``, or None."""
        if not isinstance(value, str) or not value:
            return None
        for ckpt in self.listed():
            if value in ckpt.aliases():
                return ckpt.name
        return None

    @property
    def running(self) -> bool:
        return self._job is not None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        await super().start(host, port or self._port)
        self._port = int(self.base_url.rsplit(":", 1)[1])
        self.dead = False
        self._wake = asyncio.Event()
        self._schedule_death()
        return self

    async def stop(self) -> None:
        if self._death is not None and self._death is not asyncio.current_task():
            self._death.cancel()
        self._death = None
        self._closing.set()
        self._wake.set()
        current = asyncio.current_task()
        for task, request in list(self._tasks.items()):
            if task is current:
                continue
            if request.transport is not None:
                request.transport.abort()
            task.cancel()
        await super().stop()
        self._job = None
        self._rendering = 0
        self.in_flight = 0

    async def die(self) -> None:
        """Stop answering: requests in flight lose their connection, new connections are
        refused, until :meth:`revive`."""
        if self.dead:
            return
        self.dead = True
        self.deaths += 1
        await self.stop()
        self.dead = True

    async def revive(self) -> None:
        """Serve again on the same port, with the same state (a restarted web UI would lose
        nothing a test looks at)."""
        if not self.dead:
            return
        self._die_after_s = None
        await self.start(port=self._port)

    def _schedule_death(self) -> None:
        if self._death is not None:
            self._death.cancel()
            self._death = None
        if self._die_after_s is not None:
            self._death = asyncio.get_running_loop().create_task(self._die_later(self._die_after_s))

    async def _die_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.die()

    # --- the app ----------------------------------------------------------------------------

    def key_of(self, request: web.Request) -> str | None:
        found = self._basic(request)
        return found[0] if found else None

    def origins(self) -> dict[str, web.Application]:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._known_paths: set[str] = set()
        routes: list[tuple[str, str, Handler, bool]] = [
            ("POST", "txt2img", self._txt2img, True),
            ("POST", "img2img", self._img2img, True),
            ("POST", "extra-single-image", self._extra_single, True),
            ("GET", "progress", self._progress, True),
            ("POST", "interrupt", self._interrupt, True),
            ("POST", "skip", self._skip, True),
            ("GET", "options", self._get_options, True),
            ("POST", "options", self._set_options, True),
            ("GET", "cmd-flags", self._cmd_flags, True),
            ("GET", "samplers", self._samplers, True),
            ("GET", "upscalers", self._upscalers, True),
            ("GET", "latent-upscale-modes", self._latent_modes, True),
            ("GET", "sd-models", self._sd_models, True),
            ("GET", "sd-vae", self._sd_vae, True),
            ("GET", "embeddings", self._embeddings, True),
            ("GET", "memory", self._memory, True),
            ("GET", "scripts", self._scripts, True),
            ("POST", "refresh-checkpoints", self._refresh_checkpoints, True),
            ("POST", "unload-checkpoint", self._empty, True),
            ("POST", "reload-checkpoint", self._empty, True),
            ("GET", "loras", self._loras, False),
            ("POST", "refresh-loras", self._refresh_loras, False),
        ]
        if self.flavour == "sdnext":
            routes.append(("POST", "refresh-vaes", self._refresh_vae, True))
            routes.append(("GET", "version", self._version, True))
        else:
            routes.append(("POST", "refresh-vae", self._refresh_vae, True))
            routes.append(("GET", "schedulers", self._schedulers, True))
        for method, name, handler, guarded in routes:
            path = f"{PREFIX}/{name}"
            self._known_paths.add(path)
            app.router.add_route(method, path, self._wrap(handler, guarded), name=name)
        app.router.add_route("*", "/{tail:.*}", self._not_found, name="unknown")
        return {"api": app}

    def _wrap(self, handler: Handler, guarded: bool) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._tasks[task] = request
            try:
                if guarded and self.auth is not None:
                    self._check_auth(request)
                return await handler(request)
            except _ApiError as exc:
                return exc.response()
            except _Dropped:
                self._drop(request)
                raise  # not reached: _drop raises
            finally:
                self._tasks.pop(task, None)

        return serve

    @staticmethod
    def _basic(request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            user, sep, password = base64.b64decode(value.strip()).decode("latin-1").partition(":")
        except (binascii.Error, ValueError):
            return None
        return (user, password) if sep else None

    def _check_auth(self, request: web.Request) -> None:
        assert self.auth is not None
        found = self._basic(request)
        if found is None:
            raise _ApiError.http(401, "Not authenticated")
        user, password = found
        if user != self.auth[0] or not secrets.compare_digest(password, self.auth[1]):
            raise _ApiError.http(401, "Incorrect username or password")

    async def _not_found(self, request: web.Request) -> web.Response:
        if request.path in self._known_paths:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)
        return web.json_response({"detail": "Not Found"}, status=404)

    async def _body(self, request: web.Request) -> Json:
        raw = self.record(request).raw
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            detail = [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"detail": detail}), content_type="application/json"
            )
        return body

    # --- options ----------------------------------------------------------------------------

    def _default_options(self) -> Json:
        ckpt = self.checkpoint(self.loaded)
        options: Json = {
            "samples_save": True,
            "samples_format": "png",
            "save_images_add_number": True,
            "grid_save": True,
            "return_grid": True,
            "enable_pnginfo": True,
            "jpeg_quality": 80,
            "outdir_samples": "",
            "outdir_txt2img_samples": "outputs/txt2img-images",
            "outdir_img2img_samples": "outputs/img2img-images",
            "sd_model_checkpoint": ckpt.title,
            "sd_checkpoint_hash": ckpt.sha256,
            "sd_checkpoints_limit": 1,
            "sd_checkpoints_keep_in_cpu": True,
            "sd_vae": "Automatic",
            "sd_vae_overrides_per_model_preferences": True,
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "live_previews_enable": self.live_previews,
            "show_progress_every_n_steps": 10,
            "show_progress_type": "Approx NN",
            "hide_samplers": [],
            "upscaler_for_img2img": None,
            "face_restoration": False,
            "api_enable_requests": True,
            "api_forbid_local_requests": True,
        }
        if self.flavour == "forge":
            options.update(
                forge_preset="sd",
                forge_additional_modules=[],
                forge_unet_storage_dtype="Automatic",
                forge_inference_memory=1024,
            )
        elif self.flavour == "sdnext":
            options.update(sd_backend="diffusers", sd_model_refiner="None")
        return options

    async def _get_options(self, request: web.Request) -> web.Response:
        return web.json_response(self.options)

    async def _set_options(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        wanted = body.get("sd_model_checkpoint")
        target = None
        if wanted is not None:
            target = self.resolve(wanted)
            if target is None:
                raise _ApiError(500, "RuntimeError", f"model {wanted!r} not found")
        self.options.update(body)  # the value is set first, then the load waits for the lock
        if target is not None:
            async with self._lock:
                await self._load(target)
        return web.json_response(None)

    async def _load(self, name: str) -> None:
        """Put ``name`` in memory (under the lock): the switch time, then it is hashed."""
        if name != self.loaded:
            await self._pause(self.switch_time_s, wake=False)
            self.loaded = name
            self.switches += 1
        self.hashed.add(name)
        self.options["sd_checkpoint_hash"] = self.checkpoint(name).sha256

    # --- generating -------------------------------------------------------------------------

    async def _txt2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "txt2img")

    async def _img2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "img2img")

    def _sampler_and_scheduler(self, sampler: Any, scheduler: Any) -> tuple[str, str]:
        """``get_sampler_and_scheduler``: split "X Karras", fall back to samplers[0]."""
        by_key = {}
        for entry in self.schedulers:
            for key in (entry[0], entry[1]):
                by_key[key] = entry
        found = by_key.get(scheduler, self.schedulers[0]) if isinstance(scheduler, str) else None
        found = found or self.schedulers[0]
        name = sampler if isinstance(sampler, str) and sampler else self.samplers[0]
        for entry in self.schedulers:
            options = [entry[1], entry[0], *(entry[2] or [])]
            hit = next((o for o in options if name.endswith(" " + o)), None)
            if hit is not None:
                found, name = entry, name[: -(len(hit) + 1)]
                break
        chosen = name if name in self.samplers else self.samplers[0]
        default = SAMPLER_INFO.get(chosen, ([], {}))[1].get("scheduler")
        if default == found[0]:
            found = self.schedulers[0]
        return chosen, found[1]

    def _override_target(self, override: Json) -> str | None:
        """The checkpoint a job loads: its override if known (not on Forge), else the one the
        ``sd_model_checkpoint`` option names (None: keep what is loaded)."""
        if self.flavour != "forge":
            known = self.resolve(override.get("sd_model_checkpoint"))
            if known is not None:
                return known
        override.pop("sd_model_checkpoint", None)
        return self.resolve(self.options.get("sd_model_checkpoint"))

    async def _generate(self, request: web.Request, kind: str) -> web.Response:
        body = await self._body(request)
        override = body.get("override_settings") or {}
        if not isinstance(override, dict):
            raise _invalid("override_settings", "value is not a valid dict")
        override = dict(override)
        restore = body.get("override_settings_restore_afterwards", True) is not False
        sampler, scheduler = self._sampler_and_scheduler(
            body.get("sampler_name") or body.get("sampler_index") or "Euler",
            body.get("scheduler"),
        )
        init: list[Image.Image] = []
        if kind == "img2img":
            if body.get("init_images") is None:
                raise _ApiError.http(404, "Init image not found")
            if body.get("mask"):
                _decode_image(body["mask"])
        width, height = _int(body, "width", 512), _int(body, "height", 512)
        n_iter = max(1, _int(body, "n_iter", 1))
        batch = max(1, _int(body, "batch_size", 1))
        steps = max(1, _int(body, "steps", 50))
        hr = kind == "txt2img" and bool(body.get("enable_hr"))
        out_w, out_h = width, height
        if hr:
            scale = _float(body, "hr_scale", 2.0)
            rx, ry = _int(body, "hr_resize_x", 0), _int(body, "hr_resize_y", 0)
            out_w, out_h = (rx or int(width * scale)), (ry or int(height * scale))
        seed = _int(body, "seed", -1)
        if seed == -1:
            seed = self._random.randrange(4294967294)
        task_id = body.get("force_task_id") or "task({})".format(
            "".join(self._random.choices(string.ascii_lowercase + string.digits, k=15))
        )

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with self._lock:
                if kind == "img2img":
                    init = [_decode_image(x) for x in body["init_images"]]
                stored = {k: self.options[k] for k in override if k in self.options}
                target = self._override_target(override)
                job = _Job(
                    kind=kind,
                    task_id=str(task_id),
                    job_count=n_iter,
                    sampling_steps=steps,
                    started=time.monotonic(),
                    timestamp=time.strftime("%Y%m%d%H%M%S"),
                )
                self._job, self._state = job, _State(timestamp=job.timestamp)
                if not self._closing.is_set():
                    self._wake.clear()  # an interrupt of an earlier job does not reach this one
                self._rendering += 1
                self.max_concurrent = max(self.max_concurrent, self._rendering)
                try:
                    if target is not None:
                        await self._load(target)
                    self.options.update(override)
                    if self.oom_above_pixels is not None and out_w * out_h > self.oom_above_pixels:
                        self.ooms += 1
                        raise _ApiError(500, "OutOfMemoryError", OOM_TEXT)
                    return await self._render(
                        body, job, kind, init, sampler, scheduler, seed, width, height,
                        out_w, out_h, batch, n_iter, steps, hr, override,
                    )  # fmt: skip
                finally:
                    self._rendering -= 1
                    self._state = _State(job.skipped, job.interrupted, job.timestamp)
                    self._job = None
                    if restore:
                        self.options.update(stored)
        finally:
            self.in_flight -= 1

    async def _render(
        self,
        body: Json,
        job: _Job,
        kind: str,
        init: list[Image.Image],
        sampler: str,
        scheduler: str,
        seed: int,
        width: int,
        height: int,
        out_w: int,
        out_h: int,
        batch: int,
        n_iter: int,
        steps: int,
        hr: bool,
        override: Json,
    ) -> web.Response:
        ckpt = self.checkpoint(self.loaded)
        vae = self.options.get("sd_vae") or "Automatic"
        prompt = str(body.get("prompt") or "")
        negative = str(body.get("negative_prompt") or "")
        cfg = _float(body, "cfg_scale", 7.0)
        denoise = _float(body, "denoising_strength", 0.75) if kind == "img2img" else None
        vae_name = None if vae in ("Automatic", "None", None) else _strip_ext(str(vae))
        params: Json = {
            "Steps": steps,
            "Sampler": sampler,
            "Schedule type": None if scheduler == "Automatic" else scheduler,
            "CFG scale": cfg,
            "Seed": None,
            "Size": f"{width}x{height}",
            "Model hash": ckpt.shorthash,
            "Model": ckpt.model_name,
            "VAE": vae_name,
            "Denoising strength": denoise,
            "Hires upscale": _float(body, "hr_scale", 2.0) if hr else None,
            "Hires upscaler": (body.get("hr_upscaler") or "Latent") if hr else None,
            "Version": VERSION,
        }
        pictures: list[Image.Image] = []
        infotexts: list[str] = []
        seeds: list[int] = []
        ticks = self.steps_per_image
        pause = self.time_per_image_s * batch / ticks
        for it in range(n_iter):
            if job.interrupted:
                break
            job.skipped = False
            job.job_no, job.sampling_step = it, 0
            job.colour = _colour(seed + it * batch, kind)
            for tick in range(1, ticks + 1):
                await self._pause(pause)
                job.sampling_step = round(steps * tick / ticks)
                if job.interrupted or job.skipped:
                    break
            for b in range(batch):
                index = it * batch + b
                s = seed + index
                picture = Image.new("RGB", (out_w, out_h), _colour(s, index, kind))
                if init:
                    source = init[index % len(init)].convert("RGB").resize((out_w, out_h))
                    picture = Image.blend(source, picture, max(0.0, min(1.0, denoise or 0.0)))
                text = self._infotext(prompt, negative, {**params, "Seed": s})
                pictures.append(picture)
                infotexts.append(text)
                seeds.append(s)
        first = 0
        if body.get("save_images") and len(pictures) > 1 and self.options.get("return_grid"):
            pictures.insert(0, _grid(pictures))
            infotexts.insert(0, infotexts[0])
            first = 1
        self.rendered.append(
            {
                "kind": kind,
                "checkpoint": ckpt.name,
                "checkpoint_title": ckpt.title,
                "vae": vae,
                "sampler": sampler,
                "scheduler": scheduler,
                "prompt": prompt,
                "negative_prompt": negative,
                "width": out_w,
                "height": out_h,
                "n": len(seeds),
                "batch_size": batch,
                "n_iter": n_iter,
                "steps": steps,
                "seed": seed,
                "hr": hr,
                "override": dict(override),
                "task_id": job.task_id,
                "interrupted": job.interrupted,
            }
        )
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * len(seeds),
            "negative_prompt": negative,
            "all_negative_prompts": [negative] * len(seeds),
            "seed": seed,
            "all_seeds": seeds,
            "subseed": seed,
            "all_subseeds": seeds,
            "subseed_strength": 0,
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "cfg_scale": cfg,
            "steps": steps,
            "batch_size": batch,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": ckpt.model_name,
            "sd_model_hash": ckpt.shorthash,
            "sd_vae_name": vae_name,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": denoise,
            "extra_generation_params": {"Schedule type": scheduler}
            if scheduler != "Automatic"
            else {},
            "index_of_first_image": first,
            "infotexts": infotexts,
            "styles": list(body.get("styles") or []),
            "job_timestamp": job.timestamp,
            "clip_skip": self.options.get("CLIP_stop_at_last_layers", 1),
            "is_using_inpainting_conditioning": False,
            "version": VERSION,
        }
        parameters = dict(body)
        if kind == "img2img" and not body.get("include_init_images"):
            parameters["init_images"] = None
            parameters["mask"] = None
        send = body.get("send_images", True) is not False
        images = [_png(p, infotexts[i]) for i, p in enumerate(pictures)] if send else []
        return web.json_response(
            {"images": images, "parameters": parameters, "info": json.dumps(info)}
        )

    @staticmethod
    def _infotext(prompt: str, negative: str, params: Json) -> str:
        tail = ", ".join(f"{k}: {v}" for k, v in params.items() if v is not None)
        neg = f"\nNegative prompt: {negative}" if negative else ""
        return f"{prompt}{neg}\n{tail}".strip()

    async def _pause(self, seconds: float, *, wake: bool = True) -> None:
        """Sleep ``seconds``; an interrupt or skip ends it early (``wake``); shutdown drops."""
        if seconds > 0:
            if wake:
                await wait_for_event(self._wake, seconds)
                if not self._closing.is_set():
                    self._wake.clear()
            else:
                await self.sleep(seconds)
        if self._closing.is_set():
            raise _Dropped

    # --- progress, interrupt, skip -----------------------------------------------------------

    async def _progress(self, request: web.Request) -> web.Response:
        skip = request.query.get("skip_current_image", "false").lower() in ("true", "1", "yes")
        job = self._job
        state = {
            "skipped": self._state.skipped,
            "interrupted": self._state.interrupted,
            "stopping_generation": False,
            "job": "",
            "job_count": 0,
            "job_timestamp": self._state.timestamp,
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
        if job is None:
            body = {"progress": 0, "eta_relative": 0, "state": state, "current_image": None}
            return web.json_response({**body, "textinfo": None, "current_task": None})
        state.update(
            skipped=job.skipped,
            interrupted=job.interrupted,
            job=f"scripts_{job.kind}",
            job_count=job.job_count,
            job_no=job.job_no,
            sampling_step=job.sampling_step,
            sampling_steps=job.sampling_steps,
        )
        progress = 0.01 + job.job_no / job.job_count
        progress += job.sampling_step / job.sampling_steps / job.job_count
        since = time.monotonic() - job.started
        eta = since / progress - since
        image = None
        if self.live_previews and not skip:
            image = _png(Image.new("RGB", (64, 64), job.colour))
        return web.json_response(
            {
                "progress": min(progress, 1.0),
                "eta_relative": eta,
                "state": state,
                "current_image": image,
                "textinfo": None,
                "current_task": job.task_id,
            }
        )

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        if self._job is not None:
            self._job.interrupted = True
            self._wake.set()
        else:
            self._state.interrupted = True
        return web.json_response({})

    async def _skip(self, request: web.Request) -> web.Response:
        self.skips += 1
        if self._job is not None:
            self._job.skipped = True
            self._wake.set()
        return web.json_response(None)

    # --- lists ------------------------------------------------------------------------------

    async def _sd_models(self, request: web.Request) -> web.Response:
        key = "name" if self.flavour == "sdnext" else "model_name"
        items = []
        for c in self.listed():
            item = {"title": c.title, key: c.model_name, "hash": c.shorthash, "sha256": c.sha256}
            item.update(filename=c.filename, config=None)
            if self.flavour == "sdnext":
                item["type"] = "safetensors"
            items.append(item)
        return web.json_response(items)

    async def _sd_vae(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"model_name": v, "filename": f"/models/VAE/{v}"} for v in self._listed_vaes]
        )

    async def _samplers(self, request: web.Request) -> web.Response:
        items = []
        for name in self.samplers:
            aliases, options = SAMPLER_INFO.get(name, ([], {}))
            items.append({"name": name, "aliases": aliases, "options": options})
        return web.json_response(items)

    async def _schedulers(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": n, "label": lb, "aliases": al, "default_rho": rho, "need_inner_model": ni}
                for n, lb, al, rho, ni in self.schedulers
            ]
        )

    async def _upscalers(self, request: web.Request) -> web.Response:
        items = []
        for name in self.upscalers:
            scale = 4 if "4x" in name else 1 if name == "None" else 4
            path = f"/models/RealESRGAN/{name}.pth" if "ESRGAN" in name else None
            model = None if name in ("None", "Lanczos", "Nearest") else name
            items.append(
                {"name": name, "model_name": model, "model_path": path, "model_url": None,
                 "scale": scale}
            )  # fmt: skip
        return web.json_response(items)

    async def _latent_modes(self, request: web.Request) -> web.Response:
        modes = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (nearest)"]
        return web.json_response([{"name": m} for m in modes])

    async def _loras(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": n, "alias": n, "path": f"/models/Lora/{n}.safetensors", "metadata": {}}
                for n in self._listed_loras
            ]
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response({"loaded": {}, "skipped": {}})

    async def _memory(self, request: web.Request) -> web.Response:
        gib = 1024**3
        return web.json_response(
            {
                "ram": {"free": 20 * gib, "used": 12 * gib, "total": 32 * gib},
                "cuda": {
                    "system": {"free": 3 * gib, "used": 5 * gib, "total": 8 * gib},
                    "active": {"current": 4 * gib, "peak": 6 * gib},
                    "allocated": {"current": 4 * gib, "peak": 6 * gib},
                    "reserved": {"current": 5 * gib, "peak": 7 * gib},
                    "inactive": {"current": 0, "peak": gib},
                    "events": {"retries": 0, "oom": self.ooms},
                },
            }
        )

    async def _cmd_flags(self, request: web.Request) -> web.Response:
        auth = f"{self.auth[0]}:{self.auth[1]}" if self.auth else None
        return web.json_response(
            {"api": True, "api_auth": auth, "listen": False, "port": self._port,
             "nowebui": False, "lowvram": False, "medvram": False, "xformers": True,
             "api_log": False, "api_server_stop": False, "timeout_keep_alive": 30}
        )  # fmt: skip

    async def _scripts(self, request: web.Request) -> web.Response:
        return web.json_response({"txt2img": ["extra options"], "img2img": ["extra options"]})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"app": "sd.next", "updated": "2026-01-01", "hash": "0123abcd",
             "url": "https://github.com/vladmandic/sdnext/tree/master", "branch": "master"}
        )  # fmt: skip

    async def _empty(self, request: web.Request) -> web.Response:
        return web.json_response({})

    # --- refreshes ----------------------------------------------------------------------------

    async def _refresh_checkpoints(self, request: web.Request) -> web.Response:
        async with self._lock:
            self.refreshes["checkpoints"] += 1
            self._listed = list(self.checkpoints)
        return web.json_response(None)

    async def _refresh_vae(self, request: web.Request) -> web.Response:
        async with self._lock:
            self.refreshes["vae"] += 1
            self._listed_vaes = list(self.vaes)
        return web.json_response(None)

    async def _refresh_loras(self, request: web.Request) -> web.Response:
        self.refreshes["loras"] += 1
        self._listed_loras = list(self.loras)
        return web.json_response(None)

    # --- extras -------------------------------------------------------------------------------

    async def _extra_single(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        image = _decode_image(body.get("image", ""))
        name = body.get("upscaler_1") or "None"
        if name != "None" and name not in self.upscalers:
            raise _ApiError(500, "AssertionError", f"could not find upscaler named {name}")
        async with self._lock:
            if name == "None":
                out = image.convert("RGB")
                info = ""
            else:
                if _int(body, "resize_mode", 0) == 1:
                    size = (
                        _int(body, "upscaling_resize_w", 512),
                        _int(body, "upscaling_resize_h", 512),
                    )
                else:
                    factor = _float(body, "upscaling_resize", 2.0)
                    size = (int(image.width * factor), int(image.height * factor))
                out = image.convert("RGB").resize(size)
                await self._pause(self.time_per_image_s, wake=False)
                info = (
                    f"<p>Postprocess upscaler: {name}, Postprocess upscale to: {size[0]}x{size[1]}"
                )
                info += "</p>"
        return web.json_response({"html_info": info, "image": _png(out)})


def _grid(pictures: list[Image.Image]) -> Image.Image:
    rows = max(1, round(math.sqrt(len(pictures))))
    cols = math.ceil(len(pictures) / rows)
    w, h = pictures[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, p in enumerate(pictures):
        grid.paste(p, ((i % cols) * w, (i // cols) * h))
    return grid


__all__ = ["DEFAULT_CHECKPOINTS", "DEFAULT_SAMPLERS", "A1111Fake", "Checkpoint"]
