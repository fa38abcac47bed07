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
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from PIL import Image

from adapters.providers.cloud import (
    ApiKey,
    KeyPool,
    TaskTimes,
    download,
    http_client,
    poll_delays,
    retry_after_s,
    transport_failure,
    with_retries,
)
from bot.config import DashScopeConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import Capabilities, ModelInfo, Provider, ProviderRun, ResultImage

log = logging.getLogger(__name__)

WHAT = "DashScope"

T2I_MODELS: dict[str, str] = {
    "wanx2.1-t2i-turbo": "Tongyi Wanxiang 2.1 Turbo: fast text-to-image",
    "wanx2.1-t2i-plus": "Tongyi Wanxiang 2.1 Plus: richer detail, slower",
    "wanx2.0-t2i-turbo": "Tongyi Wanxiang 2.0 Turbo",
}
# Functions of the edit model that take ``parameters.strength`` (0..1, larger = further
# from the input picture, as with a denoising strength).
STRENGTH_FUNCTIONS = frozenset({"stylization_all", "description_edit"})

MIN_SIDE, MAX_SIDE = 512, 1440  # wanx2.x text-to-image: each side; the edit model 512..4096
MAX_SEED = 2**31 - 1  # DashScope's seed range is [0, 2147483647]
MAX_IMAGES = 4

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify(
    status: int | None, code: str, message: str, *, retry_after: float | None = None
) -> ProviderFailure:
    """A DashScope error code (HTTP answer or a failed task's ``output.code``) as a failure
    a person can read and the refund policy understands. ``status`` is None for a failed
    task: its code says everything."""
    code = code or ""
    detail = f" ({_short(message)})" if message else ""
    lower = code.lower()
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
    """The input picture at exactly the resolved size, as a PNG data URL (the edit model
    returns pictures the size of its input)."""
    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGBA" if src.mode in ("RGBA", "LA", "P") else "RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class DashScopeProvider(Provider):
    name = "dashscope"

    def __init__(self, config: DashScopeConfig) -> None:
        self.config = config
        self.pool = KeyPool.from_config(config)
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
        edit = self.config.edit_model
        models = []
        names = dict(T2I_MODELS)
        if default not in names and default != edit:
            names = {default: "Tongyi Wanxiang (configured default)", **names}
        for name, desc in names.items():
            if name == default:
                models.append(
                    ModelInfo(
                        name,
                        f"{desc}; img2img jobs go to {edit}",
                        frozenset({"txt2img", "img2img"}),
                    )
                )
            else:
                models.append(ModelInfo(name, desc, frozenset({"txt2img"})))
        models.append(
            ModelInfo(
                edit,
                f"Tongyi Wanxiang image editing ({self.config.edit_function}) for img2img",
                frozenset({"img2img"}),
            )
        )
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
            params: dict[str, Any] = {"n": req.n, "seed": seed, "watermark": cfg.watermark}
            if req.strength is not None and cfg.edit_function in STRENGTH_FUNCTIONS:
                params["strength"] = round(min(max(req.strength, 0.0), 1.0), 3)
            body = {
                "model": cfg.edit_model,
                "input": {
                    "function": cfg.edit_function,
                    "prompt": req.prompt,
                    "base_image_url": "",  # filled in off the event loop
                },
                "parameters": params,
            }
            return f"{self.api}/services/aigc/image2image/image-synthesis", body
        if req.model == cfg.edit_model:
            raise ProviderFailure(
                FailureClass.BAD_INPUT,
                f"{cfg.edit_model} edits pictures; reply to a picture, or use a "
                "text-to-image model",
            )
        inp: dict[str, Any] = {"prompt": req.prompt}
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
                body["input"]["base_image_url"] = await asyncio.to_thread(
                    _fit_input, req.init_image, req.width, req.height
                )
        async with self.pool.use(run.state.get("key")) as key:
            task_id = run.task_id
            if task_id is None:

                async def submit() -> dict[str, Any]:
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
                output = await self._wait(run, task_id, key)
                await self._deliver(run, output)
            except asyncio.CancelledError:
                cancelled = True  # the core calls cancel(task_id) next: keep its key known
                raise
            finally:
                if not cancelled:
                    self._task_keys.pop(task_id, None)

    async def _wait(self, run: ProviderRun, task_id: str, key: ApiKey) -> dict[str, Any]:
        """Poll with a growing interval until the task ends; its ``output`` on success."""
        url = f"{self.api}/tasks/{task_id}"
        polls = 0
        running = 0

        async def fetch() -> dict[str, Any]:
            return await self._json("GET", url, key)

        try:
            schedule = poll_delays(self.config, self.task_times, run.request.model)
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
        model = self.config.edit_model if run.request.kind == "img2img" else run.request.model
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
