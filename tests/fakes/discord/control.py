"""The control API: injected faults, the record of calls, test controls."""

from __future__ import annotations

import asyncio
import base64
import re
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
    _Fault,
    _json_response,
    _to_json,
)


# The mixins share FakeDiscord's state (set up in server.py).
class ControlMixin:
    """The control API: injected faults, the record of calls, test controls."""

    # ---------------------------------------------------------- faults

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
        self._faults.append(
            _Fault(
                "status",
                count,
                method,
                re.compile(path_regex) if path_regex else None,
                status=status,
                body=body,
            )
        )

    def rate_limit_next(
        self,
        retry_after: float = 0.3,
        *,
        count: int = 1,
        path_regex: str | None = None,
        method: str | None = None,
        is_global: bool = False,
    ) -> None:
        """The next ``count`` matching calls answer 429 like Discord (Via, Retry-After, ...)."""
        self._faults.append(
            _Fault(
                "status",
                count,
                method,
                re.compile(path_regex) if path_regex else None,
                status=429,
                retry_after=retry_after,
                is_global=is_global,
            )
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
        self._faults.append(
            _Fault(
                "delay",
                count,
                method,
                re.compile(path_regex) if path_regex else None,
                delay=seconds,
            )
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    def _take_fault(self, kind: str, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.kind == kind and fault.remaining > 0 and fault.matches(method, path):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return fault
        return None

    # ---------------------------------------------------------- recording

    def _notify(self) -> None:
        self._changed.set()

    def calls(
        self, method: str | None = None, path_regex: str | None = None, *, ok: bool | None = None
    ) -> list[Call]:
        """Recorded REST calls, optionally filtered by method, path regex and success."""
        pattern = re.compile(path_regex) if path_regex else None
        return [
            c
            for c in self.call_log
            if (method is None or c.method == method.upper())
            and (pattern is None or pattern.search(c.path))
            and (ok is None or c.ok == ok)
        ]

    def reset_calls(self) -> None:
        self.call_log.clear()
        self.cdn_fetches.clear()

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
        """Wait for a REST call (index >= ``since``) matching method and path regex."""

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
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _json_response(400, {"error": "body must be a JSON object"})
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
