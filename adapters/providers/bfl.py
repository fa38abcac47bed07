"""Black Forest Labs FLUX (api.bfl.ai): the hosted service behind seed 003.

The API is asynchronous: ``POST /v1/{model}`` with the key in ``x-key`` answers
``{"id", "polling_url"}``; the task is polled at ``polling_url`` (which may name a regional
host: the docs say to poll it as given) until its status is ``Ready``, and ``result.sample``
is a signed URL that expires after about ten minutes, so the picture is fetched at once.

Models and sizes (shared/api/providers.md, "Black Forest Labs FLUX API").
``flux-pro-1.1`` and ``flux-dev`` take ``width``/``height`` (multiples of 32, 256..1440), as
does FLUX.2 (``flux-2-pro``, ``-max``, ``-flex``, ``-klein-4b``/``-9b``: multiples of 16, so
the same sizes work); ``flux-pro-1.1-ultra`` and Kontext (``flux-kontext-pro``/``-max``)
take an ``aspect_ratio`` string instead (21:9 .. 9:21), mapped from the size the core
resolved to the nearest common ratio. img2img sends the input pictures as base64:
``image_prompt`` (Redux-style remix) for pro/dev/ultra, ``input_image``, ``input_image_2``,
... for Kontext (4) and FLUX.2 (8, klein 4). img2img on the default model goes to
``edit_model`` (FLUX.2 [pro]: BFL marks Kontext legacy for editing). Only ultra documents
``image_prompt_strength`` ("blend between the prompt and the image prompt", default 0.1),
read as the weight of the *input picture* (1 keeps it; the docs do not say so plainly),
while sdhost's ``--strength`` says how much the picture may *change* (1 changes it
completely): it is sent as ``1 - strength``. ``raw`` (ultra) and ``prompt_upsampling``
(the models that document it) come from the settings. The submit answer's ``cost`` (credits)
is reported to the core with ``run.cost``; ``account_status`` reads ``GET /v1/credits``.

The key travels with every poll, so it goes only to BFL's hosts (``*.bfl.ai``), the
configured ``base_url``'s host and ``key_hosts``: a polling URL naming any other host fails
the task clearly instead.

Several pictures per job. The API makes one picture per task, so a job of n pictures is n
tasks, run one after another under the one key slot the job holds (so a job never has more
tasks active on a key than the pool accounts for). Each task is stored with ``submitted``
the moment it exists (``{"key", "polling_url", "ids", "polling_urls"}``, lists indexed by
picture), and each picture is handed over as soon as it is downloaded. A resumed job polls
the tasks it already has and submits only the pictures that never had one.
"""

from __future__ import annotations

import base64
import logging
import math
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from adapters.http import retry_after_s
from adapters.providers.cloud import (
    ApiKey,
    KeyPool,
    TaskPolls,
    TaskTimes,
    download,
    http_client,
    send_once,
    transport_failure,
    with_retries,
)
from bot.config import BflConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import (
    Capabilities,
    ModelInfo,
    Provider,
    ProviderRun,
    ResolvedRequest,
    ResultImage,
)

log = logging.getLogger(__name__)

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 256, 1440, 32

# Models that take width/height, and those that take an aspect_ratio string
# (shared/api/providers.md, "Black Forest Labs FLUX API", Models).
SIZED_MODELS = ("flux-pro-1.1", "flux-dev")
RATIO_MODELS = ("flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max")
KONTEXT_MODELS = frozenset({"flux-kontext-pro", "flux-kontext-max"})
# FLUX.2: width/height, several input pictures (input_image, input_image_2, ...).
FLUX2_MODELS = ("flux-2-pro", "flux-2-max", "flux-2-flex", "flux-2-klein-4b", "flux-2-klein-9b")
FLUX2_INPUTS = {m: (4 if "klein" in m else 8) for m in FLUX2_MODELS}
KONTEXT_INPUTS = 4  # input_image .. input_image_4 (2..4 experimental)
# Inpaint and outpaint (provider level: ResolvedRequest.mask / .expand; not listed in
# /models until a chat action fills them).
FILL_MODEL, EXPAND_MODEL = "flux-pro-1.0-fill", "flux-pro-1.0-expand"
# Models documented to take prompt_upsampling (not flux-2-pro, -max, -klein).
UPSAMPLING_MODELS = frozenset(
    {"flux-pro-1.1", "flux-pro-1.1-ultra", "flux-dev", *KONTEXT_MODELS, "flux-2-flex"}
)
MODEL_NOTES = {
    "flux-pro-1.1": "FLUX1.1 [pro]: fast, strong prompt adherence (256..1440 px)",
    "flux-pro-1.1-ultra": "FLUX1.1 [pro] Ultra: up to 4 MP; the size sets only the aspect ratio",
    "flux-dev": "FLUX.1 [dev]: open-weights model; honours --steps and --cfg (guidance)",
    "flux-kontext-pro": "FLUX.1 Kontext [pro]: edits a picture from an instruction (~1 MP; legacy)",
    "flux-kontext-max": "FLUX.1 Kontext [max]: Kontext's strongest edits (legacy: prefer FLUX.2)",
    "flux-2-pro": "FLUX.2 [pro]: generation and editing from up to 8 pictures",
    "flux-2-max": "FLUX.2 [max]: the best FLUX.2 quality, up to 8 input pictures",
    "flux-2-flex": "FLUX.2 [flex]: honours --steps and --cfg (guidance), up to 8 pictures",
    "flux-2-klein-4b": "FLUX.2 [klein] 4B: fast and cheap, up to 4 input pictures",
    "flux-2-klein-9b": "FLUX.2 [klein] 9B: fast, up to 4 input pictures",
}
# The documented range is 21:9 .. 9:21; these are the usual ratios inside it.
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
# Only these models document image_prompt_strength.
STRENGTH_MODELS = frozenset({"flux-pro-1.1-ultra"})
# API fields a person sets with a flag: named by the flag in error messages.
FIELD_FLAGS = {
    "width": "--size",
    "height": "--size",
    "aspect_ratio": "--ar",
    "steps": "--steps",
    "guidance": "--cfg",
    "image_prompt_strength": "--strength",
    "seed": "--seed",
    "prompt": "the prompt",
    "image_prompt": "the input picture",
    "input_image": "the input picture",
    "raw": "raw in [providers.bfl]",
    "prompt_upsampling": "prompt_upsampling in [providers.bfl]",
    "output_format": "output_format in [providers.bfl]",
}

MODERATED = {
    "Request Moderated": "FLUX refused the prompt (Request Moderated)",
    "Content Moderated": "FLUX refused to deliver the picture it made (Content Moderated)",
}


def fit_side(value: int) -> int:
    """A side the width/height models accept: the nearest multiple of 32 in 256..1440."""
    side = round(value / SIDE_MULTIPLE) * SIDE_MULTIPLE
    return min(max(side, MIN_SIDE), MAX_SIDE)


def nearest_ratio(width: int, height: int) -> str:
    """The allowed aspect ratio closest to width:height (compared on a log scale)."""
    target = math.log(max(width, 1) / max(height, 1))

    def distance(ratio: str) -> float:
        a, _, b = ratio.partition(":")
        return abs(math.log(int(a) / int(b)) - target)

    return min(ASPECT_RATIOS, key=distance)


def _describe_details(details: Any) -> str:
    """A short human text from a task's ``details`` (moderation reasons, an error)."""
    if not details:
        return ""
    if isinstance(details, str):
        return details[:200]
    if isinstance(details, dict):
        parts = []
        for key, value in details.items():
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            parts.append(f"{key}: {value}")
        return "; ".join(parts)[:200]
    if isinstance(details, list):
        return ", ".join(str(v) for v in details)[:200]
    return str(details)[:200]


def _validation_message(body: Any) -> str:
    """FastAPI's 422 ``{"detail": [{"loc": ["body", field], "msg": ...}]}`` as one line."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail[:200]
    if not isinstance(detail, list):
        return "the request was invalid"
    parts = []
    for item in detail[:3]:
        if not isinstance(item, dict):
            continue
        loc = [str(p) for p in item.get("loc") or [] if p != "body"]
        field = ".".join(loc) or "request"
        flag = FIELD_FLAGS.get(loc[0]) if loc else None
        name = f"{field} ({flag})" if flag else field
        parts.append(f"{name}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request was invalid"


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: BFL sent an answer that is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: BFL sent an unexpected answer")
    return body


def _http_failure(response: httpx.Response, what: str) -> ProviderFailure:
    """An HTTP error from the API, classified for the refund policy and for retries."""
    status = response.status_code
    if status in (401, 403):
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: the BFL key was rejected (HTTP {status})"
        )
    if status == 402:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: the BFL account is out of credits (HTTP 402)"
        )
    if status == 429:
        wait = retry_after_s(response)
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"{what}: BFL is throttling (too many active tasks, HTTP 429)",
            retry_after=wait if wait is not None else 0.0,
        )
    if status in (400, 422):
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        return ProviderFailure(
            FailureClass.BAD_INPUT, f"BFL rejected the request: {_validation_message(body)}"
        )
    if status == 404:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: BFL does not know this endpoint (HTTP 404)"
        )
    if status >= 500:
        wait = retry_after_s(response)
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"{what}: BFL had a server error (HTTP {status})",
            retry_after=wait if wait is not None else 0.0,
        )
    return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: unexpected HTTP {status}")


class BflProvider(Provider):
    name = "bfl"

    def __init__(self, config: BflConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.pool = KeyPool.from_config(config)
        self.client = http_client(config)  # API calls: never follows redirects
        # Result pictures come from a delivery host with signed URLs; no key is ever sent
        # there, so following its redirects is safe.
        self.downloads = http_client(config, follow_redirects=True)
        self.polls: list[int] = []  # polls each job took (all its tasks), for tests and stats
        self.task_times = TaskTimes()  # each model's usual task duration, to poll near it

    def _models(self) -> tuple[str, ...]:
        known = (*SIZED_MODELS, *RATIO_MODELS, *FLUX2_MODELS)
        extra = () if self.config.default_model in known else (self.config.default_model,)
        return (*known, *extra)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=tuple(
                ModelInfo(
                    m,
                    MODEL_NOTES.get(m, "FLUX via the BFL API"),
                    max_inputs=FLUX2_INPUTS.get(m, KONTEXT_INPUTS if m in KONTEXT_MODELS else 1),
                )
                for m in self._models()
            ),
            default_model=self.config.default_model,
            max_images=4,  # one task per picture, run one after another (see module doc)
            min_size=MIN_SIDE,
            max_size=MAX_SIDE,
            size_multiple=SIDE_MULTIPLE,
            description="Black Forest Labs FLUX (hosted API)",
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.downloads.aclose()

    async def account_status(self) -> str | None:
        """The credits left (``GET /v1/credits``), for /stats: a short timeout, any failure
        is just no answer."""
        key = next(iter(self.pool.keys.values()))
        try:
            response = await self.client.get(
                f"{self.base_url}/credits",
                headers={"x-key": key.key, "accept": "application/json"},
                timeout=3.0,
            )
            credits = response.json().get("credits") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(credits, int | float) or isinstance(credits, bool):
            return None
        return f"{credits:g} credits left"

    # --- the request body ------------------------------------------------------------------

    def body(self, req: ResolvedRequest, model: str, index: int) -> dict[str, Any]:
        """The documented JSON body for picture ``index`` of a request on ``model``."""
        if model in (FILL_MODEL, EXPAND_MODEL):
            return self._edit_body(req, model, index)
        body: dict[str, Any] = {"prompt": req.prompt, "seed": req.seed + index}
        if model in RATIO_MODELS:
            body["aspect_ratio"] = nearest_ratio(req.width, req.height)
        else:
            body["width"] = fit_side(req.width)
            body["height"] = fit_side(req.height)
        if model in ("flux-dev", "flux-2-flex"):
            if req.steps is not None:
                body["steps"] = req.steps
            if req.cfg is not None:
                body["guidance"] = req.cfg
        pictures = list(req.init_images) or ([req.init_image] if req.init_image else [])
        if req.kind == "img2img" and pictures:
            encoded = [base64.b64encode(p).decode("ascii") for p in pictures]
            if model in KONTEXT_MODELS or model in FLUX2_MODELS:
                # input_image, input_image_2, ... (as many as the model takes)
                limit = FLUX2_INPUTS.get(model, KONTEXT_INPUTS)
                for i, data in enumerate(encoded[:limit]):
                    body["input_image" if i == 0 else f"input_image_{i + 1}"] = data
            else:
                body["image_prompt"] = encoded[0]
                if model in STRENGTH_MODELS and req.strength is not None:
                    body["image_prompt_strength"] = round(1.0 - req.strength, 4)
        if model == "flux-pro-1.1-ultra" and self.config.raw:
            body["raw"] = True
        if model in UPSAMPLING_MODELS and self.config.prompt_upsampling:
            body["prompt_upsampling"] = True
        body["output_format"] = self.config.output_format
        tolerance = self.config.safety_tolerance
        body["safety_tolerance"] = min(tolerance, 5) if model in FLUX2_MODELS else tolerance
        return body

    def _edit_body(self, req: ResolvedRequest, model: str, index: int) -> dict[str, Any]:
        """Inpaint (``flux-pro-1.0-fill``: image + mask) or outpaint (``flux-pro-1.0-expand``:
        image + pixels to add on each side), per providers.md."""
        picture = req.init_images[0] if req.init_images else req.init_image
        if picture is None:
            raise ProviderFailure(FailureClass.BAD_INPUT, f"{model} needs an input picture")
        body: dict[str, Any] = {
            "prompt": req.prompt,
            "seed": req.seed + index,
            "image": base64.b64encode(picture).decode("ascii"),
        }
        if model == FILL_MODEL:
            if req.mask is not None:
                body["mask"] = base64.b64encode(req.mask).decode("ascii")
        else:
            top, bottom, left, right = req.expand or (0, 0, 0, 0)
            sides = {"top": top, "bottom": bottom, "left": left, "right": right}
            body |= {k: min(max(int(v), 0), 2048) for k, v in sides.items()}
        if req.steps is not None:
            body["steps"] = min(max(req.steps, 15), 50)
        if req.cfg is not None:
            body["guidance"] = req.cfg
        body["output_format"] = self.config.output_format
        body["safety_tolerance"] = self.config.safety_tolerance
        return body

    # --- HTTP ------------------------------------------------------------------------------

    def _key_goes_to(self, url: str) -> bool:
        """Whether the key may travel to ``url``: BFL's own hosts (``*.bfl.ai``), the
        configured ``base_url``'s host (with its port), and ``key_hosts``
        (shared/api/providers.md, "Black Forest Labs FLUX API": regional hosts are all
        under bfl.ai)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host == "bfl.ai" or host.endswith(".bfl.ai"):
            return True
        trusted = {
            urlsplit(self.base_url).netloc.lower(),
            *(h.lower() for h in self.config.key_hosts),
        }
        return parts.netloc.lower() in trusted

    def _check_polling_url(self, url: Any) -> str:
        """Poll where BFL says (regional hosts included), but only over http(s), never over
        plain http when the API itself is https, and only on a host the key may go to: the
        key travels with every poll, and a polling URL naming another host is refused."""
        parts = urlsplit(url) if isinstance(url, str) else None
        base_scheme = urlsplit(self.base_url).scheme
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or (base_scheme == "https" and parts.scheme != "https")
        ):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, "BFL returned a polling URL sdhost will not use"
            )
        if not self._key_goes_to(url):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"BFL returned a polling URL on {parts.hostname!r}, which is not a BFL host: "
                "sdhost does not send the key there (add it to key_hosts in [providers.bfl] "
                "if it is your proxy)",
            )
        return url

    async def _submit(
        self, key: ApiKey, model: str, body: dict[str, Any], run: ProviderRun | None = None
    ) -> tuple[str, str]:
        what = "BFL submit"
        url = f"{self.base_url}/{quote(model, safe='')}"

        async def call() -> tuple[str, str]:
            response = await send_once(
                self.client,
                "POST",
                url,
                what=what,
                service="BFL",
                json=body,
                headers={"x-key": key.key, "accept": "application/json"},
            )
            if response.status_code >= 400:
                raise _http_failure(response, what)
            answer = _json(response, what)
            task_id = answer.get("id")
            if not isinstance(task_id, str) or not task_id:
                raise ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what}: BFL sent no task id")
            cost = answer.get("cost")  # credits (providers.md, Endpoints and auth)
            if run is not None and isinstance(cost, int | float) and not isinstance(cost, bool):
                run.cost(float(cost), "credits")
            polling = answer.get("polling_url") or self._result_url(task_id)
            return task_id, self._check_polling_url(polling)

        return await with_retries(self.config, call, what=what)

    def _result_url(self, task_id: str) -> str:
        return f"{self.base_url}/get_result?id={quote(task_id, safe='')}"

    async def _poll_once(self, key: ApiKey, url: str) -> dict[str, Any]:
        what = "BFL poll"

        async def call() -> dict[str, Any]:
            try:
                response = await self.client.get(
                    url, headers={"x-key": key.key, "accept": "application/json"}
                )
            except httpx.HTTPError as exc:
                raise transport_failure(exc, what) from exc
            if response.status_code >= 400:
                raise _http_failure(response, what)
            return _json(response, what)

        return await with_retries(self.config, call, what=what)

    async def _fetch(self, url: Any) -> bytes:
        what = "BFL result"
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR, f"{what}: BFL marked the task Ready with no picture"
            )
        return await with_retries(
            self.config, lambda: download(self.downloads, url, what=what), what=what
        )

    # --- one task --------------------------------------------------------------------------

    async def _wait(
        self,
        run: ProviderRun,
        key: ApiKey,
        url: str,
        index: int,
        seed: int,
        model: str,
        resumed: bool,
    ) -> int:
        """Poll one task to its end and hand over its picture; returns the polls it took."""
        n = run.request.n
        polls = 0
        schedule = TaskPolls(self.config, self.task_times, model, resumed=resumed)
        async for _ in schedule:
            polls += 1
            answer = await self._poll_once(key, url)
            status = answer.get("status")
            if status == "Pending":
                progress = answer.get("progress")
                if isinstance(progress, int | float) and not isinstance(progress, bool):
                    fraction = progress / 100 if progress > 1 else progress
                    await run.progress((index + min(max(fraction, 0.0), 1.0)) / n)
                continue
            if status == "Ready":
                schedule.ended()
                result = raw if isinstance(raw := answer.get("result"), dict) else {}
                data = await self._fetch(result.get("sample"))
                got = result.get("seed")
                real_seed = got if isinstance(got, int) and not isinstance(got, bool) else seed
                await run.image(index, ResultImage(data=data, seed=real_seed))
                await run.progress((index + 1) / n)
                return polls
            details = _describe_details(answer.get("details"))
            suffix = f": {details}" if details else ""
            if status in MODERATED:
                raise ProviderFailure(FailureClass.REFUSED, MODERATED[status] + suffix)
            if status == "Error":
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR, f"FLUX failed to make the picture (Error){suffix}"
                )
            if status == "Task not found":
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    "BFL no longer knows this task (Task not found; it may have expired)",
                )
            # Statuses the docs do not list: keep polling, the job's deadline bounds it.
            log.info("BFL task for job %s: unexpected status %r", run.request.job_id, status)
        raise AssertionError("poll_delays never ends")  # pragma: no cover

    # --- the job ---------------------------------------------------------------------------

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        model = req.model or self.config.default_model
        if req.kind == "img2img" and model == self.config.default_model and self.config.edit_model:
            # BFL marks Kontext legacy for editing and recommends FLUX.2 [pro]
            model = self.config.edit_model
        state = run.state or {}
        ids: list[str | None] = list(state.get("ids") or [])
        urls: list[str | None] = list(state.get("polling_urls") or [])
        if not ids and run.task_id:  # stored as {"key", "polling_url"} for one task
            ids = [run.task_id]
            urls = [state.get("polling_url") or self._result_url(run.task_id)]
        polls = 0
        try:
            async with self.pool.use(state.get("key")) as key:
                for index in range(req.n):
                    if run.has_image(index):
                        continue
                    seed = req.seed + index
                    stored = ids[index] if index < len(ids) else None
                    resumed = bool(stored)
                    if stored:
                        known = urls[index] if index < len(urls) else None
                        url = self._check_polling_url(known or self._result_url(stored))
                    else:
                        task_id, url = await self._submit(
                            key, model, self.body(req, model, index), run
                        )
                        while len(ids) <= index:
                            ids.append(None)
                            urls.append(None)
                        ids[index], urls[index] = task_id, url
                        await run.submitted(
                            task_id,
                            {
                                "key": key.name,
                                "polling_url": url,
                                "ids": list(ids),
                                "polling_urls": list(urls),
                            },
                        )
                    polls += await self._wait(run, key, url, index, seed, model, resumed)
        finally:
            self.polls.append(polls)
