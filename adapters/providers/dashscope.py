"""Alibaba Cloud DashScope: Tongyi Wanxiang (通义万相) text-to-image and image editing.

Every call is an asynchronous task: submit with ``X-DashScope-Async: enable``, get a task id,
poll ``GET /api/v1/tasks/{id}`` until it ends, then fetch the result pictures at once (their
signed OSS links expire after about a day). The task id and the *name* of the key that
submitted it are handed to the core before the first poll, so a restart resumes polling the
same task with the same key instead of paying for a new one.

img2img. The Wanxiang text-to-image models take no input picture; image editing is a
separate model (``wanx2.1-imageedit``, one of its functions such as ``stylization_all``) on
a separate endpoint. The core's router picks the provider's default model when no --model
is given, for img2img too, so the default text-to-image model is listed as able to do
img2img and a job for it is handed to the edit model here. The edit model keeps the input
picture's size, so the input is first resized to the size the core resolved.

Regions (docs/shared providers.md, "Alibaba Cloud Model Studio (DashScope)"):
``wanx2.1-imageedit`` exists only in Beijing; with the international (Singapore) or US
endpoint img2img goes to ``wan2.5-i2i-preview``, which takes ``input.images`` instead of a
function and a base picture. Two edit functions are offered as models of their own in
Beijing: ``wanx2.1-imageedit:super_resolution`` (upscale by ``upscale_factor``) and
``wanx2.1-imageedit:expand`` (outpaint by ``expand_scale`` on every side).

Limits. DashScope cuts prompts over 800 characters (negative prompts over 500) silently,
so the router refuses them before anything is charged (each model's ModelInfo says so), as
it does sizes over about 2 megapixels (wan2.5-t2i-preview: 768*768 to 1440*1440 pixels,
1:4 to 4:1). An Alibaba Cloud account allows 2 task submissions a second and 2 tasks in
progress for these models, shared by all its keys: keys name their account
(``keys = [{ key = "...", account = "a" }]``), submissions are paced per account and tasks
beyond the account's limit wait here rather than at DashScope.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import urllib.parse
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
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
from bot.config import DashScopeConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import Capabilities, ModelInfo, Provider, ProviderRun, ResultImage
from bot.text import clip

log = logging.getLogger(__name__)

WHAT = "DashScope"

T2I_MODELS: dict[str, str] = {
    "wanx2.1-t2i-turbo": "Tongyi Wanxiang 2.1 Turbo: fast text-to-image",
    "wanx2.1-t2i-plus": "Tongyi Wanxiang 2.1 Plus: richer detail, slower",
    "wanx2.0-t2i-turbo": "Tongyi Wanxiang 2.0 Turbo",
    "wan2.2-t2i-flash": "Wan 2.2 Flash: fast text-to-image",
    "wan2.2-t2i-plus": "Wan 2.2 Plus: text-to-image, richer detail",
    "wan2.5-t2i-preview": "Wan 2.5 preview: 0.6 to 2 megapixels, 1:4 to 4:1",
}
WAN25_T2I = "wan2.5-t2i-preview"
EDIT_V21 = "wanx2.1-imageedit"  # Beijing only
EDIT_V25 = "wan2.5-i2i-preview"  # Beijing and Singapore
# Edit functions offered as models of their own: model name -> (function, description)
EDIT_VARIANTS: dict[str, tuple[str, str]] = {
    f"{EDIT_V21}:super_resolution": ("super_resolution", "upscale the picture"),
    f"{EDIT_V21}:expand": ("expand", "outpaint: extend the picture on every side"),
}
# Inpainting with a mask (ResolvedRequest.mask). Not listed in capabilities: no chat
# action gives a mask yet.
EDIT_MASK = f"{EDIT_V21}:description_edit_with_mask"
MAX_PROMPT, MAX_NEGATIVE = 800, 500  # longer is cut silently by DashScope
MAX_PIXELS = 2_000_000  # wan2.2 and older: "up to 2 megapixels"
MAX_INPUT_BYTES = 10 * 1024 * 1024  # edit inputs

# Functions of the edit model that take ``parameters.strength`` (0..1, larger = further
# from the input picture, as with a denoising strength).
STRENGTH_FUNCTIONS = frozenset({"stylization_all", "description_edit"})

MIN_SIDE, MAX_SIDE = 512, 1440  # wanx2.x text-to-image: each side; the edit model 512..4096
MAX_SEED = 2**31 - 1  # DashScope's seed range is [0, 2147483647]
MAX_IMAGES = 4

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return clip(text, limit)


def classify(
    status: int | None, code: str, message: str, *, retry_after: float | None = None
) -> ProviderFailure:
    """A DashScope error code (HTTP answer or a failed task's ``output.code``) as a failure
    a person can read and the refund policy understands. ``status`` is None for a failed
    task: its code says everything."""
    code = code or ""
    detail = f" ({_short(message)})" if message else ""
    lower = code.lower()
    reason = _account_problem(code, message)
    if reason is not None:
        # Retrying cannot cure these: fail at once; the operator reads why in the log.
        log.error("DashScope account problem: %s [%s: %s]", reason, code, _short(message))
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "DashScope cannot make pictures for this bot right now: its account needs the "
            "operator's attention",
        )
    if code.startswith("Throttling") or status == 429:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "DashScope is rate-limiting requests right now; try again in a little while",
            retry_after=retry_after if retry_after is not None else 0.0,
        )
    if code == "InvalidApiKey" or status == 401:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "the DashScope key was rejected; the bot's operator needs to check its API key",
        )
    if code == "Arrearage":
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "the DashScope account is out of credit (overdue payment); tell the bot's operator",
        )
    if "quota" in lower or "freetier" in lower:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "the DashScope account has used up its quota for this model; tell the bot's operator",
        )
    if code in ("DataInspectionFailed", "data_inspection_failed", "IPInfringementSuspect"):
        what = "a possible copyright problem" if code == "IPInfringementSuspect" else "content"
        return ProviderFailure(
            FailureClass.REFUSED,
            f"DashScope refused this request on {what} grounds; change the prompt or picture",
        )
    if code.startswith("AccessDenied") or status == 403:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"DashScope denied access{detail}; the key may not be allowed to use this model",
        )
    if code.startswith("InternalError") or (status is not None and status >= 500):
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "DashScope had an internal error; try again later",
            retry_after=retry_after if retry_after is not None else 0.0,
        )
    if code == "RequestTimeOut" or status == 408:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            "DashScope timed out on this request; try again later",
            retry_after=retry_after if retry_after is not None else 0.0,
        )
    bad_request = code.startswith(("InvalidParameter", "BadRequest", "InvalidURL"))
    if bad_request or status in (400, 413, 422):
        return ProviderFailure(
            FailureClass.BAD_INPUT, f"DashScope did not accept this request{detail}"
        )
    shown = f"{code}: {_short(message)}" if code else _short(message) or f"HTTP {status}"
    return ProviderFailure(FailureClass.PROVIDER_ERROR, f"DashScope failed ({shown})")


# Codes (HTTP 429 and 403) that mean the account itself cannot be served; retrying will not
# cure them [DS-ERR] (providers.md, "Errors").
_ACCOUNT_PROBLEMS = {
    "PrepaidBillOverdue": "the prepaid balance is used up (top up the Alibaba Cloud account)",
    "PostpaidBillOverdue": "a postpaid bill is overdue (settle the Alibaba Cloud bill)",
    "CommodityNotPurchased": "the model is not activated for this account (activate it in "
    "Model Studio)",
    "AllocationQuota.FreeTierOnly": "the key is limited to the free tier and its free quota is "
    "used up (turn off 'free tier only' in Model Studio)",
}


def _account_problem(code: str, message: str) -> str | None:
    """The operator-facing reason when the account cannot be served at all, else None.
    ``Throttling.AllocationQuota`` is such a case only with "Free allocated quota exceeded"
    (the free quota is gone); with "Allocated quota exceeded" it is the per-minute limit."""
    if code in _ACCOUNT_PROBLEMS:
        return _ACCOUNT_PROBLEMS[code]
    if code == "Throttling.AllocationQuota" and "free allocated quota" in message.lower():
        return "the model's free quota is used up (buy it or switch to pay-as-you-go)"
    return None


def _error_of(response: httpx.Response) -> ProviderFailure:
    code, message = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or "")
        message = str(body.get("message") or "")
    return classify(response.status_code, code, message, retry_after=retry_after_s(response))


def _dashscope_seed(seed: int) -> int:
    """Into DashScope's range, leaving room for seed + i of each picture."""
    return seed % (MAX_SEED - MAX_IMAGES + 2)


def _fit_input(data: bytes, width: int, height: int) -> str:
    """The input picture at exactly the resolved size, as a data URL (the edit model returns
    pictures the size of its input). Edit inputs are at most 10 MB: a PNG that would make
    the data URL larger is sent as a JPEG."""
    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGBA" if src.mode in ("RGBA", "LA", "P") else "RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=False)
        mime = "image/png"
        if len(buf.getvalue()) * 4 // 3 > MAX_INPUT_BYTES:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=92)
            mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def region_of(config: DashScopeConfig) -> str:
    """beijing, singapore or us: as configured, else from the base URL's host."""
    if config.region:
        return config.region
    host = urllib.parse.urlsplit(config.base_url).hostname or ""
    if "dashscope-intl" in host or ".ap-southeast-1." in host:
        return "singapore"
    if "dashscope-us" in host or ".us-east-1." in host:
        return "us"
    return "beijing"


def _limits(name: str, kinds: frozenset[str]) -> dict[str, Any]:
    """A model's limits for the router (ModelInfo fields)."""
    out: dict[str, Any] = {"max_prompt": MAX_PROMPT, "max_negative": MAX_NEGATIVE}
    if name == WAN25_T2I:
        out |= {
            "min_side": 384,
            "max_side": 2880,
            "min_pixels": 768 * 768,
            "max_pixels": 1440 * 1440,
            "max_aspect": 4.0,
        }
    elif "txt2img" in kinds:
        out["max_pixels"] = MAX_PIXELS
    return out


class DashScopeProvider(Provider):
    name = "dashscope"

    def __init__(self, config: DashScopeConfig) -> None:
        self.config = config
        self.pool = KeyPool.from_config(config)
        self.region = region_of(config)
        self.edit_model = config.edit_model or (EDIT_V21 if self.region == "beijing" else EDIT_V25)
        if self.edit_model == EDIT_V21 and self.region != "beijing":
            log.warning(
                "providers.dashscope: %s exists only in the Beijing region; img2img on the %s "
                "endpoint goes to %s",
                EDIT_V21,
                self.region,
                EDIT_V25,
            )
            self.edit_model = EDIT_V25
        # key name -> its Alibaba Cloud account (limits are per account)
        self.account_of = {  # key names as KeyPool.from_config gives them
            (k.name or f"key{i}"): k.account or k.name or f"key{i}"
            for i, k in enumerate(config.keys, start=1)
        }
        self.account_busy: dict[str, int] = defaultdict(int)
        self._accounts_changed = asyncio.Condition()
        self._submit_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._last_submit: dict[str, float] = {}
        self.client = http_client(config)
        self.api = config.base_url.rstrip("/") + "/api/v1"
        # polls each finished job took (for the closing note and benchmarks)
        self.polls: list[int] = []
        self.task_times = TaskTimes()  # each model's usual task duration, to poll near it
        # task id -> the name of its key, so ``cancel`` (given only the id) can use it
        self._task_keys: dict[str, str] = {}

    # --- what it offers ------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        default = self.config.default_model
        edit = self.edit_model
        models = []
        names = dict(T2I_MODELS)
        if default not in names and default != edit:
            names = {default: "Tongyi Wanxiang (configured default)", **names}
        for name, desc in names.items():
            if name == default:
                kinds = frozenset({"txt2img", "img2img"})
                desc = f"{desc}; img2img jobs go to {edit}"
            else:
                kinds = frozenset({"txt2img"})
            models.append(ModelInfo(name, desc, kinds, **_limits(name, kinds)))
        img2img = frozenset({"img2img"})
        what = self.config.edit_function if edit == EDIT_V21 else "instruction editing"
        models.append(
            ModelInfo(
                edit,
                f"Tongyi Wanxiang image editing ({what}) for img2img",
                img2img,
                **_limits(edit, img2img),
            )
        )
        if self.region == "beijing":
            for name, (_, desc) in EDIT_VARIANTS.items():
                models.append(ModelInfo(name, desc, img2img, **_limits(name, img2img)))
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=tuple(models),
            default_model=default,
            max_images=MAX_IMAGES,
            min_size=MIN_SIDE,
            max_size=MAX_SIDE,
            size_multiple=8,
            description=(
                "Alibaba Cloud DashScope: Tongyi Wanxiang (通义万相) text-to-image, and image "
                "editing for img2img"
            ),
        )

    # --- account limits ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _key_for(self, wanted: str | None) -> AsyncIterator[ApiKey]:
        """A key for one task, within its account's tasks-in-progress limit. A new task
        waits here for a key whose account has room; a resumed one (``wanted``, already in
        progress at DashScope) is counted without waiting."""
        limit = self.config.account_concurrency
        async with self._accounts_changed:
            if wanted is not None and wanted in self.pool.keys:
                name = wanted
            else:

                def pick() -> str | None:
                    free = [
                        k
                        for k in self.pool.keys.values()
                        if self.pool.busy[k.name] < k.concurrency
                        and self.account_busy[self.account_of[k.name]] < limit
                    ]
                    if not free:
                        return None
                    best = min(
                        free,
                        key=lambda k: (
                            self.pool.busy[k.name] / k.concurrency,
                            self.pool.used[k.name],
                        ),
                    )
                    return best.name

                await self._accounts_changed.wait_for(lambda: pick() is not None)
                picked = pick()
                assert picked is not None
                name = picked
            account = self.account_of[name]
            self.account_busy[account] += 1
        try:
            async with self.pool.use(name) as key:
                yield key
        finally:
            async with self._accounts_changed:
                self.account_busy[account] -= 1
                self._accounts_changed.notify_all()

    @contextlib.asynccontextmanager
    async def _paced(self, key: ApiKey) -> AsyncIterator[None]:
        """One submission of the key's account at a time, each at least
        1 / ``account_submits_per_s`` after the previous one was answered (so DashScope
        sees them that far apart, whatever the network's delays)."""
        account = self.account_of.get(key.name, key.name)
        interval = 1.0 / self.config.account_submits_per_s
        async with self._submit_locks[account]:
            last = self._last_submit.get(account)
            if last is not None:
                wait = last + interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last_submit[account] = time.monotonic()

    # --- HTTP ------------------------------------------------------------------------------------

    @staticmethod
    def _headers(key: ApiKey) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.key}", "Accept": "application/json"}

    async def _json(
        self,
        method: str,
        url: str,
        key: ApiKey,
        *,
        body: dict[str, Any] | None = None,
        submit: bool = False,
    ) -> dict[str, Any]:
        headers = self._headers(key)
        if submit:
            headers["X-DashScope-Async"] = "enable"
        try:
            response = await self.client.request(method, url, headers=headers, json=body)
        except httpx.HTTPError as exc:
            if submit and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                # The request may have reached DashScope and created (and billed) a task
                # whose id we never saw: submitting again could pay twice, so do not retry.
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"DashScope did not answer the request ({type(exc).__name__}); "
                    "it was not retried so as not to pay twice",
                ) from exc
            raise transport_failure(exc, WHAT) from exc
        if response.status_code >= 400:
            raise _error_of(response)
        try:
            data = response.json()
        except ValueError:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"DashScope sent an answer that is not JSON (HTTP {response.status_code})",
                retry_after=0.0,
            ) from None
        if not isinstance(data, dict):
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "DashScope sent an odd answer")
        return data

    def _retrying(self, call: Callable[[], Awaitable[Any]], what: str) -> Awaitable[Any]:
        return with_retries(self.config, call, what=f"{WHAT} {what}")

    # --- the job ----------------------------------------------------------------------------------

    def _submission(self, run: ProviderRun) -> tuple[str, dict[str, Any]]:
        req = run.request
        cfg = self.config
        seed = _dashscope_seed(req.seed)
        if req.kind == "img2img":
            if req.init_image is None:
                raise ProviderFailure(FailureClass.BAD_INPUT, "img2img needs an input picture")
            editors = (EDIT_V21, EDIT_V25, EDIT_MASK, *EDIT_VARIANTS)
            model = req.model if req.model in editors else None
            model = model or self.edit_model
            if model == EDIT_MASK and req.mask is None:
                raise ProviderFailure(
                    FailureClass.BAD_INPUT, "editing with a mask needs a mask picture"
                )
            if model in (EDIT_V21, EDIT_MASK, *EDIT_VARIANTS) and self.region != "beijing":
                raise ProviderFailure(
                    FailureClass.BAD_INPUT,
                    f"{EDIT_V21} exists only in DashScope's Beijing region; use {EDIT_V25}",
                )
            params: dict[str, Any] = {"n": req.n, "seed": seed, "watermark": cfg.watermark}
            url = f"{self.api}/services/aigc/image2image/image-synthesis"
            if model == EDIT_V25:
                inp: dict[str, Any] = {"prompt": req.prompt, "images": [""]}
                if req.negative:
                    inp["negative_prompt"] = req.negative
                return url, {"model": model, "input": inp, "parameters": params}
            if model == EDIT_MASK:
                function = "description_edit_with_mask"
            elif model in EDIT_VARIANTS:
                function = EDIT_VARIANTS[model][0]
            else:
                function = cfg.edit_function
            if req.strength is not None and function in STRENGTH_FUNCTIONS:
                params["strength"] = round(min(max(req.strength, 0.0), 1.0), 3)
            if function == "super_resolution":
                params["upscale_factor"] = cfg.upscale_factor
            elif function == "expand":
                for side in ("top", "bottom", "left", "right"):
                    params[f"{side}_scale"] = cfg.expand_scale
            body = {
                "model": EDIT_V21,
                "input": {
                    "function": function,
                    "prompt": req.prompt,
                    "base_image_url": "",  # filled in off the event loop
                },
                "parameters": params,
            }
            return url, body
        if req.model in (self.edit_model, EDIT_V21, EDIT_V25, EDIT_MASK, *EDIT_VARIANTS):
            raise ProviderFailure(
                FailureClass.BAD_INPUT,
                f"{req.model} edits pictures; reply to a picture, or use a text-to-image model",
            )
        inp = {"prompt": req.prompt}
        if req.negative:
            inp["negative_prompt"] = req.negative
        body = {
            "model": req.model or cfg.default_model,
            "input": inp,
            "parameters": {
                "size": f"{req.width}*{req.height}",
                "n": req.n,
                "seed": seed,
                "prompt_extend": cfg.prompt_extend,
                "watermark": cfg.watermark,
            },
        }
        return f"{self.api}/services/aigc/text2image/image-synthesis", body

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        if run.task_id is not None and all(run.has_image(i) for i in range(req.n)):
            return  # everything was delivered before a restart
        url, body = "", dict[str, Any]()
        if run.task_id is None:
            url, body = self._submission(run)
            if req.kind == "img2img":
                assert req.init_image is not None
                picture = await asyncio.to_thread(_fit_input, req.init_image, req.width, req.height)
                if "images" in body["input"]:
                    body["input"]["images"] = [picture]
                else:
                    body["input"]["base_image_url"] = picture
                if body["input"].get("function") == "description_edit_with_mask":
                    assert req.mask is not None
                    body["input"]["mask_image_url"] = await asyncio.to_thread(
                        _fit_input, req.mask, req.width, req.height
                    )
        wanted = run.state.get("key") if run.task_id is not None else None
        async with self._key_for(wanted) as key:
            task_id = run.task_id
            resumed = task_id is not None
            if task_id is None:

                async def submit() -> dict[str, Any]:
                    async with self._paced(key):
                        return await self._json("POST", url, key, body=body, submit=True)

                answer = await self._retrying(submit, "submit")
                task_id = str((answer.get("output") or {}).get("task_id") or "")
                if not task_id:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR,
                        "DashScope accepted the job but sent no task id",
                    )
                self._task_keys[task_id] = key.name
                await run.submitted(task_id, {"key": key.name})
            else:
                self._task_keys[task_id] = key.name
            cancelled = False
            try:
                output = await self._wait(run, task_id, key, resumed=resumed)
                await self._deliver(run, output)
            except asyncio.CancelledError:
                cancelled = True  # the core calls cancel(task_id) next: keep its key known
                raise
            finally:
                if not cancelled:
                    self._task_keys.pop(task_id, None)

    async def _wait(
        self, run: ProviderRun, task_id: str, key: ApiKey, *, resumed: bool = False
    ) -> dict[str, Any]:
        """Poll with a growing interval until the task ends; its ``output`` on success."""
        url = f"{self.api}/tasks/{task_id}"
        polls = 0
        running = 0

        async def fetch() -> dict[str, Any]:
            return await self._json("GET", url, key)

        try:
            schedule = poll_delays(self.config, self.task_times, run.request.model, resumed=resumed)
            async for _ in schedule:
                answer = await self._retrying(fetch, "task status")
                polls += 1
                output = answer.get("output") or {}
                status = str(output.get("task_status") or "UNKNOWN")
                if status == "PENDING":
                    await run.progress(0.35)
                elif status == "RUNNING":
                    running += 1
                    await run.progress(0.4 + 0.5 * (1 - 0.7**running))
                if status not in TERMINAL:
                    continue
                if status == "SUCCEEDED":
                    schedule.ended()
                    return output
                if status == "FAILED":
                    raise classify(
                        None,
                        str(output.get("code") or ""),
                        str(output.get("message") or ""),
                    )
                if status == "CANCELED":
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR, "the DashScope task was cancelled"
                    )
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    "DashScope no longer knows this task (tasks expire after 24 hours)",
                )
            raise AssertionError("unreachable: poll_delays never ends")
        finally:
            self.polls.append(polls)

    async def _deliver(self, run: ProviderRun, output: dict[str, Any]) -> None:
        """Fetch every result picture at once (the links expire) and hand each to the core
        the moment it arrives. Pictures that failed on DashScope's side are skipped (the core
        refunds what is missing); if nothing at all could be delivered, that is a failure."""
        seed = _dashscope_seed(run.request.seed)
        model = run.request.model
        editors = (EDIT_V21, EDIT_V25, EDIT_MASK, *EDIT_VARIANTS)
        if run.request.kind == "img2img" and model not in editors:
            model = self.edit_model
        results = output.get("results") or []
        failures: list[ProviderFailure] = []
        wanted: dict[int, tuple[str, dict[str, Any]]] = {}
        for i, result in enumerate(results[: run.request.n]):
            if run.has_image(i) or not isinstance(result, dict):
                continue
            url = result.get("url")
            if result.get("code") or not url:
                failures.append(
                    classify(None, str(result.get("code") or ""), str(result.get("message") or ""))
                )
                log.info("dashscope: picture %d failed: %r", i, result.get("code"))
                continue
            extra: dict[str, Any] = {"model": model}
            if result.get("actual_prompt"):
                extra["actual_prompt"] = result["actual_prompt"]
            wanted[i] = (str(url), extra)

        async def fetch(i: int, url: str) -> tuple[int, bytes | ProviderFailure]:
            async def once() -> bytes:
                return await download(self.client, url, what=WHAT)

            try:
                return i, await self._retrying(once, "result download")
            except ProviderFailure as exc:
                return i, exc

        delivered = sum(1 for i in range(run.request.n) if run.has_image(i))
        tasks = [asyncio.create_task(fetch(i, url)) for i, (url, _) in wanted.items()]
        try:
            for next_done in asyncio.as_completed(tasks):
                i, got = await next_done
                if isinstance(got, ProviderFailure):
                    failures.append(got)
                    continue
                await run.image(i, ResultImage(data=got, seed=seed + i, extra=wanted[i][1]))
                delivered += 1
        finally:
            for task in tasks:
                task.cancel()
        if delivered == 0:
            if failures:
                raise failures[0]
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "DashScope returned no picture")
        if failures:
            log.warning(
                "dashscope: %d of %d pictures could not be delivered: %r",
                len(failures),
                run.request.n,
                failures[0].message,
            )

    # --- control ----------------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> None:
        """Best effort: DashScope can only cancel a task still queued (PENDING)."""
        name = self._task_keys.pop(task_id, None)
        key = self.pool.keys.get(name) if name else None
        keys = [key] if key is not None else list(self.pool.keys.values())
        for k in keys:
            try:
                response = await self.client.post(
                    f"{self.api}/tasks/{task_id}/cancel", headers=self._headers(k)
                )
            except httpx.HTTPError as exc:
                log.info("dashscope: cancelling %s failed: %s", task_id, type(exc).__name__)
                return
            if response.status_code < 400:
                return
            log.info("dashscope: cancelling %s: HTTP %s", task_id, response.status_code)
            if response.status_code not in (401, 403, 404):
                return  # e.g. UnsupportedOperation: it is no longer queued

    async def aclose(self) -> None:
        await self.client.aclose()
