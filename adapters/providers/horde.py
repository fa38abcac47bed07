"""AI Horde (aihorde.net): a public pool of volunteer GPUs, free with the anonymous key.

The protocol, as Haidra's integration guide (``README_integration.md`` in Haidra-Org/AI-Horde)
and the API's own documentation describe it:

- ``POST /v2/generate/async`` with the ``apikey`` and ``Client-Agent`` headers answers
  ``202 {"id", "kudos", "warnings"?}``. A submission is always accepted: a request no worker
  can serve is only marked ``is_possible: false`` afterwards (with a ``NoAvailableWorker``
  warning on submit). The id is stored with ``submitted`` at once, so a restart polls it
  and never submits again.
- ``GET /v2/generate/check/{id}``: the light endpoint, cached by the pool for 1 s, so it is
  never polled faster than that. It tells ``finished/processing/waiting``, ``done``,
  ``faulted``, ``is_possible``, ``queue_position``, ``wait_time`` and the ``kudos`` spent;
  the queue place and expected wait are shown as the job's progress, and the next check
  comes about halfway through the expected wait (at most ``poll_max_interval_s`` later).
- ``GET /v2/generate/status/{id}`` carries the ``generations`` (``img`` is an R2 download
  link, or the picture itself in base64 when ``r2`` is off). It allows 10 calls a minute,
  so it is called once, when the check says ``done``, and every call goes through one
  sliding window per provider.
- ``DELETE /v2/generate/status/{id}`` cancels and answers with what was made so far.

A request the pool cannot serve is cancelled at once and fails ``uncharged``: the person
gets everything back, whatever the refund policy. A faulted one is cancelled too and
refunded the same way (the pool charges no kudos for pictures it did not make). The kudos
the pool charged are logged and recorded as the job's provider cost.

NSFW: a chat whose policy is "allow" asks for ``nsfw: true`` (any worker); every other chat
asks for ``nsfw: false, censor_nsfw: true``, so workers send a censored picture instead of
an NSFW one, and such a picture (``censored``) is flagged NSFW for the chat to hide.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from adapters import http
from adapters.http import retry_after_s
from adapters.providers.cloud import download, retry_hint, send_once, transport_failure
from bot.config import HordeConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import (
    Capabilities,
    ModelInfo,
    Provider,
    ProviderRun,
    ResolvedRequest,
    ResultImage,
)
from bot.ratelimit import SlidingWindow

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 64  # InvalidSize: "not a multiple of 64"
MAX_IMAGES = 4
CHECK_CACHE_S = 1.0  # the pool caches check answers this long: polling faster is useless

# Horde sampler names for the common A1111 names (";karras" in the name sets "karras").
SAMPLERS = {
    "euler a": "k_euler_a",
    "euler": "k_euler",
    "lms": "k_lms",
    "heun": "k_heun",
    "dpm2": "k_dpm_2",
    "dpm2 a": "k_dpm_2_a",
    "dpm fast": "k_dpm_fast",
    "dpm adaptive": "k_dpm_adaptive",
    "dpm++ 2s a": "k_dpmpp_2s_a",
    "dpm++ 2m": "k_dpmpp_2m",
    "dpm++ sde": "k_dpmpp_sde",
    "ddim": "DDIM",
    "lcm": "lcm",
}

# Return codes (README_return_codes.md) that say the request itself is at fault: a person
# can change the prompt or flags and try again.
BAD_REQUEST_RCS = frozenset(
    {
        "MissingPrompt",
        "InvalidSize",
        "InvalidPromptSize",
        "TooManySteps",
        "UnsupportedSampler",
        "UnsupportedModel",
        "UnexpectedModelName",
        "SourceImageResolutionExceeded",
        "SourceImageSizeExceeded",
        "SourceImageUnreadable",
        "ImageValidationFailed",
        "BadCFGDecimals",
        "BadCFGNumber",
        "Img2ImgMismatch",
        "KudosUpfront",
        "InvalidPromptEncoding",
    }
)
REFUSED_RCS = frozenset({"CorruptPrompt"})
# The account or key cannot do this: the operator has to act (register, top up kudos).
ACCOUNT_RCS = {
    "InvalidAPIKey": "the AI Horde API key was rejected",
    "AnonForbidden": "the anonymous key may not do this: set a registered api_key",
    "BetaAnonForbidden": "the anonymous key may not use this model: set a registered api_key",
    "SharedKeyEmpty": "the shared AI Horde key has no kudos left",
    "SharedKeyExpired": "the shared AI Horde key has expired",
    "SharedKeyInsufficientKudos": "the shared AI Horde key has too few kudos for this request",
    "BadClientAgent": "AI Horde banned this Client-Agent",
    "NotTrusted": "AI Horde does not trust this account or address for this request",
    "TimeoutIP": "AI Horde has put this address in a timeout",
    "UnsafeIP": "AI Horde refuses requests from this address (a VPN or proxy?)",
}


def fit_side(value: int) -> int:
    """A side the pool accepts: the nearest multiple of 64 in 64..2048."""
    side = round(value / SIDE_MULTIPLE) * SIDE_MULTIPLE
    return min(max(side, MIN_SIDE), MAX_SIDE)


def sampler_params(name: str | None) -> dict[str, Any]:
    """``sampler_name`` (and ``karras``) for an A1111-style sampler name; {} if unknown."""
    if not name:
        return {}
    text = name.strip().lower()
    karras = text.endswith(" karras")
    if karras:
        text = text.removesuffix(" karras").strip()
    if name.strip() in SAMPLERS.values() or text.startswith("k_"):
        return {"sampler_name": name.strip()}
    found = SAMPLERS.get(text)
    if found is None:
        return {}
    return {"sampler_name": found, **({"karras": True} if karras else {})}


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(rc, message) of the pool's error body ``{"message", "rc"}``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return "", ""
    message = body.get("message")
    text = message if isinstance(message, str) else ""
    errors = body.get("errors")  # flask-restx validation: {"errors": {field: why}}
    if isinstance(errors, dict) and errors:
        text = (text + " " if text else "") + "; ".join(f"{k}: {v}" for k, v in errors.items())
    rc = body.get("rc")
    return (rc if isinstance(rc, str) else ""), text[:300]


def http_failure(response: httpx.Response, what: str) -> ProviderFailure:
    """An HTTP error from the pool, classified for the refund policy and for retries."""
    status = response.status_code
    rc, message = _error_of(response)
    said = f"{message} ({rc})" if message and rc else message or rc or f"HTTP {status}"
    if status == 429:
        wait = retry_after_s(response)
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"{what}: AI Horde is rate-limiting ({said})",
            retry_after=wait if wait is not None else 0.0,
        )
    if status >= 500:
        wait = retry_after_s(response)
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"{what}: AI Horde had a server error ({said})",
            retry_after=wait if wait is not None else 0.0,
        )
    if rc in ACCOUNT_RCS or status == 401:
        reason = ACCOUNT_RCS.get(rc, "the AI Horde API key was rejected")
        return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: {reason} ({said})")
    if rc in REFUSED_RCS:
        return ProviderFailure(FailureClass.REFUSED, f"AI Horde refused the prompt ({said})")
    if rc == "KudosUpfront":
        return ProviderFailure(
            FailureClass.BAD_INPUT,
            "AI Horde wants kudos up front for a request this big, and the key has too few: "
            f"try a smaller --size or fewer --steps ({said})",
        )
    if status == 400 or rc in BAD_REQUEST_RCS:
        return ProviderFailure(FailureClass.BAD_INPUT, f"AI Horde rejected the request: {said}")
    if status == 404:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"{what}: AI Horde no longer knows this request (it may have expired; {said})",
        )
    if status == 403:
        return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: AI Horde refused ({said})")
    return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: unexpected answer ({said})")


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: AI Horde sent an answer that is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: AI Horde sent an unexpected answer"
        )
    return body


async def with_retries(config: HordeConfig, call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``call``; a failure with ``retry_after`` (429, 5xx, network) is retried up to
    ``max_retries`` times, waiting what the pool asked (or backing off with jitter)."""
    return await http.with_retries(
        call, retries=config.max_retries, what=what, retry_after=retry_hint
    )


def http_client(config: HordeConfig, **kw: Any) -> httpx.AsyncClient:
    return http.http_client(config.request_timeout_s, connections=32, keepalive=8, **kw)


class HordeProvider(Provider):
    name = "horde"
    # A cancel bills the operator nothing for what was not made. The pool charges kudos per
    # picture a worker finished (the DELETE answers with those, and the person keeps them),
    # and kudos are no money: "not a currency and cannot be bought" (artbot.site/faq, a
    # source of ../shared/api/providers.md, AI Horde). So a cancelled job gets back every
    # picture it did not make, whatever credits.refunds says.
    bills_when_cancelled = False

    def __init__(
        self,
        config: HordeConfig,
        *,
        min_poll_s: float = CHECK_CACHE_S,
        status_window_s: float = 60.0,
    ) -> None:
        """``min_poll_s`` and ``status_window_s`` are the pool's limits; tests against a
        fake shrink them (the config cannot: polling faster only costs the pool)."""
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.min_poll_s = min_poll_s
        self.headers = {
            "apikey": config.api_key,
            "Client-Agent": config.effective_client_agent,
            "accept": "application/json",
        }
        self.client = http_client(config)  # API calls: never follows redirects
        # Pictures come from R2 links with no key; following their redirects is safe.
        self.downloads = http_client(config, follow_redirects=True)
        # Wider than the pool's window (5%, at least 0.25 s): calls reach it a little after
        # they leave here, and not always equally late.
        margin = max(0.05 * status_window_s, 0.25)
        self.status_window = SlidingWindow(config.status_calls_per_minute, status_window_s + margin)
        self._models: tuple[ModelInfo, ...] = ()
        self._models_at = float("-inf")
        self._models_task: asyncio.Task[Any] | None = None
        self.checks: list[int] = []  # checks each job took, for tests and stats
        self._refresh_soon()  # built inside the running bot: /models is ready sooner

    # --- models ----------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        if time.monotonic() - self._models_at > self.config.models_ttl_s:
            self._refresh_soon()
        models = self._models
        if not any(m.name == self.config.default_model for m in models):
            models = (ModelInfo(self.config.default_model, "AI Horde's default model"), *models)
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=models,
            default_model=self.config.default_model,
            max_images=MAX_IMAGES,
            min_size=MIN_SIDE,
            max_size=MAX_SIDE,
            size_multiple=SIDE_MULTIPLE,
            description="AI Horde: free volunteer GPUs (queues can be long)",
        )

    def _refresh_soon(self) -> None:
        """Fetch the model list in the background (``capabilities`` cannot wait)."""
        if self._models_task is not None and not self._models_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._models_task = loop.create_task(self.refresh_models(), name="horde-models")

    async def refresh_models(self, *, force: bool = False) -> tuple[ModelInfo, ...]:
        """The image models the pool's workers serve now (``/v2/status/models``), busiest
        first; cached for ``models_ttl_s``. A failure keeps the old list."""
        if not force and time.monotonic() - self._models_at <= self.config.models_ttl_s:
            return self._models
        self._models_at = time.monotonic()  # one fetch at a time, even when it fails
        try:
            response = await self.client.get(
                f"{self.base_url}/v2/status/models", params={"type": "image"}, headers=self.headers
            )
        except httpx.HTTPError as exc:
            log.warning("AI Horde model list: %s", type(exc).__name__)
            return self._models
        if response.status_code >= 400:
            log.warning("AI Horde model list: HTTP %s", response.status_code)
            return self._models
        try:
            rows = response.json()
        except ValueError:
            rows = None
        if not isinstance(rows, list):
            return self._models
        found = []
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                continue
            if row.get("type", "image") != "image" or _number(row.get("count")) <= 0:
                continue
            workers = int(_number(row.get("count")))
            eta = int(_number(row.get("eta")))
            note = f"{workers} worker{'s' if workers != 1 else ''}, queue ~{eta} s"
            found.append((workers, ModelInfo(row["name"], note)))
        found.sort(key=lambda item: (-item[0], item[1].name.lower()))
        self._models = tuple(info for _, info in found)
        return self._models

    async def aclose(self) -> None:
        if self._models_task is not None:
            self._models_task.cancel()
            await asyncio.gather(self._models_task, return_exceptions=True)
        await self.client.aclose()
        await self.downloads.aclose()

    # --- the request body ------------------------------------------------------------------

    def body(self, req: ResolvedRequest) -> dict[str, Any]:
        """The documented ``GenerationInputStable`` body for a request."""
        prompt = req.prompt
        if req.negative:
            prompt = f"{prompt} ### {req.negative}"  # the pool's negative-prompt separator
        params: dict[str, Any] = {
            "width": fit_side(req.width),
            "height": fit_side(req.height),
            "n": req.n,
            "seed": str(req.seed),
        }
        if req.n > 1:
            params["seed_variation"] = 1  # seeds seed, seed+1, ... as the core numbers them
        if req.steps is not None:
            params["steps"] = req.steps
        if req.cfg is not None:
            params["cfg_scale"] = round(req.cfg, 2)  # BadCFGDecimals past two decimals
        params.update(sampler_params(req.sampler))
        body: dict[str, Any] = {
            "prompt": prompt,
            "params": params,
            "models": [req.model or self.config.default_model],
            "nsfw": req.nsfw_ok,
            "censor_nsfw": not req.nsfw_ok,
            "trusted_workers": self.config.trusted_workers,
            "slow_workers": self.config.slow_workers,
            "shared": self.config.shared,
            "r2": True,
        }
        if req.kind == "img2img" and req.init_image is not None:
            body["source_image"] = base64.b64encode(req.init_image).decode("ascii")
            body["source_processing"] = "img2img"
            if req.strength is not None:  # 1 changes the picture completely, as --strength
                params["denoising_strength"] = round(min(max(req.strength, 0.01), 1.0), 2)
        return body

    # --- HTTP ------------------------------------------------------------------------------

    def _url(self, what: str, request_id: str) -> str:
        return f"{self.base_url}/v2/generate/{what}/{quote(request_id, safe='')}"

    async def _submit(self, body: dict[str, Any]) -> dict[str, Any]:
        what = "AI Horde submit"

        async def call() -> dict[str, Any]:
            response = await send_once(
                self.client,
                "POST",
                f"{self.base_url}/v2/generate/async",
                what=what,
                service="AI Horde",
                json=body,
                headers=self.headers,
            )
            if response.status_code >= 400:
                raise http_failure(response, what)
            answer = _json(response, what)
            if not isinstance(answer.get("id"), str) or not answer["id"]:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR, f"{what}: AI Horde sent no request id"
                )
            return answer

        return await with_retries(self.config, call, what=what)

    async def _call(
        self, method: str, what: str, url: str, *, limited: bool = False
    ) -> dict[str, Any]:
        """One read or cancel, retried; ``limited``: within the status endpoint's window."""

        async def call() -> dict[str, Any]:
            while limited and (wait := self.status_window.take("status")) > 0:
                await asyncio.sleep(wait)
            try:
                response = await self.client.request(method, url, headers=self.headers)
            except httpx.HTTPError as exc:
                raise transport_failure(exc, what) from exc
            if response.status_code >= 400:
                raise http_failure(response, what)
            return _json(response, what)

        return await with_retries(self.config, call, what=what)

    async def _check(self, request_id: str) -> dict[str, Any]:
        return await self._call("GET", "AI Horde check", self._url("check", request_id))

    async def _status(self, request_id: str) -> dict[str, Any]:
        """The request's full status (with the pictures), within the pool's limit."""
        url = self._url("status", request_id)
        return await self._call("GET", "AI Horde status", url, limited=True)

    async def _delete(self, request_id: str) -> dict[str, Any]:
        return await self._call("DELETE", "AI Horde cancel", self._url("status", request_id))

    async def cancel(self, task_id: str) -> None:
        await self._delete(task_id)

    # --- pictures --------------------------------------------------------------------------

    async def _picture(self, img: Any) -> bytes:
        what = "AI Horde result"
        if not isinstance(img, str) or not img:
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: a generation had no img")
        if img.startswith(("https://", "http://")):
            return await with_retries(
                self.config, lambda: download(self.downloads, img, what=what), what=what
            )
        try:  # r2 off (or an old pool): the picture itself, base64 webp
            return base64.b64decode(img, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, f"{what}: a picture could not be decoded"
            ) from exc

    async def _deliver(self, run: ProviderRun, generations: Any) -> int:
        """Hand over each picture not yet kept; returns how many the pool made."""
        made = 0
        for index, gen in enumerate(generations if isinstance(generations, list) else []):
            if index >= run.request.n or not isinstance(gen, dict):
                continue
            if gen.get("state") == "faulted":
                continue
            made += 1
            if run.has_image(index):
                continue
            data = await self._picture(gen.get("img"))
            raw = gen.get("seed")
            seed = int(raw) if isinstance(raw, int | str) and str(raw).isdigit() else None
            censored = bool(gen.get("censored")) or gen.get("state") == "censored"
            extra = {k: gen[k] for k in ("worker_name", "model") if isinstance(gen.get(k), str)}
            await run.image(index, ResultImage(data=data, seed=seed, nsfw=censored, extra=extra))
        return made

    async def _record_kudos(self, run: ProviderRun, request_id: str, kudos: float) -> None:
        log.info(
            "AI Horde request %s (job %s) cost %s kudos", request_id, run.request.job_id, kudos
        )
        run.cost(kudos, "kudos")

    # --- the job ---------------------------------------------------------------------------

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        request_id = run.task_id
        if not request_id:
            answer = await self._submit(self.body(req))
            request_id = str(answer["id"])
            warnings = [
                w.get("message") or w.get("code")
                for w in answer.get("warnings") or []
                if isinstance(w, dict)
            ]
            state: dict[str, Any] = {"kudos_estimate": _number(answer.get("kudos"))}
            if warnings:
                state["warning"] = "; ".join(str(w) for w in warnings)[:300]
                log.info("AI Horde request %s: %s", request_id, state["warning"])
            await run.submitted(request_id, state)
        checks = [0]
        try:
            check = await self._wait(run, request_id, checks)
            status = await self._status(request_id)
            made = await self._deliver(run, status.get("generations"))
            kudos = _number(status.get("kudos"), _number(check.get("kudos")))
            await self._record_kudos(run, request_id, kudos)
            if made == 0:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    "AI Horde finished the request without a picture",
                    uncharged=True,
                )
            await run.progress(1.0)
        finally:
            self.checks.append(checks[0])

    async def _wait(self, run: ProviderRun, request_id: str, checks: list[int]) -> dict[str, Any]:
        """Check the request until it is done (counting in ``checks[0]``); return the last
        check. A request the pool cannot serve, or one that faulted, is cancelled and fails."""
        n = run.request.n
        delay = self.min_poll_s
        while True:
            await asyncio.sleep(delay)
            check = await self._check(request_id)
            checks[0] += 1
            finished = int(_number(check.get("finished")))
            processing = int(_number(check.get("processing")))
            if check.get("done"):
                return check
            if check.get("faulted"):
                await self._give_up(run, request_id, "a worker failed on it (faulted)")
            if check.get("is_possible") is False and processing == 0:
                why = run.state.get("warning") or "no worker can serve it"
                model = run.request.model or self.config.default_model
                await self._give_up(
                    run,
                    request_id,
                    f"no worker in the pool can make it now ({why}; model {model}, "
                    f"{fit_side(run.request.width)}x{fit_side(run.request.height)})",
                )
            wait_s = _number(check.get("wait_time"))
            if finished == 0 and processing == 0:
                await run.progress(
                    0.0, queue_position=int(_number(check.get("queue_position"))), wait_s=wait_s
                )
            else:
                await run.progress(min((finished + 0.5 * processing) / max(n, 1), 0.99))
            # about halfway through the expected wait; never below the pool's cache
            delay = min(max(wait_s / 2, self.min_poll_s), self.config.poll_max_interval_s)
            delay = max(delay, self.min_poll_s)

    async def _give_up(self, run: ProviderRun, request_id: str, why: str) -> NoReturn:
        """Cancel the request, hand over what it made, and fail uncharged."""
        try:
            final = await self._delete(request_id)
        except ProviderFailure as exc:
            log.warning("AI Horde request %s: cancelling failed: %s", request_id, exc.message)
            final = {}
        await self._deliver(run, final.get("generations"))
        kudos = _number(final.get("kudos"))
        if kudos:
            await self._record_kudos(run, request_id, kudos)
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"AI Horde could not make this picture: {why}; it was cancelled and refunded",
            uncharged=True,
        )
