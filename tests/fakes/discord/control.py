"""The control API: injected faults, the record of calls, test controls."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.waiting import wait_for_event
from tests.fakes.discord.base import (
    _CONTROL_METHODS,
    Call,
    DiscordApiError,
    Json,
    _decode_bytes,
    _json_response,
    _to_json,
)
from tests.fakes.scaffold import Recorded


# The mixins share FakeDiscord's state (set up in server.py).
class ControlMixin:
    """The control API: injected faults, the record of calls, test controls."""

    # ---------------------------------------------------------- faults

    def _on(self, method: str | None, path_regex: str | None) -> Callable[[Recorded], bool]:
        """A fault's match: REST calls of ``method`` whose path (after /api/v10) has
        ``path_regex``."""
        pattern = re.compile(path_regex) if path_regex else None

        def on(call: Recorded) -> bool:
            return (
                isinstance(call, Call)
                and call.origin == "api"
                and call.rest
                and (method is None or call.method == method.upper())
                and (pattern is None or pattern.search(call.path) is not None)
            )

        return on

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        path_regex: str | None = None,
        method: str | None = None,
        body: Json | None = None,
    ) -> None:
        """The next ``count`` matching REST calls answer ``status`` (without being processed)."""
        body = body or {
            "message": {500: "500: Internal Server Error", 502: "502: Bad Gateway"}.get(
                status, f"{status}: Error"
            ),
            "code": 0,
        }
        self.faults.fail(status, body, on=self._on(method, path_regex), times=count)

    def rate_limit_next(
        self,
        retry_after: float = 0.3,
        *,
        count: int = 1,
        path_regex: str | None = None,
        method: str | None = None,
        is_global: bool = False,
    ) -> None:
        """The next ``count`` matching calls answer 429 like Discord: ``Via`` (else discord.py
        takes it for a Cloudflare ban), ``Retry-After``, ``X-RateLimit-*`` and the JSON body
        ``{"message", "retry_after", "global"}`` as exactly ``application/json``. No
        ``X-RateLimit-Bucket``: the route keeps the bucket its normal answers name."""
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Limit": str(self.ratelimit_limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": retry_after}
        self.faults.fail(
            429,
            {**body, "global": is_global},
            on=self._on(method, path_regex),
            times=count,
            headers=headers,
            content_type="application/json",
        )

    def server_error_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        path_regex: str | None = None,
        method: str | None = None,
    ) -> None:
        """The next ``count`` matching calls answer a 5xx (discord.py retries after 1 s, 3 s...)."""
        self.fail_next(status, count=count, path_regex=path_regex, method=method)

    def delay_next(
        self,
        seconds: float,
        *,
        count: int = 1,
        path_regex: str | None = None,
        method: str | None = None,
    ) -> None:
        """Hold the next ``count`` matching calls for ``seconds`` before handling them.

        On ``/callback`` the delay counts against the 3 s rule, like a slow network would.
        """
        self.faults.delay(seconds, on=self._on(method, path_regex), times=count)

    def clear_faults(self) -> None:
        self.faults.clear()

    # ---------------------------------------------------------- recording

    def _notify(self) -> None:
        self._changed.set()

    def calls(
        self, method: str | None = None, path_regex: str | None = None, *, ok: bool | None = None
    ) -> list[Call]:
        """Answered REST calls, optionally filtered by method, path regex and success."""
        pattern = re.compile(path_regex) if path_regex else None
        for c in self.log:
            if isinstance(c, Call) and c.rest and c.done and c.json is None and c.parts:
                c.json = self._payload(c)[0]  # answered by a fault: the handler never parsed it
        return [
            c
            for c in self.log
            if isinstance(c, Call)
            and c.rest
            and c.done
            and (method is None or c.method == method.upper())
            and (pattern is None or pattern.search(c.path))
            and (ok is None or c.ok == ok)
        ]

    def reset_calls(self) -> None:
        """Forget every recorded call and CDN fetch (indexes start again at 0)."""
        self.log.clear()
        self._rest_count = 0

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every call/frame); return it."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                result = predicate()
                if result:
                    return result
                await wait_for_event(self._changed, 0.05)

    async def wait_for_call(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
        ok: bool | None = None,
    ) -> Call:
        """Wait for an answered REST call (index >= ``since``) matching method and path
        regex."""

        def find() -> Call | None:
            for call in self.calls(method, path_regex, ok=ok):
                if call.index >= since:
                    return call
            return None

        return await self.wait_for(find, timeout)

    # ---------------------------------------------------------- HTTP: control API

    async def _handle_control(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _CONTROL_METHODS:
            return _json_response(404, {"error": f"unknown control method {name!r}"})
        kwargs: Json = {}
        record = self.record(request)  # the scaffold has read the body
        if record.raw:
            body = record.json
            if not isinstance(body, dict):
                return _json_response(400, {"error": "body must be a JSON object"})
            kwargs.update(body)
        include_bytes = bool(kwargs.pop("include_bytes", False))
        for key in [k for k in kwargs if k.endswith("_b64")]:
            value = kwargs.pop(key)
            kwargs[key[: -len("_b64")]] = base64.b64decode(value) if value is not None else None
        kwargs = _decode_bytes(kwargs)
        for key in ("attachments", "options"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = {
                    k: tuple(v)
                    if isinstance(v, list) and len(v) == 2 and isinstance(v[1], bytes)
                    else v
                    for k, v in kwargs[key].items()
                }
        try:
            result = getattr(self, name)(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
        except TimeoutError as exc:
            return _json_response(408, {"error": f"timeout: {exc}"})
        except (TypeError, ValueError, KeyError, LookupError, RuntimeError) as exc:
            return _json_response(400, {"error": f"{type(exc).__name__}: {exc}"})
        except DiscordApiError as exc:
            return _json_response(400, {"error": str(exc)})
        return _json_response(200, {"ok": True, "result": _to_json(result, include_bytes)})
