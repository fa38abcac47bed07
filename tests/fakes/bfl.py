"""A loopback fake of the Black Forest Labs FLUX API (api.bfl.ai), for the BFL provider.

It speaks the wire format of the real service (see shared/api/providers.md and the BFL API
reference): ``POST /v1/{model}`` with the key in ``x-key`` answers ``{"id", "polling_url"}``;
``GET <polling_url>`` answers ``{"id", "status", "result", "progress", "details"}`` with the
documented statuses (``Pending``, ``Ready``, ``Request Moderated``, ``Content Moderated``,
``Error``, ``Task not found``); ``result.sample`` is a signed URL on a separate delivery
origin that stops working (HTTP 403) ``result_ttl_s`` after the picture is ready.

Three origins, as with the real service: the API (``base_url``, ending in ``/v1``), a
"regional" API host the polling URLs point at (another port serving the same API, like
``api.us1.bfl.ai`` behind the global ``api.bfl.ai``), and the delivery host for results.

Usage::

    async with FakeBfl(keys={"k1", "k2"}, max_active_per_key=2) as fake:
        config = BflConfig(base_url=fake.base_url, keys=[...])
        ...
        fake.submits, fake.calls, fake.max_running_per_key

Failure switches: :meth:`fail_next` (any status and body, on submit, poll or result),
:meth:`next_outcome` (the next task ends ``Request Moderated``, ``Content Moderated``,
``Error`` or ``Task not found``), :attr:`no_credits` (keys answered with 402), and
:meth:`forget` (a task vanishes); latency and dropped connections through ``fake.faults``.
Server, call records (``calls``) and the fault queue are the shared scaffold's
(tests/fakes/scaffold.py).

Deliberate deviations from the real service (small, and written down so tests are not misled):

* Request bodies are validated with ``extra="forbid"``: a field a model does not document is
  a 422 here, so tests catch the provider sending one. The real API may ignore it.
* Missing ``x-key`` is 401 and an unknown key 403 (``{"detail": ...}``, fake wording).
* Polling another key's task answers ``Task not found`` (what the real API does there is
  not documented).
* ``progress`` while Pending is a fraction 0..1.
* ``cost`` per task (4 credits, ultra 6, kontext-max 8, flux-2-max 7) and the starting
  balance (1000) are fake prices; ``input_mp``/``output_mp`` are rough.
* FLUX.2 sides are capped at 2048 here (the docs give a 4 MP total).
* Ratio models (ultra, Kontext) return about 1 MP (ultra really makes about 4 MP); pictures are
  flat colours derived from the seed. The 429 and 403 texts are fake wording.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import math
import random
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.scaffold import CallLog, LoopbackServer, Recorded

Json = dict[str, Any]

MIN_SIDE, MAX_SIDE, MULTIPLE = 256, 1440, 32
OUTCOMES = ("Ready", "Request Moderated", "Content Moderated", "Error", "Task not found")

# Field specs: (kind, constraints). kinds: str, int, num, bool, enum, image, ratio, url
_COMMON: dict[str, tuple[str, dict[str, Any]]] = {
    "prompt": ("str", {"nullable": True}),
    "seed": ("int", {"nullable": True}),
    "safety_tolerance": ("int", {"ge": 0, "le": 6}),
    # jpeg | png | webp (shared/api/providers.md, "Black Forest Labs FLUX API", Models)
    "output_format": ("enum", {"values": ("jpeg", "png", "webp"), "nullable": True}),
    "prompt_upsampling": ("bool", {}),
    "webhook_url": ("str", {"nullable": True}),
    "webhook_secret": ("str", {"nullable": True}),
}
_SIZE = {
    "width": ("int", {"ge": MIN_SIDE, "le": MAX_SIDE, "multiple_of": MULTIPLE}),
    "height": ("int", {"ge": MIN_SIDE, "le": MAX_SIDE, "multiple_of": MULTIPLE}),
}
SCHEMAS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "flux-pro-1.1": {**_COMMON, **_SIZE, "image_prompt": ("image", {"nullable": True})},
    "flux-dev": {
        **_COMMON,
        **_SIZE,
        "image_prompt": ("image", {"nullable": True}),
        "steps": ("int", {"ge": 1, "le": 50, "nullable": True}),
        "guidance": ("num", {"ge": 1.5, "le": 5, "nullable": True}),
    },
    "flux-pro-1.1-ultra": {
        **_COMMON,
        "aspect_ratio": ("ratio", {}),
        "raw": ("bool", {}),
        "image_prompt": ("image", {"nullable": True}),
        "image_prompt_strength": ("num", {"ge": 0, "le": 1}),
    },
    "flux-kontext-pro": {
        **_COMMON,
        "prompt": ("str", {"required": True}),
        "input_image": ("image", {"nullable": True}),
        **{f"input_image_{i}": ("image", {"nullable": True}) for i in range(2, 5)},
        "aspect_ratio": ("ratio", {"nullable": True}),
    },
}
SCHEMAS["flux-kontext-max"] = SCHEMAS["flux-kontext-pro"]


def _flux2(inputs: int, *, flex: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """FLUX.2 (providers.md, "Black Forest Labs FLUX API", Models: FLUX.2): width/height
    (min 64, multiples of 16), input_image..input_image_N, safety_tolerance 0..5;
    prompt_upsampling only on flex; steps and guidance only on flex."""
    schema = {k: v for k, v in _COMMON.items() if k != "prompt_upsampling"}
    schema["safety_tolerance"] = ("int", {"ge": 0, "le": 5})
    schema["prompt"] = ("str", {"required": True})
    schema["width"] = ("int", {"ge": 64, "le": 2048, "multiple_of": 16, "nullable": True})
    schema["height"] = ("int", {"ge": 64, "le": 2048, "multiple_of": 16, "nullable": True})
    schema["input_image"] = ("image", {"nullable": True})
    for i in range(2, inputs + 1):
        schema[f"input_image_{i}"] = ("image", {"nullable": True})
    if flex:
        schema["prompt_upsampling"] = ("bool", {})
        schema["steps"] = ("int", {"ge": 1, "le": 50, "nullable": True})
        schema["guidance"] = ("num", {"ge": 1.5, "le": 10, "nullable": True})
    return schema


SCHEMAS["flux-2-pro"] = _flux2(8)
SCHEMAS["flux-2-max"] = _flux2(8)
SCHEMAS["flux-2-flex"] = _flux2(8, flex=True)
SCHEMAS["flux-2-klein-4b"] = _flux2(4)
SCHEMAS["flux-2-klein-9b"] = _flux2(4)
_EDIT = {k: v for k, v in _COMMON.items() if k != "prompt_upsampling"}
_EDIT_STEPS = {
    "image": ("image", {"required": True}),
    "steps": ("int", {"ge": 15, "le": 50, "nullable": True}),
    "guidance": ("num", {"ge": 1.5, "le": 100, "nullable": True}),
}
# providers.md, "Black Forest Labs FLUX API", Models: fill (image + mask) and expand (image;
# top/bottom/left/right 0..2048 px).
SCHEMAS["flux-pro-1.0-fill"] = {**_EDIT, **_EDIT_STEPS, "mask": ("image", {"nullable": True})}
SCHEMAS["flux-pro-1.0-expand"] = {
    **_EDIT,
    **_EDIT_STEPS,
    **{side: ("int", {"ge": 0, "le": 2048}) for side in ("top", "bottom", "left", "right")},
}
# What a task costs in credits (the submit answer's ``cost``; fake prices).
COSTS = {"flux-pro-1.1-ultra": 6.0, "flux-kontext-max": 8.0, "flux-2-max": 7.0}
DEFAULT_FORMAT = {
    "flux-kontext-pro": "png",
    "flux-kontext-max": "png",
}  # the others default to jpeg


def _reply(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _err(kind: str, field_name: str, msg: str, value: Any, **ctx: Any) -> Json:
    item: Json = {"type": kind, "loc": ["body", field_name], "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _decode_image(value: str) -> bytes | None:
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    magic = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8")
    return data if data.startswith(magic) else None


def validate(model: str, body: Any) -> tuple[list[Json], Json]:
    """FastAPI-style validation errors for ``body`` on ``model``, and decoded images."""
    schema = SCHEMAS[model]
    if not isinstance(body, dict):
        return [
            {
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": body,
            }
        ], {}
    errors: list[Json] = []
    images: Json = {}
    for name in body:
        if name not in schema:
            errors.append(
                _err("extra_forbidden", name, "Extra inputs are not permitted", body[name])
            )
    for name, (kind, rules) in schema.items():
        if name not in body:
            if rules.get("required"):
                errors.append(_err("missing", name, "Field required", None))
            continue
        value = body[name]
        if value is None:
            if not rules.get("nullable"):
                errors.append(_err(f"{kind}_type", name, "Input should not be None", value))
            continue
        if kind in ("str", "image", "ratio") and not isinstance(value, str):
            errors.append(_err("string_type", name, "Input should be a valid string", value))
            continue
        if kind == "bool" and not isinstance(value, bool):
            errors.append(_err("bool_type", name, "Input should be a valid boolean", value))
            continue
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append(_err("int_type", name, "Input should be a valid integer", value))
            continue
        if kind == "num" and (isinstance(value, bool) or not isinstance(value, int | float)):
            errors.append(_err("float_type", name, "Input should be a valid number", value))
            continue
        if kind == "enum" and value not in rules["values"]:
            expected = " or ".join(f"'{v}'" for v in rules["values"])
            errors.append(
                _err("enum", name, f"Input should be {expected}", value, expected=expected)
            )
            continue
        if kind in ("int", "num"):
            if "ge" in rules and value < rules["ge"]:
                msg = f"Input should be greater than or equal to {_fmt(rules['ge'])}"
                errors.append(_err("greater_than_equal", name, msg, value, ge=rules["ge"]))
            elif "le" in rules and value > rules["le"]:
                msg = f"Input should be less than or equal to {_fmt(rules['le'])}"
                errors.append(_err("less_than_equal", name, msg, value, le=rules["le"]))
            elif "multiple_of" in rules and value % rules["multiple_of"]:
                m = rules["multiple_of"]
                errors.append(
                    _err(
                        "multiple_of",
                        name,
                        f"Input should be a multiple of {m}",
                        value,
                        multiple_of=m,
                    )
                )
        if kind == "ratio":
            a, _, b = value.partition(":")
            ok = a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0
            if not ok or not (9 / 21 - 1e-9 <= int(a) / int(b) <= 21 / 9 + 1e-9):
                msg = "Value error, Aspect ratio must be between 21:9 and 9:21"
                errors.append(_err("value_error", name, msg, value))
        if kind == "image":
            data = _decode_image(value)
            if data is None:
                msg = f"Value error, {name} is not a base64-encoded picture"  # fake wording
                errors.append(_err("value_error", name, msg, value[:32]))
            else:
                images[name] = data
    return errors, images


class Call(Recorded):
    """One request (tests/fakes/scaffold.py): ``origin`` is api | regional | delivery and
    ``key`` the ``x-key`` it carried."""

    @property
    def at(self) -> float:
        return self.time


@dataclass
class Task:
    id: str
    model: str
    key: str
    body: Json
    images: Json
    created: float  # time.monotonic()
    created_wall: float  # time.time()
    delay_s: float
    outcome: str = "Ready"
    details: Any = None
    seed: int = 0
    polls: int = 0
    forgotten: bool = False
    picture: bytes | None = field(default=None, repr=False)

    @property
    def done_at(self) -> float:
        return self.created + (0.0 if self.outcome == "Request Moderated" else self.delay_s)

    def active(self, now: float) -> bool:
        return now < self.done_at

    def status(self, now: float) -> str:
        return "Pending" if self.active(now) else self.outcome


class FakeBfl(LoopbackServer):
    record_type = Call

    def __init__(
        self,
        keys: Iterable[str] = ("k1",),
        *,
        max_active_per_key: int = 24,
        delay_s: float = 0.2,
        result_ttl_s: float = 600.0,
        retry_after_s: float | None = 1.0,
        regional: bool = True,
    ) -> None:
        super().__init__()
        self.keys = set(keys)
        self.max_active_per_key = max_active_per_key
        self.delay_s = delay_s  # how long a new task stays Pending
        self.result_ttl_s = result_ttl_s  # how long a result URL works after Ready
        self.retry_after_s = retry_after_s  # Retry-After sent with 429 (None: no header)
        self.regional = regional  # polling URLs on the "regional" origin
        self.polling_base: str | None = None  # overrides the polling URL (tests of bad ones)
        self.no_credits: set[str] = set()  # keys answered with 402
        self.credits = 1000.0  # GET /v1/credits, lowered by each task's cost
        self.calls: CallLog[Call] = self.log
        self.tasks: dict[str, Task] = {}
        self.max_running_per_key: dict[str, int] = {}
        self._outcomes: list[tuple[str, Any]] = []
        self._secret = secrets.token_bytes(16)

    # --- lifecycle -----------------------------------------------------------------------

    def origins(self) -> dict[str, web.Application]:
        """The API, a "regional" API host serving the same routes, and the delivery host."""
        apps = {}
        for origin in ("api", "regional"):
            api = web.Application(client_max_size=64 * 1024 * 1024)
            api.router.add_get("/v1/get_result", self._get_result, name="poll")
            api.router.add_get("/v1/credits", self._credits, name="credits")
            api.router.add_post("/v1/{model}", self._submit, name="submit")
            apps[origin] = api
        delivery = web.Application()
        delivery.router.add_get("/results/{task_id}/sample.{ext}", self._result, name="result")
        apps["delivery"] = delivery
        return apps

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("x-key")

    @property
    def base_url(self) -> str:
        return f"{self.urls['api']}/v1"

    @property
    def regional_url(self) -> str:
        return f"{self.urls['regional']}/v1"

    @property
    def delivery_url(self) -> str:
        return self.urls["delivery"]

    # --- control -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        body: Any = None,
        *,
        on: str = "submit",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests of kind ``on`` (submit | poll | result) with
        ``status`` and ``body`` (JSON; default ``{"detail": "<reason>"}``)."""
        assert on in ("submit", "poll", "result")
        self.faults.fail(status, body, on=on, headers=headers, times=times)

    def next_outcome(self, outcome: str, details: Any = None) -> None:
        """The next task submitted ends with ``outcome`` instead of ``Ready``."""
        assert outcome in OUTCOMES
        self._outcomes.append((outcome, details))

    def forget(self, task_id: str) -> None:
        self.tasks[task_id].forgotten = True

    def submit_direct(
        self, key: str, model: str = "flux-pro-1.1", body: Json | None = None, **kw: Any
    ) -> tuple[str, str]:
        """A task as if ``key`` had submitted it (another client, or before a restart)."""
        body = body or {"prompt": "direct", "width": 512, "height": 512, "seed": 7}
        task = self._create(key, model, body, {}, **kw)
        return task.id, self._polling_url(task.id)

    @property
    def submits(self) -> list[Call]:
        return self.calls_of("submit")

    @property
    def polls(self) -> list[Call]:
        return self.calls_of("poll")

    @property
    def downloads(self) -> list[Call]:
        return self.calls_of(origin="delivery")

    def active(self, key: str) -> int:
        now = time.monotonic()
        return sum(1 for t in self.tasks.values() if t.key == key and t.active(now))

    # --- internals -----------------------------------------------------------------------

    def _auth(self, call: Call) -> web.Response | None:
        if call.key is None:
            return _reply(401, {"detail": "Not authenticated"})
        if call.key not in self.keys:
            return _reply(403, {"detail": "Not authenticated - Invalid Authentication"})
        return None

    def _polling_url(self, task_id: str) -> str:
        if self.polling_base is not None:
            return f"{self.polling_base}?id={task_id}"
        base = self.regional_url if self.regional else self.base_url
        return f"{base}/get_result?id={task_id}"

    def _create(
        self, key: str, model: str, body: Json, images: Json, delay_s: float | None = None
    ) -> Task:
        outcome, details = self._outcomes.pop(0) if self._outcomes else ("Ready", None)
        if details is None and outcome in ("Request Moderated", "Content Moderated"):
            details = {"Moderation Reasons": ["Derivative Works"]}
        seed = body.get("seed")
        task = Task(
            id=str(uuid.UUID(int=random.getrandbits(128))),
            model=model,
            key=key,
            body=body,
            images=images,
            created=time.monotonic(),
            created_wall=time.time(),
            delay_s=self.delay_s if delay_s is None else delay_s,
            outcome=outcome,
            details=details,
            seed=seed if isinstance(seed, int) else random.randrange(2**32),
        )
        self.tasks[task.id] = task
        self.max_running_per_key[key] = max(self.max_running_per_key.get(key, 0), self.active(key))
        return task

    async def _submit(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        call = self.record(request)
        body: Any = call.json
        denied = self._auth(call)
        if denied:
            return denied
        assert call.key is not None
        if call.key in self.no_credits:
            return _reply(402, {"detail": "Insufficient credits. Add credits to continue."})
        if model not in SCHEMAS:
            return _reply(404, {"detail": "Not Found"})
        errors, images = validate(model, body)
        if errors:
            return _reply(422, {"detail": errors})
        if self.active(call.key) >= self.max_active_per_key:
            headers = {}
            if self.retry_after_s is not None:
                headers["Retry-After"] = _fmt(self.retry_after_s)
            detail = f"You have reached the limit of {self.max_active_per_key} active tasks"
            return _reply(429, {"detail": detail}, headers)
        task = self._create(call.key, model, body, images)
        # {id, polling_url, cost, input_mp, output_mp} (providers.md, Endpoints and auth)
        cost = COSTS.get(model, 4.0)
        self.credits -= cost
        answer = {
            "id": task.id,
            "polling_url": self._polling_url(task.id),
            "cost": cost,
            "input_mp": round(sum(1 for _ in images) * 1.0, 2),
            "output_mp": 1.0,
        }
        return _reply(200, answer)

    async def _credits(self, request: web.Request) -> web.Response:
        """GET /v1/credits -> {credits} (providers.md, Endpoints and auth)."""
        call = self.record(request)
        denied = self._auth(call)
        if denied:
            return denied
        return _reply(200, {"credits": round(self.credits, 2)})

    def _sample_url(self, task: Task) -> str:
        ext = {"png": "png", "webp": "webp"}.get(self._format(task), "jpg")
        expires = int((task.created_wall + task.delay_s + self.result_ttl_s) * 1000)
        sig = self._sign(task.id, expires)
        return f"{self.delivery_url}/results/{task.id}/sample.{ext}?se={expires}&sig={sig}"

    def _sign(self, task_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{task_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _format(self, task: Task) -> str:
        return task.body.get("output_format") or DEFAULT_FORMAT.get(task.model, "jpeg")

    async def _get_result(self, request: web.Request) -> web.Response:
        call = self.record(request)
        denied = self._auth(call)
        if denied:
            return denied
        task_id = request.query.get("id", "")
        task = self.tasks.get(task_id)
        base: Json = {"id": task_id, "result": None, "progress": None, "details": None}
        if task is None or task.forgotten or task.key != call.key:
            return _reply(200, {**base, "status": "Task not found"})
        task.polls += 1
        now = time.monotonic()
        status = task.status(now)
        if status == "Task not found":
            task.forgotten = True
        answer: Json = {**base, "status": status}
        if status == "Pending":
            elapsed = now - task.created
            answer["progress"] = round(min(elapsed / task.delay_s, 0.99), 2)
        elif status == "Ready":
            answer["result"] = {
                "sample": self._sample_url(task),
                "prompt": task.body.get("prompt"),
                "seed": task.seed,
                "start_time": task.created_wall,
                "end_time": task.created_wall + task.delay_s,
                "duration": task.delay_s,
            }
        elif status in ("Request Moderated", "Content Moderated", "Error"):
            answer["details"] = task.details
        return _reply(200, answer)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        task = self.tasks.get(request.match_info["task_id"])
        try:
            expires = int(request.query.get("se", ""))
        except ValueError:
            expires = -1
        sig = request.query.get("sig", "")
        denied = (
            task is None
            or task.status(time.monotonic()) != "Ready"
            or not hmac.compare_digest(sig, self._sign(task.id, expires))
        )
        if denied or time.time() * 1000 > expires:
            text = (
                "<?xml version='1.0' encoding='utf-8'?><Error><Code>AuthenticationFailed</Code>"
                "<Message>Signature not valid in the specified time frame</Message></Error>"
            )
            return web.Response(status=403, text=text, content_type="application/xml")
        assert task is not None
        if task.picture is None:
            task.picture = await asyncio.to_thread(self._draw, task)
        ctype = {"png": "image/png", "webp": "image/webp"}.get(self._format(task), "image/jpeg")
        return web.Response(body=task.picture, content_type=ctype)

    def _draw(self, task: Task) -> bytes:
        body = task.body
        if "image" in task.images:
            with Image.open(io.BytesIO(task.images["image"])) as source:
                w, h = source.size
            w += int(body.get("left", 0)) + int(body.get("right", 0))
            h += int(body.get("top", 0)) + int(body.get("bottom", 0))
        elif "width" in body:
            w, h = int(body["width"]), int(body["height"])
        else:
            a, _, b = str(body.get("aspect_ratio") or "1:1").partition(":")
            ratio = int(a) / int(b)
            w = round(math.sqrt(1024 * 1024 * ratio) / MULTIPLE) * MULTIPLE
            h = round(math.sqrt(1024 * 1024 / ratio) / MULTIPLE) * MULTIPLE
        rng = random.Random(task.seed)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        out = io.BytesIO()
        fmt = {"png": "PNG", "webp": "WEBP"}.get(self._format(task), "JPEG")
        Image.new("RGB", (w, h), color).save(out, format=fmt)
        return out.getvalue()
