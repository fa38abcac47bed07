"""HTTP to one AUTOMATIC1111 / Forge / SD.Next instance (``/sdapi/v1``), and what it says
in its errors.

The route table is the web UI's ``modules/api/api.py`` (notes: shared/api/providers.md,
"Self-hosted: AUTOMATIC1111 / Forge / reForge / SD.Next"). What this module handles:

- ``--api-auth`` answers 401 *without* ``WWW-Authenticate`` (the API's error handler
  rebuilds the response), so a client that waits for the challenge never authenticates:
  credentials go with every request, up front.
- Out of memory is a 500 whose ``detail`` is empty; the words are in ``errors``.
- A route the build does not have answers 404 (Forge dropped many for a while; SD.Next has
  no ``/schedulers``): ``RouteMissing``, which the probe uses to learn the flavour.
- A connection refused, reset or timed out means the instance is gone: ``InstanceDown``, so
  the pool takes it out and the job moves to another instance.
- Answers are read with a size cap: a picture is base64 in JSON, and a server that sends
  more than ``MAX_ANSWER_BYTES`` is broken or hostile.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from adapters import http
from adapters.providers.gpupool import InstanceDown
from bot.config import GpuInstanceConfig
from bot.errors import FailureClass, ProviderFailure

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 160 * 1024 * 1024  # four 2048x2048 PNGs in base64 fit well below this
_OOM_WORDS = ("out of memory", "outofmemory", "oom")


class RouteMissing(Exception):
    """The instance has no such route (404): another build or flavour of the web UI."""


def _words(body: Any) -> str:
    """The error text of an API answer: ``errors`` (where A1111 puts an exception's
    message), else ``detail``, else the body itself, shortened."""
    if isinstance(body, dict):
        for key in ("errors", "detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, list) and value:
                value = "; ".join(
                    str(v.get("msg", v)) if isinstance(v, dict) else str(v) for v in value
                )
            if value:
                return str(value)[:300]
        return ""
    return str(body or "")[:300]


def failure_of(status: int, body: Any, instance: str) -> ProviderFailure:
    """A failed answer, classified: the request's fault (out of memory at this size, a
    value the instance rejects) or the instance's."""
    words = _words(body)
    low = words.lower()
    if status == 401:
        return ProviderFailure(
            FailureClass.PROVIDER_ERROR,
            f"GPU instance {instance} refused sdhost's credentials (check user and password)",
        )
    if any(w in low for w in _OOM_WORDS) or (
        isinstance(body, dict) and "OutOfMemory" in str(body.get("error", ""))
    ):
        return ProviderFailure(
            FailureClass.BAD_INPUT,
            "the GPU ran out of memory for this request: try a smaller --size, fewer "
            "pictures (--n) or no --hires",
        )
    if status == 422:
        return ProviderFailure(
            FailureClass.BAD_INPUT, f"the GPU instance refused the request: {words}"
        )
    return ProviderFailure(
        FailureClass.PROVIDER_ERROR,
        f"the GPU instance {instance} failed (HTTP {status}{': ' + words if words else ''})",
    )


class InstanceApi:
    """The web UI API of one instance."""

    def __init__(self, cfg: GpuInstanceConfig, *, timeout_s: float) -> None:
        self.name = cfg.name
        self.url = cfg.url.rstrip("/")
        auth = httpx.BasicAuth(cfg.user, cfg.password) if cfg.user or cfg.password else None
        self.client = http.http_client(timeout_s, connections=8, keepalive=4, auth=auth)
        self.timeout_s = timeout_s

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        method: str,
        route: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """``method /sdapi/v1/route``: the JSON answer. Raises InstanceDown, RouteMissing or
        a classified ProviderFailure."""
        url = f"{self.url}/sdapi/v1/{route.lstrip('/')}"
        timeout = httpx.Timeout(timeout_s or self.timeout_s, connect=10.0)
        try:
            async with self.client.stream(
                method, url, json=json_body, params=params, timeout=timeout
            ) as response:
                try:
                    raw = await http.read_capped(response, MAX_ANSWER_BYTES)
                except http.TooLarge:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR,
                        f"GPU instance {self.name} sent an answer larger than "
                        f"{MAX_ANSWER_BYTES // 2**20} MB",
                    ) from None
                status = response.status_code
        except httpx.HTTPError as exc:
            raise InstanceDown(f"{type(exc).__name__}") from exc
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw[:300].decode("utf-8", "replace")
        if status == 404:
            raise RouteMissing(route)
        if status >= 400:
            raise failure_of(status, body, self.name)
        if isinstance(body, str) and status == 200 and raw[:1] not in (b'"',):
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"GPU instance {self.name} answered {route} with something not JSON",
            )
        return body

    async def get(self, route: str, **kw: Any) -> Any:
        return await self.call("GET", route, **kw)

    async def post(self, route: str, body: Any = None, **kw: Any) -> Any:
        return await self.call("POST", route, json_body=body if body is not None else {}, **kw)

    async def get_or_none(self, route: str) -> Any:
        """A list route that some builds lack: None when missing."""
        try:
            return await self.get(route, timeout_s=30)
        except RouteMissing:
            return None
