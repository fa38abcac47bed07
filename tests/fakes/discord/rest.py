"""The REST router: routes, rate-limit headers, errors."""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from aiohttp import web

from tests.fakes.discord.base import (
    MAX_REQUEST_BYTES,
    Call,
    DiscordApiError,
    _compile,
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

    def _payload(self, call: Call) -> tuple[Any, DiscordApiError | None]:
        """The JSON body, or a multipart request's payload_json (+ other text fields), with
        the size and JSON errors Discord answers."""
        error: DiscordApiError | None = None
        if call.files or "payload_json" in call.form or call.parts:
            if len(call.raw) > MAX_REQUEST_BYTES or any(
                len(f.data) > self.attachment_size_limit for f in call.files
            ):
                error = _too_large()
            form = {k: v for k, v in call.form.items() if k != "payload_json"}
            payload: Any = None
            if "payload_json" in call.form:
                try:
                    payload = json.loads(call.form["payload_json"])
                except ValueError:
                    error = error or DiscordApiError(
                        400, 50109, "The request body contains invalid JSON."
                    )
            return (form or {}) if payload is None else payload, error
        if not call.raw:
            return None, None
        try:
            return json.loads(call.raw.decode("utf-8")), None
        except ValueError:
            return None, DiscordApiError(400, 50109, "The request body contains invalid JSON.")

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        call: Call = self.record(request)
        method, path = call.method, call.path
        route, params, path_known = self._match(method, path)
        payload, parse_error = self._payload(call)
        call.json = payload
        auth = request.headers.get("Authorization")
        headers: dict[str, str] = {}
        status: int
        body: Any
        try:
            if route is None:
                if path_known:
                    raise DiscordApiError(405, 0, "405: Method Not Allowed")
                raise DiscordApiError(404, 0, "404: Not Found")
            if route.auth and auth != f"Bot {self.token}":
                raise DiscordApiError(401, 0, "401: Unauthorized")
            headers = self._ratelimit_headers(route, params)
            if int(headers.pop("_remaining_raw")) < 0:
                retry = float(headers["X-RateLimit-Reset-After"])
                raise self._rate_limit_error(retry, False, headers)
            if parse_error is not None:
                raise parse_error
            request_obj = _Request(
                method, path, params, dict(request.query), payload, call.files, auth
            )
            result = await route.handler(request_obj)
            if result is None:
                status, body = 204, None
            else:
                status, body = 200, result
        except DiscordApiError as exc:
            status, body = exc.status, exc.body()
            headers = {**{k: v for k, v in headers.items() if not k.startswith("_")}, **exc.headers}
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
