"""The gateway websocket: identify, resume, heartbeats, dispatches."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from tests.fakes.discord.base import (
    APP_FLAG_COMMAND_BADGE,
    APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED,
    APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED,
    APP_FLAG_GATEWAY_PRESENCE_LIMITED,
    GW_ALREADY_AUTHENTICATED,
    GW_AUTH_FAILED,
    GW_DECODE_ERROR,
    GW_DISALLOWED_INTENTS,
    GW_INVALID_INTENTS,
    GW_INVALID_SHARD,
    GW_INVALID_VERSION,
    GW_NOT_AUTHENTICATED,
    GW_RATE_LIMITED,
    GW_SESSION_TIMED_OUT,
    GW_UNKNOWN_OPCODE,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_PRESENCES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    OWNER_ID,
    PRIVILEGED_INTENTS,
    DiscordApiError,
    GatewayFrame,
    Json,
    MiB,
    _Connection,
    _json_response,
    _redact,
    _Request,
    _Session,
    _zstd_compressor,
)


# The mixins share FakeDiscord's state (set up in server.py).
class GatewayMixin:
    """The gateway websocket: identify, resume, heartbeats, dispatches."""

    # ---------------------------------------------------------- gateway: dispatch

    def _dispatch(
        self,
        event: str,
        data: Json | Callable[[_Session], Json],
        *,
        guild_id: int | None = None,
        intents: int = 0,
    ) -> int:
        reached = 0
        now = time.monotonic()
        for session in list(self._sessions.values()):
            gone = session.disconnected_at
            if session.connection is None and gone and now - gone > self.session_resume_window:
                session.alive = False  # too late to resume: Discord forgets the session
                self._sessions.pop(session.id, None)
            if not session.wants(guild_id, intents):
                continue
            payload = data(session) if callable(data) else copy.deepcopy(data)
            session.push(event, payload)
            reached += 1
        return reached

    def dispatch_event(self, event: str, data: Json, guild_id: int | None = None) -> int:
        """Send any dispatch (op 0) to the sessions that would receive it; returns how many."""
        return self._dispatch(event, data, guild_id=guild_id)

    def sessions(self) -> list[Json]:
        return [
            {
                "session_id": s.id,
                "intents": s.intents,
                "shard": None if s.shard is None else list(s.shard),
                "seq": s.seq,
                "connected": s.connection is not None and not s.connection.ws.closed,
            }
            for s in self._sessions.values()
            if s.alive
        ]

    def gateway_connections(self) -> list[Json]:
        """Every websocket accepted so far, oldest first (compression, frames, heartbeats...)."""
        return [c.info() for c in self._connections]

    def gateway_frames(
        self, *, direction: str | None = None, op: int | None = None, t: str | None = None
    ) -> list[GatewayFrame]:
        return [
            f
            for f in self._frames
            if (direction is None or f.direction == direction)
            and (op is None or f.op == op)
            and (t is None or f.t == t)
        ]

    def _live_connections(self) -> list[_Connection]:
        return [c for c in self._connections if not c.ws.closed and c.session is not None]

    def reconnect(self) -> int:
        """Send op 7 RECONNECT on every live connection; clients should RESUME."""
        conns = self._live_connections()
        for conn in conns:
            conn.enqueue({"op": 7, "d": None, "s": None, "t": None})
        return len(conns)

    def invalidate_session(self, resumable: bool = False) -> int:
        """Send op 9 INVALID_SESSION; with ``resumable=False`` the sessions are forgotten."""
        conns = self._live_connections()
        for conn in conns:
            conn.enqueue({"op": 9, "d": resumable, "s": None, "t": None})
            if not resumable and conn.session is not None:
                conn.session.alive = False
                self._sessions.pop(conn.session.id, None)
        return len(conns)

    def close_gateway(self, code: int = 4000, reason: str = "") -> int:
        """Close every live websocket with ``code`` (4000 lets the client resume)."""
        conns = self._live_connections()
        for conn in conns:
            conn.close_soon(code, reason)
        return len(conns)

    # ---------------------------------------------------------- gateway: websocket

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _json_response(400, {"message": "400: Bad Request", "code": 0})
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * MiB)
        await ws.prepare(request)
        wanted = request.query.get("compress", "")
        mode = "none"
        if self.compression and wanted == "zlib-stream":
            mode = "zlib-stream"
        elif self.compression and wanted == "zstd-stream" and _zstd_compressor() is not None:
            mode = "zstd-stream"
        conn = _Connection(
            next(self._conn_numbers), ws, mode, self.split_frames, self._frames.append
        )
        self._connections.append(conn)
        conn.writer = asyncio.create_task(conn.run_writer())
        if request.query.get("v", "10") != "10":
            conn.close_soon(GW_INVALID_VERSION, "Invalid API version")
        elif request.query.get("encoding", "json") != "json":
            conn.close_soon(GW_DECODE_ERROR, "Error while decoding payload.")
        else:
            conn.enqueue(
                {
                    "op": 10,
                    "d": {"heartbeat_interval": self.heartbeat_interval, "_trace": ["fake-gw"]},
                    "s": None,
                    "t": None,
                }
            )
        watchdog = asyncio.create_task(self._heartbeat_watchdog(conn))
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_gateway_message(conn, msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    conn.close_soon(GW_DECODE_ERROR, "Error while decoding payload.")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            watchdog.cancel()
            if conn.closed_by is None:
                conn.closed_by = "client"
                conn.close_code = ws.close_code
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                session.disconnected_at = time.monotonic()
                if conn.closed_by == "client" and ws.close_code in (1000, 1001):
                    # A clean close from the client ends the session (gateway.mdx "Resuming").
                    session.alive = False
                    self._sessions.pop(session.id, None)
            self._notify()
        if not conn.writer.done():
            conn.writer.cancel()  # the socket is gone: nothing left can be sent
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conn.writer
        return ws

    async def _heartbeat_watchdog(self, conn: _Connection) -> None:
        """Close zombie connections like Discord: no heartbeat within the interval (+ slack)."""
        while not conn.ws.closed:
            factor = self.heartbeat_timeout_factor
            interval = self.heartbeat_interval / 1000.0
            await asyncio.sleep(max(interval / 2, 0.05))
            if factor is None:
                continue
            if time.monotonic() - conn.last_heartbeat > interval * factor + 1.0:
                conn.close_soon(GW_SESSION_TIMED_OUT, "Session timed out.")
                return

    async def _on_gateway_message(self, conn: _Connection, text: str) -> None:
        try:
            payload = json.loads(text)
            op = payload["op"]
        except (ValueError, KeyError, TypeError):
            conn.close_soon(GW_DECODE_ERROR, "Error while decoding payload.")
            return
        d = payload.get("d")
        self._frames.append(
            GatewayFrame(conn.number, "received", op, None, None, _redact(op, d), time.time())
        )
        self._notify()
        if op != 1:
            now = time.monotonic()
            conn.received_events = [t for t in conn.received_events if now - t < 60] + [now]
            if len(conn.received_events) > 120:
                conn.close_soon(GW_RATE_LIMITED, "You are being rate limited.")
                return
        if op == 1:
            conn.last_heartbeat = time.monotonic()
            conn.heartbeats += 1
            conn.enqueue({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(conn, d or {})
        elif op == 6:
            self._resume(conn, d or {})
        elif conn.session is None:
            conn.close_soon(GW_NOT_AUTHENTICATED, "Not authenticated.")
        elif op == 3:
            self.presence_updates.append(d)
        elif op == 4:
            pass  # voice state updates: accepted and ignored
        elif op == 8:
            self._request_members(conn, d or {})
        else:
            conn.close_soon(GW_UNKNOWN_OPCODE, "Unknown opcode.")

    async def _identify(self, conn: _Connection, d: Json) -> None:
        if conn.session is not None:
            conn.close_soon(GW_ALREADY_AUTHENTICATED, "Already authenticated.")
            return
        if d.get("token") != self.token:
            conn.close_soon(GW_AUTH_FAILED, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents >= 1 << 26:
            conn.close_soon(GW_INVALID_INTENTS, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            conn.close_soon(GW_DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        shard: tuple[int, int] | None = None
        if d.get("shard") is not None:
            try:
                shard_id, count = (int(x) for x in d["shard"])
            except (TypeError, ValueError):
                conn.close_soon(GW_INVALID_SHARD, "Invalid shard.")
                return
            if not 0 <= shard_id < count:
                conn.close_soon(GW_INVALID_SHARD, "Invalid shard.")
                return
            shard = (shard_id, count)
        session = _Session(secrets.token_hex(16), intents, shard)
        self._sessions[session.id] = session
        conn.session = session
        conn.identified = True
        conn.ready = True
        session.connection = conn
        guild_ids = [gid for gid in self.guilds if session.wants(gid, 0)]
        flags = APP_FLAG_COMMAND_BADGE
        if self.privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED
        if self.privileged_intents & INTENT_GUILD_MEMBERS:
            flags |= APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED
        if self.privileged_intents & INTENT_GUILD_PRESENCES:
            flags |= APP_FLAG_GATEWAY_PRESENCE_LIMITED
        ready: Json = {
            "v": 10,
            "user": {**copy.deepcopy(self.bot_user), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {},
            "auth_session_id_hash": "",
            "_trace": ["fake-gw"],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        session.push("READY", ready)
        if intents & INTENT_GUILDS:
            for gid in guild_ids:
                session.push("GUILD_CREATE", self._guild_create(gid, intents))
        self._notify()

    def _resume(self, conn: _Connection, d: Json) -> None:
        session = self._sessions.get(str(d.get("session_id")))
        seq = d.get("seq") or 0
        if d.get("token") != self.token:
            conn.close_soon(GW_AUTH_FAILED, "Authentication failed.")
            return
        oldest = session.log[0]["s"] if session and session.log else 1
        if session is None or not session.alive or seq + 1 < oldest:
            conn.enqueue({"op": 9, "d": False, "s": None, "t": None})
            return
        previous = session.connection
        if previous is not None and previous is not conn and not previous.ws.closed:
            previous.close_soon(4000, "Session resumed elsewhere.")
        session.connection = conn
        session.disconnected_at = None
        conn.session = session
        conn.resumed = True
        for payload in session.log:
            if payload["s"] > seq:
                conn.enqueue(payload)
        conn.ready = True
        session.push("RESUMED", {"_trace": ["fake-gw"]})
        self._notify()

    def _request_members(self, conn: _Connection, d: Json) -> None:
        gid = int(d.get("guild_id", 0))
        guild = self.guilds.get(gid)
        if guild is None or conn.session is None:
            return
        query = d.get("query")
        user_ids = {int(u) for u in d.get("user_ids") or []}
        limit = int(d.get("limit") or 0) or len(guild["_members"])
        found = []
        for uid in guild["_members"]:
            user = self.users[uid]
            if user_ids and uid not in user_ids:
                continue
            if query and not user["username"].lower().startswith(query.lower()):
                continue
            found.append(self.member_json(gid, uid))
        chunk: Json = {
            "guild_id": str(gid),
            "members": found[:limit],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if user_ids:
            chunk["not_found"] = [str(u) for u in user_ids if u not in guild["_members"]]
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        conn.session.push("GUILD_MEMBERS_CHUNK", chunk)

    # ---------------------------------------------------------- HTTP: REST/identity / gateway

    async def _r_me(self, req: _Request) -> Json:
        return {
            **copy.deepcopy(self.bot_user),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
            "email": None,
        }

    async def _r_user(self, req: _Request) -> Json:
        uid = int(req.params["user_id"])
        if uid not in self.users:
            raise DiscordApiError(404, 10013, "Unknown User")
        return copy.deepcopy(self.users[uid])

    async def _r_application(self, req: _Request) -> Json:
        owner = self.users.get(OWNER_ID) or self.bot_user
        flags = APP_FLAG_COMMAND_BADGE
        if self.privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED
        return {
            "id": str(self.application_id),
            "name": self.bot_user["username"],
            "icon": None,
            "description": "sdhost fake application",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": flags,
            "owner": copy.deepcopy(owner),
            "team": None,
            "bot": copy.deepcopy(self.bot_user),
            # A non-null endpoint would divert interactions away from the gateway.
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "approximate_guild_count": len(self.guilds),
            "tags": [],
        }

    async def _r_gateway(self, req: _Request) -> Json:
        return {"url": self.gateway_url}

    async def _r_gateway_bot(self, req: _Request) -> Json:
        return {
            "url": self.gateway_url,
            "shards": self.shard_count,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14400000,
                "max_concurrency": 1,
            },
        }
