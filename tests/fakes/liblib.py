"""A loopback fake of LiblibAI's open API (``openapi.liblibai.cloud``) and of the storage
its pictures live on.

``async with FakeLiblib(keys={"ak1": "sk1", "ak2": "sk2"}) as fake:`` starts two sites on
127.0.0.1: the API at ``fake.base_url`` and, on another port (another origin, as LiblibAI's
result pictures come from its CDN and uploads go to an OSS bucket), the storage at
``fake.cdn_url``.

What it checks, as the documentation describes the real service:

* every API request is signed: ``AccessKey`` must be known, ``Signature`` must equal the
  URL-safe base64 without padding of HMAC-SHA1(SecretKey, ``path&Timestamp&SignatureNonce``),
  ``Timestamp`` (ms) must be within 5 minutes of now. A ``SignatureNonce`` used twice by one
  key is refused too (``reject_reused_nonce``; the docs only call it "a random string", so
  this is the conservative reading);
* the four generate endpoints with their templates and parameters, as
  /work/shared/api/providers.md ("LiblibAI open API") gives them: Star-3 imageSize
  512-2048, imgCount 1-4, prompt at most 2000 characters; custom models: sampler numbers
  0-21, 24, 25, 27-30 (22, 23 and 26 do not exist), steps 1-60, cfgScale 1-15, clipSkip 1-12
  (required), width/height 128-1536 (img2img resizedWidth/resizedHeight 128-2048), at most
  5 LoRAs; the template must exist (100120) and fit the checkpoint: an F.1 checkpoint
  (``f1_checkpoints``) needs the F.1 templates and any other the 1.5/XL ones (100050);
  ``sourceImage`` a complete http(s) URL, never a data URL, and when it points at the
  fake's storage the object must exist (100030);
* status: tasks go 1 (waiting) -> 2 (running, ``percentCompleted`` rising) -> 4 (auditing, when
  ``audit_s`` > 0) -> 5, with ``pointsCost``/``accountBalance``; only pictures that passed
  review are listed (a withheld one shifts the positions of those after it); a task is only
  visible to the AccessKey that submitted it; result URLs answer 403 once ``result_ttl_s``
  has passed;
* the error codes of the documentation's §8 (``CODE_*`` below); 401 (signature), 403 and
  429 (submission rate) come as HTTP statuses with the same envelope code, or, with
  ``http_statuses=False``, as envelope codes in an HTTP 200 answer (the docs do not say
  which);
* the upload flow: ``/api/generate/upload/signature`` hands out an OSS form policy; the form
  POST to ``postUrl`` must carry that key, policy and signature, with the file last.

Failure switches: :meth:`fail_next` (any envelope code, message and HTTP status),
:meth:`throttle` (HTTP 429), :meth:`fail_next_task` (status 6 with a ``generateMsg``),
:meth:`time_out_next_task` (status 7), :meth:`reject_next_task_images` (auditStatus 4 for
some pictures), ``balance`` (points per AccessKey; a submission that costs more is refused),
``concurrency_limit`` and ``submit_qps``.

Records: ``calls`` (every API request), ``tasks``, ``uploads``, ``downloads`` and
``max_running_per_key`` (most tasks one AccessKey had unfinished at once). Server, call
records, the fault queue behind :meth:`fail_next` (``fake.faults`` also adds latency or
drops connections) and the uploaded-file store are the shared scaffold's
(tests/fakes/scaffold.py).

Deliberate deviations (kept small so tests are not misled):

* The messages are the fake's own wording (Chinese, with the English meaning); the codes
  are the documented ones. Envelope errors answer HTTP 200 with a non-zero ``code``.
* Statuses are computed from the clock when polled; nothing runs in the background.
  Status 3 (generated) is skipped.
* Result pictures are solid-colour PNGs of the requested size (Star-3 img2img: the source's).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import time
import uuid
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.scaffold import LoopbackServer, Recorded

STAR3_TXT2IMG_TEMPLATE = "5d7e67009b344550bc1aa6ccbfa1d7f4"
STAR3_IMG2IMG_TEMPLATE = "07e00af4fc464c7ab55ff906f8acf1b7"
CUSTOM_TXT2IMG_TEMPLATE = "e10adc3949ba59abbe56e057f20f883e"
CUSTOM_IMG2IMG_TEMPLATE = "9c7d531dc75f476aa833b3d452b8f7ad"

STAR3_TXT2IMG = "/api/generate/webui/text2img/ultra"
STAR3_IMG2IMG = "/api/generate/webui/img2img/ultra"
CUSTOM_TXT2IMG = "/api/generate/webui/text2img"
CUSTOM_IMG2IMG = "/api/generate/webui/img2img"
STATUS = "/api/generate/webui/status"
UPLOAD_SIGNATURE = "/api/generate/upload/signature"
SUBMIT_PATHS = (STAR3_TXT2IMG, STAR3_IMG2IMG, CUSTOM_TXT2IMG, CUSTOM_IMG2IMG)

# The documented error codes (providers.md, "LiblibAI open API", "Error codes" = [LL-DOC] §8).
CODE_SIGNATURE = 401  # signature check failed (also a stale timestamp, a reused nonce)
CODE_FORBIDDEN = 403  # access denied
CODE_RATE_LIMIT = 429  # too many requests (submission QPS)
CODE_PARAM = 100000  # invalid parameter
CODE_KEY_EXPIRED = 100010  # AccessKey (API entitlement) expired
CODE_USER_NOT_FOUND = 100020
CODE_POINTS = 100021  # insufficient points
CODE_IMAGE_URL = 100030  # image URL unreachable or too large (> 10 MB)
CODE_IMAGE_PROHIBITED = 100031
CODE_IMAGE_DOWNLOAD = 100032
CODE_COMPLETENESS = 100050  # template/checkpoint/LoRA/ControlNet base mismatch
CODE_NOT_FOUND = 100051  # task not found
CODE_SENSITIVE_PROMPT = 100052
CODE_MODEL_NOT_ALLOWED = 100053
CODE_CONCURRENCY = 100054
CODE_SENSITIVE_RESULT = 100055
CODE_TEMPLATE_NOT_FOUND = 100120
CODE_INTERNAL = 200000
CODE_MODEL_NOT_FOUND = 200001
CODE_RETRY = 210000  # external service failed, retry

MSG_SIGNATURE = "签名校验失败 (signature verification failed)"
MSG_TIMESTAMP = "签名校验失败: Timestamp已过期 (timestamp expired)"
MSG_NONCE = "签名校验失败: SignatureNonce重复 (nonce already used)"
MSG_ACCESS_KEY = "签名校验失败: AccessKey不存在 (unknown AccessKey)"
MSG_KEY_EXPIRED = "AccessKey已过期 (API entitlement expired)"
MSG_POINTS = "账户积分不足 (insufficient points)"
MSG_RATE_LIMIT = "请求过多 (too many requests)"
MSG_CONCURRENCY = "并发任务数已达上限 (concurrent task limit reached)"
MSG_NOT_FOUND = "任务不存在 (no such task)"
MSG_SENSITIVE_PROMPT = "提示词包含敏感内容 (sensitive prompt)"
MSG_COMPLETENESS = "参数完整性校验失败 (parameter completeness check failed)"
MSG_TEMPLATE = "模板不存在 (template not found)"

F1_TXT2IMG_TEMPLATE = "6f7c4652458d4802969f8d089cf5b91f"
F1_IMG2IMG_TEMPLATE = "63b72710c9574457ba303d9d9b8df8bd"
KNOWN_TEMPLATES = {
    STAR3_TXT2IMG_TEMPLATE,
    STAR3_IMG2IMG_TEMPLATE,
    CUSTOM_TXT2IMG_TEMPLATE,
    CUSTOM_IMG2IMG_TEMPLATE,
    F1_TXT2IMG_TEMPLATE,
    F1_IMG2IMG_TEMPLATE,
    "74509e1b072a4c45a7f1843a963c8462",  # inpaint
    "b689de89e8c9407a874acd415b3aa126",  # ControlNet inpaint
    "7d888009f81d4252a7c458c874cd017f",  # InstantID
}
TIMESTAMP_WINDOW_MS = 5 * 60 * 1000
SAMPLER_NUMBERS = frozenset([*range(22), 24, 25, 27, 28, 29, 30])
MAX_LORAS = 5
MAX_OSS_BYTES = 10 * 1024 * 1024


def liblib_signature(secret: str, path: str, timestamp: str, nonce: str) -> str:
    """The documented formula, written out independently of the adapter."""
    mac = hmac.new(secret.encode("utf-8"), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


class Call(Recorded):
    """One API request (tests/fakes/scaffold.py), with the envelope ``code`` answered."""

    @property
    def access_key(self) -> str | None:
        return self.key

    @property
    def t(self) -> float:
        return self.time

    @property
    def code(self) -> int | None:
        return self.reply.get("code") if isinstance(self.reply, dict) else None


@dataclasses.dataclass
class Task:
    uuid: str
    access_key: str
    path: str
    body: dict[str, Any]
    created: float
    img_count: int
    width: int
    height: int
    seeds: list[int]
    points: int
    wait_s: float
    run_s: float
    audit_s: float
    outcome: str = "ok"  # ok | failed | timeout
    generate_msg: str = ""
    rejected: frozenset[int] = frozenset()
    images: list[dict[str, Any]] | None = None  # issued when first reported at status 5

    @property
    def ends(self) -> float:
        audit = self.audit_s if self.outcome == "ok" else 0.0
        return self.created + self.wait_s + self.run_s + audit


class _Refused(Exception):
    def __init__(self, code: int, msg: str, status: int = 200) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise _Refused(CODE_PARAM, f"参数错误 (invalid parameter): {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class FakeLiblib(LoopbackServer):
    record_type = Call

    def __init__(
        self,
        keys: dict[str, str] | None = None,
        *,
        wait_s: float = 0.03,
        run_s: float = 0.08,
        audit_s: float = 0.0,
        result_ttl_s: float = 600.0,
        points_per_image: int = 10,
        balance: int = 100_000,
        reject_reused_nonce: bool = True,
        concurrency_limit: int | None = 5,
        submit_qps: float | None = None,
        http_statuses: bool = True,
        f1_checkpoints: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.http_statuses = http_statuses
        self.f1_checkpoints = set(f1_checkpoints)
        self.keys = dict(keys or {"ak1": "sk1"})
        self.wait_s, self.run_s, self.audit_s = wait_s, run_s, audit_s
        self.result_ttl_s = result_ttl_s
        self.points_per_image = points_per_image
        self.balance = {ak: balance for ak in self.keys}
        self.reject_reused_nonce = reject_reused_nonce
        self.concurrency_limit = concurrency_limit
        self.submit_qps = submit_qps
        self.tasks: dict[str, Task] = {}
        self.max_running_per_key: dict[str, int] = {}
        self._nonces: set[tuple[str, str]] = set()
        self._next_task: dict[str, Any] = {}
        self._last_submit: dict[str, float] = {}
        self._policies: dict[str, dict[str, str]] = {}  # OSS object key -> issued form fields
        self._results: dict[str, tuple[bytes, float]] = {}  # name -> (png, expires at)

    # --------------------------------------------------------------- lifecycle

    def origins(self) -> dict[str, web.Application]:
        api = web.Application(client_max_size=4 * 1024 * 1024)
        api.router.add_route("*", "/{path:.*}", self._handle_api, name="api")
        cdn = web.Application(client_max_size=MAX_OSS_BYTES + 1024 * 1024)
        cdn.router.add_post("/", self._handle_oss_upload, name="upload")
        cdn.router.add_get("/sd-images/{name}", self._handle_result, name="result")
        cdn.router.add_get("/{key:img/.+}", self._handle_uploaded, name="uploaded")
        return {"api": api, "cdn": cdn}

    def key_of(self, request: web.Request) -> str | None:
        return request.query.get("AccessKey")

    @property
    def cdn_url(self) -> str:
        return self.urls["cdn"]

    @property
    def calls(self) -> list[Call]:
        """Every API request (not the storage's)."""
        return self.calls_of(origin="api")

    @property
    def uploads(self) -> dict[str, bytes]:
        """The objects uploaded to the storage, by OSS key."""
        return self.files.as_bytes()

    @property
    def downloads(self) -> list[str]:
        """Result picture paths fetched (and answered 200)."""
        return [c.path for c in self.calls_of("result") if c.status == 200]

    # --------------------------------------------------------------- control

    def fail_next(
        self,
        code: int,
        msg: str,
        status: int = 200,
        *,
        path: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """The next ``times`` API requests (to ``path``, or any) answer this error."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None

        def on(call: Recorded) -> bool:
            return call.origin == "api" and path in (None, call.path)

        body = {"code": code, "msg": msg, "data": None}
        self.faults.fail(status, body, on=on, times=times, headers=headers)

    def throttle(
        self, times: int = 1, *, retry_after: float | None = None, path: str | None = None
    ) -> None:
        """The next ``times`` API requests answer HTTP 429 (with Retry-After if given)."""
        status = 429 if self.http_statuses else 200
        self.fail_next(
            CODE_RATE_LIMIT, MSG_RATE_LIMIT, status, path=path, times=times, retry_after=retry_after
        )

    def fail_next_task(self, msg: str = "生图失败 (generation failed)") -> None:
        """The next task submitted ends with status 6 and this ``generateMsg``."""
        self._next_task.update(outcome="failed", generate_msg=msg)

    def time_out_next_task(self, msg: str = "生图超时 (generation timed out)") -> None:
        """The next task submitted ends with status 7."""
        self._next_task.update(outcome="timeout", generate_msg=msg)

    def reject_next_task_images(self, *indices: int) -> None:
        """In the next task, these pictures fail review (auditStatus 4)."""
        self._next_task["rejected"] = frozenset(indices)

    def submits(self) -> list[Call]:
        return [c for c in self.calls if c.path in SUBMIT_PATHS and c.code == 0]

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    # --------------------------------------------------------------- API

    async def _handle_api(self, request: web.Request) -> web.Response:
        call = self.record(request)
        path, query, body = call.path, call.query, call.body
        try:
            if request.method != "POST":
                raise _Refused(CODE_PARAM, "only POST", 405)
            access_key = self._verify_signature(path, query)
            if not isinstance(body, dict):
                raise _Refused(CODE_PARAM, "参数错误 (invalid parameter): body must be JSON")
            if path == STATUS:
                data = self._status(access_key, body)
            elif path == UPLOAD_SIGNATURE:
                data = self._upload_signature(access_key, body)
            elif path in SUBMIT_PATHS:
                data = self._submit(access_key, path, body)
            else:
                raise _Refused(CODE_PARAM, "接口不存在 (no such endpoint)", 404)
        except _Refused as exc:
            if exc.code in (401, 403, 429) and exc.status == 200:
                exc.status = exc.code if self.http_statuses else 200
            payload = {"code": exc.code, "msg": exc.msg, "data": None}
            return web.json_response(payload, status=exc.status)
        return web.json_response({"code": 0, "msg": "", "data": data})

    def _verify_signature(self, path: str, query: dict[str, str]) -> str:
        access_key = query.get("AccessKey", "")
        sign = query.get("Signature", "")
        timestamp = query.get("Timestamp", "")
        nonce = query.get("SignatureNonce", "")
        if access_key not in self.keys:
            raise _Refused(CODE_SIGNATURE, MSG_ACCESS_KEY)
        if not (sign and timestamp.isdigit() and nonce):
            raise _Refused(CODE_SIGNATURE, MSG_SIGNATURE)
        if abs(time.time() * 1000 - int(timestamp)) > TIMESTAMP_WINDOW_MS:
            raise _Refused(CODE_SIGNATURE, MSG_TIMESTAMP)
        expected = liblib_signature(self.keys[access_key], path, timestamp, nonce)
        if not hmac.compare_digest(expected, sign):
            raise _Refused(CODE_SIGNATURE, MSG_SIGNATURE)
        if self.reject_reused_nonce:
            if (access_key, nonce) in self._nonces:
                raise _Refused(CODE_SIGNATURE, MSG_NONCE)
            self._nonces.add((access_key, nonce))
        return access_key

    # --------------------------------------------------------------- generate

    def _submit(self, access_key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        template = body.get("templateUuid")
        params = body.get("generateParams")
        _require(isinstance(params, dict), "generateParams")
        assert isinstance(params, dict)
        prompt = params.get("prompt")
        _require(isinstance(prompt, str) and 0 < len(prompt) <= 2000, "prompt (1-2000 chars)")
        count = params.get("imgCount")
        _require(_is_int(count) and 1 <= count <= 4, "imgCount (1-4)")
        if template not in KNOWN_TEMPLATES:
            raise _Refused(CODE_TEMPLATE_NOT_FOUND, MSG_TEMPLATE)
        if path == STAR3_TXT2IMG:
            _require(template == STAR3_TXT2IMG_TEMPLATE, "templateUuid")
            width, height = self._star3_size(params)
            if "steps" in params:
                _require(_is_int(params["steps"]) and params["steps"] >= 1, "steps")
        elif path == STAR3_IMG2IMG:
            _require(template == STAR3_IMG2IMG_TEMPLATE, "templateUuid")
            width, height = self._source_size(params.get("sourceImage"))
        else:
            img2img = path == CUSTOM_IMG2IMG
            f1 = params.get("checkPointId") in self.f1_checkpoints
            if f1:
                want = F1_IMG2IMG_TEMPLATE if img2img else F1_TXT2IMG_TEMPLATE
            else:
                want = CUSTOM_IMG2IMG_TEMPLATE if img2img else CUSTOM_TXT2IMG_TEMPLATE
            if template != want:
                raise _Refused(CODE_COMPLETENESS, MSG_COMPLETENESS)
            width, height = self._custom_params(params, img2img)
        if "中文敏感词" in prompt or "forbidden-word" in prompt:
            raise _Refused(CODE_SENSITIVE_PROMPT, MSG_SENSITIVE_PROMPT)
        now = time.monotonic()
        if self.submit_qps:
            last = self._last_submit.get(access_key)
            if last is not None and now - last < 1.0 / self.submit_qps:
                raise _Refused(CODE_RATE_LIMIT, MSG_RATE_LIMIT)
            self._last_submit[access_key] = now
        running = [t for t in self.tasks.values() if t.access_key == access_key and t.ends > now]
        if self.concurrency_limit is not None and len(running) >= self.concurrency_limit:
            raise _Refused(CODE_CONCURRENCY, MSG_CONCURRENCY)
        points = self.points_per_image * count
        if self.balance[access_key] < points:
            raise _Refused(CODE_POINTS, MSG_POINTS)
        self.balance[access_key] -= points
        task_id = uuid.uuid4().hex
        seed = params.get("seed")
        if _is_int(seed) and seed >= 0:
            seeds = [seed + i for i in range(count)]
        else:
            seeds = [int(task_id[i * 8 : i * 8 + 8], 16) for i in range(count)]
        options, self._next_task = self._next_task, {}
        task = Task(
            task_id,
            access_key,
            path,
            body,
            now,
            count,
            width,
            height,
            seeds,
            points,
            self.wait_s,
            self.run_s,
            self.audit_s,
            **options,
        )
        self.tasks[task_id] = task
        self.max_running_per_key[access_key] = max(
            self.max_running_per_key.get(access_key, 0), len(running) + 1
        )
        return {"generateUuid": task_id}

    @staticmethod
    def _star3_size(params: dict[str, Any]) -> tuple[int, int]:
        ratio = params.get("aspectRatio")
        size = params.get("imageSize")
        _require((ratio is None) != (size is None), "aspectRatio or imageSize (one of them)")
        if ratio is not None:
            sizes = {"square": (1024, 1024), "portrait": (768, 1024), "landscape": (1280, 720)}
            _require(ratio in sizes, "aspectRatio")
            return sizes[ratio]
        _require(isinstance(size, dict) and set(size) == {"width", "height"}, "imageSize")
        w, h = size["width"], size["height"]
        _require(_is_int(w) and 512 <= w <= 2048 and _is_int(h) and 512 <= h <= 2048, "size")
        return w, h

    def _custom_params(self, params: dict[str, Any], img2img: bool) -> tuple[int, int]:
        _require(isinstance(params.get("checkPointId"), str) and params["checkPointId"], "ckpt")
        _require(isinstance(params.get("negativePrompt", ""), str), "negativePrompt")
        _require(params.get("sampler") in SAMPLER_NUMBERS, "sampler")
        _require(_is_int(params.get("steps")) and 1 <= params["steps"] <= 60, "steps (1-60)")
        _require(_is_num(params.get("cfgScale")) and 1 <= params["cfgScale"] <= 15, "cfgScale")
        clip = params.get("clipSkip")
        _require(_is_int(clip) and 1 <= clip <= 12, "clipSkip (1-12)")
        _require(_is_int(params.get("seed", -1)), "seed")
        _require(params.get("randnSource", 0) in (0, 1), "randnSource")
        loras = params.get("additionalNetwork", [])
        _require(isinstance(loras, list) and len(loras) <= MAX_LORAS, "additionalNetwork")
        for lora in loras:
            _require(
                isinstance(lora, dict)
                and isinstance(lora.get("modelId"), str)
                and _is_num(lora.get("weight", 0.8)),
                "additionalNetwork entry",
            )
        if img2img:
            self._source_size(params.get("sourceImage"))
            strength = params.get("denoisingStrength")
            _require(_is_num(strength) and 0 <= strength <= 1, "denoisingStrength")
            _require(params.get("resizeMode", 0) in (0, 1, 2), "resizeMode")
            w, h = params.get("resizedWidth"), params.get("resizedHeight")
            hi = 2048
        else:
            w, h = params.get("width"), params.get("height")
            hi = 1536
        _require(_is_int(w) and 128 <= w <= hi and _is_int(h) and 128 <= h <= hi, "size")
        return w, h

    def _source_size(self, url: Any) -> tuple[int, int]:
        _require(
            isinstance(url, str) and url.startswith(("http://", "https://")),
            "sourceImage必须是可公网访问的完整URL (sourceImage must be a complete public URL)",
        )
        if url.startswith(self.cdn_url + "/"):
            key = url[len(self.cdn_url) + 1 :]
            if key not in self.files:
                raise _Refused(CODE_IMAGE_URL, "图片无法访问 (sourceImage cannot be fetched)")
            with Image.open(io.BytesIO(self.files.data(key))) as img:
                return img.size
        return 1024, 1024

    # --------------------------------------------------------------- status

    def _status(self, access_key: str, body: dict[str, Any]) -> dict[str, Any]:
        task = self.tasks.get(str(body.get("generateUuid")))
        if task is None or task.access_key != access_key:
            raise _Refused(CODE_NOT_FOUND, MSG_NOT_FOUND)
        elapsed = time.monotonic() - task.created
        percent, images, msg = 0.0, [], ""
        if elapsed < task.wait_s:
            status = 1
        elif elapsed < task.wait_s + task.run_s:
            status = 2
            percent = round((elapsed - task.wait_s) / task.run_s, 2)
        elif task.outcome != "ok":
            status, percent, msg = (6 if task.outcome == "failed" else 7), 1.0, task.generate_msg
        elif elapsed < task.wait_s + task.run_s + task.audit_s:
            status, percent = 4, 1.0
        else:
            status, percent, images = 5, 1.0, self._task_images(task)
        return {
            "generateUuid": task.uuid,
            "generateStatus": status,
            "percentCompleted": percent,
            "generateMsg": msg,
            "pointsCost": task.points if status >= 5 else 0,
            "accountBalance": self.balance[access_key],
            "images": images,
        }

    def _task_images(self, task: Task) -> list[dict[str, Any]]:
        if task.images is None:
            task.images = []
            expires = time.monotonic() + self.result_ttl_s
            for i in range(task.img_count):
                name = f"{task.uuid}-{i}.png"
                color = tuple((task.seeds[i] >> shift) & 0xFF for shift in (16, 8, 0))
                buf = io.BytesIO()
                Image.new("RGB", (task.width, task.height), color).save(buf, "PNG")
                self._results[name] = (buf.getvalue(), expires)
                task.images.append(
                    {
                        "imageUrl": f"{self.cdn_url}/sd-images/{name}",
                        "seed": task.seeds[i],
                    }
                )
        # Only pictures that passed review are listed [LL-DOC]; ``task.rejected`` is read
        # each time, so a test can let a withheld picture pass later.
        return [
            {**im, "auditStatus": 3} for i, im in enumerate(task.images) if i not in task.rejected
        ]

    # --------------------------------------------------------------- storage

    def _upload_signature(self, access_key: str, body: dict[str, Any]) -> dict[str, Any]:
        name, ext = body.get("name"), body.get("extension")
        _require(isinstance(name, str) and 0 < len(name) <= 100, "name")
        _require(ext in ("png", "jpg", "jpeg"), "extension (png, jpg, jpeg)")
        owner = hashlib.sha256(access_key.encode()).hexdigest()[:32]
        key = f"img/{owner}/{uuid.uuid4().hex}.{ext}"
        policy = base64.b64encode(
            json.dumps(
                {"expiration": "2099-01-01T00:00:00Z", "conditions": [["eq", "$key", key]]}
            ).encode()
        ).decode()
        fields = {
            "key": key,
            "policy": policy,
            "x-oss-date": "20250101T000000Z",
            "x-oss-expires": "3600",
            "x-oss-signature": hmac.new(b"fake-oss", policy.encode(), hashlib.sha256).hexdigest(),
            "x-oss-credential": "LTAI-fake/20250101/cn-beijing/oss/aliyun_v4_request",
            "x-oss-signature-version": "OSS4-HMAC-SHA256",
        }
        self._policies[key] = fields
        return {
            "key": key,
            "policy": policy,
            "postUrl": self.cdn_url,
            "xOssDate": fields["x-oss-date"],
            "xOssExpires": 3600,
            "xOssSignature": fields["x-oss-signature"],
            "xOssCredential": fields["x-oss-credential"],
            "xOssSignatureVersion": fields["x-oss-signature-version"],
        }

    async def _handle_oss_upload(self, request: web.Request) -> web.Response:
        call = self.record(request)
        fields, file = call.form, call.file("file")
        data = file.data if file is not None else None
        after_file = "file" in call.parts and call.parts[-1] != "file"
        issued = self._policies.get(fields.get("key", ""))
        if (
            issued is None
            or data is None
            or after_file
            or any(fields.get(k) != v for k, v in issued.items())
        ):
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        if len(data) > MAX_OSS_BYTES:
            return web.Response(status=400, text="<Error><Code>EntityTooLarge</Code></Error>")
        self.files.put(data, key=issued["key"], content_type="image/png")
        return web.Response(status=204)

    async def _handle_uploaded(self, request: web.Request) -> web.Response:
        return self.files.response(request.match_info["key"], "image/png")

    async def _handle_result(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._results.get(name)
        if found is None:
            return web.Response(status=404)
        data, expires = found
        if time.monotonic() > expires:
            return web.Response(
                status=403, text="<Error><Code>AccessDenied</Code>Request has expired</Error>"
            )
        return web.Response(body=data, content_type="image/png")
