"""The Discord fake's model: snowflakes, errors, uploaded files, calls, messages, helpers.

See tests/fakes/discord/__init__.py for what the fake is and the traps it is built around."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime as dt
import io
import itertools
import json
import logging
import mimetypes
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from tests.fakes.scaffold import Recorded, StoredFile, UploadedFile

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


def _upload_json(upload: UploadedFile, include_bytes: bool = False) -> Json:
    out: Json = {
        "field": upload.field,
        "filename": upload.filename,
        "size": len(upload.data),
        "content_type": upload.content_type,
    }
    if include_bytes:
        out["data_b64"] = _b64(upload.data)
    return out


@dataclasses.dataclass
class Call(Recorded):
    """One REST request (the scaffold's record), with the Discord view of it.

    ``path`` is the part after ``/api/v10``; ``endpoint`` is the route template
    (``"POST /channels/{channel_id}/messages"``, ``"POST ?"`` when none matched); ``json`` is
    the JSON body, or a multipart request's ``payload_json``; ``files`` are the ``files[i]``
    parts and ``key`` the Authorization header. ``route``, ``uploads``, ``response`` and
    ``authorization`` are the older names of ``endpoint``, ``files``, ``reply`` and ``key``.
    ``rest`` is False for what is not a REST call (the gateway, the control API, the CDN).
    """

    rest: bool = False

    @property
    def route(self) -> str:
        return self.endpoint

    @property
    def uploads(self) -> list[UploadedFile]:
        return self.files

    @property
    def response(self) -> Any:
        return self.reply

    @property
    def authorization(self) -> str | None:
        return self.key

    @property
    def file_bytes(self) -> dict[str, bytes]:
        """Uploaded files by filename (what ``files[i]`` parts carried)."""
        return {u.filename: u.data for u in self.files}

    def to_json(self, include_bytes: bool = False) -> Json:
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "route": self.endpoint,
            "query": self.query,
            "json": self.json,
            "uploads": [_upload_json(u, include_bytes) for u in self.files],
            "time": self.time,
            "status": self.status,
            "response": self.reply,
        }


@dataclasses.dataclass
class CdnFetch:
    """One GET on the fake CDN: tests use it to prove an expired link was refetched."""

    path: str
    status: int
    time: float


@dataclasses.dataclass
class _Attachment:
    """An attachment's metadata; its bytes are in the fake's FileStore (``stored``)."""

    id: int
    filename: str
    stored: StoredFile
    content_type: str
    width: int | None
    height: int | None
    prefix: str  # "attachments/<channel>" or "ephemeral-attachments/<application>"
    description: str | None = None
    spoiler: bool = False
    ephemeral: bool = False

    @property
    def data(self) -> bytes:
        return self.stored.data


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
    if isinstance(value, Call):
        return value.to_json(include_bytes)
    if isinstance(value, UploadedFile):
        return _upload_json(value, include_bytes)
    if isinstance(value, GatewayFrame | CdnFetch):
        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return {"$b64": _b64(value)}
    if isinstance(value, list | tuple):
        return [_to_json(v, include_bytes) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v, include_bytes) for k, v in value.items()}
    return value
