"""A loopback fake of the AI Horde API (aihorde.net/api), for the Horde provider and for
Haidra's own ``horde-sdk`` (pointed here with ``AI_HORDE_URL``).

What it follows, and where that is written down:

* [INT] Haidra-Org/AI-Horde ``README_integration.md``, "The Basics" and "Image Generation
  Endpoints": ``POST /api/v2/generate/async`` answers an ``id``; ``GET
  /api/v2/generate/check/{id}`` is the light progress endpoint with a 1 s cache;
  ``GET /api/v2/generate/status/{id}`` carries the ``generations`` (an image URL each).
* [RC] ``README_return_codes.md``: every error is ``{"message", "rc"}`` with the HTTP code
  (``InvalidAPIKey``, ``KudosUpfront``, ``InvalidSize``, ``TooManySteps``,
  ``RequestNotFound``, ``MissingPrompt``...).
* [SDK] horde-sdk 0.18 models (``apimodels/generate/_async.py``, ``_check.py``,
  ``_progress.py``, ``_status.py``): the field names of ``RequestAsync`` (``id``, ``kudos``,
  ``message``, ``warnings``), ``RequestStatusCheck`` (``finished``, ``processing``,
  ``restarted``, ``waiting``, ``done``, ``faulted``, ``wait_time``, ``queue_position``,
  ``kudos``, ``is_possible``) and each generation (``img``, ``seed`` as a string, ``id``,
  ``censored``, ``state``, ``worker_id``, ``worker_name``, ``model``, ``gen_metadata``);
  ``ANON_API_KEY = "0000000000"`` (``generic_api/consts.py``); ``Client-Agent`` header.
* [NOTES] shared/api/providers.md "AI Horde": a submission is always accepted; a request no
  worker can serve shows ``is_possible: false`` on check (with a ``NoAvailableWorker``
  warning on submit); the status endpoint allows 10 calls a minute; DELETE on the status
  URL cancels and answers with what was made.

The timeline of every request: it waits ``queue_s`` seconds in the queue (its
``queue_position`` counting down to 1, ``wait_time`` the seconds left), is processed for
``run_s`` seconds, then is done. The anonymous key waits ``anon_extra_queue`` places further
back (the pool serves anonymous users last). ``next_outcome("impossible" | "faulted")``
changes the next request's ending; a model no worker serves is impossible too. Requests are
recorded in ``calls`` and HTTP faults (any status, latency, a dropped connection) are injected
with ``fake.faults``, both from the shared scaffold (tests/fakes/scaffold.py).

Deliberate deviations (small, and written down so tests are not misled):

* Pictures are flat-coloured WebP files derived from the seed; R2 links point at this
  server (``/r2/...``) and stop working (403) ``r2_ttl_s`` after they are made.
* A prompt containing the word ``nsfw`` makes an NSFW picture: with ``censor_nsfw`` it is
  sent censored (``censored: true``, state ``censored``), as a worker would.
* The 429 of the status limit carries a Retry-After header and fake wording.
* Kudos: ``kudos_per_image`` each picture; a request over 1024x1024 or 50 steps needs
  kudos up front (``KudosUpfront``, 403) unless the key has at least that much.
"""

from __future__ import annotations

import base64
import io
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.scaffold import CallLog, LoopbackServer, Recorded

ANON = "0000000000"
Json = dict[str, Any]
NO_WORKER = (
    "Warning: No available workers can fulfill this request. It will expire in 20 minutes "
    "unless a worker appears. Please consider reducing its size or choosing a different model."
)


class Call(Recorded):
    """One request (tests/fakes/scaffold.py); ``apikey`` is the key it carried."""

    @property
    def apikey(self) -> str | None:
        return self.key

    @property
    def client_agent(self) -> str | None:
        return self.headers.get("Client-Agent")

    @property
    def at(self) -> float:
        return self.time


@dataclass
class HordeRequest:
    id: str
    apikey: str
    body: Json
    created: float
    queue_s: float
    run_s: float
    queue_position: int
    outcome: str = "ok"  # ok | impossible | faulted
    cancelled: bool = False
    checks: int = 0
    statuses: int = 0
    gen_ids: list[str] = field(default_factory=list)  # each picture's id (a UUID, [SDK])
    pictures: dict[str, bytes] = field(default_factory=dict)  # generation id -> webp
    made_at: float | None = None


class FakeHorde(LoopbackServer):
    record_type = Call
    redact = frozenset()

    def __init__(
        self,
        *,
        keys: dict[str, float] | None = None,
        models: dict[str, int] | None = None,
        queue_s: float = 0.0,
        run_s: float = 0.0,
        queue_position: int = 3,
        anon_extra_queue: int = 10,
        kudos_per_image: float = 10.0,
        status_limit: int = 10,
        status_window_s: float = 60.0,
        check_cache_s: float = 1.0,
        r2_ttl_s: float = 600.0,
    ) -> None:
        super().__init__()
        self.keys = dict(keys or {})  # registered keys and their kudos
        self.models = dict(models if models is not None else {"stable_diffusion": 12})
        self.queue_s = queue_s
        self.run_s = run_s
        self.queue_position = queue_position
        self.anon_extra_queue = anon_extra_queue
        self.kudos_per_image = kudos_per_image
        self.status_limit = status_limit
        self.status_window_s = status_window_s
        self.check_cache_s = check_cache_s
        self.r2_ttl_s = r2_ttl_s
        self.calls: CallLog[Call] = self.log
        self.requests: dict[str, HordeRequest] = {}
        self._outcomes: list[str] = []
        self._status_uses: dict[str, deque[float]] = {}
        self._check_cache: dict[str, tuple[float, Json]] = {}
        self._gen_owner: dict[str, str] = {}  # generation id -> request id

    # --- lifecycle -----------------------------------------------------------------------

    def origins(self) -> dict[str, web.Application]:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/api/v2/generate/async", self._submit, name="submit")
        app.router.add_get("/api/v2/generate/check/{id}", self._check, name="check")
        app.router.add_get("/api/v2/generate/status/{id}", self._status, name="status")
        app.router.add_delete("/api/v2/generate/status/{id}", self._delete, name="delete")
        app.router.add_get("/api/v2/status/models", self._models, name="models")
        app.router.add_get("/r2/{gen}.webp", self._r2, name="r2")
        return {"api": app}

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("apikey")

    @property
    def base_url(self) -> str:
        """What a client is configured with (``base_url``; ``AI_HORDE_URL`` for the SDK)."""
        return f"{self.urls['api']}/api"

    # --- control and records --------------------------------------------------------------

    def next_outcome(self, outcome: str) -> None:
        assert outcome in ("impossible", "faulted")
        self._outcomes.append(outcome)

    @property
    def submits(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/generate/async")]

    @property
    def checks(self) -> list[Call]:
        return [c for c in self.calls if "/generate/check/" in c.path]

    @property
    def statuses(self) -> list[Call]:
        return [c for c in self.calls if "/generate/status/" in c.path and c.method == "GET"]

    @property
    def deletes(self) -> list[Call]:
        return [c for c in self.calls if c.method == "DELETE"]

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, rc: str, message: str, **headers: str) -> web.Response:
        """[RC]: every error is ``{"message", "rc"}``."""
        return web.json_response({"message": message, "rc": rc}, status=status, headers=headers)

    @staticmethod
    def _ok(body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status)

    def _kudos_of(self, apikey: str) -> float:
        return 0.0 if apikey == ANON else self.keys.get(apikey, 0.0)

    def _request(self, request: web.Request) -> HordeRequest | web.Response:
        found = self.requests.get(request.match_info["id"])
        if found is None or found.cancelled:
            return self._error(
                404,
                "RequestNotFound",
                f"Request with ID '{request.match_info['id']}' not found.",
            )
        return found

    def _n(self, req: HordeRequest) -> int:
        return int((req.body.get("params") or {}).get("n", 1))

    def _progress(self, req: HordeRequest) -> Json:
        """[SDK] RequestStatusCheck, from where the request is on its timeline."""
        n = self._n(req)
        elapsed = time.monotonic() - req.created
        possible = req.outcome != "impossible"
        queued = elapsed < req.queue_s or not possible
        running = not queued and elapsed < req.queue_s + req.run_s
        faulted = req.outcome == "faulted" and not queued
        done = possible and not queued and not running and not faulted
        if done and req.made_at is None:
            req.made_at = time.monotonic()
        left = max(0.0, req.queue_s + req.run_s - elapsed)
        if queued and possible:
            share = 1 - elapsed / req.queue_s if req.queue_s else 0
            position = max(1, math.ceil(req.queue_position * share))
        else:
            position = 0
        return {
            "finished": n if done else 0,
            "processing": n if running else 0,
            "restarted": 0,
            "waiting": n if queued else 0,
            "done": done,
            "faulted": faulted,
            "wait_time": math.ceil(left) if possible and not done else 0,
            "queue_position": position,
            "kudos": self.kudos_per_image * n if done else 0.0,
            "is_possible": possible,
        }

    def _generations(self, req: HordeRequest, request: web.Request) -> list[Json]:
        n = self._n(req)
        params = req.body.get("params") or {}
        seed = int(str(params.get("seed") or "0")) if str(params.get("seed", "")).isdigit() else 0
        variation = int(params.get("seed_variation") or 1)
        width, height = int(params.get("width", 512)), int(params.get("height", 512))
        model = (req.body.get("models") or ["stable_diffusion"])[0]
        nsfw_prompt = "nsfw" in str(req.body.get("prompt", "")).lower().split()
        censor = bool(req.body.get("censor_nsfw")) and nsfw_prompt
        out = []
        while len(req.gen_ids) < n:
            gen_id = str(uuid.uuid4())
            req.gen_ids.append(gen_id)
            self._gen_owner[gen_id] = req.id
        for i in range(n):
            gen_id = req.gen_ids[i]
            if gen_id not in req.pictures:
                colour = (0, 0, 0) if censor else ((seed + i * variation) * 37 % 256, 120, 200)
                buf = io.BytesIO()
                Image.new("RGB", (width, height), colour).save(buf, format="WEBP")
                req.pictures[gen_id] = buf.getvalue()
            if req.body.get("r2", True):
                img = f"{self.urls['api']}/r2/{gen_id}.webp"
            else:
                img = base64.b64encode(req.pictures[gen_id]).decode("ascii")
            out.append(
                {
                    "img": img,
                    "seed": str(seed + i * variation),
                    "id": gen_id,
                    "censored": censor,
                    "state": "censored" if censor else "ok",
                    "worker_id": "00000000-0000-0000-0000-000000000001",
                    "worker_name": "fake-dreamer",
                    "model": model,
                    "gen_metadata": [],
                }
            )
        return out

    # --- endpoints -------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        body = self.record(request).json
        apikey = request.headers.get("apikey")
        if not apikey:
            return self._error(400, "BadRequest", "Input payload validation failed")
        if apikey != ANON and apikey not in self.keys:
            return self._error(401, "InvalidAPIKey", "Invalid API Key")
        if not isinstance(body, dict) or not body.get("prompt"):
            return self._error(400, "MissingPrompt", "The generation prompt was not given")
        params = body.get("params") or {}
        width, height = int(params.get("width", 512)), int(params.get("height", 512))
        steps = int(params.get("steps", 30))
        if width % 64 or height % 64:
            return self._error(
                400,
                "InvalidSize",
                "Invalid size. The image dimensions must be a multiple of 64.",
            )
        if steps > 500:
            return self._error(400, "TooManySteps", "Too many sampling steps.")
        n = int(params.get("n", 1))
        if width * height > 1024 * 1024 or steps > 50:
            need = self.kudos_per_image * n * 3
            if self._kudos_of(apikey) < need:
                return self._error(
                    403,
                    "KudosUpfront",
                    f"Due to heavy demand, for requests over 1024x1024 or over 50 steps, the "
                    f"client needs to already have the required kudos ({need}) for this request.",
                )
        outcome = self._outcomes.pop(0) if self._outcomes else "ok"
        model = (body.get("models") or ["stable_diffusion"])[0]
        if self.models.get(model, 0) <= 0:
            outcome = "impossible"
        position = self.queue_position + (self.anon_extra_queue if apikey == ANON else 0)
        req = HordeRequest(
            id=str(uuid.uuid4()),
            apikey=apikey,
            body=body,
            created=time.monotonic(),
            queue_s=self.queue_s,
            run_s=self.run_s,
            queue_position=position,
            outcome=outcome,
        )
        self.requests[req.id] = req
        answer: Json = {"id": req.id, "kudos": self.kudos_per_image * n}
        if outcome == "impossible":  # [NOTES]: accepted anyway, with a warning
            answer["message"] = NO_WORKER
            answer["warnings"] = [{"code": "NoAvailableWorker", "message": NO_WORKER}]
        return self._ok(answer, 202)

    async def _check(self, request: web.Request) -> web.Response:
        found = self._request(request)
        if isinstance(found, web.Response):
            return found
        found.checks += 1
        cached = self._check_cache.get(found.id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.check_cache_s:  # [INT] 1 s cache
            return self._ok(cached[1])
        body = self._progress(found)
        self._check_cache[found.id] = (now, body)
        return self._ok(body)

    async def _status(self, request: web.Request) -> web.Response:
        key = request.headers.get("apikey") or request.remote or ""
        uses = self._status_uses.setdefault(key, deque())
        now = time.monotonic()
        while uses and uses[0] <= now - self.status_window_s:
            uses.popleft()
        if len(uses) >= self.status_limit:  # [NOTES] 10 a minute
            wait = math.ceil(uses[0] + self.status_window_s - now)
            return self._error(
                429,
                "TooManyRequests",
                f"{self.status_limit} per {self.status_window_s:g} second limit exceeded",
                **{"Retry-After": str(max(1, wait))},
            )
        uses.append(now)
        found = self._request(request)
        if isinstance(found, web.Response):
            return found
        found.statuses += 1
        body = self._progress(found)
        body["generations"] = self._generations(found, request) if body["done"] else []
        body["shared"] = bool(found.body.get("shared")) or found.apikey == ANON
        return self._ok(body)

    async def _delete(self, request: web.Request) -> web.Response:
        found = self._request(request)
        if isinstance(found, web.Response):
            return found
        body = self._progress(found)
        body["generations"] = self._generations(found, request) if body["done"] else []
        body["shared"] = False
        found.cancelled = True
        return self._ok(body)

    async def _models(self, request: web.Request) -> web.Response:
        kind = request.query.get("type", "image")
        rows = [
            {
                "name": name,
                "count": count,
                "performance": 1_000_000.0 * count,
                "queued": 0.0,
                "jobs": 0.0,
                "eta": int(self.queue_s + self.run_s),
                "type": "image",
            }
            for name, count in self.models.items()
        ]
        return self._ok(rows if kind == "image" else [])

    async def _r2(self, request: web.Request) -> web.Response:
        gen_id = request.match_info["gen"]
        req = self.requests.get(self._gen_owner.get(gen_id, ""))
        if req is None or gen_id not in req.pictures:
            return web.Response(status=404)
        if req.made_at is not None and time.monotonic() - req.made_at > self.r2_ttl_s:
            return web.Response(status=403, text="expired")
        return web.Response(body=req.pictures[gen_id], content_type="image/webp")
