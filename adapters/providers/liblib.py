"""LiblibAI (星流, liblib.art) open API: Star-3 Alpha and custom checkpoints with LoRAs.

What the official documentation says (Feishu wiki UAMVw67NcifQHukf8fpccgS5n6d, file upload
A9M2whHxsiKtu8kpIn3cZp0PnVw), and how this adapter follows it:

* Every request carries ``AccessKey``, ``Signature``, ``Timestamp`` (ms, valid 5 minutes) and
  ``SignatureNonce`` as query parameters; ``Signature`` is the URL-safe base64, without
  padding, of HMAC-SHA1(SecretKey, ``"<path>&<Timestamp>&<SignatureNonce>"``). Each attempt is
  signed afresh (a retry never reuses a timestamp or nonce).
* Star-3 Alpha: ``/api/generate/webui/text2img/ultra`` (``prompt``, ``imageSize`` 512-2048,
  ``imgCount`` 1-4, ``steps``) and ``/api/generate/webui/img2img/ultra`` (``prompt``,
  ``sourceImage``, ``imgCount``). It takes no negative prompt, seed, sampler or CFG scale.
* Custom models: ``/api/generate/webui/text2img`` and ``/img2img`` with ``checkPointId``,
  ``prompt``, ``negativePrompt``, ``sampler`` (a number), ``steps``, ``cfgScale``, ``width`` and
  ``height`` (img2img: ``resizedWidth``/``resizedHeight``), ``imgCount``, ``seed``,
  ``randnSource``, ``additionalNetwork`` (LoRAs), and for img2img ``sourceImage`` and
  ``denoisingStrength``. The img2img template is not the text2img one (see
  ``CUSTOM_IMG2IMG_TEMPLATE_UUID``).
* ``sourceImage`` must be "a complete URL reachable from the internet"; data URLs are not
  accepted. The input picture is therefore uploaded first through the documented upload
  flow: ``/api/generate/upload/signature`` gives an OSS form policy, the picture is posted to
  its ``postUrl``, and ``postUrl/key`` is the URL handed to the generation call.
* ``POST /api/generate/webui/status`` -> ``generateStatus`` 1 waiting, 2 running, 3 generated,
  4 auditing, 5 succeeded, 6 failed, 7 timed out; ``percentCompleted``, ``generateMsg``,
  ``pointsCost``, ``accountBalance``, ``images[{imageUrl, seed, auditStatus}]`` (auditStatus 3
  is "passed"; the rest is withheld). Result URLs expire, so pictures are fetched at once.
* The submit endpoints allow one call per second per account: submissions on one key are
  spaced by ``submit_interval_s``; a key runs 5 tasks at once unless configured otherwise.
* Failures are classified by the documented error codes (§8; providers.md "LiblibAI open
  API"), never by the message's words. 401, 403 and 429 are handled both as HTTP statuses
  and as envelope codes (the docs do not say which they are).
* Limits: custom text2img sides 128-1536 (img2img 128-2048; Star-3 512-2048), cfgScale
  1-15, steps 1-60, samplers 0-21, 24, 25, 27-30; ``clipSkip`` (default 2) is sent. F.1
  checkpoints need the F.1 templates: each custom model names its base or templates.
* Only pictures that passed review are listed, so a picture's position in the list is not
  its identity: the index each picture was delivered as is stored by its URL (in the
  task's state), and a resumed task never takes a position for a picture.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import io
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from adapters.http import retry_after_s
from adapters.providers.cloud import (
    ApiKey,
    KeyPool,
    TaskTimes,
    download,
    http_client,
    poll_delays,
    transport_failure,
    with_retries,
)
from bot.config import LiblibConfig, LiblibModelConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import Capabilities, ModelInfo, Provider, ProviderRun, ResultImage

log = logging.getLogger(__name__)

STAR3 = "star3"

STAR3_TXT2IMG_PATH = "/api/generate/webui/text2img/ultra"
STAR3_IMG2IMG_PATH = "/api/generate/webui/img2img/ultra"
CUSTOM_TXT2IMG_PATH = "/api/generate/webui/text2img"
CUSTOM_IMG2IMG_PATH = "/api/generate/webui/img2img"
STATUS_PATH = "/api/generate/webui/status"
UPLOAD_SIGNATURE_PATH = "/api/generate/upload/signature"

# The documented "1.5和XL图生图 - 自定义完整参数" template. LiblibConfig has one
# ``custom_template_uuid`` (the text2img template, e10adc39...); a config key
# ``custom_img2img_template_uuid`` is read when it exists.
CUSTOM_IMG2IMG_TEMPLATE_UUID = "9c7d531dc75f476aa833b3d452b8f7ad"

# LiblibAI's sampler numbers (§7.5; 15 is the documented default, "DPM++ 2M Karras").
# 22, 23 and 26 do not exist.
SAMPLERS: dict[str, int] = {
    "Euler a": 0,
    "Euler": 1,
    "LMS": 2,
    "Heun": 3,
    "DPM2": 4,
    "DPM2 a": 5,
    "DPM++ 2S a": 6,
    "DPM++ 2M": 7,
    "DPM++ SDE": 8,
    "DPM fast": 9,
    "DPM adaptive": 10,
    "LMS Karras": 11,
    "DPM2 Karras": 12,
    "DPM2 a Karras": 13,
    "DPM++ 2S a Karras": 14,
    "DPM++ 2M Karras": 15,
    "DPM++ SDE Karras": 16,
    "DDIM": 17,
    "PLMS": 18,
    "UniPC": 19,
    "DPM++ 2M SDE Karras": 20,
    "DPM++ 2M SDE Exponential": 21,
    "DPM++ 2M SDE Heun Karras": 24,
    "DPM++ 2M SDE Heun Exponential": 25,
    "DPM++ 3M SDE Karras": 27,
    "DPM++ 3M SDE Exponential": 28,
    "Restart": 29,
    "LCM": 30,
}
_SAMPLER_KEYS = {" ".join(name.lower().split()): number for name, number in SAMPLERS.items()}

WAITING, RUNNING, GENERATED, AUDITING, SUCCEEDED, FAILED, TIMED_OUT = 1, 2, 3, 4, 5, 6, 7
AUDIT_PASSED = 3

MIN_SIZE, MAX_SIZE = 512, 2048  # Star-3
CUSTOM_MIN_SIDE, CUSTOM_TXT2IMG_MAX, CUSTOM_IMG2IMG_MAX = 128, 1536, 2048
MIN_STEPS, MAX_STEPS = 1, 60
MIN_CFG, MAX_CFG = 1.0, 15.0
MAX_IMAGES = 4
MAX_PROMPT = 2000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the upload flow's limit per picture
DEFAULT_STAR3_STEPS = 30  # the documentation's recommendation
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_STRENGTH = 0.75
RESIZE_CROP = 1  # resizeMode: 0 stretch, 1 crop, 2 fill

# Progress while LiblibAI's own percentCompleted stays at 0 (it is documented as "not yet
# implemented"): a floor per status.
_STATUS_FLOOR = {WAITING: 0.02, RUNNING: 0.1, GENERATED: 0.85, AUDITING: 0.9}

# The documented error codes (§8): code -> (class, what the person reads, retried).
_RETRY = True
_CODES: dict[int, tuple[FailureClass, str, bool]] = {
    401: (FailureClass.PROVIDER_ERROR, "the LiblibAI key was rejected (signature check)", False),
    403: (FailureClass.PROVIDER_ERROR, "LiblibAI denied access to the bot's key", False),
    429: (FailureClass.PROVIDER_ERROR, "LiblibAI is throttling requests", _RETRY),
    100000: (FailureClass.BAD_INPUT, "LiblibAI did not accept the request", False),
    100010: (
        FailureClass.PROVIDER_ERROR,
        "the LiblibAI key was rejected: its API plan has expired; tell the bot's operator",
        False,
    ),
    100020: (FailureClass.PROVIDER_ERROR, "the LiblibAI key was rejected (no such user)", False),
    100021: (FailureClass.PROVIDER_ERROR, "the LiblibAI account is out of points", False),
    100030: (
        FailureClass.BAD_INPUT,
        "LiblibAI could not fetch the input picture, or it is over 10 MB",
        False,
    ),
    100031: (FailureClass.REFUSED, "LiblibAI refused the input picture (content)", False),
    100032: (FailureClass.PROVIDER_ERROR, "LiblibAI could not download the picture", _RETRY),
    100050: (
        FailureClass.PROVIDER_ERROR,
        "the model's LiblibAI settings do not fit together (template, checkpoint, LoRA); "
        "tell the bot's operator",
        False,
    ),
    100051: (FailureClass.PROVIDER_ERROR, "LiblibAI no longer knows this task", False),
    100052: (FailureClass.REFUSED, "LiblibAI refused the prompt (sensitive content)", False),
    100053: (
        FailureClass.PROVIDER_ERROR,
        "the bot's LiblibAI account may not use this model; tell the bot's operator",
        False,
    ),
    100054: (FailureClass.PROVIDER_ERROR, "LiblibAI is throttling: too many tasks at once", _RETRY),
    100055: (FailureClass.REFUSED, "LiblibAI refused the result (sensitive content)", False),
    100120: (
        FailureClass.PROVIDER_ERROR,
        "LiblibAI does not know the model's template; tell the bot's operator",
        False,
    ),
    200000: (FailureClass.PROVIDER_ERROR, "LiblibAI had an internal error", _RETRY),
    200001: (
        FailureClass.PROVIDER_ERROR,
        "LiblibAI does not know this model; tell the bot's operator",
        False,
    ),
    210000: (FailureClass.PROVIDER_ERROR, "LiblibAI asked to try again", _RETRY),
}
# A failed task (status 6) carries only a message: these words mark a refusal.
_REFUSED_WORDS = ("审核", "敏感", "违规", "违禁", "不合规", "moderat", "sensitive", "nsfw")


def signature(secret: str, uri: str, timestamp: str, nonce: str) -> str:
    """LiblibAI's request signature: URL-safe base64 without padding of
    HMAC-SHA1(SecretKey, ``uri&timestamp&nonce``)."""
    digest = hmac.new(secret.encode(), f"{uri}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_query(key: ApiKey, uri: str) -> dict[str, str]:
    """The four query parameters every request carries, freshly signed."""
    timestamp = str(int(time.time() * 1000))
    nonce = secrets.token_hex(16)
    return {
        "AccessKey": key.key,
        "Signature": signature(key.secret, uri, timestamp, nonce),
        "Timestamp": timestamp,
        "SignatureNonce": nonce,
    }


def sampler_number(name: str) -> int | None:
    """LiblibAI's number for a sampler name (case and spacing do not matter), or None."""
    text = " ".join(name.lower().split())
    if text.isdigit() and int(text) in SAMPLERS.values():
        return int(text)
    return _SAMPLER_KEYS.get(text)


@dataclass(slots=True)
class _Plan:
    path: str
    body: dict[str, Any]
    needs_source: bool


def _url_id(url: str) -> str:
    """A picture's identity: its URL without the query (signatures may change)."""
    return url.split("?", 1)[0]


def _has(text: str, words: tuple[str, ...]) -> bool:
    return any(w in text for w in words)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _upload_bytes(png: bytes) -> tuple[bytes, str, str]:
    """The input picture as LiblibAI's upload takes it (png/jpg, at most 10 MB)."""
    if len(png) <= MAX_UPLOAD_BYTES:
        return png, "png", "image/png"
    with Image.open(io.BytesIO(png)) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    if len(data) > MAX_UPLOAD_BYTES:
        raise ProviderFailure(
            FailureClass.BAD_INPUT, "the input picture is too large for LiblibAI (10 MB at most)"
        )
    return data, "jpg", "image/jpeg"


class LiblibProvider(Provider):
    name = "liblib"

    def __init__(self, config: LiblibConfig) -> None:
        self.config = config
        self.pool = KeyPool.from_config(config)
        for key in self.pool.keys.values():
            if not key.secret:
                raise ValueError(
                    f"providers.liblib key {key.name!r} has no secret (LiblibAI's SecretKey)"
                )
        if STAR3 in config.models:
            raise ValueError(f"providers.liblib.models: {STAR3!r} is the built-in Star-3 model")
        for name, model in config.models.items():
            for lora in model.loras:
                if not (lora.get("model_id") or lora.get("modelId")):
                    raise ValueError(f"providers.liblib.models.{name}: a LoRA has no model_id")
        self._base = config.base_url.rstrip("/")
        self._client = http_client(config)
        self._secrets = [s for k in self.pool.keys.values() for s in (k.key, k.secret) if s]
        # Submissions per key are spaced this far apart (LiblibAI: 1 per second).
        self.submit_interval_s = 1.0
        self._submit_locks: dict[str, asyncio.Lock] = {}
        self._last_submit: dict[str, float] = {}
        self.polls: list[int] = []  # status polls each job took, in the order jobs ended
        self.task_times = TaskTimes()  # each model's usual task duration, to poll near it

    # --- what it offers -------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        models = [
            ModelInfo(
                STAR3,
                "LiblibAI Star-3 Alpha (星流): photoreal, picks its own LoRAs and sampler; "
                "no negative prompt, seed or strength",
                max_prompt=MAX_PROMPT,
            )
        ]
        for name, model in self.config.models.items():
            loras = f" + {len(model.loras)} LoRA" if model.loras else ""
            models.append(
                ModelInfo(
                    name,
                    model.description or f"LiblibAI custom checkpoint{loras}",
                    max_prompt=MAX_PROMPT,
                    max_negative=MAX_PROMPT,
                    min_side=CUSTOM_MIN_SIDE,
                    max_side=CUSTOM_TXT2IMG_MAX,
                )
            )
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=tuple(models),
            default_model=STAR3,
            max_images=MAX_IMAGES,
            min_size=MIN_SIZE,
            max_size=MAX_SIZE,
            size_multiple=8,
            description="LiblibAI (星流): Star-3 Alpha and custom checkpoints with LoRAs",
        )

    # --- one job --------------------------------------------------------------------------

    async def generate(self, run: ProviderRun) -> None:
        polls = [0]
        try:
            if run.task_id is None:
                plan = self._plan(run.request)  # refuses bad requests before any call
                async with self.pool.use() as key:
                    if plan.needs_source:
                        source = await self._upload(key, run.request)
                        plan.body["generateParams"]["sourceImage"] = source
                    task_id = await self._submit(key, plan)
                    await run.submitted(task_id, {"key": key.name})
                    await self._follow(run, key, task_id, polls)
            else:
                wanted = run.state.get("key")
                if wanted is not None and wanted not in self.pool.keys:
                    log.warning("liblib task %s: its key %r is gone", run.task_id, wanted)
                async with self.pool.use(wanted) as key:
                    await self._follow(run, key, run.task_id, polls, resumed=True)
        finally:
            self.polls.append(polls[0])

    def _plan(self, req: Any) -> _Plan:
        number = None
        if req.sampler:
            number = sampler_number(req.sampler)
            if number is None:
                known = ", ".join(SAMPLERS)
                raise ProviderFailure(
                    FailureClass.BAD_INPUT,
                    f"LiblibAI has no sampler {req.sampler!r}; use one of: {known}",
                )
        if not (1 <= req.n <= MAX_IMAGES):
            raise ProviderFailure(
                FailureClass.BAD_INPUT, f"LiblibAI makes 1 to {MAX_IMAGES} pictures per job"
            )
        model = req.model or STAR3
        img2img = req.kind == "img2img"
        if model == STAR3:
            lo, hi = MIN_SIZE, MAX_SIZE
        else:
            lo, hi = CUSTOM_MIN_SIDE, CUSTOM_IMG2IMG_MAX if img2img else CUSTOM_TXT2IMG_MAX
        if not (lo <= req.width <= hi and lo <= req.height <= hi):
            raise ProviderFailure(
                FailureClass.BAD_INPUT,
                f"LiblibAI makes pictures {lo} to {hi} pixels on each side with this model",
            )
        if req.steps is not None and not MIN_STEPS <= req.steps <= MAX_STEPS:
            raise ProviderFailure(
                FailureClass.BAD_INPUT, f"LiblibAI takes {MIN_STEPS} to {MAX_STEPS} steps"
            )
        if req.cfg is not None and not MIN_CFG <= req.cfg <= MAX_CFG:
            raise ProviderFailure(
                FailureClass.BAD_INPUT, f"LiblibAI takes a CFG scale of {MIN_CFG:g} to {MAX_CFG:g}"
            )
        if len(req.prompt) > MAX_PROMPT:
            raise ProviderFailure(
                FailureClass.BAD_INPUT, f"LiblibAI takes prompts of at most {MAX_PROMPT} characters"
            )
        if img2img and not req.init_image:
            raise ProviderFailure(FailureClass.BAD_INPUT, "img2img needs an input picture")
        if model == STAR3:
            return self._star3(req, img2img)
        custom = self.config.models.get(model)
        if custom is None:
            names = ", ".join([STAR3, *self.config.models])
            raise ProviderFailure(
                FailureClass.BAD_INPUT, f"LiblibAI has no model {model!r}; available: {names}"
            )
        return self._custom(req, custom, number, img2img)

    def _star3(self, req: Any, img2img: bool) -> _Plan:
        if img2img:
            params: dict[str, Any] = {"prompt": req.prompt, "sourceImage": "", "imgCount": req.n}
            body: dict[str, Any] = {"templateUuid": self.config.star3_img2img_template_uuid}
            return _Plan(STAR3_IMG2IMG_PATH, {**body, "generateParams": params}, True)
        params = {
            "prompt": req.prompt,
            "imageSize": {"width": req.width, "height": req.height},
            "imgCount": req.n,
            "steps": req.steps or DEFAULT_STAR3_STEPS,
        }
        body = {"templateUuid": self.config.star3_template_uuid, "generateParams": params}
        return _Plan(STAR3_TXT2IMG_PATH, body, False)

    def _custom(
        self, req: Any, model: LiblibModelConfig, sampler: int | None, img2img: bool
    ) -> _Plan:
        params: dict[str, Any] = {
            "checkPointId": model.checkpoint_id,
            "prompt": req.prompt,
            "negativePrompt": req.negative,
            "sampler": model.sampler if sampler is None else sampler,
            "steps": req.steps or DEFAULT_STEPS,
            "cfgScale": req.cfg if req.cfg is not None else DEFAULT_CFG,
            "clipSkip": model.clip_skip,
        }
        if img2img:
            params |= {
                "sourceImage": "",
                "resizeMode": RESIZE_CROP,
                "resizedWidth": req.width,
                "resizedHeight": req.height,
                "mode": 0,
                "denoisingStrength": (
                    req.strength if req.strength is not None else DEFAULT_STRENGTH
                ),
            }
        else:
            params |= {"width": req.width, "height": req.height}
        params |= {"imgCount": req.n, "seed": req.seed, "randnSource": 0}
        if model.loras:
            params["additionalNetwork"] = [
                {
                    "modelId": lora.get("model_id") or lora.get("modelId"),
                    "weight": lora.get("weight", 0.8),
                }
                for lora in model.loras
            ]
        cfg = self.config
        f1 = model.base == "f1"
        if img2img:
            template = model.img2img_template_uuid or (
                cfg.f1_img2img_template_uuid if f1 else cfg.custom_img2img_template_uuid
            )
            body = {"templateUuid": template, "generateParams": params}
            return _Plan(CUSTOM_IMG2IMG_PATH, body, True)
        template = model.template_uuid or (cfg.f1_template_uuid if f1 else cfg.custom_template_uuid)
        body = {"templateUuid": template, "generateParams": params}
        return _Plan(CUSTOM_TXT2IMG_PATH, body, False)

    # --- calls ----------------------------------------------------------------------------

    async def _call(
        self,
        key: ApiKey,
        path: str,
        body: dict[str, Any],
        *,
        what: str,
        submit: bool = False,
    ) -> dict[str, Any]:
        """One signed POST; the envelope's ``data``, or a classified ProviderFailure."""
        try:
            response = await self._client.post(
                self._base + path, params=signed_query(key, path), json=body
            )
        except httpx.HTTPError as exc:
            sent = not isinstance(
                exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
            )
            if submit and sent:
                # It may have reached LiblibAI: sending it again could pay for it twice.
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"{what}: no answer from LiblibAI ({type(exc).__name__}); "
                    "not sent again so the task is not paid for twice",
                ) from exc
            raise transport_failure(exc, what) from exc
        envelope: Any = None
        try:
            envelope = response.json()
        except ValueError:
            pass
        if not isinstance(envelope, dict):
            envelope = {}
        code = envelope.get("code")
        if response.status_code >= 400 or code not in (0, "0"):
            if response.status_code < 400 and code is None:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"{what}: LiblibAI sent an answer that is not its API's",
                    retry_after=0.0,
                )
            raise self._failure(response, code, str(envelope.get("msg") or ""), what)
        data = envelope.get("data")
        return data if isinstance(data, dict) else {}

    def _failure(self, response: httpx.Response, code: Any, msg: str, what: str) -> ProviderFailure:
        """By the documented code: the HTTP status when it is 401, 403 or 429 (or a server
        error), else the envelope's code. Never by the message's words."""
        status = response.status_code
        shown = self._clean(msg)
        number = _as_int(code)
        detail = f" ({shown})" if shown else (f" (code {code})" if code is not None else "")
        if status >= 500 and number not in _CODES:
            return ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"{what}: LiblibAI had a server error (HTTP {status}){detail}",
                retry_after=retry_after_s(response) or 0.0,
            )
        key = status if status in (401, 403, 429) else number
        known = _CODES.get(key) if key is not None else None
        if known is None:
            if status in (400, 404, 422):
                return ProviderFailure(
                    FailureClass.BAD_INPUT, f"LiblibAI did not accept the request{detail}"
                )
            return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: LiblibAI failed{detail}")
        failure, text, retried = known
        if failure is FailureClass.PROVIDER_ERROR and not retried:
            log.error("liblib: %s [code %s: %s]", text, key, shown)
        wait = retry_after_s(response)
        return ProviderFailure(
            failure,
            f"{text}{detail}",
            retry_after=(0.0 if wait is None else wait) if retried else None,
        )

    def _clean(self, msg: str) -> str:
        """LiblibAI's message made safe for a chat: one line, short, never a key."""
        text = " ".join(msg.split())
        for s in self._secrets:
            text = text.replace(s, "***")
        return text[:160]

    async def _retrying(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        return await with_retries(self.config, call, what=what)

    async def _pace(self, key: ApiKey) -> None:
        lock = self._submit_locks.setdefault(key.name, asyncio.Lock())
        async with lock:
            last = self._last_submit.get(key.name)
            if last is not None:
                wait = last + self.submit_interval_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._last_submit[key.name] = time.monotonic()

    async def _submit(self, key: ApiKey, plan: _Plan) -> str:
        async def attempt() -> dict[str, Any]:
            await self._pace(key)
            return await self._call(key, plan.path, plan.body, what="LiblibAI", submit=True)

        data = await self._retrying(attempt, "liblib submit")
        task_id = data.get("generateUuid")
        if not task_id or not isinstance(task_id, str):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, "LiblibAI accepted the task but sent no task id"
            )
        log.info("liblib: task %s submitted with key %s", task_id, key.name)
        return task_id

    async def _upload(self, key: ApiKey, req: Any) -> str:
        """Upload the input picture through LiblibAI's upload flow; its public URL."""
        data, ext, mime = await asyncio.to_thread(_upload_bytes, req.init_image)
        name = f"sdhost-{req.job_id}-{secrets.token_hex(4)}"
        sig = await self._retrying(
            lambda: self._call(
                key,
                UPLOAD_SIGNATURE_PATH,
                {"name": name, "extension": ext},
                what="LiblibAI upload",
            ),
            "liblib upload signature",
        )
        fields = {
            "key": "key",
            "policy": "policy",
            "x-oss-date": "xOssDate",
            "x-oss-expires": "xOssExpires",
            "x-oss-signature": "xOssSignature",
            "x-oss-credential": "xOssCredential",
            "x-oss-signature-version": "xOssSignatureVersion",
        }
        missing = [src for src in [*fields.values(), "postUrl"] if sig.get(src) in (None, "")]
        if missing:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"LiblibAI's upload answer lacks {', '.join(missing)}",
            )
        form = {field: str(sig[src]) for field, src in fields.items()}
        post_url = str(sig["postUrl"])

        async def post() -> None:
            try:
                # httpx sends form fields before the file, as OSS requires ("file" last).
                response = await self._client.post(
                    post_url, data=form, files={"file": (f"{name}.{ext}", data, mime)}
                )
            except httpx.HTTPError as exc:
                raise transport_failure(exc, "LiblibAI upload") from exc
            if response.status_code >= 400:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    "the input picture could not be uploaded to LiblibAI "
                    f"(HTTP {response.status_code})",
                    retry_after=0.0 if response.status_code >= 500 else None,
                )

        await self._retrying(post, "liblib upload")
        return f"{post_url.rstrip('/')}/{str(sig['key']).lstrip('/')}"

    # --- following a task -----------------------------------------------------------------

    async def _follow(
        self,
        run: ProviderRun,
        key: ApiKey,
        task_id: str,
        polls: list[int],
        *,
        resumed: bool = False,
    ) -> None:
        shown = 0.0
        body = {"generateUuid": task_id}
        schedule = poll_delays(self.config, self.task_times, run.request.model, resumed=resumed)
        async for n in schedule:
            polls[0] = n
            data = await self._retrying(
                lambda: self._call(key, STATUS_PATH, body, what="LiblibAI status"),
                "liblib status",
            )
            status = _as_int(data.get("generateStatus"))
            if status == SUCCEEDED:
                schedule.ended()
                await self._deliver(run, task_id, data)
                return
            if status == FAILED:
                msg = self._clean(str(data.get("generateMsg") or ""))
                failure = (
                    FailureClass.REFUSED
                    if _has(msg.lower(), _REFUSED_WORDS)
                    else FailureClass.PROVIDER_ERROR
                )
                raise ProviderFailure(
                    failure, f"LiblibAI could not make the picture: {msg or 'the task failed'}"
                )
            if status == TIMED_OUT:
                msg = self._clean(str(data.get("generateMsg") or ""))
                raise ProviderFailure(
                    FailureClass.TIMEOUT,
                    "LiblibAI timed out making the picture" + (f" ({msg})" if msg else ""),
                )
            fraction = _STATUS_FLOOR.get(status or 0, 0.0)
            reported = data.get("percentCompleted")
            if isinstance(reported, int | float) and status in (RUNNING, GENERATED, AUDITING):
                value = float(reported) / (100.0 if reported > 1 else 1.0)
                fraction = max(fraction, min(value, 1.0) * 0.9)
            fraction = min(fraction, 0.95)
            if fraction > shown:
                shown = fraction
                await run.progress(fraction)

    async def _deliver(self, run: ProviderRun, task_id: str, data: dict[str, Any]) -> None:
        req = run.request
        extra = {
            "points_cost": data.get("pointsCost"),
            "account_balance": data.get("accountBalance"),
        }
        log.info(
            "liblib task %s (job %s) succeeded: %s points, account balance %s",
            task_id,
            req.job_id,
            extra["points_cost"],
            extra["account_balance"],
        )
        images = data.get("images")
        listed: list[tuple[str, dict[str, Any]]] = []
        for image in images if isinstance(images, list) else []:
            # only pictures that passed review are listed; anything else is skipped too
            url = image.get("imageUrl") if isinstance(image, dict) else None
            if url and _as_int(image.get("auditStatus")) in (None, AUDIT_PASSED):
                listed.append((str(url), image))
        passed = len(listed)
        withheld = max(0, req.n - passed)
        # A picture's index is fixed the first time it is seen, by its URL, and stored with
        # the task before it is delivered: positions in the list shift when a picture is
        # withheld, so a resumed task never goes by position.
        shown: dict[str, int] = {
            k: v for k, v in dict(run.state.get("shown") or {}).items() if isinstance(v, int)
        }
        before = dict(shown)
        for url, _ in listed:
            if _url_id(url) in shown:
                continue
            taken = set(shown.values())
            free = [i for i in range(req.n) if i not in taken and not run.has_image(i)]
            if not free:
                log.warning("liblib task %s: more pictures than asked for", task_id)
                continue
            shown[_url_id(url)] = free[0]
        if shown != before:
            await run.submitted(task_id, {**run.state, "shown": shown})
        for url, image in listed:
            index = shown.get(_url_id(url))
            if index is None or run.has_image(index):
                continue
            blob = await self._retrying(
                functools.partial(download, self._client, url, what="LiblibAI"),
                "liblib download",
            )
            seed = _as_int(image.get("seed"))
            await run.image(
                index,
                ResultImage(
                    data=blob,
                    seed=seed if seed is not None and seed >= 0 else req.seed + index,
                    extra=dict(extra),
                ),
            )
        if withheld:
            log.info("liblib task %s: %d picture(s) withheld by review", task_id, withheld)
        if not passed:
            raise ProviderFailure(
                FailureClass.REFUSED,
                "the picture did not pass LiblibAI's review"
                if req.n == 1
                else "the pictures did not pass LiblibAI's review",
            )

    async def aclose(self) -> None:
        await self._client.aclose()
