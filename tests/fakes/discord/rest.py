"""The REST router: routes, rate-limit headers, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.discord.base import (
    MAX_REQUEST_BYTES,
    Call,
    DiscordApiError,
    Json,
    UploadedFile,
    _compile,
    _Fault,
    _Handler,
    _json_response,
    _Request,
    _Route,
    _too_large,
)


# The mixins share FakeDiscord's state (set up in server.py).
class RestMixin:
    """The REST router: routes, rate-limit headers, errors."""

    # ---------------------------------------------------------- HTTP: REST

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, _Handler, bool]] = [
            ("GET", "/users/@me", self._r_me, True),
            ("POST", "/users/@me/channels", self._r_create_dm, True),
            ("GET", "/users/{user_id}", self._r_user, True),
            ("GET", "/oauth2/applications/@me", self._r_application, True),
            ("GET", "/applications/@me", self._r_application, True),
            ("GET", "/gateway", self._r_gateway, False),
            ("GET", "/gateway/bot", self._r_gateway_bot, True),
            ("GET", "/applications/{application_id}/commands", self._r_get_commands, True),
            ("PUT", "/applications/{application_id}/commands", self._r_put_commands, True),
            ("POST", "/applications/{application_id}/commands", self._r_post_command, True),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._r_get_commands,
                True,
            ),
            (
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._r_put_commands,
                True,
            ),
            (
                "POST",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._r_post_command,
                True,
            ),
            (
                "POST",
                "/interactions/{interaction_id}/{interaction_token}/callback",
                self._r_callback,
                False,
            ),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._r_webhook_message,
                False,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._r_webhook_message,
                False,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._r_webhook_message,
                False,
            ),
            ("POST", "/webhooks/{webhook_id}/{webhook_token}", self._r_execute_webhook, False),
            ("GET", "/channels/{channel_id}", self._r_get_channel, True),
            ("GET", "/channels/{channel_id}/messages", self._r_list_messages, True),
            ("POST", "/channels/{channel_id}/messages", self._r_create_message, True),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._r_get_message, True),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._r_edit_message, True),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._r_delete_message,
                True,
            ),
            ("POST", "/channels/{channel_id}/typing", self._r_typing, True),
            ("GET", "/guilds/{guild_id}", self._r_get_guild, True),
            ("GET", "/guilds/{guild_id}/channels", self._r_guild_channels, True),
            ("GET", "/guilds/{guild_id}/roles", self._r_guild_roles, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._r_guild_member, True),
        ]
        return [_Route(m, t, _compile(t), h, a) for m, t, h, a in table]

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], bool]:
        """(route, params, path_known): path_known with no route means 405."""
        path_known = False
        for route in self._routes:
            match = route.regex.match(path)
            if match is None:
                continue
            path_known = True
            if route.method == method:
                return route, match.groupdict(), True
        return None, {}, path_known

    def _ratelimit_headers(self, route: _Route | None, params: dict[str, str]) -> dict[str, str]:
        template = route.key if route else "unknown"
        major = "+".join(
            params[k]
            for k in ("channel_id", "guild_id", "webhook_id", "webhook_token", "interaction_id")
            if k in params
        )
        key = f"{template}:{major}"
        now = time.time()
        start, count = self._buckets.get(key, (now, 0))
        if now - start >= self.ratelimit_window:
            start, count = now, 0
        count += 1
        self._buckets[key] = (start, count)
        reset = start + self.ratelimit_window
        remaining = self.ratelimit_limit - count
        if not self.enforce_rate_limits:
            remaining = max(remaining, 1)
        return {
            "X-RateLimit-Limit": str(self.ratelimit_limit),
            "X-RateLimit-Remaining": str(max(remaining, 0)),
            "X-RateLimit-Reset": f"{reset:.3f}",
            "X-RateLimit-Reset-After": f"{max(reset - now, 0.001):.3f}",
            "X-RateLimit-Bucket": hashlib.md5(template.encode()).hexdigest()[:16],
            "_remaining_raw": str(remaining),
        }

    async def _parse_body(
        self, request: web.Request
    ) -> tuple[Any, list[UploadedFile], DiscordApiError | None]:
        """JSON or multipart (payload_json + files[i]); size errors are returned, not raised,
        so the body is always drained and the client can read the 413."""
        uploads: list[UploadedFile] = []
        if not request.can_read_body:
            return None, uploads, None
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            total = 0
            error: DiscordApiError | None = None
            payload: Any = None
            form: Json = {}
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                    continue
                chunks = []
                size = 0
                while chunk := await part.read_chunk(1 << 16):
                    size += len(chunk)
                    total += len(chunk)
                    if total > MAX_REQUEST_BYTES or size > self.attachment_size_limit:
                        if part.filename is not None or total > MAX_REQUEST_BYTES:
                            error = _too_large()
                        continue
                    chunks.append(chunk)
                data = b"".join(chunks)
                if part.filename is not None:
                    uploads.append(
                        UploadedFile(
                            part.name,
                            part.filename,
                            data,
                            part.headers.get(aiohttp.hdrs.CONTENT_TYPE),
                        )
                    )
                elif part.name == "payload_json":
                    try:
                        payload = json.loads(data.decode("utf-8"))
                    except ValueError:
                        error = error or DiscordApiError(
                            400, 50109, "The request body contains invalid JSON."
                        )
                else:
                    form[part.name] = data.decode("utf-8", "replace")
            if payload is None:
                payload = form or {}
            return payload, uploads, error
        raw = await request.read()
        if not raw:
            return None, uploads, None
        try:
            return json.loads(raw.decode("utf-8")), uploads, None
        except ValueError:
            return (
                None,
                uploads,
                DiscordApiError(400, 50109, "The request body contains invalid JSON."),
            )

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = "/" + request.match_info["tail"]
        started = time.time()
        route, params, path_known = self._match(method, path)
        payload, uploads, parse_error = await self._parse_body(request)
        auth = request.headers.get("Authorization")
        headers: dict[str, str] = {}
        status: int
        body: Any
        try:
            delay = self._take_fault("delay", method, path)
            if delay is not None:
                await asyncio.sleep(delay.delay)
            if route is None:
                if path_known:
                    raise DiscordApiError(405, 0, "405: Method Not Allowed")
                raise DiscordApiError(404, 0, "404: Not Found")
            if route.auth and auth != f"Bot {self.token}":
                raise DiscordApiError(401, 0, "401: Unauthorized")
            fault = self._take_fault("status", method, path)
            if fault is not None:
                raise self._fault_error(fault, route, params)
            headers = self._ratelimit_headers(route, params)
            if int(headers.pop("_remaining_raw")) < 0:
                retry = float(headers["X-RateLimit-Reset-After"])
                raise self._rate_limit_error(retry, False, headers)
            if parse_error is not None:
                raise parse_error
            request_obj = _Request(
                method, path, params, dict(request.query), payload, uploads, auth
            )
            result = await route.handler(request_obj)
            if result is None:
                status, body = 204, None
            else:
                status, body = 200, result
        except DiscordApiError as exc:
            status, body = exc.status, exc.body()
            headers = {**{k: v for k, v in headers.items() if not k.startswith("_")}, **exc.headers}
        call = Call(
            index=len(self.call_log),
            method=method,
            path=path,
            route=route.key if route else f"{method} ?",
            query=dict(request.query),
            json=payload,
            uploads=uploads,
            time=started,
            status=status,
            response=body,
            authorization=auth,
        )
        self.call_log.append(call)
        self._notify()
        if status == 204:
            return web.Response(status=204, headers=headers)
        return _json_response(status, body, headers)

    def _rate_limit_error(
        self, retry_after: float, is_global: bool, headers: dict[str, str] | None = None
    ) -> DiscordApiError:
        hdrs = dict(headers or {})
        hdrs.update(
            {
                "Via": "1.1 google",
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "X-RateLimit-Scope": "global" if is_global else "user",
            }
        )
        if is_global:
            hdrs["X-RateLimit-Global"] = "true"
        return DiscordApiError(
            429,
            0,
            "You are being rate limited.",
            body={
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": is_global,
            },
            headers=hdrs,
        )

    def _fault_error(self, fault: _Fault, route: _Route, params: dict[str, str]) -> DiscordApiError:
        if fault.status == 429:
            headers = self._ratelimit_headers(route, params)
            headers.pop("_remaining_raw", None)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset-After"] = f"{fault.retry_after:.3f}"
            headers["X-RateLimit-Reset"] = f"{time.time() + fault.retry_after:.3f}"
            return self._rate_limit_error(fault.retry_after, fault.is_global, headers)
        body = fault.body or {
            "message": {500: "500: Internal Server Error", 502: "502: Bad Gateway"}.get(
                fault.status, f"{fault.status}: Error"
            ),
            "code": 0,
        }
        return DiscordApiError(
            fault.status, int(body.get("code", 0)), str(body.get("message")), body=body
        )
