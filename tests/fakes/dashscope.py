"""A loopback fake of Alibaba Cloud DashScope's image-synthesis task API (Tongyi Wanxiang).

It speaks the wire protocol the official ``dashscope`` SDK and sdhost's provider use:

* ``POST /api/v1/services/aigc/text2image/image-synthesis`` (wanx2.x text-to-image) and
  ``POST /api/v1/services/aigc/image2image/image-synthesis`` (``wanx2.1-imageedit``), each
  needing ``Authorization: Bearer <key>`` and ``X-DashScope-Async: enable``;
* ``GET /api/v1/tasks/{task_id}``: PENDING -> RUNNING -> SUCCEEDED (or FAILED), with
  ``output.results[]`` pointing at signed links on a *second* origin standing in for OSS;
* ``POST /api/v1/tasks/{task_id}/cancel``: only a PENDING task can be cancelled.

Errors are DashScope's envelope ``{"code", "message", "request_id"}`` with its HTTP status;
the OSS origin answers OSS's XML errors (403 once a link's ``Expires`` has passed).

Use::

    async with FakeDashScope(keys={"sk-a", "sk-b"}) as fake:
        ...  # point the client at fake.base_url (the SDK at fake.base_url + "/api/v1")

Server, call records (``calls``: the API's; ``downloads``: the OSS origin's) and the fault
queue behind :meth:`FakeDashScope.fail_next` are the shared scaffold's
(tests/fakes/scaffold.py); ``fake.faults`` adds latency or drops connections.

What follows /work/shared/api/providers.md, section "Alibaba Cloud Model Studio
(DashScope)":

* models: wanx2.1-t2i-turbo/plus, wanx2.0-t2i-turbo, wan2.2-t2i-flash/plus (each side
  512..1440) and wan2.5-t2i-preview (768*768..1440*1440 pixels, 1:4..4:1) on the
  text2image endpoint; wanx2.1-imageedit (``function`` + ``base_image_url``, Beijing only:
  ``FakeDashScope(region="singapore")`` answers it as an unknown model) and
  wan2.5-i2i-preview (``input.images``) on the image2image endpoint ("Image editing");
* prompts over 800 characters and negative prompts over 500 are cut *silently* (the task
  records what DashScope would have used);
* keys belong to accounts (``accounts={key: account}``; default: each key its own): tasks
  are visible to every key of their account, and ``max_running_per_account`` records the
  most tasks one account had in progress ("Limits and billing": 2 per account);
  ``account_qps`` refuses faster submissions per account with 429 Throttling.RateQuota;
* HTTP 429 / 403 codes and messages of "Errors" (``fail_next`` with ``BILLING_CODES``,
  ``FREE_QUOTA_MESSAGE``, ``ALLOCATED_QUOTA_MESSAGE``).

Deliberate deviations (kept small so tests are not misled):

* Whether tasks beyond an account's 2 in progress queue or are refused is not documented:
  the fake accepts them and only records the count.
* wan2.5-i2i-preview's output keeps the input picture's size (the real one may not).
* ``base_image_url`` must be a ``data:`` URL for the output to derive from the input; any
  other URL gives a 1024x1024 picture without being fetched.
* Pictures are drawn, not generated; img2img output is the input posterized and tinted.
* Some messages are the fake's own wording where the real text is not documented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import io
import re
import time
import urllib.parse
import uuid
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw, ImageOps

from tests.fakes.scaffold import LoopbackServer, Recorded

Json = dict[str, Any]

T2I_MODELS = {
    "wanx2.1-t2i-turbo",
    "wanx2.1-t2i-plus",
    "wanx2.0-t2i-turbo",
    "wan2.2-t2i-flash",
    "wan2.2-t2i-plus",
    "wan2.5-t2i-preview",
}
EDIT_MODELS = {"wanx2.1-imageedit", "wan2.5-i2i-preview"}
BEIJING_ONLY = {"wanx2.1-imageedit"}
MAX_PROMPT, MAX_NEGATIVE = 800, 500
FREE_QUOTA_MESSAGE = "Free allocated quota exceeded."
ALLOCATED_QUOTA_MESSAGE = "Allocated quota exceeded, please increase your quota limit."
BILLING_CODES = ("PrepaidBillOverdue", "PostpaidBillOverdue", "CommodityNotPurchased")
EDIT_FUNCTIONS = {
    "stylization_all",
    "stylization_local",
    "description_edit",
    "description_edit_with_mask",
    "remove_watermark",
    "expand",
    "super_resolution",
    "colorization",
    "doodle",
    "control_cartoon_feature",
}
T2I_SIDE = (512, 1440)
EDIT_SIDE = (512, 4096)
MAX_SEED = 2147483647

ERR_SYNC = "current user api does not support synchronous calls"
ERR_KEY = "Invalid API-key provided."
ERR_CANCEL = "Failed to cancel the task, please confirm if the task is in PENDING status."
ERR_THROTTLE = "Requests rate limit exceeded, please try again later."
DEFAULT_MESSAGES = {
    "InvalidApiKey": ERR_KEY,
    "Arrearage": "Access denied, please make sure your account is in good standing.",
    "DataInspectionFailed": "Input data may contain inappropriate content.",
    "InvalidParameter": "Required parameter(s) missing or invalid, please check the request "
    "parameters.",
    "Throttling": "Requests throttling triggered.",
    "Throttling.RateQuota": ERR_THROTTLE,
    "Throttling.AllocationQuota": ALLOCATED_QUOTA_MESSAGE,
    "AllocationQuota.FreeTierOnly": "The free tier of the model has been exhausted.",
    "PrepaidBillOverdue": "The prepaid bill is overdue.",
    "PostpaidBillOverdue": "The postpaid bill is overdue.",
    "CommodityNotPurchased": "Commodity has not purchased yet.",
    "InternalError": "An internal error has occured, please try again later or contact service "
    "support.",
    "InternalError.Algo": "An internal error has occured during execution, please try again "
    "later or contact service support.",
}

OSS_BUCKET = "dashscope-result-fake"
OSS_ACCESS_KEY_ID = "LTAI5tFakeAccessKeyId"
_OSS_SECRET = b"fake-oss-secret"


def _now_cn() -> str:
    """DashScope's timestamps: UTC+8, millisecond precision."""
    t = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


class Call(Recorded):
    """One request as the fake saw it (tests/fakes/scaffold.py). ``headers`` has the key
    replaced by ``***``; ``key`` is the key itself (the fake's own test keys) so tests can
    check which was used."""


@dataclasses.dataclass
class Task:
    id: str
    key: str
    model: str
    kind: str  # txt2img | img2img
    prompt: str
    negative: str
    width: int
    height: int
    n: int
    seed: int
    parameters: Json
    prompt_extend: bool
    created: float
    queue_delay: float
    run_delay: float
    submit_time: str
    base_image: bytes | None = None  # img2img input, decoded from its data URL
    fail: tuple[str, str] | None = None  # the whole task FAILED with (code, message)
    result_failures: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
    canceled: bool = False
    forgotten: bool = False
    end_wall: float | None = None
    end_time: str | None = None
    scheduled_time: str | None = None

    def status(self, now: float) -> str:
        if self.forgotten:
            return "UNKNOWN"
        if self.canceled:
            return "CANCELED"
        if now < self.created + self.queue_delay:
            return "PENDING"
        if self.scheduled_time is None:
            self.scheduled_time = _now_cn()
        if now < self.created + self.queue_delay + self.run_delay:
            return "RUNNING"
        if self.end_time is None:
            self.end_time = _now_cn()
            self.end_wall = time.time()
        return "FAILED" if self.fail else "SUCCEEDED"


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return web.json_response(
        {"code": code, "message": message, "request_id": str(uuid.uuid4())},
        status=status,
        headers=headers,
    )


def _oss_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{uuid.uuid4().hex[:24].upper()}</RequestId>\n"
        f"  <HostId>{OSS_BUCKET}.oss-cn-fake.aliyuncs.com</HostId>\n</Error>\n"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _draw(task: Task, index: int) -> bytes:
    seed = task.seed + index
    if task.base_image is not None:
        with Image.open(io.BytesIO(task.base_image)) as src:
            im = ImageOps.posterize(src.convert("RGB"), 3)
        tint = Image.new("RGB", im.size, ((seed * 37) % 256, (seed * 91) % 256, 128))
        im = Image.blend(im, tint, 0.15)
    else:
        w, h = task.width, task.height
        bg = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31 + len(task.prompt)) % 256)
        im = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(im)
        for k in range(4):
            x0 = (seed * (k + 3) * 7919) % max(1, w - 64)
            y0 = (seed * (k + 5) * 104729) % max(1, h - 64)
            fg = tuple(255 - c for c in bg)
            draw.ellipse((x0, y0, x0 + 64 + k * 40, y0 + 64 + k * 30), fill=fg)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class FakeDashScope(LoopbackServer):
    record_type = Call

    def __init__(
        self,
        keys: set[str] | frozenset[str] | list[str] = frozenset({"sk-test"}),
        *,
        queue_delay_s: float = 0.05,
        run_delay_s: float = 0.1,
        result_ttl_s: float = 24 * 3600.0,
        accounts: dict[str, str] | None = None,
        account_qps: float | None = None,
        region: str = "beijing",
    ) -> None:
        super().__init__()
        self.keys = set(keys)
        self.accounts = dict(accounts or {})
        self.account_qps = account_qps
        self.region = region
        self.max_running_per_account: dict[str, int] = collections.defaultdict(int)
        self.submit_times: dict[str, list[float]] = collections.defaultdict(list)
        self.queue_delay_s = queue_delay_s
        self.run_delay_s = run_delay_s
        self.result_ttl_s = result_ttl_s
        self.tasks: dict[str, Task] = {}
        self.max_running_per_key: dict[str, int] = collections.defaultdict(int)
        self._next_task_fail: tuple[str, str] | None = None
        self._next_result_failures: dict[int, tuple[str, str]] = {}
        self._images: dict[tuple[str, int], bytes] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def origins(self) -> dict[str, web.Application]:
        api = web.Application(client_max_size=32 * 1024 * 1024)
        api.router.add_post(
            "/api/v1/services/aigc/{group}/image-synthesis", self._submit, name="submit"
        )
        api.router.add_get("/api/v1/tasks/{task_id}", self._task, name="task")
        api.router.add_post("/api/v1/tasks/{task_id}/cancel", self._cancel, name="cancel")
        oss = web.Application()
        oss.router.add_get("/{task_id}/{name}", self._oss_get, name="oss")
        return {"api": api, "oss": oss}

    def key_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:].strip() if auth.startswith("Bearer ") else None

    @property
    def oss_url(self) -> str:
        return self.urls["oss"]

    @property
    def calls(self) -> list[Call]:
        """Every request to the API (not the OSS origin)."""
        return self.calls_of(origin="api")

    @property
    def downloads(self) -> list[tuple[str, int]]:
        """(path, status) of each answered GET on the OSS origin."""
        return [(c.path, c.status) for c in self.calls_of(origin="oss") if c.done]

    # --- control -----------------------------------------------------------------------------

    def fail_next(
        self,
        code: str,
        status: int = 400,
        message: str | None = None,
        *,
        on: str = "submit",
        times: int = 1,
        retry_after: float | str | None = None,
    ) -> None:
        """The next ``times`` requests of kind ``on`` (submit, task, cancel, any) get this
        error instead of an answer."""
        msg = message if message is not None else DEFAULT_MESSAGES.get(code, code)
        assert on in ("submit", "task", "cancel", "any")
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        for _ in range(times):  # a request_id each
            body = {"code": code, "message": msg, "request_id": str(uuid.uuid4())}
            self.faults.fail(status, body, on=_on_api if on == "any" else on, headers=headers)

    def throttle(
        self,
        times: int = 1,
        *,
        retry_after: float | str | None = None,
        code: str = "Throttling.RateQuota",
        on: str = "submit",
    ) -> None:
        """429 Throttling.RateQuota (optionally with Retry-After) for the next requests."""
        self.fail_next(code, 429, on=on, times=times, retry_after=retry_after)

    def fail_task(self, code: str = "DataInspectionFailed", message: str | None = None) -> None:
        """The next task submitted ends FAILED with ``output.code`` / ``output.message``."""
        self._next_task_fail = (code, message or DEFAULT_MESSAGES.get(code, code))

    def fail_results(
        self, indexes: set[int] | list[int], code: str = "InternalError.Algo", message: str = ""
    ) -> None:
        """In the next task, these pictures fail (their result carries code/message)."""
        msg = message or DEFAULT_MESSAGES.get(code, code)
        self._next_result_failures = {i: (code, msg) for i in indexes}

    def forget(self, task_id: str | None = None) -> None:
        """The task (default: every task) is answered UNKNOWN, as an expired one is."""
        for task in self.tasks.values():
            if task_id is None or task.id == task_id:
                task.forgotten = True

    def account(self, key: str) -> str:
        return self.accounts.get(key, key)

    def running(self, key: str) -> int:
        """Tasks of ``key`` not yet ended."""
        now = time.monotonic()
        return sum(
            1
            for t in self.tasks.values()
            if t.key == key and t.status(now) in ("PENDING", "RUNNING")
        )

    def running_on_account(self, account: str) -> int:
        now = time.monotonic()
        return sum(
            1
            for t in self.tasks.values()
            if self.account(t.key) == account and t.status(now) in ("PENDING", "RUNNING")
        )

    def calls_to(self, method: str, path_prefix: str = "") -> list[Call]:
        return self.calls_of(method=method, prefix=path_prefix, origin="api")

    @property
    def submits(self) -> list[Call]:
        return self.calls_to("POST", "/api/v1/services/")

    @property
    def polls(self) -> list[Call]:
        return self.calls_to("GET", "/api/v1/tasks/")

    # --- the API -------------------------------------------------------------------------------

    def _auth(self, key: str | None) -> web.Response | None:
        if key is None or key not in self.keys:
            return _err(401, "InvalidApiKey", ERR_KEY)
        return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body, key = self.record(request).json, self.key_of(request)
        denied = self._auth(key)
        if denied is not None:
            return denied
        if request.headers.get("X-DashScope-Async", "").lower() != "enable":
            return _err(403, "AccessDenied", ERR_SYNC)
        assert key is not None
        account = self.account(key)
        now = time.monotonic()
        times = self.submit_times[account]
        if self.account_qps and times and now - times[-1] < 1.0 / self.account_qps:
            return _err(429, "Throttling.RateQuota", DEFAULT_MESSAGES["Throttling.RateQuota"])
        group = request.match_info["group"]
        try:
            task = self._task_from(group, body, key)
        except _Invalid as exc:
            return _err(400, exc.code, str(exc))
        times.append(now)
        self.tasks[task.id] = task
        running = self.running(key)
        self.max_running_per_key[key] = max(self.max_running_per_key[key], running)
        self.max_running_per_account[account] = max(
            self.max_running_per_account[account], self.running_on_account(account)
        )
        return web.json_response(
            {
                "output": {"task_status": "PENDING", "task_id": task.id},
                "request_id": str(uuid.uuid4()),
            }
        )

    def _task_from(self, group: str, body: Any, key: str) -> Task:
        if not isinstance(body, dict):
            raise _Invalid("InvalidParameter", "The request body is not valid JSON.")
        model = body.get("model")
        if not model:
            raise _Invalid("BadRequest.EmptyModel", 'Required parameter "model" missing.')
        inp = body.get("input")
        if not isinstance(inp, dict):
            raise _Invalid("BadRequest.EmptyInput", "Required input parameter missing.")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise _Invalid("InvalidParameter", "parameters must be an object")
        if model not in T2I_MODELS | EDIT_MODELS or (
            model in BEIJING_ONLY and self.region != "beijing"
        ):
            raise _Invalid("InvalidParameter", "Model not exist.")
        kind = "txt2img" if group == "text2image" else "img2img"
        if (group == "text2image") != (model in T2I_MODELS) or group not in (
            "text2image",
            "image2image",
        ):
            raise _Invalid("InvalidParameter", "url error, please check url!")
        prompt = inp.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _Invalid("InvalidParameter", "Field required: input.prompt")
        n = params.get("n", 4 if kind == "txt2img" else 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
            raise _Invalid("InvalidParameter", "n must be an integer in [1, 4]")
        seed = params.get("seed")
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(uuid.uuid4().bytes).digest()[:4]) & MAX_SEED
        if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise _Invalid("InvalidParameter", "seed must be an integer in [0, 2147483647]")
        base_image: bytes | None = None
        width = height = 1024
        if kind == "txt2img":
            size = params.get("size", "1024*1024")
            m = re.fullmatch(r"(\d+)\*(\d+)", str(size))
            lo, hi = T2I_SIDE
            if not m or (
                model != "wan2.5-t2i-preview" and not all(lo <= int(v) <= hi for v in m.groups())
            ):
                raise _Invalid(
                    "InvalidParameter",
                    f"size must be WIDTH*HEIGHT with each side in [{lo}, {hi}], got {size!r}",
                )
            width, height = int(m.group(1)), int(m.group(2))
            if model == "wan2.5-t2i-preview":
                pixels, ratio = width * height, max(width, height) / min(width, height)
                if not (768 * 768 <= pixels <= 1440 * 1440 and ratio <= 4):
                    raise _Invalid(
                        "InvalidParameter",
                        "size must have 768*768 to 1440*1440 pixels, aspect 1:4 to 4:1",
                    )
            elif not all(lo <= int(v) <= hi for v in m.groups()):
                raise _Invalid("InvalidParameter", f"size {size!r} is out of range")
        elif model == "wan2.5-i2i-preview":
            images = inp.get("images")
            if not isinstance(images, list) or not 1 <= len(images) <= 2:
                raise _Invalid("InvalidParameter", "Field required: input.images (1 or 2)")
            url = images[0]
            if isinstance(url, str) and url.startswith("data:"):
                base_image, (width, height) = _decode_data_url(url)
        else:
            function = inp.get("function")
            if function not in EDIT_FUNCTIONS:
                raise _Invalid("InvalidParameter", f"function {function!r} is not supported")
            url = inp.get("base_image_url")
            if not isinstance(url, str) or not url:
                raise _Invalid("InvalidParameter", "Field required: input.base_image_url")
            strength = params.get("strength")
            if strength is not None and not (
                isinstance(strength, int | float) and 0.0 <= strength <= 1.0
            ):
                raise _Invalid("InvalidParameter", "strength must be in [0.0, 1.0]")
            if url.startswith("data:"):
                base_image, (width, height) = _decode_data_url(url)
            if function == "description_edit_with_mask":
                mask = inp.get("mask_image_url")
                if not isinstance(mask, str) or not mask:
                    raise _Invalid("InvalidParameter", "Field required: input.mask_image_url")
                if mask.startswith("data:") and base_image is not None:
                    _, mask_size = _decode_data_url(mask)
                    if mask_size != (width, height):
                        raise _Invalid(
                            "InvalidParameter", "mask_image_url must be the base image's size"
                        )
        task_id = str(uuid.uuid4())
        fail, self._next_task_fail = self._next_task_fail, None
        result_failures, self._next_result_failures = self._next_result_failures, {}
        return Task(
            id=task_id,
            key=key,
            model=model,
            kind=kind,
            prompt=prompt[:MAX_PROMPT],  # longer is cut silently
            negative=str(inp.get("negative_prompt") or "")[:MAX_NEGATIVE],
            width=width,
            height=height,
            n=n,
            seed=seed,
            parameters=params,
            prompt_extend=bool(params.get("prompt_extend", True)) and kind == "txt2img",
            created=time.monotonic(),
            queue_delay=self.queue_delay_s,
            run_delay=self.run_delay_s,
            submit_time=_now_cn(),
            base_image=base_image,
            fail=fail,
            result_failures=result_failures,
        )

    async def _task(self, request: web.Request) -> web.StreamResponse:
        key = self.key_of(request)
        denied = self._auth(key)
        if denied is not None:
            return denied
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None or self.account(task.key) != self.account(key) or task.forgotten:
            return web.json_response(
                {
                    "request_id": str(uuid.uuid4()),
                    "output": {"task_id": task_id, "task_status": "UNKNOWN"},
                }
            )
        status = task.status(time.monotonic())
        out: Json = {"task_id": task.id, "task_status": status, "submit_time": task.submit_time}
        if task.scheduled_time:
            out["scheduled_time"] = task.scheduled_time
        body: Json = {"request_id": str(uuid.uuid4()), "output": out}
        if status in ("PENDING", "RUNNING"):
            out["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": 0}
        elif status == "FAILED":
            assert task.fail is not None
            out["end_time"] = task.end_time
            out["code"], out["message"] = task.fail
        elif status == "SUCCEEDED":
            out["end_time"] = task.end_time
            results = []
            for i in range(task.n):
                if i in task.result_failures:
                    code, message = task.result_failures[i]
                    results.append({"code": code, "message": message})
                    continue
                result: Json = {"url": self._sign(task, i)}
                if task.kind == "txt2img":
                    result["orig_prompt"] = task.prompt
                    if task.prompt_extend:
                        result["actual_prompt"] = f"{task.prompt}, highly detailed, soft light"
                results.append(result)
            ok = task.n - len(task.result_failures)
            out["results"] = results
            out["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": ok, "FAILED": task.n - ok}
            body["usage"] = {"image_count": ok}
        return web.json_response(body)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        key = self.key_of(request)
        denied = self._auth(key)
        if denied is not None:
            return denied
        task = self.tasks.get(request.match_info["task_id"])
        if (
            task is None
            or self.account(task.key) != self.account(key)
            or task.status(time.monotonic()) != "PENDING"
        ):
            return _err(400, "UnsupportedOperation", ERR_CANCEL)
        task.canceled = True
        return web.json_response({"request_id": str(uuid.uuid4())})

    # --- the OSS origin ----------------------------------------------------------------------

    def _string_to_sign(self, path: str, expires: str) -> bytes:
        return f"GET\n\n\n{expires}\n/{OSS_BUCKET}{path}".encode()

    def _sign(self, task: Task, index: int) -> str:
        path = f"/{task.id}/{index}.png"
        expires = str(int((task.end_wall or time.time()) + self.result_ttl_s))
        digest = hmac.new(_OSS_SECRET, self._string_to_sign(path, expires), hashlib.sha1)
        query = urllib.parse.urlencode(
            {
                "Expires": expires,
                "OSSAccessKeyId": OSS_ACCESS_KEY_ID,
                "Signature": base64.b64encode(digest.digest()).decode(),
            }
        )
        return f"{self.oss_url}{path}?{query}"

    async def _oss_get(self, request: web.Request) -> web.StreamResponse:
        expires = request.query.get("Expires", "")
        signature = request.query.get("Signature", "")
        if not expires or not signature:
            return _oss_error(403, "AccessDenied", "You have no right to access this object.")
        digest = hmac.new(
            _OSS_SECRET, self._string_to_sign(request.path, expires), hashlib.sha1
        ).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), signature):
            return _oss_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if not expires.isdigit() or int(expires) < time.time():
            return _oss_error(403, "AccessDenied", "Request has expired.")
        task = self.tasks.get(request.match_info["task_id"])
        m = re.fullmatch(r"(\d+)\.png", request.match_info["name"])
        if task is None or m is None or int(m.group(1)) >= task.n:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        index = int(m.group(1))
        cache_key = (task.id, index)
        if cache_key not in self._images:
            self._images[cache_key] = await asyncio.to_thread(_draw, task, index)
        return web.Response(body=self._images[cache_key], content_type="image/png")


def _on_api(call: Recorded) -> bool:
    return call.origin == "api"


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _decode_data_url(url: str) -> tuple[bytes, tuple[int, int]]:
    head, _, data = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise _Invalid("InvalidParameter", "base_image_url is not a base64 image data URL")
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            size = im.size
    except (binascii.Error, ValueError, OSError):
        raise _Invalid("InvalidParameter", "base_image_url could not be decoded") from None
    lo, hi = EDIT_SIDE
    if not all(lo <= v <= hi for v in size):
        raise _Invalid(
            "InvalidParameter", f"the input picture's sides must be in [{lo}, {hi}], got {size}"
        )
    return raw, size
