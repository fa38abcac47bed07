"""A loopback fake of Discord (REST API v10, the gateway websocket and the attachment CDN).

Why a fake server and not mocks: sdhost's Discord adapter is built on discord.py, and the bugs that
matter (an ack later than 3 s, a follow-up after the 15-minute token lifetime, 413/40005 for big
images, 429s with ``retry_after``, expired CDN links, buttons that must survive a restart, modals)
only show up when the real client talks HTTP and websocket to something that answers like
Discord. The fake speaks the wire format discord.py 2.7 expects, records every call, and exposes
a control API to inject interactions, user messages and failures.

Two ways to run it:

* in-process: ``async with FakeDiscord() as dc:`` then ``with point_discord_at(dc):`` around the
  client's lifetime; the control API is the Python methods of :class:`FakeDiscord`.
* as a subprocess: ``python -m tests.fakes.discord_api --port 0`` prints
  ``READY http://127.0.0.1:<port>`` once listening; the control methods are exposed as
  ``POST /_control/<name>`` with a JSON object of keyword arguments (bytes travel as
  ``{"$b64": "..."}`` anywhere, or as a top-level ``<arg>_b64``); :class:`FakeDiscordRemote`
  wraps them.

Traps of discord.py that the fake is built around (see ../shared/ENGINEERING.md section 2):

* ``json_or_text`` parses JSON only when ``Content-Type`` is exactly ``application/json``, so
  every JSON answer is built by hand (aiohttp's ``json_response`` appends ``; charset=utf-8``).
* A 429 without a ``Via`` header, or with a non-JSON body, is taken for a Cloudflare ban and
  raised instead of retried; so 429s carry ``Via``, ``Retry-After``, ``X-RateLimit-*`` and
  ``{"message", "retry_after", "global"}``. Normal answers carry ``X-RateLimit-*`` too, and
  ``Remaining`` never reaches 0 by accident (discord.py would then sleep until the reset).
* ``on_ready`` fires only ``guild_ready_timeout`` (2 s by default) after the last GUILD_CREATE;
  tests pass a small ``guild_ready_timeout`` to the client.
* discord.py 2.7 asks for ``compress=zstd-stream`` when ``zstandard`` (or Python 3.14's
  ``compression.zstd``) is importable, ``zlib-stream`` otherwise. The fake compresses binary
  frames with zlib-stream (one compressor per connection, every message ends with the
  Z_SYNC_FLUSH suffix ``00 00 ff ff``) and with zstd when it can; if it cannot it falls back to
  text frames, which discord.py parses directly.
* Interaction callbacks are sent with ``?with_response=1`` and must answer 200 with an
  InteractionCallbackResponse; without the flag the answer is 204.
* A button click only reaches a ``DynamicItem`` when ``interaction.message`` carries a component
  with that ``custom_id`` (``ViewStore.schedule_dynamic_item_call``), so component interactions
  always carry the stored message, and the fake refuses clicks on components it never sent.
* discord.py computes ``Interaction.expires_at`` from the snowflake, so every id is a real
  snowflake of the current time.

Deliberate deviations from Discord (kept small and documented so tests are not misled):

* Permissions are the OR of the member's role permissions; channel overwrites are not applied and
  the fake never answers 403 for missing permissions.
* Rate limits are reported in headers (per route bucket, default 50 per second) but only enforced
  when ``enforce_rate_limits=True`` or when a test injects a 429.
* Only JSON encoding on the gateway (no ETF); voice, presences, threads, reactions, polls, stickers,
  emojis, audit logs and channel/guild management are not implemented (404 or ignored).
* Follow-ups are not capped at 5 (Discord caps them only for user-installed apps).
* Message-content stripping (the MESSAGE_CONTENT privileged intent) is applied to gateway
  dispatches according to the identified intents, and to REST reads only when the application's
  portal switch (``privileged_intents``) lacks MESSAGE_CONTENT. Identifying with a privileged
  intent the portal switch lacks closes the gateway with 4014, as Discord does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import mimetypes
import re
import secrets
import signal
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from bot.waiting import wait_for_event

_LOG = logging.getLogger(__name__)

Json = dict[str, Any]

# ---------------------------------------------------------------------------------- constants

DEFAULT_TOKEN = "FAKE.TOKEN.x"
DISCORD_EPOCH_MS = 1420070400000

# Fixed ids of the default world, real snowflakes (2023-2024) so created_at is plausible.
APPLICATION_ID = 1234567890123456789
BOT_USER_ID = APPLICATION_ID  # applications created since 2020 share the bot user's id
GUILD_ID = 1100000000000000000
CHANNEL_ID = 1100000000000000010
NSFW_CHANNEL_ID = 1100000000000000011
ROLE_ARTIST_ID = 1100000000000000020
ROLE_BOT_ID = 1100000000000000021
USER_ID = 1000000000000000042
OWNER_ID = 1000000000000000007

MiB = 1024 * 1024
DEFAULT_ATTACHMENT_LIMIT = 10 * MiB  # reference.mdx "Uploading Files"
MAX_REQUEST_BYTES = 25 * MiB  # message.mdx: the whole request
MAX_FILES = 10
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_CUSTOM_ID = 100
MAX_CHOICES = 25

# Interaction and callback types (receiving-and-responding.mdx).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CB_PONG, CB_MESSAGE, CB_DEFERRED_MESSAGE, CB_DEFERRED_UPDATE, CB_UPDATE = 1, 4, 5, 6, 7
CB_AUTOCOMPLETE, CB_MODAL = 8, 9

# Message flags and types.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
ATTACHMENT_FLAG_SPOILER = 1 << 3
MSG_DEFAULT, MSG_REPLY, MSG_CHAT_INPUT, MSG_CONTEXT_MENU = 0, 19, 20, 23

# Gateway intents.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
# Application flags reported when the privileged intents are switched on in the portal.
APP_FLAG_GATEWAY_PRESENCE_LIMITED = 1 << 13
APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED = 1 << 15
APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
APP_FLAG_COMMAND_BADGE = 1 << 23

# Permission bits (permissions.mdx).
P_ADD_REACTIONS = 1 << 6
P_VIEW_CHANNEL = 1 << 10
P_SEND_MESSAGES = 1 << 11
P_MANAGE_MESSAGES = 1 << 13
P_EMBED_LINKS = 1 << 14
P_ATTACH_FILES = 1 << 15
P_READ_HISTORY = 1 << 16
P_USE_EXTERNAL_EMOJIS = 1 << 18
P_USE_APP_COMMANDS = 1 << 31
P_ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 51) - 1
EVERYONE_PERMISSIONS = (
    P_ADD_REACTIONS
    | P_VIEW_CHANNEL
    | P_SEND_MESSAGES
    | P_EMBED_LINKS
    | P_ATTACH_FILES
    | P_READ_HISTORY
    | P_USE_EXTERNAL_EMOJIS
    | P_USE_APP_COMMANDS
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | P_MANAGE_MESSAGES

# Option types (application-commands.mdx).
OPT_SUB_COMMAND, OPT_SUB_GROUP = 1, 2
OPT_STRING, OPT_INTEGER, OPT_BOOLEAN, OPT_USER, OPT_CHANNEL = 3, 4, 5, 6, 7
OPT_ROLE, OPT_MENTIONABLE, OPT_NUMBER, OPT_ATTACHMENT = 8, 9, 10, 11

# Component types (components/reference.mdx).
C_ACTION_ROW, C_BUTTON, C_STRING_SELECT, C_TEXT_INPUT = 1, 2, 3, 4
C_SELECTS = frozenset({3, 5, 6, 7, 8})
C_LABEL, C_FILE_UPLOAD = 18, 19

CDN_GONE = "This content is no longer available."

# Gateway close codes (opcodes-and-status-codes.mdx).
GW_UNKNOWN_OPCODE = 4001
GW_DECODE_ERROR = 4002
GW_NOT_AUTHENTICATED = 4003
GW_AUTH_FAILED = 4004
GW_ALREADY_AUTHENTICATED = 4005
GW_RATE_LIMITED = 4008
GW_SESSION_TIMED_OUT = 4009
GW_INVALID_SHARD = 4010
GW_INVALID_VERSION = 4012
GW_INVALID_INTENTS = 4013
GW_DISALLOWED_INTENTS = 4014


# ---------------------------------------------------------------------------------- helpers


def _now_iso(ts: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC)
    return moment.isoformat(timespec="microseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _snowflake_time(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000.0


class _Snowflakes:
    """Real snowflakes for "now": discord.py derives created_at and expires_at from them."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._increment = 0

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if ms <= self._last_ms:
            ms = self._last_ms
            self._increment += 1
            if self._increment >= 4096:
                ms += 1
                self._increment = 0
        else:
            self._increment = 0
        self._last_ms = ms
        return (ms << 22) | (1 << 17) | (1 << 12) | self._increment


class DiscordApiError(Exception):
    """An error answer in Discord's shape: ``{"message", "code", "errors"?}`` with a status."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: Json | None = None,
        headers: dict[str, str] | None = None,
        body: Json | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}
        self._body = body

    def body(self) -> Json:
        if self._body is not None:
            return self._body
        body: Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _form_error(path: str, code: str, message: str) -> DiscordApiError:
    """400/50035 "Invalid Form Body" with the nested ``errors`` object Discord returns."""
    errors: Json = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path.split(".")):
        errors = {key: errors}
    return DiscordApiError(400, 50035, "Invalid Form Body", errors)


def _unknown_message() -> DiscordApiError:
    return DiscordApiError(404, 10008, "Unknown Message")


def _unknown_channel() -> DiscordApiError:
    return DiscordApiError(404, 10003, "Unknown Channel")


def _unknown_interaction() -> DiscordApiError:
    return DiscordApiError(404, 10062, "Unknown interaction")


def _invalid_webhook_token() -> DiscordApiError:
    return DiscordApiError(401, 50027, "Invalid Webhook Token")


def _unknown_webhook() -> DiscordApiError:
    return DiscordApiError(404, 10015, "Unknown Webhook")


def _too_large() -> DiscordApiError:
    return DiscordApiError(413, 40005, "Request entity too large")


def _image_info(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mime) when Pillow recognises the bytes as an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = Image.MIME.get(img.format or "", "application/octet-stream")
            return img.width, img.height, mime
    except Exception:
        return None


def _guess_type(filename: str, data: bytes) -> tuple[str, int | None, int | None]:
    info = _image_info(data)
    if info is not None:
        return info[2], info[0], info[1]
    guessed, _ = mimetypes.guess_type(filename)
    if guessed is None:
        guessed = "application/octet-stream"
    if guessed.startswith("text/"):
        guessed += "; charset=utf-8"
    return guessed, None, None


def _encode_bytes(value: Any) -> Any:
    """Bytes anywhere in a JSON-ish value become ``{"$b64": ...}`` for the control API."""
    if isinstance(value, bytes | bytearray):
        return {"$b64": _b64(bytes(value))}
    if isinstance(value, dict):
        return {k: _encode_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_bytes(v) for v in value]
    return value


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$b64"}:
            return base64.b64decode(value["$b64"])
        return {k: _decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_bytes(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- records


@dataclasses.dataclass
class UploadedFile:
    """One ``files[i]`` part of a multipart request."""

    field: str
    filename: str
    data: bytes
    content_type: str | None

    def to_json(self, include_bytes: bool = False) -> Json:
        out: Json = {
            "field": self.field,
            "filename": self.filename,
            "size": len(self.data),
            "content_type": self.content_type,
        }
        if include_bytes:
            out["data_b64"] = _b64(self.data)
        return out


@dataclasses.dataclass
class Call:
    """One REST request as the fake saw it, with the answer it gave."""

    index: int
    method: str
    path: str
    route: str
    query: dict[str, str]
    json: Any
    uploads: list[UploadedFile]
    time: float
    status: int
    response: Any
    authorization: str | None

    @property
    def files(self) -> dict[str, bytes]:
        """Uploaded files by filename (what ``files[i]`` parts carried)."""
        return {u.filename: u.data for u in self.uploads}

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def to_json(self, include_bytes: bool = False) -> Json:
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "query": self.query,
            "json": self.json,
            "uploads": [u.to_json(include_bytes) for u in self.uploads],
            "time": self.time,
            "status": self.status,
            "response": self.response,
        }


@dataclasses.dataclass
class CdnFetch:
    """One GET on the fake CDN: tests use it to prove an expired link was refetched."""

    path: str
    status: int
    time: float


@dataclasses.dataclass
class _Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str
    width: int | None
    height: int | None
    prefix: str  # "attachments/<channel>" or "ephemeral-attachments/<application>"
    description: str | None = None
    spoiler: bool = False
    ephemeral: bool = False


@dataclasses.dataclass
class _Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: Json
    content: str
    timestamp: float
    type: int = MSG_DEFAULT
    flags: int = 0
    tts: bool = False
    embeds: list[Json] = dataclasses.field(default_factory=list)
    components: list[Json] = dataclasses.field(default_factory=list)
    attachments: list[_Attachment] = dataclasses.field(default_factory=list)
    mentions: list[int] = dataclasses.field(default_factory=list)
    mention_roles: list[int] = dataclasses.field(default_factory=list)
    mention_everyone: bool = False
    edited: float | None = None
    reference: Json | None = None
    referenced_id: int | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: Json | None = None
    interaction_legacy: Json | None = None
    nonce: str | None = None
    pinned: bool = False
    deleted: bool = False
    author_member: Json | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)


@dataclasses.dataclass
class _Interaction:
    id: int
    token: str
    type: int
    payload: Json
    user_id: int
    guild_id: int | None
    channel_id: int
    created: float  # monotonic, for the 3 s and 15 min rules
    deadline: float
    lifetime: float
    expired: bool = False
    response_type: int | None = None
    original_id: int | None = None
    original_loading: bool = False
    followup_ids: list[int] = dataclasses.field(default_factory=list)
    message_id: int | None = None  # the component's message, for type 3 (and modals from it)
    command_name: str | None = None
    command_type: int | None = None
    target_id: int | None = None
    choices: list[Json] | None = None
    modal: Json | None = None
    triggering: Json | None = None  # interaction_metadata of the interaction that opened a modal

    def token_valid(self, now: float) -> bool:
        return not self.expired and now - self.created < self.lifetime


@dataclasses.dataclass
class _Fault:
    kind: str  # "status" or "delay"
    remaining: int
    method: str | None
    path_regex: re.Pattern[str] | None
    status: int = 500
    body: Json | None = None
    retry_after: float = 0.0
    is_global: bool = False
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None


@dataclasses.dataclass
class GatewayFrame:
    """One gateway payload, sent or received, as JSON (after decompression)."""

    connection: int
    direction: str  # "sent" or "received"
    op: int | None
    t: str | None
    s: int | None
    d: Any
    time: float
    binary: bool = False

    def to_json(self) -> Json:
        return dataclasses.asdict(self)


class _Session:
    """A gateway session: survives its websocket so RESUME can replay what was missed."""

    def __init__(self, session_id: str, intents: int, shard: tuple[int, int] | None) -> None:
        self.id = session_id
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.log: list[Json] = []
        self.connection: _Connection | None = None
        self.alive = True
        self.disconnected_at: float | None = None

    def wants(self, guild_id: int | None, intents: int) -> bool:
        if not self.alive or (self.intents & intents) != intents:
            return False
        if self.shard is None or self.shard[1] <= 1:
            return True
        shard_of = 0 if guild_id is None else (guild_id >> 22) % self.shard[1]
        return shard_of == self.shard[0]

    def push(self, event: str, data: Json) -> Json:
        self.seq += 1
        payload = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.log.append(payload)
        if len(self.log) > 5000:
            del self.log[:1000]
        if self.connection is not None and self.connection.ready:
            self.connection.enqueue(payload)
        return payload


class _Connection:
    """One websocket: its compressor, its ordered send queue and its heartbeat bookkeeping."""

    def __init__(
        self,
        number: int,
        ws: web.WebSocketResponse,
        compression: str,
        split_frames: bool,
        log: Callable[[GatewayFrame], None],
    ) -> None:
        self.number = number
        self.ws = ws
        self.compression = compression
        self.split_frames = split_frames
        self._log = log
        self._queue: asyncio.Queue[Json | tuple[str, int, str]] = asyncio.Queue()
        self._zlib = zlib.compressobj() if compression == "zlib-stream" else None
        self._zstd: Any = None
        if compression == "zstd-stream":
            self._zstd = _zstd_compressor()
        self.session: _Session | None = None
        self.ready = False  # True once READY/RESUMED started flowing to this connection
        self.identified = False
        self.resumed = False
        self.last_heartbeat = time.monotonic()
        self.heartbeats = 0
        self.acks = 0
        self.frames_sent = 0
        self.binary_frames = 0
        self.received_events: list[float] = []
        self.close_code: int | None = None
        self.closed_by: str | None = None
        self.writer: asyncio.Task[None] | None = None

    def enqueue(self, payload: Json) -> None:
        self._queue.put_nowait(payload)

    def close_soon(self, code: int, reason: str = "") -> None:
        self._queue.put_nowait(("close", code, reason))

    def _encode(self, text: str) -> list[bytes] | None:
        raw = text.encode("utf-8")
        if self._zlib is not None:
            data = self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        elif self._zstd is not None:
            data = self._zstd(raw)
        else:
            return None
        if self.split_frames and self._zlib is not None and len(data) > 8:
            # Discord may split one zlib-stream message over several frames; only the last
            # ends with 00 00 ff ff, and discord.py buffers until it sees it.
            middle = len(data) // 2
            return [data[:middle], data[middle:]]
        return [data]

    async def run_writer(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, tuple):
                    _, code, reason = item
                    self.closed_by = "server"
                    self.close_code = code
                    await self.ws.close(code=code, message=reason.encode())
                    return
                if self.ws.closed:
                    return
                text = _dumps(item)
                frames = self._encode(text)
                if frames is None:
                    await self.ws.send_str(text)
                else:
                    for frame in frames:
                        await self.ws.send_bytes(frame)
                        self.binary_frames += 1
                self.frames_sent += 1
                if item.get("op") == 11:
                    self.acks += 1
                self._log(
                    GatewayFrame(
                        self.number,
                        "sent",
                        item.get("op"),
                        item.get("t"),
                        item.get("s"),
                        item.get("d"),
                        time.time(),
                        frames is not None,
                    )
                )
        except (ConnectionResetError, RuntimeError, aiohttp.ClientConnectionError):
            return

    def info(self) -> Json:
        return {
            "number": self.number,
            "compression": self.compression,
            "session_id": None if self.session is None else self.session.id,
            "identified": self.identified,
            "resumed": self.resumed,
            "open": not self.ws.closed,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
            "frames_sent": self.frames_sent,
            "binary_frames": self.binary_frames,
            "heartbeats": self.heartbeats,
            "acks": self.acks,
        }


def _zstd_compressor() -> Callable[[bytes], bytes] | None:
    """A zstd-stream encoder if a zstd module is importable (discord.py then asks for it)."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            return None
        comp = zstd.ZstdCompressor()
        return lambda raw: comp.compress(raw, zstd.ZstdCompressor.FLUSH_FRAME)
    zcomp = zstandard.ZstdCompressor().compressobj()

    def encode(raw: bytes) -> bytes:
        return zcomp.compress(raw) + zcomp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    return encode


# ---------------------------------------------------------------------------------- routes

_Handler = Callable[["_Request"], Awaitable[Any]]


@dataclasses.dataclass
class _Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    uploads: list[UploadedFile]
    authorization: str | None


@dataclasses.dataclass
class _Route:
    method: str
    template: str
    regex: re.Pattern[str]
    handler: _Handler
    auth: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{pattern}$")


# ---------------------------------------------------------------------------------- the fake


class FakeDiscord:
    """The fake Discord: REST under ``/api/v10``, the gateway at ``/``, the CDN under ``/cdn``.

    World model: users, guilds (channels, roles, members), DM channels, messages with stored
    attachment bytes, registered application commands, interactions with their tokens, and
    gateway sessions. Everything that a test needs to look at is public: ``calls``,
    ``channel_messages()``, ``interaction_responses()``, ``gateway_frames()``,
    ``cdn_fetches``.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        application_id: int = APPLICATION_ID,
        bot_user_id: int | None = None,
        bot_username: str = "sdhost",
        guilds: list[Json] | None = None,
        users: list[Json] | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT,
        heartbeat_interval: int = 41250,
        heartbeat_timeout_factor: float | None = 2.0,
        compression: bool = True,
        split_frames: bool = False,
        interaction_deadline: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        attachment_url_ttl: float = 24 * 3600.0,
        followup_edits_deferred: bool = True,
        privileged_intents: int = PRIVILEGED_INTENTS,
        shard_count: int = 1,
        session_resume_window: float = 120.0,
        ratelimit_limit: int = 50,
        ratelimit_window: float = 1.0,
        enforce_rate_limits: bool = False,
    ) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_user_id = bot_user_id if bot_user_id is not None else application_id
        self.attachment_size_limit = attachment_size_limit
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout_factor = heartbeat_timeout_factor
        self.compression = compression
        self.split_frames = split_frames
        self.interaction_deadline = interaction_deadline
        self.token_lifetime = token_lifetime
        self.attachment_url_ttl = attachment_url_ttl
        self.followup_edits_deferred = followup_edits_deferred
        self.privileged_intents = privileged_intents
        self.shard_count = shard_count
        self.session_resume_window = session_resume_window
        self.ratelimit_limit = ratelimit_limit
        self.ratelimit_window = ratelimit_window
        self.enforce_rate_limits = enforce_rate_limits

        self._ids = _Snowflakes()
        self.users: dict[int, Json] = {}
        self.bot_user = self._add_user(
            {"id": self.bot_user_id, "username": bot_username, "bot": True}
        )
        self.guilds: dict[int, Json] = {}
        self.channels: dict[int, Json] = {}
        self._dm_by_user: dict[int, int] = {}
        self.messages: dict[int, _Message] = {}
        self._channel_order: dict[int, list[int]] = {}
        self._attachments: dict[int, _Attachment] = {}
        self.commands: dict[int | None, list[Json]] = {None: []}
        self.interactions: dict[int, _Interaction] = {}
        self._by_token: dict[str, _Interaction] = {}
        self._modals: dict[tuple[int, str], tuple[Json, _Interaction]] = {}
        self.call_log: list[Call] = []
        self.cdn_fetches: list[CdnFetch] = []
        self.presence_updates: list[Json] = []
        self._frames: list[GatewayFrame] = []
        self._faults: list[_Fault] = []
        self._buckets: dict[str, tuple[float, int]] = {}
        self._cdn_key = secrets.token_bytes(16)
        self._sessions: dict[str, _Session] = {}
        self._connections: list[_Connection] = []
        self._conn_numbers = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._routes = self._build_routes()

        for spec in users or []:
            self._add_user(spec)
        if guilds is None:
            guilds = [_default_guild()]
            self._add_user({"id": USER_ID, "username": "alice", "global_name": "Alice"})
            self._add_user({"id": OWNER_ID, "username": "owner", "global_name": "Owner"})
        for spec in guilds:
            self.add_guild(spec)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeDiscord:
        """Listen on ``host:port`` (0 picks a free port)."""
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle_rest)
        app.router.add_get("/cdn/{path:.*}", self._handle_cdn)
        app.router.add_get("/media/{path:.*}", self._handle_cdn)
        app.router.add_route("*", "/_control/{name}", self._handle_control)
        app.router.add_get("/", self._handle_gateway)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._host = host
        self._port = sockets[0].getsockname()[1] if sockets else port
        return self

    async def stop(self) -> None:
        """Close every websocket (1001, going away) and stop listening."""
        for conn in list(self._connections):
            if not conn.ws.closed:
                conn.closed_by = "server"
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1001, message=b"server stopping")
            if conn.writer is not None:
                conn.writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be set to."""
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must be set to (and /gateway/bot answers)."""
        return f"ws://{self._host}:{self._port}/"

    @property
    def cdn_base(self) -> str:
        return f"{self.url}/cdn"

    @property
    def guild_id(self) -> int:
        """The first guild (the default world's only guild)."""
        return next(iter(self.guilds))

    @property
    def channel_id(self) -> int:
        """The first text channel of the first guild that is not age-restricted."""
        guild = self.guilds[self.guild_id]
        for cid in guild["_channel_ids"]:
            ch = self.channels[cid]
            if ch["type"] == 0 and not ch.get("nsfw"):
                return cid
        raise LookupError("no text channel")

    @property
    def nsfw_channel_id(self) -> int:
        guild = self.guilds[self.guild_id]
        for cid in guild["_channel_ids"]:
            if self.channels[cid].get("nsfw"):
                return cid
        raise LookupError("no NSFW channel")

    @property
    def user_id(self) -> int:
        """The default human member (``alice`` in the default world)."""
        guild = self.guilds[self.guild_id]
        for uid in guild["_members"]:
            if uid != self.bot_user_id and uid != guild["owner_id"]:
                return uid
        return next(uid for uid in guild["_members"] if uid != self.bot_user_id)

    def configure(self, **settings: Any) -> Json:
        """Change settings at run time (heartbeat_interval, interaction_deadline, ...)."""
        allowed = {
            "attachment_size_limit",
            "heartbeat_interval",
            "heartbeat_timeout_factor",
            "compression",
            "split_frames",
            "interaction_deadline",
            "token_lifetime",
            "attachment_url_ttl",
            "followup_edits_deferred",
            "privileged_intents",
            "shard_count",
            "session_resume_window",
            "ratelimit_limit",
            "ratelimit_window",
            "enforce_rate_limits",
        }
        for key, value in settings.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}")
            setattr(self, key, value)
        return {key: getattr(self, key) for key in sorted(allowed)}

    # ------------------------------------------------------------------ world

    def _add_user(self, spec: Json) -> Json:
        uid = int(spec["id"])
        user = {
            "id": str(uid),
            "username": spec.get("username", f"user{uid % 10000}"),
            "discriminator": spec.get("discriminator", "0"),
            "global_name": spec.get("global_name"),
            "avatar": spec.get("avatar"),
            "bot": bool(spec.get("bot", False)),
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
            "collectibles": None,
        }
        self.users[uid] = user
        return user

    def add_user(self, user_id: int, username: str, **fields: Any) -> Json:
        """Register a user (not yet a member of any guild)."""
        return copy.deepcopy(self._add_user({"id": user_id, "username": username, **fields}))

    def add_guild(self, spec: Json) -> Json:
        """Add a guild from a spec: ``{id, name, channels, roles, members, owner_id, ...}``.

        ``members`` are ``{"user": {...} | user_id, "roles": [...]}``; the bot is always a member
        with a managed role. Channels get ``guild_id`` and defaults for what discord.py reads.
        """
        gid = int(spec["id"])
        roles: list[Json] = []
        everyone = {
            "id": str(gid),
            "name": "@everyone",
            "permissions": str(EVERYONE_PERMISSIONS),
            "position": 0,
        }
        for raw in [everyone, *spec.get("roles", [])]:
            roles.append(_role_json(raw))
        if not any(r.get("tags", {}).get("bot_id") == str(self.bot_user_id) for r in roles):
            roles.append(
                _role_json(
                    {
                        "id": spec.get("bot_role_id", ROLE_BOT_ID if gid == GUILD_ID else gid + 2),
                        "name": self.bot_user["username"],
                        "permissions": str(BOT_PERMISSIONS),
                        "position": len(roles),
                        "managed": True,
                        "tags": {"bot_id": str(self.bot_user_id)},
                    }
                )
            )
        bot_role = next(r for r in roles if r.get("tags", {}).get("bot_id"))
        owner_id = int(spec.get("owner_id", OWNER_ID))
        guild: Json = {
            "id": str(gid),
            "name": spec.get("name", f"guild {gid}"),
            "owner_id": str(owner_id),
            "roles": roles,
            "preferred_locale": spec.get("preferred_locale", "en-US"),
            "premium_tier": spec.get("premium_tier", 0),
            "nsfw_level": spec.get("nsfw_level", 0),
            "features": spec.get("features", []),
            "_channel_ids": [],
            "_members": {},
        }
        self.guilds[gid] = guild
        for position, raw in enumerate(spec.get("channels", [])):
            channel = _channel_json(raw, gid, position)
            self.channels[int(channel["id"])] = channel
            guild["_channel_ids"].append(int(channel["id"]))
            self._channel_order.setdefault(int(channel["id"]), [])
        members = list(spec.get("members", []))
        members.append({"user": self.bot_user_id, "roles": [bot_role["id"]]})
        if owner_id not in self.users:
            self._add_user({"id": owner_id, "username": "owner"})
        members.append({"user": owner_id, "roles": []})
        for raw in members:
            user = raw["user"]
            uid = int(user["id"]) if isinstance(user, dict) else int(user)
            if isinstance(user, dict):
                self._add_user(user)
            elif uid not in self.users:
                self._add_user({"id": uid})
            if uid in guild["_members"]:
                continue
            guild["_members"][uid] = {
                "roles": [str(r) for r in raw.get("roles", [])],
                "nick": raw.get("nick"),
                "joined_at": _now_iso(_snowflake_time(gid)),
            }
        return self.guild_json(gid)

    def _guild(self, guild_id: int) -> Json:
        guild = self.guilds.get(int(guild_id))
        if guild is None:
            raise DiscordApiError(404, 10004, "Unknown Guild")
        return guild

    def _channel(self, channel_id: int) -> Json:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _unknown_channel()
        return channel

    def _public(self, obj: Json) -> Json:
        return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}

    def guild_json(self, guild_id: int) -> Json:
        """The REST guild object (GET /guilds/{id})."""
        guild = self._guild(guild_id)
        out = self._public(guild)
        out.update(
            {
                "icon": None,
                "icon_hash": None,
                "splash": None,
                "discovery_splash": None,
                "banner": None,
                "description": None,
                "afk_channel_id": None,
                "afk_timeout": 300,
                "verification_level": 0,
                "default_message_notifications": 0,
                "explicit_content_filter": 0,
                "mfa_level": 0,
                "system_channel_id": None,
                "system_channel_flags": 0,
                "rules_channel_id": None,
                "public_updates_channel_id": None,
                "vanity_url_code": None,
                "premium_subscription_count": 0,
                "max_members": 500000,
                "max_video_channel_users": 25,
                "premium_progress_bar_enabled": False,
                "emojis": [],
                "stickers": [],
            }
        )
        return out

    def member_json(self, guild_id: int, user_id: int, *, with_user: bool = True) -> Json:
        guild = self._guild(guild_id)
        record = guild["_members"].get(int(user_id))
        if record is None:
            raise DiscordApiError(404, 10007, "Unknown Member")
        member: Json = {
            "roles": list(record["roles"]),
            "nick": record["nick"],
            "avatar": None,
            "banner": None,
            "joined_at": record["joined_at"],
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
        }
        if with_user:
            member["user"] = copy.deepcopy(self.users[int(user_id)])
        return member

    def permissions_of(self, guild_id: int, user_id: int) -> int:
        """OR of @everyone and the member's roles; owner and administrators get everything."""
        guild = self._guild(guild_id)
        if int(guild["owner_id"]) == int(user_id):
            return ALL_PERMISSIONS
        record = guild["_members"].get(int(user_id))
        role_ids = {str(guild_id), *(record["roles"] if record else [])}
        perms = 0
        for role in guild["roles"]:
            if role["id"] in role_ids:
                perms |= int(role["permissions"])
        return ALL_PERMISSIONS if perms & P_ADMINISTRATOR else perms

    def _guild_create(self, guild_id: int, intents: int) -> Json:
        """GUILD_CREATE payload: the guild plus channels, members (the bot at least), etc."""
        guild = self.guilds[guild_id]
        data = self.guild_json(guild_id)
        channels = []
        for cid in guild["_channel_ids"]:
            ch = copy.deepcopy(self.channels[cid])
            ch.pop("guild_id", None)  # GUILD_CREATE channels carry no guild_id
            channels.append(ch)
        if intents & INTENT_GUILD_MEMBERS:
            member_ids = list(guild["_members"])
        else:
            member_ids = [self.bot_user_id]
        data.update(
            {
                "joined_at": guild["_members"][self.bot_user_id]["joined_at"],
                "large": False,
                "unavailable": False,
                "member_count": len(guild["_members"]),
                "voice_states": [],
                "members": [self.member_json(guild_id, uid) for uid in member_ids],
                "channels": channels,
                "threads": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )
        return data

    def dm_channel(self, user_id: int) -> Json:
        """The DM channel between the bot and ``user_id`` (created on first use)."""
        uid = int(user_id)
        if uid not in self.users:
            raise DiscordApiError(404, 10013, "Unknown User")
        cid = self._dm_by_user.get(uid)
        if cid is None:
            cid = self._ids.next()
            self._dm_by_user[uid] = cid
            self.channels[cid] = {
                "id": str(cid),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [copy.deepcopy(self.users[uid])],
                "_recipient": uid,
            }
            self._channel_order.setdefault(cid, [])
        return self._public(self.channels[cid])

    # ------------------------------------------------------------------ attachments / CDN

    def _new_attachment(
        self,
        filename: str,
        data: bytes,
        prefix: str,
        *,
        description: str | None = None,
        spoiler: bool = False,
        ephemeral: bool = False,
    ) -> _Attachment:
        content_type, width, height = _guess_type(filename, data)
        att = _Attachment(
            id=self._ids.next(),
            filename=filename,
            data=data,
            content_type=content_type,
            width=width,
            height=height,
            prefix=prefix,
            description=description,
            spoiler=spoiler or filename.startswith("SPOILER_"),
            ephemeral=ephemeral,
        )
        self._attachments[att.id] = att
        return att

    def _sign(self, path: str) -> str:
        issued = int(time.time())
        expires = issued + int(self.attachment_url_ttl)
        ex, is_ = f"{expires:x}", f"{issued:x}"
        mac = hmac.new(self._cdn_key, f"{path}|{ex}|{is_}".encode(), hashlib.sha256).hexdigest()
        return f"ex={ex}&is={is_}&hm={mac}&"

    def _attachment_json(self, att: _Attachment) -> Json:
        path = f"{att.prefix}/{att.id}/{att.filename}"
        query = self._sign(path)
        out: Json = {
            "id": str(att.id),
            "filename": att.filename,
            "size": len(att.data),
            "url": f"{self.url}/cdn/{path}?{query}",
            "proxy_url": f"{self.url}/media/{path}?{query}",
            "content_type": att.content_type,
            "flags": ATTACHMENT_FLAG_SPOILER if att.spoiler else 0,
        }
        if att.width is not None:
            out["width"] = att.width
            out["height"] = att.height
            out["placeholder_version"] = 1
        if att.description is not None:
            out["description"] = att.description
        if att.ephemeral:
            out["ephemeral"] = True
        return out

    def expire_attachments(self) -> None:
        """Invalidate every CDN link handed out so far (rotates the signing key).

        Fetching the message again (REST or a new dispatch) yields fresh, valid links, which is
        how a bot must recover (reference.mdx "Signed Attachment CDN URLs").
        """
        self._cdn_key = secrets.token_bytes(16)

    def attachment_bytes(self, attachment_id: int) -> bytes:
        return self._attachments[int(attachment_id)].data

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        status = 404
        body: bytes = CDN_GONE.encode()
        content_type = "text/plain"
        match = re.fullmatch(r"(?:ephemeral-)?attachments/\d+/(\d+)/([^/]+)", path)
        att = self._attachments.get(int(match.group(1))) if match else None
        q = request.query
        if att is not None and match is not None and match.group(2) == att.filename:
            ex, is_, hm = q.get("ex", ""), q.get("is", ""), q.get("hm", "")
            expected = hmac.new(
                self._cdn_key, f"{path}|{ex}|{is_}".encode(), hashlib.sha256
            ).hexdigest()
            try:
                fresh = int(ex, 16) > time.time()
            except ValueError:
                fresh = False
            if fresh and hmac.compare_digest(expected, hm):
                status, body, content_type = 200, att.data, att.content_type
        self.cdn_fetches.append(CdnFetch(path, status, time.time()))
        self._notify()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------ messages

    def _store_message(self, msg: _Message) -> _Message:
        self.messages[msg.id] = msg
        self._channel_order.setdefault(msg.channel_id, []).append(msg.id)
        channel = self.channels.get(msg.channel_id)
        if channel is not None and not msg.ephemeral:
            channel["last_message_id"] = str(msg.id)
        return msg

    def message_json(self, message_id: int, *, strip_content: bool = False) -> Json:
        """The message object as REST returns it, with freshly signed attachment URLs."""
        msg = self.messages.get(int(message_id))
        if msg is None or msg.deleted:
            raise _unknown_message()
        return self._message_json(msg, strip_content=strip_content)

    def _message_json(
        self, msg: _Message, *, strip_content: bool = False, gateway: bool = False
    ) -> Json:
        out: Json = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "author": copy.deepcopy(msg.author),
            "content": msg.content,
            "timestamp": _now_iso(msg.timestamp),
            "edited_timestamp": None if msg.edited is None else _now_iso(msg.edited),
            "tts": msg.tts,
            "mention_everyone": msg.mention_everyone,
            "mentions": [copy.deepcopy(self.users[u]) for u in msg.mentions if u in self.users],
            "mention_roles": [str(r) for r in msg.mention_roles],
            "attachments": [self._attachment_json(a) for a in msg.attachments],
            "embeds": copy.deepcopy(msg.embeds),
            "pinned": msg.pinned,
            "type": msg.type,
            "flags": msg.flags,
            "components": copy.deepcopy(msg.components),
        }
        if msg.nonce is not None:
            out["nonce"] = msg.nonce
        if msg.webhook_id is not None:
            out["webhook_id"] = str(msg.webhook_id)
        if msg.application_id is not None:
            out["application_id"] = str(msg.application_id)
        if msg.interaction_metadata is not None:
            out["interaction_metadata"] = copy.deepcopy(msg.interaction_metadata)
        if msg.interaction_legacy is not None:
            out["interaction"] = copy.deepcopy(msg.interaction_legacy)
        if msg.reference is not None:
            out["message_reference"] = copy.deepcopy(msg.reference)
            ref = self.messages.get(msg.referenced_id or 0)
            out["referenced_message"] = (
                None
                if ref is None or ref.deleted
                else self._message_json(ref, strip_content=strip_content)
            )
        if strip_content:
            out.update({"content": "", "embeds": [], "attachments": [], "components": []})
        if gateway and msg.guild_id is not None:
            out["guild_id"] = str(msg.guild_id)
            if msg.author_member is not None:
                out["member"] = copy.deepcopy(msg.author_member)
        return out

    def _strip_for(self, msg: _Message, intents: int | None) -> bool:
        """Whether the MESSAGE_CONTENT rules blank this message for the bot.

        DMs, the bot's own messages and messages that mention the bot always keep content.
        ``intents`` None means a REST read, governed by the portal switch only.
        """
        if msg.guild_id is None or int(msg.author["id"]) == self.bot_user_id:
            return False
        if self.bot_user_id in msg.mentions:
            return False
        if intents is None:
            return not self.privileged_intents & INTENT_MESSAGE_CONTENT
        return not (intents & INTENT_MESSAGE_CONTENT)

    def _dispatch_message(self, event: str, msg: _Message) -> None:
        if msg.ephemeral:
            return  # ephemeral messages never reach the gateway
        intent = INTENT_GUILD_MESSAGES if msg.guild_id is not None else INTENT_DIRECT_MESSAGES

        def data_for(session: _Session) -> Json:
            return self._message_json(
                msg, strip_content=self._strip_for(msg, session.intents), gateway=True
            )

        self._dispatch(event, data_for, guild_id=msg.guild_id, intents=intent)

    def _parse_mentions(
        self, content: str, guild_id: int | None, allowed: Json | None
    ) -> tuple[list[int], list[int], bool]:
        parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse", []))
        allowed_users = {int(u) for u in (allowed or {}).get("users", [])}
        allowed_roles = {int(r) for r in (allowed or {}).get("roles", [])}
        users = []
        for raw in re.findall(r"<@!?(\d+)>", content):
            uid = int(raw)
            if (
                uid in self.users
                and ("users" in parse or uid in allowed_users)
                and uid not in users
            ):
                users.append(uid)
        roles = []
        if guild_id is not None:
            known = {int(r["id"]) for r in self.guilds[guild_id]["roles"]}
            for raw in re.findall(r"<@&(\d+)>", content):
                rid = int(raw)
                if rid in known and ("roles" in parse or rid in allowed_roles):
                    roles.append(rid)
        everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
        return users, roles, everyone

    def _message_fields(
        self,
        payload: Json,
        uploads: list[UploadedFile],
        *,
        prefix: str,
        existing: _Message | None = None,
        require_content: bool = True,
    ) -> Json:
        """Validate a create/edit body and turn it into _Message fields (raises 400/413)."""
        fields: Json = {}
        if not isinstance(payload, dict):
            raise _form_error("_", "DICT_TYPE_CONVERT", "Only dictionaries may be used.")
        content = payload.get("content")
        if "content" in payload:
            text = "" if content is None else str(content)
            if len(text) > MAX_CONTENT:
                raise _form_error(
                    "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
                )
            fields["content"] = text
        if "embeds" in payload:
            embeds = payload.get("embeds") or []
            if len(embeds) > MAX_EMBEDS:
                raise _form_error(
                    "embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length."
                )
            fields["embeds"] = [_normalize_embed(e) for e in embeds]
        if "components" in payload:
            fields["components"] = _normalize_components(payload.get("components") or [])
        if "flags" in payload and payload["flags"] is not None:
            fields["flags"] = int(payload["flags"])
        if "tts" in payload:
            fields["tts"] = bool(payload["tts"])
        if len(uploads) > MAX_FILES:
            raise _form_error(
                "files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length."
            )
        meta_by_index: dict[int, Json] = {}
        keep_ids: list[int] | None = None
        if "attachments" in payload and payload["attachments"] is not None:
            keep_ids = []
            upload_indexes = {_file_index(u.field) for u in uploads}
            for entry in payload["attachments"]:
                raw_id = int(entry.get("id"))
                if raw_id in upload_indexes and raw_id < 1000:
                    meta_by_index[raw_id] = entry
                else:
                    keep_ids.append(raw_id)
        new_attachments = []
        for upload in uploads:
            index = _file_index(upload.field)
            meta = meta_by_index.get(index, {})
            filename = meta.get("filename") or upload.filename
            new_attachments.append(
                self._new_attachment(
                    filename,
                    upload.data,
                    prefix,
                    description=meta.get("description"),
                    spoiler=bool(meta.get("is_spoiler", False)),
                )
            )
        if existing is None:
            fields["attachments"] = new_attachments
        elif keep_ids is not None or new_attachments:
            kept = [a for a in existing.attachments if keep_ids is None or a.id in set(keep_ids)]
            fields["attachments"] = kept + new_attachments
        total = len(fields.get("attachments", existing.attachments if existing else []))
        if total > MAX_FILES:
            raise _form_error(
                "attachments", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length."
            )
        if payload.get("message_reference"):
            fields["message_reference"] = payload["message_reference"]
        if payload.get("nonce") is not None:
            fields["nonce"] = str(payload["nonce"])
        fields["allowed_mentions"] = payload.get("allowed_mentions")
        if require_content and not any(
            (
                fields.get("content"),
                fields.get("embeds"),
                fields.get("attachments"),
                fields.get("components"),
                payload.get("sticker_ids"),
                payload.get("poll"),
            )
        ):
            raise DiscordApiError(400, 50006, "Cannot send an empty message")
        return fields

    def _create_message(
        self,
        channel_id: int,
        fields: Json,
        *,
        author: Json | None = None,
        msg_type: int = MSG_DEFAULT,
        webhook: bool = False,
        interaction_metadata: Json | None = None,
        interaction_legacy: Json | None = None,
        extra_flags: int = 0,
        message_id: int | None = None,
    ) -> _Message:
        channel = self._channel(channel_id)
        guild_id = int(channel["guild_id"]) if channel.get("guild_id") else None
        author = author or self.bot_user
        mentions, roles, everyone = self._parse_mentions(
            fields.get("content", ""), guild_id, fields.get("allowed_mentions")
        )
        msg = _Message(
            id=message_id or self._ids.next(),
            channel_id=int(channel_id),
            guild_id=guild_id,
            author=copy.deepcopy(author),
            content=fields.get("content", ""),
            timestamp=time.time(),
            type=msg_type,
            flags=(fields.get("flags", 0) & ~FLAG_LOADING) | extra_flags,
            tts=fields.get("tts", False),
            embeds=fields.get("embeds", []),
            components=fields.get("components", []),
            attachments=fields.get("attachments", []),
            mentions=mentions,
            mention_roles=roles,
            mention_everyone=everyone,
            nonce=fields.get("nonce"),
            webhook_id=self.application_id if webhook else None,
            application_id=self.application_id if webhook else None,
            interaction_metadata=interaction_metadata,
            interaction_legacy=interaction_legacy,
        )
        if guild_id is not None and int(author["id"]) in self.guilds[guild_id]["_members"]:
            msg.author_member = self.member_json(guild_id, int(author["id"]), with_user=False)
        ref = fields.get("message_reference")
        if ref:
            ref_id = int(ref.get("message_id", 0))
            target = self.messages.get(ref_id)
            if target is None or target.deleted or target.channel_id != int(channel_id):
                if ref.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
            else:
                msg.reference = {
                    "type": 0,
                    "message_id": str(ref_id),
                    "channel_id": str(channel_id),
                }
                if guild_id is not None:
                    msg.reference["guild_id"] = str(guild_id)
                msg.referenced_id = ref_id
                if msg.type == MSG_DEFAULT:
                    msg.type = MSG_REPLY
        return self._store_message(msg)

    def _edit_message(self, msg: _Message, fields: Json) -> _Message:
        for key in ("content", "embeds", "components", "attachments"):
            if key in fields:
                setattr(msg, key, fields[key])
        if "flags" in fields:
            keep = msg.flags & (FLAG_EPHEMERAL)
            msg.flags = (fields["flags"] & ~(FLAG_LOADING | FLAG_EPHEMERAL)) | keep
        if "content" in fields:
            msg.mentions, msg.mention_roles, msg.mention_everyone = self._parse_mentions(
                msg.content, msg.guild_id, fields.get("allowed_mentions")
            )
        msg.edited = time.time()
        return msg

    def post_user_message(
        self,
        channel_id: int,
        content: str = "",
        attachments: dict[str, bytes] | None = None,
        author: int | None = None,
        *,
        reply_to: int | None = None,
    ) -> Json:
        """A human posts in a channel: stores it and dispatches MESSAGE_CREATE.

        ``attachments`` maps filename -> bytes; each gets a signed CDN URL. ``author`` is a user
        id (default: the default member). Returns the full message object.
        """
        uid = int(author) if author is not None else self.user_id
        if uid not in self.users:
            raise ValueError(f"unknown user {uid}")
        channel = self._channel(channel_id)
        prefix = f"attachments/{int(channel['id'])}"
        atts = [
            self._new_attachment(name, data, prefix) for name, data in (attachments or {}).items()
        ]
        fields: Json = {"content": content, "attachments": atts}
        if reply_to is not None:
            fields["message_reference"] = {"message_id": reply_to}
        msg = self._create_message(int(channel_id), fields, author=self.users[uid])
        self._dispatch_message("MESSAGE_CREATE", msg)
        self._notify()
        return self._message_json(msg)

    def channel_messages(self, channel_id: int, *, include_ephemeral: bool = True) -> list[Json]:
        """Current (not deleted) messages of a channel, oldest first."""
        out = []
        for mid in self._channel_order.get(int(channel_id), []):
            msg = self.messages[mid]
            if msg.deleted or (msg.ephemeral and not include_ephemeral):
                continue
            out.append(self._message_json(msg))
        return out

    def message(self, message_id: int) -> Json:
        return self.message_json(message_id)

    def message_files(self, message_id: int) -> dict[str, bytes]:
        """The bytes of a message's attachments, by filename."""
        msg = self.messages[int(message_id)]
        return {a.filename: a.data for a in msg.attachments}

    # ------------------------------------------------------------------ commands

    def registered_commands(self, guild_id: int | None = None) -> list[Json]:
        return copy.deepcopy(self.commands.get(guild_id, []))

    def _find_command(self, name: str, ctype: int, guild_id: int | None) -> tuple[Json, bool]:
        if guild_id is not None:
            for cmd in self.commands.get(guild_id, []):
                if cmd["name"] == name and cmd["type"] == ctype:
                    return cmd, True
        for cmd in self.commands.get(None, []):
            if cmd["name"] == name and cmd["type"] == ctype:
                return cmd, False
        raise ValueError(
            f"command {name!r} (type {ctype}) is not registered"
            + ("" if guild_id is None else f" globally or in guild {guild_id}")
            + "; did the bot sync its CommandTree?"
        )

    def _store_commands(self, guild_id: int | None, body: Any) -> list[Json]:
        if not isinstance(body, list):
            raise _form_error("_", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType.")
        old = {(c["name"], c["type"]): c for c in self.commands.get(guild_id, [])}
        seen: set[tuple[str, int]] = set()
        out = []
        for index, raw in enumerate(body):
            cmd = self._normalize_command(raw, guild_id, f"{index}", old)
            key = (cmd["name"], cmd["type"])
            if key in seen:
                raise DiscordApiError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "_errors": [
                            {
                                "code": "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                "message": f"Command names must be unique: {cmd['name']}",
                            }
                        ]
                    },
                )
            seen.add(key)
            out.append(cmd)
        self.commands[guild_id] = out
        return copy.deepcopy(out)

    def _normalize_command(
        self, raw: Json, guild_id: int | None, path: str, old: dict[tuple[str, int], Json]
    ) -> Json:
        ctype = int(raw.get("type", 1))
        name = raw.get("name", "")
        if ctype == 1:
            if not re.fullmatch(r"[-_'\w]{1,32}", name) or name != name.lower():
                raise _form_error(
                    f"{path}.name",
                    "APPLICATION_COMMAND_INVALID_NAME",
                    f"Command name is invalid: {name!r}",
                )
            desc = raw.get("description", "")
            if not 1 <= len(desc) <= 100:
                raise _form_error(
                    f"{path}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
        elif not 1 <= len(name) <= 32:
            raise _form_error(
                f"{path}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        options = copy.deepcopy(raw.get("options") or [])
        _validate_options(options, f"{path}.options")
        previous = old.get((name, ctype))
        cmd: Json = {
            "id": previous["id"] if previous else str(self._ids.next()),
            "application_id": str(self.application_id),
            "version": str(self._ids.next()),
            "default_member_permissions": raw.get("default_member_permissions"),
            "type": ctype,
            "name": name,
            "name_localizations": raw.get("name_localizations"),
            "description": raw.get("description", "") if ctype == 1 else "",
            "description_localizations": raw.get("description_localizations"),
            "dm_permission": raw.get("dm_permission", True),
            "contexts": raw.get("contexts"),
            "integration_types": raw.get("integration_types") or [0],
            "nsfw": bool(raw.get("nsfw", False)),
        }
        if ctype == 1:
            cmd["options"] = options
        if guild_id is not None:
            cmd["guild_id"] = str(guild_id)
        return cmd

    # ------------------------------------------------------------------ interactions

    def _context(
        self,
        user: int | None,
        guild_id: int | None,
        channel_id: int | None,
        dm: bool,
    ) -> tuple[int, int | None, Json]:
        uid = int(user) if user is not None else self.user_id
        if uid not in self.users:
            raise ValueError(f"unknown user {uid}")
        if dm:
            channel = self.dm_channel(uid)
            return uid, None, channel
        if channel_id is not None:
            channel = self._channel(channel_id)
            if channel.get("guild_id") is None:
                return uid, None, self._public(channel)
            gid = int(channel["guild_id"])
        else:
            gid = int(guild_id) if guild_id is not None else self.guild_id
            guild = self._guild(gid)
            cid = next((c for c in guild["_channel_ids"] if self.channels[c]["type"] == 0), None)
            if cid is None:
                raise ValueError(f"guild {gid} has no text channel")
            channel = self.channels[cid]
        if uid not in self.guilds[gid]["_members"]:
            raise ValueError(f"user {uid} is not a member of guild {gid}")
        return uid, gid, self._public(channel)

    def _new_interaction(
        self,
        itype: int,
        data: Json | None,
        *,
        user: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        locale: str = "en-US",
        message: _Message | None = None,
        extra: Json | None = None,
    ) -> _Interaction:
        uid, gid, channel = self._context(user, guild_id, channel_id, dm)
        iid = self._ids.next()
        token = (
            "aW50ZXJhY3Rpb246" + _b64(f"{iid}:".encode()).rstrip("=") + secrets.token_urlsafe(48)
        )
        payload: Json = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "token": token,
            "version": 1,
            "channel_id": channel["id"],
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": self.attachment_size_limit,
        }
        if data is not None:
            payload["data"] = data
        if gid is not None:
            perms = self.permissions_of(gid, uid)
            guild = self.guilds[gid]
            channel["permissions"] = str(perms)
            member = self.member_json(gid, uid)
            member["permissions"] = str(perms)
            payload.update(
                {
                    "guild_id": str(gid),
                    "guild": {
                        "id": str(gid),
                        "locale": guild["preferred_locale"],
                        "features": list(guild["features"]),
                    },
                    "guild_locale": guild["preferred_locale"],
                    "member": member,
                    "app_permissions": str(self.permissions_of(gid, self.bot_user_id)),
                    "authorizing_integration_owners": {"0": str(gid)},
                    "context": 0,
                }
            )
        else:
            payload.update(
                {
                    "user": copy.deepcopy(self.users[uid]),
                    "app_permissions": str(EVERYONE_PERMISSIONS),
                    # "0" is what Discord sends for a guild install used in the bot's DM.
                    "authorizing_integration_owners": {"0": "0"},
                    "context": 1,
                }
            )
        payload["channel"] = channel
        if message is not None:
            payload["message"] = self._message_json(message)
        if extra:
            payload.update(extra)
        now = time.monotonic()
        inter = _Interaction(
            id=iid,
            token=token,
            type=itype,
            payload=payload,
            user_id=uid,
            guild_id=gid,
            channel_id=int(channel["id"]),
            created=now,
            deadline=self.interaction_deadline,
            lifetime=self.token_lifetime,
            message_id=None if message is None else message.id,
        )
        return inter

    def _deliver(self, inter: _Interaction) -> Json:
        reached = self._dispatch("INTERACTION_CREATE", inter.payload, guild_id=inter.guild_id)
        if not reached:
            raise RuntimeError("no gateway session to deliver INTERACTION_CREATE to; connect first")
        inter.created = time.monotonic()
        self.interactions[inter.id] = inter
        self._by_token[inter.token] = inter
        self._notify()
        return copy.deepcopy(inter.payload)

    def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        locale: str = "en-US",
        attachments: dict[str, Any] | None = None,
        subcommand: str | None = None,
    ) -> Json:
        """A user runs ``/name`` (``subcommand`` may be ``"sub"`` or ``"group sub"``).

        ``options`` maps option name to value and is typed against the synced definition
        (ints for INTEGER, snowflakes for USER/CHANNEL/ROLE, ...). ATTACHMENT options take bytes,
        ``(filename, bytes)`` or come from ``attachments`` (option name -> bytes or
        ``(filename, bytes)``) and appear in ``data.resolved.attachments`` with CDN URLs.
        Values the Discord client would refuse (missing required option, unknown option, out of
        range, not a choice) raise ValueError. Returns the dispatched payload (with ``token``).
        """
        values = dict(options or {})
        values.update(attachments or {})
        return self._command_interaction(
            APPLICATION_COMMAND,
            name,
            values,
            focused=None,
            user=user,
            guild_id=guild_id,
            channel_id=channel_id,
            dm=dm,
            locale=locale,
            subcommand=subcommand,
        )

    def autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None,
        focused: str,
        *,
        user: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        locale: str = "en-US",
        subcommand: str | None = None,
    ) -> Json:
        """The user is typing into option ``focused``: dispatches an AUTOCOMPLETE interaction.

        The focused value is sent as the raw string typed (Discord does that even for number
        options); the bot's answer (callback type 8) is kept in ``autocomplete_choices(token)``.
        """
        return self._command_interaction(
            AUTOCOMPLETE,
            name,
            dict(options or {}),
            focused=focused,
            user=user,
            guild_id=guild_id,
            channel_id=channel_id,
            dm=dm,
            locale=locale,
            subcommand=subcommand,
        )

    def _command_interaction(
        self,
        itype: int,
        name: str,
        values: dict[str, Any],
        *,
        focused: str | None,
        user: int | None,
        guild_id: int | None,
        channel_id: int | None,
        dm: bool,
        locale: str,
        subcommand: str | None,
    ) -> Json:
        uid, gid, channel = self._context(user, guild_id, channel_id, dm)
        cmd, is_guild_cmd = self._find_command(name, 1, gid)
        resolved: Json = {}
        definitions = cmd.get("options", [])
        path = subcommand.split() if subcommand else []
        wrappers: list[Json] = []
        for part in path:
            option = next((o for o in definitions if o["name"] == part), None)
            if option is None or option["type"] not in (OPT_SUB_COMMAND, OPT_SUB_GROUP):
                raise ValueError(f"/{name} has no subcommand {part!r}")
            wrappers.append({"type": option["type"], "name": part})
            definitions = option.get("options", [])
        if any(o["type"] in (OPT_SUB_COMMAND, OPT_SUB_GROUP) for o in definitions):
            raise ValueError(f"/{name} needs a subcommand (subcommand='group sub')")
        built = self._build_options(
            definitions,
            values,
            focused=focused,
            resolved=resolved,
            guild_id=gid,
            channel_id=int(channel["id"]),
        )
        for wrapper in reversed(wrappers):
            wrapper["options"] = built
            built = [wrapper]
        data: Json = {"id": cmd["id"], "name": cmd["name"], "type": 1}
        if built:
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        if is_guild_cmd:
            data["guild_id"] = cmd["guild_id"]
        inter = self._new_interaction(
            itype,
            data,
            user=uid,
            guild_id=gid,
            channel_id=int(channel["id"]),
            dm=dm,
            locale=locale,
        )
        inter.command_name = cmd["name"]
        inter.command_type = 1
        return self._deliver(inter)

    def _build_options(
        self,
        definitions: list[Json],
        values: dict[str, Any],
        *,
        focused: str | None,
        resolved: Json,
        guild_id: int | None,
        channel_id: int,
    ) -> list[Json]:
        by_name = {o["name"]: o for o in definitions}
        for key in values:
            if key not in by_name:
                raise ValueError(f"unknown option {key!r}; known: {sorted(by_name)}")
        if focused is not None and focused not in by_name:
            raise ValueError(f"unknown focused option {focused!r}")
        out = []
        for definition in definitions:
            oname = definition["name"]
            otype = definition["type"]
            if oname == focused:
                raw = values.get(oname, "")
                out.append({"name": oname, "type": otype, "value": str(raw), "focused": True})
                continue
            if oname not in values:
                if definition.get("required") and focused is None:
                    raise ValueError(f"required option {oname!r} is missing")
                continue
            value = values[oname]
            strict = focused is None
            converted = self._option_value(
                definition, value, resolved, guild_id, channel_id, strict=strict
            )
            out.append({"name": oname, "type": otype, "value": converted})
        return out

    def _option_value(
        self,
        definition: Json,
        value: Any,
        resolved: Json,
        guild_id: int | None,
        channel_id: int,
        *,
        strict: bool,
    ) -> Any:
        otype = definition["type"]
        oname = definition["name"]
        if otype == OPT_STRING:
            value = str(value)
            if strict:
                lo, hi = definition.get("min_length", 0), definition.get("max_length", 6000)
                if not lo <= len(value) <= hi:
                    raise ValueError(f"option {oname!r}: length must be in [{lo}, {hi}]")
        elif otype in (OPT_INTEGER, OPT_NUMBER):
            if isinstance(value, bool):
                raise ValueError(f"option {oname!r} takes a number")
            value = int(value) if otype == OPT_INTEGER else float(value)
            if strict:
                lo, hi = definition.get("min_value"), definition.get("max_value")
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise ValueError(f"option {oname!r}: {value} out of range [{lo}, {hi}]")
        elif otype == OPT_BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"option {oname!r} takes a bool")
        elif otype in (OPT_USER, OPT_MENTIONABLE, OPT_ROLE, OPT_CHANNEL):
            sid = int(value["id"]) if isinstance(value, dict) else int(value)
            if otype in (OPT_USER, OPT_MENTIONABLE) and sid in self.users:
                resolved.setdefault("users", {})[str(sid)] = copy.deepcopy(self.users[sid])
                if guild_id is not None and sid in self.guilds[guild_id]["_members"]:
                    member = self.member_json(guild_id, sid, with_user=False)
                    member["permissions"] = str(self.permissions_of(guild_id, sid))
                    resolved.setdefault("members", {})[str(sid)] = member
            elif (
                otype in (OPT_ROLE, OPT_MENTIONABLE)
                and guild_id is not None
                and any(int(r["id"]) == sid for r in self.guilds[guild_id]["roles"])
            ):
                role = next(r for r in self.guilds[guild_id]["roles"] if int(r["id"]) == sid)
                resolved.setdefault("roles", {})[str(sid)] = copy.deepcopy(role)
            elif otype == OPT_CHANNEL and sid in self.channels:
                ch = self._public(self.channels[sid])
                types = definition.get("channel_types")
                if strict and types and ch["type"] not in types:
                    raise ValueError(f"option {oname!r}: channel type {ch['type']} not allowed")
                if guild_id is not None:
                    ch["permissions"] = str(self.permissions_of(guild_id, self.bot_user_id))
                else:
                    ch["permissions"] = str(EVERYONE_PERMISSIONS)
                resolved.setdefault("channels", {})[str(sid)] = ch
            else:
                raise ValueError(f"option {oname!r}: unknown id {sid}")
            value = str(sid)
        elif otype == OPT_ATTACHMENT:
            filename, data = _attachment_arg(oname, value)
            att = self._new_attachment(
                filename, data, f"ephemeral-attachments/{self.application_id}", ephemeral=True
            )
            if strict and len(data) > self.attachment_size_limit:
                raise ValueError(f"option {oname!r}: the Discord client refuses files this big")
            resolved.setdefault("attachments", {})[str(att.id)] = self._attachment_json(att)
            value = str(att.id)
        if strict and definition.get("choices"):
            allowed = [c["value"] for c in definition["choices"]]
            if value not in allowed:
                raise ValueError(f"option {oname!r}: {value!r} is not one of {allowed}")
        return value

    def message_command(
        self,
        name: str,
        target_message_id: int,
        *,
        user: int | None = None,
        locale: str = "en-US",
    ) -> Json:
        """A user picks the message context-menu command ``name`` on a message."""
        target = self.messages.get(int(target_message_id))
        if target is None or target.deleted:
            raise ValueError(f"unknown message {target_message_id}")
        cmd, is_guild = self._find_command(name, 3, target.guild_id)
        data: Json = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": 3,
            "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): self._message_json(target)}},
        }
        if is_guild:
            data["guild_id"] = cmd["guild_id"]
        dm = target.guild_id is None
        inter = self._new_interaction(
            APPLICATION_COMMAND,
            data,
            user=user if user is not None else (self._dm_owner(target) if dm else None),
            channel_id=target.channel_id,
            dm=dm,
            locale=locale,
        )
        inter.command_name, inter.command_type, inter.target_id = cmd["name"], 3, target.id
        return self._deliver(inter)

    def user_command(
        self, name: str, target_user_id: int, *, user: int | None = None, locale: str = "en-US"
    ) -> Json:
        """A user picks the user context-menu command ``name`` on a member of the default guild."""
        gid = self.guild_id
        cmd, is_guild = self._find_command(name, 2, gid)
        resolved: Json = {}
        self._option_value(
            {"type": OPT_USER, "name": "target"},
            target_user_id,
            resolved,
            gid,
            self.channel_id,
            strict=True,
        )
        data: Json = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": 2,
            "target_id": str(int(target_user_id)),
            "resolved": resolved,
        }
        if is_guild:
            data["guild_id"] = cmd["guild_id"]
        inter = self._new_interaction(APPLICATION_COMMAND, data, user=user, locale=locale)
        inter.command_name, inter.command_type = cmd["name"], 2
        inter.target_id = int(target_user_id)
        return self._deliver(inter)

    def _dm_owner(self, msg: _Message) -> int:
        channel = self.channels[msg.channel_id]
        return int(channel.get("_recipient", self.user_id))

    def _find_component(self, msg: _Message, custom_id: str) -> Json:
        for component in _walk_components(msg.components):
            if component.get("custom_id") == custom_id:
                return component
        raise ValueError(f"message {msg.id} has no component with custom_id {custom_id!r}")

    def button(
        self,
        message_id: int,
        custom_id: str,
        *,
        user: int | None = None,
        locale: str = "en-US",
    ) -> Json:
        """A user clicks the button ``custom_id`` on a stored message (it must exist there)."""
        return self._component(message_id, custom_id, None, user=user, locale=locale)

    def select(
        self,
        message_id: int,
        custom_id: str,
        values: list[str],
        *,
        user: int | None = None,
        locale: str = "en-US",
    ) -> Json:
        """A user picks ``values`` in the select menu ``custom_id`` of a stored message."""
        return self._component(message_id, custom_id, list(values), user=user, locale=locale)

    def _component(
        self,
        message_id: int,
        custom_id: str,
        values: list[str] | None,
        *,
        user: int | None,
        locale: str,
    ) -> Json:
        msg = self.messages.get(int(message_id))
        if msg is None or msg.deleted:
            raise ValueError(f"unknown message {message_id}")
        component = self._find_component(msg, custom_id)
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not send this")
        ctype = int(component["type"])
        data: Json = {"custom_id": custom_id, "component_type": ctype}
        if "id" in component:
            data["id"] = component["id"]
        if ctype in C_SELECTS:
            if values is None:
                raise ValueError("a select needs values")
            if ctype == C_STRING_SELECT:
                allowed = {o["value"] for o in component.get("options", [])}
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise ValueError(f"values {bad} are not options of {custom_id!r}")
            data["values"] = values
        elif values is not None:
            raise ValueError(f"{custom_id!r} is not a select menu")
        dm = msg.guild_id is None
        inter = self._new_interaction(
            MESSAGE_COMPONENT,
            data,
            user=user if user is not None else (self._dm_owner(msg) if dm else None),
            channel_id=msg.channel_id,
            dm=dm,
            locale=locale,
            message=msg,
        )
        return self._deliver(inter)

    def modal_submit(
        self,
        custom_id: str,
        fields: dict[str, Any],
        *,
        user: int | None = None,
        locale: str = "en-US",
    ) -> Json:
        """The user submits the modal ``custom_id`` that the bot showed them (callback type 9).

        ``fields`` maps component custom_id -> value (str for text inputs, list of str for
        selects). The submitted ``components`` mirror the layout the bot sent: action rows
        (type 1) for implicit rows, or the discord.py 2.6+ "label" wrapper (type 18) with a
        single ``component``. Missing required text inputs raise ValueError.
        """
        uid = int(user) if user is not None else self.user_id
        shown = self._modals.get((uid, custom_id))
        if shown is None:
            raise ValueError(f"no modal {custom_id!r} was shown to user {uid}")
        modal, origin = shown
        components = _modal_submission(modal.get("components", []), dict(fields))
        data: Json = {"custom_id": custom_id, "components": components}
        message = self.messages.get(origin.message_id or 0)
        inter = self._new_interaction(
            MODAL_SUBMIT,
            data,
            user=uid,
            channel_id=origin.channel_id,
            dm=origin.guild_id is None,
            locale=locale,
            message=message if message is not None and not message.deleted else None,
        )
        inter.triggering = self._metadata(origin)
        del self._modals[(uid, custom_id)]
        return self._deliver(inter)

    def inject_interaction(self, payload: Json) -> Json:
        """Dispatch a hand-built interaction; id, token, application_id, version, ... are filled.

        An escape hatch for shapes the helpers do not build (the fake does not validate it).
        """
        data = copy.deepcopy(payload)
        itype = int(data.get("type", APPLICATION_COMMAND))
        base = self._new_interaction(
            itype,
            data.get("data"),
            user=int(data["user"]["id"]) if "user" in data else None,
            channel_id=int(data["channel_id"]) if "channel_id" in data else None,
        )
        for key, value in data.items():
            base.payload.setdefault(key, value)
        return self._deliver(base)

    def expire_token(self, token: str) -> None:
        """Make an interaction token invalid now (as if 15 minutes had passed)."""
        inter = self._by_token.get(token)
        if inter is None:
            raise ValueError("unknown interaction token")
        inter.expired = True

    def interaction(self, token: str) -> Json:
        """What the fake knows about an interaction (state of its responses)."""
        inter = self._by_token[token]
        return {
            "id": str(inter.id),
            "type": inter.type,
            "response_type": inter.response_type,
            "original_message_id": None if inter.original_id is None else str(inter.original_id),
            "followup_message_ids": [str(m) for m in inter.followup_ids],
            "choices": copy.deepcopy(inter.choices),
            "modal": copy.deepcopy(inter.modal),
            "expired": not inter.token_valid(time.monotonic()),
        }

    def autocomplete_choices(self, token: str) -> list[Json] | None:
        return copy.deepcopy(self._by_token[token].choices)

    def interaction_responses(self, token: str) -> list[Call]:
        """Callback, @original and follow-up calls made with this token, in order."""
        return [c for c in self.call_log if f"/{token}/" in c.path or c.path.endswith(f"/{token}")]

    def _metadata(self, inter: _Interaction) -> Json:
        meta: Json = {
            "id": str(inter.id),
            "type": inter.type,
            "user": copy.deepcopy(self.users[inter.user_id]),
            "authorizing_integration_owners": copy.deepcopy(
                inter.payload["authorizing_integration_owners"]
            ),
        }
        if inter.type == APPLICATION_COMMAND:
            meta["name"] = inter.command_name
            meta["command_type"] = inter.command_type
            if inter.command_type == 3 and inter.target_id is not None:
                meta["target_message_id"] = str(inter.target_id)
            if inter.command_type == 2 and inter.target_id is not None:
                meta["target_user"] = copy.deepcopy(self.users[inter.target_id])
        if inter.type == MESSAGE_COMPONENT and inter.message_id is not None:
            meta["interacted_message_id"] = str(inter.message_id)
        if inter.type == MODAL_SUBMIT and inter.triggering is not None:
            meta["triggering_interaction_metadata"] = copy.deepcopy(inter.triggering)
        if inter.original_id is not None:
            meta["original_response_message_id"] = str(inter.original_id)
        return meta

    def _interaction_message(
        self, inter: _Interaction, fields: Json, *, original: bool, loading: bool = False
    ) -> _Message:
        if original and inter.type == APPLICATION_COMMAND:
            msg_type = MSG_CHAT_INPUT if inter.command_type == 1 else MSG_CONTEXT_MENU
        else:
            msg_type = MSG_DEFAULT
        legacy = None
        if original and inter.type == APPLICATION_COMMAND:
            legacy = {
                "id": str(inter.id),
                "type": inter.type,
                "name": inter.command_name,
                "user": copy.deepcopy(self.users[inter.user_id]),
            }
        flags = fields.get("flags", 0)
        extra = FLAG_LOADING if loading else 0
        fields = {**fields, "flags": flags & (FLAG_EPHEMERAL | (1 << 2) | (1 << 12) | (1 << 15))}
        msg = self._create_message(
            inter.channel_id,
            fields,
            msg_type=msg_type,
            webhook=True,
            interaction_metadata=self._metadata(inter),
            interaction_legacy=legacy,
            extra_flags=extra,
        )
        return msg

    # ------------------------------------------------------------------ gateway: dispatch

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

    # ------------------------------------------------------------------ gateway: websocket

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

    # ------------------------------------------------------------------ faults

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

    # ------------------------------------------------------------------ recording

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

    # ------------------------------------------------------------------ HTTP: REST

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

    # ---- identity / gateway

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

    # ---- commands

    def _check_app(self, req: _Request) -> int | None:
        if int(req.params["application_id"]) != self.application_id:
            raise DiscordApiError(403, 50001, "Missing Access")
        gid = req.params.get("guild_id")
        if gid is not None:
            self._guild(int(gid))
            return int(gid)
        return None

    async def _r_get_commands(self, req: _Request) -> list[Json]:
        return self.registered_commands(self._check_app(req))

    async def _r_put_commands(self, req: _Request) -> list[Json]:
        return self._store_commands(self._check_app(req), req.json)

    async def _r_post_command(self, req: _Request) -> Json:
        gid = self._check_app(req)
        current = [c for c in self.commands.get(gid, [])]
        raw = req.json or {}
        kept = [
            c
            for c in current
            if not (c["name"] == raw.get("name") and c["type"] == int(raw.get("type", 1)))
        ]
        stored = self._store_commands(gid, [*kept, raw])
        return next(c for c in stored if c["name"] == raw.get("name"))

    # ---- interactions

    def _interaction_by_token(self, token: str, *, webhook_app: str | None = None) -> _Interaction:
        inter = self._by_token.get(token)
        if inter is None:
            raise _unknown_webhook()
        if webhook_app is not None and int(webhook_app) != self.application_id:
            raise _unknown_webhook()
        if not inter.token_valid(time.monotonic()):
            raise _invalid_webhook_token()
        return inter

    async def _r_callback(self, req: _Request) -> Json | None:
        inter = self.interactions.get(int(req.params["interaction_id"]))
        if inter is None or inter.token != req.params["interaction_token"]:
            raise _unknown_interaction()
        if inter.response_type is not None:
            raise DiscordApiError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - inter.created > inter.deadline or inter.expired:
            raise _unknown_interaction()
        body = req.json if isinstance(req.json, dict) else {}
        ctype = body.get("type")
        data = body.get("data") or {}
        allowed = {
            APPLICATION_COMMAND: {CB_PONG, CB_MESSAGE, CB_DEFERRED_MESSAGE, CB_MODAL},
            MESSAGE_COMPONENT: {
                CB_PONG,
                CB_MESSAGE,
                CB_DEFERRED_MESSAGE,
                CB_DEFERRED_UPDATE,
                CB_UPDATE,
                CB_MODAL,
            },
            AUTOCOMPLETE: {CB_AUTOCOMPLETE},
            MODAL_SUBMIT: {CB_MESSAGE, CB_DEFERRED_MESSAGE, CB_DEFERRED_UPDATE, CB_UPDATE},
        }.get(inter.type, {CB_PONG})
        if ctype not in allowed:
            raise _form_error(
                "type",
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Interaction response type {ctype} is not valid here.",
            )
        if inter.type == MODAL_SUBMIT and ctype in (CB_DEFERRED_UPDATE, CB_UPDATE):
            if inter.message_id is None:
                raise _form_error(
                    "type",
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "This modal was not opened from a message component.",
                )
        resource: Json = {"type": ctype}
        info: Json = {
            "id": str(inter.id),
            "type": inter.type,
            "activity_instance_id": None,
            "response_message_id": None,
            "response_message_loading": False,
            "response_message_ephemeral": False,
        }
        if ctype == CB_MESSAGE:
            fields = self._message_fields(
                data, req.uploads, prefix=f"attachments/{inter.channel_id}"
            )
            msg = self._interaction_message(inter, fields, original=True)
            inter.original_id = msg.id
            resource["message"] = self._message_json(msg)
            info["response_message_id"] = str(msg.id)
            info["response_message_ephemeral"] = msg.ephemeral
            self._dispatch_message("MESSAGE_CREATE", msg)
        elif ctype == CB_DEFERRED_MESSAGE:
            flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
            msg = self._interaction_message(
                inter, {"content": "", "flags": flags}, original=True, loading=True
            )
            inter.original_id = msg.id
            inter.original_loading = True
            info.update(
                response_message_id=str(msg.id),
                response_message_loading=True,
                response_message_ephemeral=bool(flags),
            )
            self._dispatch_message("MESSAGE_CREATE", msg)
        elif ctype in (CB_DEFERRED_UPDATE, CB_UPDATE):
            target = self.messages.get(inter.message_id or 0)
            if target is None or target.deleted:
                raise _unknown_message()
            inter.original_id = target.id
            info["response_message_id"] = str(target.id)
            info["response_message_ephemeral"] = target.ephemeral
            if ctype == CB_UPDATE:
                fields = self._message_fields(
                    data,
                    req.uploads,
                    prefix=f"attachments/{target.channel_id}",
                    existing=target,
                    require_content=False,
                )
                self._edit_message(target, fields)
                resource["message"] = self._message_json(target)
                self._dispatch_message("MESSAGE_UPDATE", target)
        elif ctype == CB_AUTOCOMPLETE:
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) > MAX_CHOICES:
                raise _form_error(
                    "data.choices",
                    "BASE_TYPE_MAX_LENGTH",
                    f"Must be {MAX_CHOICES} or fewer in length.",
                )
            for index, choice in enumerate(choices):
                if not 1 <= len(str(choice.get("name", ""))) <= 100:
                    raise _form_error(
                        f"data.choices.{index}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )
            inter.choices = copy.deepcopy(choices)
        elif ctype == CB_MODAL:
            _validate_modal(data)
            inter.modal = copy.deepcopy(data)
            self._modals[(inter.user_id, data["custom_id"])] = (copy.deepcopy(data), inter)
        inter.response_type = ctype
        self._notify()
        if req.query.get("with_response") not in ("1", "true", "True"):
            return None
        out: Json = {"interaction": info}
        if ctype != CB_PONG:
            out["resource"] = resource
        return out

    def _webhook_target(self, inter: _Interaction, message_id: str) -> _Message:
        if message_id == "@original":
            if inter.original_id is None:
                raise _unknown_message()
            mid = inter.original_id
        else:
            mid = int(message_id)
            if mid != inter.original_id and mid not in inter.followup_ids:
                raise _unknown_message()
        msg = self.messages.get(mid)
        if msg is None or msg.deleted:
            raise _unknown_message()
        return msg

    async def _r_webhook_message(self, req: _Request) -> Json | None:
        inter = self._interaction_by_token(
            req.params["webhook_token"], webhook_app=req.params["webhook_id"]
        )
        msg = self._webhook_target(inter, req.params["message_id"])
        if req.method == "GET":
            return self._message_json(msg)
        if req.method == "DELETE":
            msg.deleted = True
            if not msg.ephemeral:
                self._dispatch(
                    "MESSAGE_DELETE",
                    _delete_payload(msg),
                    guild_id=msg.guild_id,
                    intents=INTENT_GUILD_MESSAGES if msg.guild_id else INTENT_DIRECT_MESSAGES,
                )
            return None
        fields = self._message_fields(
            req.json or {},
            req.uploads,
            prefix=f"attachments/{msg.channel_id}",
            existing=msg,
            require_content=False,
        )
        was_loading = bool(msg.flags & FLAG_LOADING)
        self._edit_message(msg, fields)
        if was_loading:
            msg.flags &= ~FLAG_LOADING
            msg.edited = None  # filling a deferred response is not an "edit"
            inter.original_loading = False
        self._dispatch_message("MESSAGE_UPDATE", msg)
        return self._message_json(msg)

    async def _r_execute_webhook(self, req: _Request) -> Json | None:
        inter = self._interaction_by_token(
            req.params["webhook_token"], webhook_app=req.params["webhook_id"]
        )
        if inter.response_type is None or inter.response_type == CB_AUTOCOMPLETE:
            raise _unknown_webhook()
        prefix = f"attachments/{inter.channel_id}"
        if self.followup_edits_deferred and inter.original_loading and inter.original_id:
            # After a type 5 defer, the first follow-up fills the "thinking" message
            # (receiving-and-responding.mdx, deprecated but still live).
            msg = self.messages[inter.original_id]
            fields = self._message_fields(req.json or {}, req.uploads, prefix=prefix)
            self._edit_message(msg, fields)
            msg.flags &= ~FLAG_LOADING
            msg.edited = None
            inter.original_loading = False
            self._dispatch_message("MESSAGE_UPDATE", msg)
        else:
            fields = self._message_fields(req.json or {}, req.uploads, prefix=prefix)
            msg = self._interaction_message(inter, fields, original=False)
            inter.followup_ids.append(msg.id)
            self._dispatch_message("MESSAGE_CREATE", msg)
        if req.query.get("wait") in ("1", "true", "True"):
            return self._message_json(msg)
        return None

    # ---- channels / messages

    async def _r_get_channel(self, req: _Request) -> Json:
        return self._public(self._channel(int(req.params["channel_id"])))

    async def _r_create_dm(self, req: _Request) -> Json:
        body = req.json or {}
        try:
            uid = int(body["recipient_id"])
        except (KeyError, TypeError, ValueError):
            raise _form_error(
                "recipient_id", "BASE_TYPE_REQUIRED", "This field is required"
            ) from None
        return self.dm_channel(uid)

    def _channel_message(self, req: _Request) -> _Message:
        self._channel(int(req.params["channel_id"]))
        msg = self.messages.get(int(req.params["message_id"]))
        if (
            msg is None
            or msg.deleted
            or msg.ephemeral
            or msg.channel_id != int(req.params["channel_id"])
        ):
            raise _unknown_message()
        return msg

    async def _r_list_messages(self, req: _Request) -> list[Json]:
        cid = int(req.params["channel_id"])
        self._channel(cid)
        limit = max(1, min(100, int(req.query.get("limit", 50))))
        ids = [
            m
            for m in self._channel_order.get(cid, [])
            if not self.messages[m].deleted and not self.messages[m].ephemeral
        ]
        if "before" in req.query:
            ids = [m for m in ids if m < int(req.query["before"])]
        if "after" in req.query:
            ids = [m for m in ids if m > int(req.query["after"])][:limit]
        ids = sorted(ids, reverse=True)[:limit]
        return [
            self._message_json(
                self.messages[m], strip_content=self._strip_for(self.messages[m], None)
            )
            for m in ids
        ]

    async def _r_get_message(self, req: _Request) -> Json:
        msg = self._channel_message(req)
        return self._message_json(msg, strip_content=self._strip_for(msg, None))

    async def _r_create_message(self, req: _Request) -> Json:
        cid = int(req.params["channel_id"])
        self._channel(cid)
        fields = self._message_fields(req.json or {}, req.uploads, prefix=f"attachments/{cid}")
        msg = self._create_message(cid, fields)
        self._dispatch_message("MESSAGE_CREATE", msg)
        return self._message_json(msg)

    async def _r_edit_message(self, req: _Request) -> Json:
        msg = self._channel_message(req)
        body = req.json or {}
        if int(msg.author["id"]) != self.bot_user_id and set(body) - {"flags"}:
            raise DiscordApiError(403, 50005, "Cannot edit a message authored by another user")
        fields = self._message_fields(
            body,
            req.uploads,
            prefix=f"attachments/{msg.channel_id}",
            existing=msg,
            require_content=False,
        )
        self._edit_message(msg, fields)
        self._dispatch_message("MESSAGE_UPDATE", msg)
        return self._message_json(msg)

    async def _r_delete_message(self, req: _Request) -> None:
        msg = self._channel_message(req)
        msg.deleted = True
        self._dispatch(
            "MESSAGE_DELETE",
            _delete_payload(msg),
            guild_id=msg.guild_id,
            intents=INTENT_GUILD_MESSAGES if msg.guild_id else INTENT_DIRECT_MESSAGES,
        )
        return None

    async def _r_typing(self, req: _Request) -> None:
        self._channel(int(req.params["channel_id"]))
        return None

    # ---- guilds

    async def _r_get_guild(self, req: _Request) -> Json:
        return self.guild_json(int(req.params["guild_id"]))

    async def _r_guild_channels(self, req: _Request) -> list[Json]:
        guild = self._guild(int(req.params["guild_id"]))
        return [self._public(self.channels[c]) for c in guild["_channel_ids"]]

    async def _r_guild_roles(self, req: _Request) -> list[Json]:
        return copy.deepcopy(self._guild(int(req.params["guild_id"]))["roles"])

    async def _r_guild_member(self, req: _Request) -> Json:
        return self.member_json(int(req.params["guild_id"]), int(req.params["user_id"]))

    # ------------------------------------------------------------------ HTTP: control API

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


_CONTROL_METHODS = frozenset(
    {
        "configure",
        "add_user",
        "add_guild",
        "dm_channel",
        "slash",
        "autocomplete",
        "message_command",
        "user_command",
        "button",
        "select",
        "modal_submit",
        "inject_interaction",
        "post_user_message",
        "expire_token",
        "expire_attachments",
        "interaction",
        "autocomplete_choices",
        "interaction_responses",
        "channel_messages",
        "message",
        "message_files",
        "registered_commands",
        "dispatch_event",
        "sessions",
        "gateway_connections",
        "reconnect",
        "invalidate_session",
        "close_gateway",
        "fail_next",
        "rate_limit_next",
        "server_error_next",
        "delay_next",
        "clear_faults",
        "calls",
        "reset_calls",
        "wait_for_call",
    }
)


# ---------------------------------------------------------------------------------- builders


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer whose Content-Type is exactly ``application/json`` (discord.py checks)."""
    hdrs = {k: v for k, v in (headers or {}).items() if not k.startswith("_")}
    hdrs["Content-Type"] = "application/json"
    return web.Response(status=status, body=_dumps(body).encode("utf-8"), headers=hdrs)


def _default_guild() -> Json:
    return {
        "id": GUILD_ID,
        "name": "sdhost test guild",
        "owner_id": OWNER_ID,
        "roles": [
            {
                "id": ROLE_ARTIST_ID,
                "name": "Artist",
                "permissions": str(EVERYONE_PERMISSIONS),
                "position": 1,
            }
        ],
        "channels": [
            {"id": CHANNEL_ID, "name": "general", "type": 0, "topic": "images"},
            {"id": NSFW_CHANNEL_ID, "name": "after-dark", "type": 0, "nsfw": True},
        ],
        "members": [{"user": USER_ID, "roles": [ROLE_ARTIST_ID]}],
    }


def _role_json(raw: Json) -> Json:
    role = {
        "id": str(raw["id"]),
        "name": raw.get("name", "role"),
        "color": raw.get("color", 0),
        "colors": {
            "primary_color": raw.get("color", 0),
            "secondary_color": None,
            "tertiary_color": None,
        },
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": raw.get("position", 1),
        "permissions": str(raw.get("permissions", EVERYONE_PERMISSIONS)),
        "managed": bool(raw.get("managed", False)),
        "mentionable": False,
        "flags": 0,
    }
    if "tags" in raw:
        role["tags"] = raw["tags"]
    return role


def _channel_json(raw: Json, guild_id: int, position: int) -> Json:
    return {
        "id": str(raw["id"]),
        "type": int(raw.get("type", 0)),
        "guild_id": str(guild_id),
        "name": raw.get("name", f"channel-{position}"),
        "position": raw.get("position", position),
        "permission_overwrites": raw.get("permission_overwrites", []),
        "parent_id": None if raw.get("parent_id") is None else str(raw["parent_id"]),
        "nsfw": bool(raw.get("nsfw", False)),
        "topic": raw.get("topic"),
        "rate_limit_per_user": raw.get("rate_limit_per_user", 0),
        "last_message_id": None,
        "flags": 0,
    }


def _delete_payload(msg: _Message) -> Json:
    data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
    if msg.guild_id is not None:
        data["guild_id"] = str(msg.guild_id)
    return data


def _file_index(field: str) -> int:
    match = re.fullmatch(r"files\[(\d+)\]", field) or re.fullmatch(r"file(\d*)", field)
    if match is None:
        return -1
    return int(match.group(1) or 0)


def _attachment_arg(name: str, value: Any) -> tuple[str, bytes]:
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        info = _image_info(data)
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
        suffix = ext.get(info[2], "bin") if info else "bin"
        return f"{name}.{suffix}", data
    if isinstance(value, tuple | list) and len(value) == 2:
        return str(value[0]), bytes(value[1])
    if isinstance(value, dict):
        return str(value["filename"]), bytes(value["data"])
    raise ValueError(f"option {name!r}: pass bytes or (filename, bytes)")


def _redact(op: int, d: Any) -> Any:
    if op in (2, 6) and isinstance(d, dict) and "token" in d:
        return {**d, "token": "<redacted>"}
    return d


def _walk_components(components: list[Json]) -> Iterator[Json]:
    for component in components:
        yield component
        for key in ("components",):
            yield from _walk_components(component.get(key) or [])
        for key in ("component", "accessory"):
            inner = component.get(key)
            if isinstance(inner, dict):
                yield from _walk_components([inner])


def _normalize_components(components: list[Json]) -> list[Json]:
    """Validate custom_ids (1-100 chars, unique) and number components like Discord does."""
    components = copy.deepcopy(components)
    counter = itertools.count(1)
    seen: set[str] = set()

    def visit(items: list[Json], path: str) -> None:
        for index, comp in enumerate(items):
            where = f"{path}.{index}"
            if "id" not in comp or comp["id"] is None:
                comp["id"] = next(counter)
            custom_id = comp.get("custom_id")
            if custom_id is not None:
                if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
                    raise _form_error(
                        f"{where}.custom_id",
                        "BASE_TYPE_BAD_LENGTH",
                        f"Must be between 1 and {MAX_CUSTOM_ID} in length.",
                    )
                if custom_id in seen:
                    raise _form_error(
                        f"{where}.custom_id",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                seen.add(custom_id)
            if comp.get("type") == C_ACTION_ROW and len(comp.get("components") or []) > 5:
                raise _form_error(
                    f"{where}.components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
                )
            visit(comp.get("components") or [], f"{where}.components")
            for key in ("component", "accessory"):
                if isinstance(comp.get(key), dict):
                    visit([comp[key]], f"{where}.{key}")

    visit(components, "components")
    return components


def _normalize_embed(embed: Json) -> Json:
    out = copy.deepcopy(embed)
    out.setdefault("type", "rich")
    out.setdefault("content_scan_version", 0)
    return out


def _validate_options(options: list[Json], path: str) -> None:
    if len(options) > 25:
        raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    names: set[str] = set()
    for index, option in enumerate(options):
        where = f"{path}.{index}"
        name = option.get("name", "")
        if not re.fullmatch(r"[-_'\w]{1,32}", name) or name != name.lower():
            raise _form_error(
                f"{where}.name",
                "APPLICATION_COMMAND_INVALID_NAME",
                f"Option name is invalid: {name!r}",
            )
        if name in names:
            raise _form_error(
                f"{where}.name",
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                "Option names must be unique",
            )
        names.add(name)
        if not 1 <= len(option.get("description", "")) <= 100:
            raise _form_error(
                f"{where}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if option.get("type") in (OPT_SUB_COMMAND, OPT_SUB_GROUP):
            _validate_options(option.get("options") or [], f"{where}.options")
            continue
        if option.get("required"):
            if seen_optional:
                raise _form_error(
                    f"{where}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        if len(option.get("choices") or []) > MAX_CHOICES:
            raise _form_error(
                f"{where}.choices",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_CHOICES} or fewer in length.",
            )


def _validate_modal(data: Json) -> None:
    custom_id = data.get("custom_id") or ""
    if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        raise _form_error(
            "data.custom_id",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_CUSTOM_ID} in length.",
        )
    title = data.get("title") or ""
    if not 1 <= len(title) <= 45:
        raise _form_error(
            "data.title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
        )
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        raise _form_error(
            "data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
        )
    _normalize_components(components)


def _modal_submission(components: list[Json], fields: dict[str, Any]) -> list[Json]:
    """Mirror the shown modal's layout with the user's values (what Discord sends back)."""
    unused = set(fields)
    counter = itertools.count(1)

    def leaf(comp: Json) -> Json:
        ctype = comp["type"]
        out: Json = {"type": ctype, "id": comp.get("id") or next(counter)}
        custom_id = comp.get("custom_id")
        if custom_id is None:
            return out
        out["custom_id"] = custom_id
        value = fields.get(custom_id)
        unused.discard(custom_id)
        if ctype == C_TEXT_INPUT:
            text = "" if value is None else str(value)
            if comp.get("required", True) and not text:
                raise ValueError(f"text input {custom_id!r} is required")
            lo, hi = comp.get("min_length") or 0, comp.get("max_length") or 4000
            if text and not lo <= len(text) <= hi:
                raise ValueError(f"text input {custom_id!r}: length must be in [{lo}, {hi}]")
            out["value"] = text
        elif ctype in C_SELECTS or ctype == C_FILE_UPLOAD:
            values = [] if value is None else list(value)
            if comp.get("required", True) and not values and ctype != C_FILE_UPLOAD:
                raise ValueError(f"select {custom_id!r} is required")
            out["values"] = values
        else:
            out["value"] = value
        return out

    result = []
    for comp in components:
        if comp["type"] == C_ACTION_ROW:
            result.append(
                {
                    "type": C_ACTION_ROW,
                    "id": comp.get("id") or next(counter),
                    "components": [leaf(c) for c in comp.get("components", [])],
                }
            )
        elif comp["type"] == C_LABEL:
            result.append(
                {
                    "type": C_LABEL,
                    "id": comp.get("id") or next(counter),
                    "component": leaf(comp["component"]),
                }
            )
        else:
            result.append(leaf(comp))
    if unused:
        raise ValueError(f"the modal has no inputs {sorted(unused)}")
    return result


def _to_json(value: Any, include_bytes: bool) -> Any:
    if isinstance(value, Call | UploadedFile):
        return value.to_json(include_bytes)
    if isinstance(value, GatewayFrame | CdnFetch):
        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return {"$b64": _b64(value)}
    if isinstance(value, list | tuple):
        return [_to_json(v, include_bytes) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v, include_bytes) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------- pointing


@contextlib.contextmanager
def point_discord_at(target: FakeDiscord | FakeDiscordRemote | str) -> Iterator[None]:
    """Redirect discord.py's REST base and default gateway to the fake, restoring them after.

    ``Route.BASE`` is read when each Route is built and ``DEFAULT_GATEWAY`` when a client
    connects without a gateway (``Client.connect``), so patching both before ``start`` is all
    it takes; resumes use READY's ``resume_gateway_url``, which the fake points at itself.
    """
    import discord.gateway
    import discord.http
    import yarl

    url = target if isinstance(target, str) else target.url
    url = url.rstrip("/")
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        url.replace("http://", "ws://", 1) + "/"
    )
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


# ---------------------------------------------------------------------------------- remote


class FakeDiscordRemote:
    """Client for the HTTP control API of a fake running in another process.

    Every method of :class:`FakeDiscord` listed in the control API is reachable through
    :meth:`call` (``await remote.call("slash", name="imagine", options={...})``); the common ones
    have wrappers. Answers are JSON: calls as dicts, bytes as ``{"$b64": ...}``.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FakeDiscordRemote:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, method: str, /, **kwargs: Any) -> Any:
        """POST ``/_control/<method>`` with ``kwargs`` (bytes anywhere are base64-wrapped)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            f"{self.url}/_control/{method}", json=_encode_bytes(kwargs)
        ) as resp:
            payload = await resp.json(content_type=None)
        if resp.status == 408:
            raise TimeoutError(payload.get("error"))
        if resp.status != 200:
            raise ValueError(payload.get("error", str(payload)))
        return _decode_bytes(payload["result"])

    async def slash(self, name: str, options: dict[str, Any] | None = None, **kw: Any) -> Json:
        return await self.call("slash", name=name, options=options, **kw)

    async def button(self, message_id: int, custom_id: str, **kw: Any) -> Json:
        return await self.call("button", message_id=message_id, custom_id=custom_id, **kw)

    async def calls(self, method: str | None = None, path_regex: str | None = None) -> list[Json]:
        return await self.call("calls", method=method, path_regex=path_regex)

    async def channel_messages(self, channel_id: int) -> list[Json]:
        return await self.call("channel_messages", channel_id=channel_id)

    async def wait_for_call(
        self, method: str | None = None, path_regex: str | None = None, timeout: float = 5.0
    ) -> Json:
        return await self.call(
            "wait_for_call", method=method, path_regex=path_regex, timeout=timeout
        )


# ---------------------------------------------------------------------------------- CLI


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeDiscord(
        token=args.token,
        heartbeat_interval=args.heartbeat_interval,
        compression=not args.no_compression,
    )
    await fake.start(args.host, args.port)
    print(f"READY {fake.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of ``python -m tests.fakes.discord_api``."""
    parser = argparse.ArgumentParser(description="Fake Discord (REST v10 + gateway) for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--heartbeat-interval", type=int, default=41250, help="milliseconds")
    parser.add_argument("--no-compression", action="store_true", help="plain text frames")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(args))


__all__ = [
    "APPLICATION_ID",
    "BOT_USER_ID",
    "CHANNEL_ID",
    "DEFAULT_TOKEN",
    "GUILD_ID",
    "NSFW_CHANNEL_ID",
    "USER_ID",
    "Call",
    "CdnFetch",
    "DiscordApiError",
    "FakeDiscord",
    "FakeDiscordRemote",
    "GatewayFrame",
    "UploadedFile",
    "point_discord_at",
]

if __name__ == "__main__":
    main()
