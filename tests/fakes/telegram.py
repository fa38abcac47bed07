"""A loopback fake of the Telegram Bot API server, driven by the real python-telegram-bot.

Why a fake server and not mocks: sdhost's Telegram adapter is built on python-telegram-bot (PTB),
and the bugs that matter (wrong wire format, unparsed replies, flood control, 20 MB ``getFile``
limit, "message is not modified", albums of 2-10, HTML that Telegram refuses) only show up when
PTB talks HTTP to something that answers like Telegram. The fake speaks the Bot API wire format
(``/bot<token>/<method>`` and ``/file/bot<token>/<path>``), records every call, and exposes a
control API to inject updates and failures. Server, call records, injected failures and stored
files are the shared loopback scaffold's (tests/fakes/scaffold.py): a :class:`Call` is its
record with the Bot API view added (``api_method``, ``params``, ``uploads``), and
:meth:`FakeTelegram.fail_next` queues a scaffold fault answering the Bot API error body.

Two ways to run it:

* in-process: ``async with FakeTelegram() as tg:`` then point PTB at ``tg.base_url`` and
  ``tg.base_file_url`` (``tg.root_url`` is the server's root); the control API is the
  Python methods of :class:`FakeTelegram`.
* as a subprocess: ``python -m tests.fakes.telegram --port 0`` prints
  ``READY http://127.0.0.1:<port>`` once listening; the same control methods are exposed as
  ``GET|POST /_control/<name>`` with JSON arguments (bytes travel as base64 in ``<arg>_b64``);
  :class:`FakeTelegramRemote` wraps them.

Deliberate deviations from the real server (kept small and documented so tests are not misled):

* The largest ``PhotoSize`` serves the exact uploaded bytes at their real dimensions; Telegram
  re-encodes it as a JPEG of at most 1280/2560 px. The smaller sizes are real Pillow thumbnails.
* Webhook URLs may be plain ``http://`` (Telegram requires HTTPS on ports 80/88/443/8443).
* Chats the bot has never seen are created on first send (positive ids become private chats,
  negative ids groups) instead of answering "chat not found"; use :meth:`FakeTelegram.vanish_chat`
  to get that error.
* Photos and documents are the only media kinds; inline mode, payments, stickers, polls,
  forwarding/copying, and Bot API calls in webhook answers are not implemented (404).
* Flood control only happens when a test asks for it (:meth:`FakeTelegram.flood`); the fake does
  not meter the real per-chat and global rates.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import mimetypes
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from bot.waiting import wait_for_event
from tests.fakes.scaffold import LoopbackServer, Recorded, UploadedFile

_LOG = logging.getLogger(__name__)

Json = dict[str, Any]

DEFAULT_TOKEN = "123456:TEST"
DEFAULT_USERNAME = "sdhost_test_bot"

# Limits from https://core.telegram.org/bots/api and the Bot API FAQ (see shared/api/telegram.md).
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
MAX_CALLBACK_ANSWER = 200
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_DIM_SUM = 10000
MAX_PHOTO_RATIO = 20
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
MIN_ALBUM, MAX_ALBUM = 2, 10
# Thumbnail boxes Telegram produces for photos (types s, m, x); anything larger is the original.
PHOTO_BOXES = (90, 320, 800)

# The error texts the real server uses (collected from client libraries' error tables and
# issue threads; the few the fake had to invent are marked "fake wording" at their use).
ERR_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
ERR_WEBHOOK_ACTIVE = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)
ERR_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
    "running"
)
ERR_CHAT_NOT_FOUND = "Bad Request: chat not found"
ERR_BLOCKED = "Forbidden: bot was blocked by the user"
ERR_MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
ERR_QUERY_TOO_OLD = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)

# Fields whose values are strings in the Bot API: never JSON-decode them (a caption "123" or
# "true" must stay a string). Every other string field is JSON-decoded when it parses, because
# PTB JSON-encodes all non-string values (ints, bools, objects, arrays) into form fields.
_STRING_FIELDS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "caption_parse_mode",
        "url",
        "secret_token",
        "callback_query_id",
        "action",
        "file_id",
        "inline_message_id",
        "language_code",
        "photo",
        "document",
        "thumbnail",
        "ip_address",
        "business_connection_id",
        "message_effect_id",
        "emoji",
        "title",
        "description",
        "short_description",
        "name",
        "query",
        "data",
        "game_short_name",
        "sticker",
        "certificate",
    }
)

_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

# Update types delivered when allowed_updates is empty/unset (Bot API: all except these three).
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# Methods that a blocked user makes fail with 403 (reads such as getChat still work).
_BLOCKABLE_PREFIXES = ("send", "edit", "copy", "forward")


def _u16len(text: str) -> int:
    """Length in UTF-16 code units: the unit of MessageEntity offsets and lengths."""
    return len(text.encode("utf-16-le")) // 2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TelegramApiError(Exception):
    """An error answer of the Bot API: ``{"ok": false, "error_code", "description", ...}``.

    ``html`` replaces the JSON body, to imitate nginx's HTML 502 page in front of the Bot API.
    """

    def __init__(
        self,
        status: int,
        description: str,
        parameters: Json | None = None,
        *,
        html: str | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters
        self.html = html

    def body(self) -> Json:
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> TelegramApiError:
    return TelegramApiError(400, f"Bad Request: {description}")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _upload_json(upload: UploadedFile, include_bytes: bool = False) -> Json:
    out: Json = {
        "name": upload.field,
        "filename": upload.filename,
        "content_type": upload.content_type,
        "size": len(upload.data),
        "sha256": upload.sha256,
    }
    if include_bytes:
        out["data_b64"] = _b64(upload.data)
    return out


def _decode_value(key: str, value: Any) -> Any:
    """A form field as the Bot API means it: JSON-decoded unless it is a string field."""
    if not isinstance(value, str) or key in _STRING_FIELDS:
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return value if isinstance(decoded, str) else decoded


@dataclasses.dataclass
class Call(Recorded):
    """One request as the fake saw it (the scaffold's record), with the Bot API view of it.

    ``api_method`` is the Bot API method (canonical spelling; ``method`` stays the HTTP one);
    ``params`` merges the query and the body (JSON fields decoded, ``attach://`` left as
    sent); ``uploads`` are the multipart file parts by form-field name (``files`` lists them).
    """

    api_method: str = ""

    @property
    def params(self) -> Json:
        # Not cached: the record is in the log before its body is read, and a test looking
        # at it then must not freeze the params empty for the handler.
        raw: Json = dict(self.query)
        if isinstance(self.json, dict):
            raw.update(self.json)
        raw.update(self.form)
        return {k: _decode_value(k, v) for k, v in raw.items()}

    @property
    def uploads(self) -> dict[str, UploadedFile]:
        return {f.field: f for f in self.files}

    @property
    def token(self) -> str:
        return self.key or ""

    @property
    def http_method(self) -> str:
        return self.method

    @property
    def response(self) -> Json | None:
        return self.reply if isinstance(self.reply, dict) else None

    @property
    def chat_id(self) -> int | str | None:
        value = self.params.get("chat_id")
        return value if isinstance(value, int | str) else None

    @property
    def result(self) -> Any:
        return (self.response or {}).get("result")

    def to_json(self, include_bytes: bool = False) -> Json:
        return {
            "index": self.index,
            "method": self.api_method,
            "params": self.params,
            "files": {f.field: _upload_json(f, include_bytes) for f in self.files},
            "time": self.time,
            "token": self.token,
            "http_method": self.method,
            "status": self.status,
            "response": self.response,
        }


@dataclasses.dataclass
class SentMessage:
    """A message a bot sent, in its current state, with the bytes of its photo or document.

    ``history`` holds earlier versions (one per successful edit), so tests can count edits.
    """

    chat_id: int
    message_id: int
    method: str
    message: Json
    deleted: bool = False
    history: list[Json] = dataclasses.field(default_factory=list)
    photo_bytes: bytes | None = None
    document_bytes: bytes | None = None

    @property
    def text(self) -> str | None:
        return self.message.get("text")

    @property
    def caption(self) -> str | None:
        return self.message.get("caption")

    @property
    def reply_markup(self) -> Json | None:
        return self.message.get("reply_markup")

    @property
    def media_group_id(self) -> str | None:
        return self.message.get("media_group_id")

    def to_json(self, include_bytes: bool = True) -> Json:
        out: Json = {
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "method": self.method,
            "message": self.message,
            "deleted": self.deleted,
            "history": self.history,
        }
        if include_bytes:
            out["photo_bytes_b64"] = _b64(self.photo_bytes) if self.photo_bytes else None
            out["document_bytes_b64"] = _b64(self.document_bytes) if self.document_bytes else None
        return out


@dataclasses.dataclass
class _StoredMessage:
    message: Json
    token: str | None  # the bot that sent it; None for users' messages
    method: str
    deleted: bool = False
    history: list[Json] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Webhook:
    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: list[str] | None
    last_error_date: int | None = None
    last_error_message: str | None = None
    task: asyncio.Task[None] | None = None


class _BotState:
    """Per-token state: identity, pending updates, webhook, commands."""

    def __init__(self, token: str, username: str, first_name: str) -> None:
        self.token = token
        self.id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        self.username = username
        self.first_name = first_name
        self.updates: list[Json] = []
        self.next_update_id = 1
        self.allowed_updates: list[str] | None = None
        self.webhook: _Webhook | None = None
        self.commands: dict[tuple[str, str], list[Json]] = {}
        self.texts: dict[tuple[str, str], str] = {}
        self.poll_generation = 0
        self.changed = asyncio.Event()
        self.callback_queries: dict[str, bool] = {}

    def user(self, privacy_mode: bool) -> Json:
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": not privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def sender(self) -> Json:
        """The ``from`` of the bot's own messages (getMe minus the bot-only capabilities)."""
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def notify(self) -> None:
        """Wake every long poll and the webhook worker (a fresh Event per generation)."""
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def confirm(self, offset: int) -> None:
        if offset < 0:
            self.updates = self.updates[offset:]
        elif offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]

    def take(self, limit: int) -> list[Json]:
        """Pending updates in order; drops (confirms) types not in ``allowed_updates``."""
        allowed = self.allowed_updates
        kept = []
        for update in self.updates:
            kind = _update_type(update)
            if allowed:
                ok = kind in allowed
            else:
                ok = kind not in _OPT_IN_UPDATES
            if ok:
                kept.append(update)
        self.updates = kept
        return copy.deepcopy(kept[:limit])


def _update_type(update: Json) -> str:
    return next((k for k in update if k != "update_id"), "")


# --------------------------------------------------------------------------------------------
# Formatted text: enough of Telegram's HTML / MarkdownV2 / Markdown parsers to produce the plain
# text and entities the real server returns, and to refuse what it refuses (a prompt containing
# "<3" sent with parse_mode=HTML fails on Telegram; it must fail here too).
# --------------------------------------------------------------------------------------------

_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_HTML_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ATTR_RE = re.compile(r"""([a-zA-Z_-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")


class _EntityParseError(Exception):
    pass


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def _parse_html(source: str) -> tuple[str, list[Json]]:
    out: list[str] = []
    pos16 = 0
    stack: list[tuple[str, int, Json]] = []
    entities: list[Json] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "<":
            # Like tdlib: the tag name runs to whitespace or ">", so "i <3 u" names tag "3".
            j = i + 1
            while j < n and not source[j].isspace() and source[j] != ">":
                j += 1
            if j >= n:
                raise _EntityParseError(
                    f"Unclosed start tag at byte offset {_byte_offset(source, i)}"
                )
            is_end_tag = source.startswith("</", i)
            if not is_end_tag and source[i + 1 : j].lower() not in _HTML_TAGS:
                raise _EntityParseError(
                    f'Unsupported start tag "{source[i + 1 : j].lower()}" at byte offset '
                    f"{_byte_offset(source, i)}"
                )
            end = source.find(">", j)
            if end == -1:
                raise _EntityParseError(
                    f"Unclosed start tag at byte offset {_byte_offset(source, i)}"
                )
            if is_end_tag:
                name = source[i + 2 : end].strip().lower()
                if not stack:
                    raise _EntityParseError(
                        f"Unexpected end tag at byte offset {_byte_offset(source, i)}"
                    )
                open_name, start16, attrs = stack.pop()
                if name and name != open_name:
                    raise _EntityParseError(
                        f"Unmatched end tag at byte offset {_byte_offset(source, i)}, "
                        f'expected "</{open_name}>", found "</{name}>"'
                    )
                entity = _html_entity(open_name, attrs, start16, pos16 - start16)
                if entity is not None:
                    entities.append(entity)
            else:
                name = source[i + 1 : j].lower()
                attrs = {
                    m.group(1).lower(): next(g for g in m.groups()[1:] if g is not None)
                    for m in _ATTR_RE.finditer(source[j:end])
                }
                if name == "span" and attrs.get("class") != "tg-spoiler":
                    raise _EntityParseError(
                        f'Tag "span" must have class "tg-spoiler" at byte offset '
                        f"{_byte_offset(source, i)}"
                    )
                stack.append((name, pos16, attrs))
            i = end + 1
            continue
        if ch == "&":
            match = re.match(r"&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);", source[i:])
            decoded: str | None = None
            if match:
                ref = match.group(1)
                if ref.startswith("#x"):
                    decoded = chr(int(ref[2:], 16))
                elif ref.startswith("#"):
                    decoded = chr(int(ref[1:]))
                else:
                    decoded = _HTML_ENTITIES.get(ref)
            if match and decoded is not None:
                out.append(decoded)
                pos16 += _u16len(decoded)
                i += len(match.group(0))
                continue
        out.append(ch)
        pos16 += _u16len(ch)
        i += 1
    if stack:
        raise _EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(out), _merge_pre_code(entities)


def _merge_pre_code(entities: list[Json]) -> list[Json]:
    """``<pre><code class="language-x">`` is one ``pre`` entity with ``language`` on Telegram."""
    languages = {
        (e["offset"], e["length"]): e.pop("_language", None)
        for e in entities
        if e["type"] == "code"
    }
    pres = {(e["offset"], e["length"]) for e in entities if e["type"] == "pre"}
    merged = []
    for entity in entities:
        span = (entity["offset"], entity["length"])
        if entity["type"] == "code" and span in pres:
            continue
        if entity["type"] == "pre" and languages.get(span):
            entity["language"] = languages[span]
        merged.append(entity)
    merged.sort(key=lambda e: (e["offset"], -e["length"]))
    return merged


def _html_entity(name: str, attrs: Json, offset: int, length: int) -> Json | None:
    if length <= 0:
        return None
    kind = _HTML_TAGS[name]
    entity: Json = {"type": kind, "offset": offset, "length": length}
    if kind == "text_link":
        href = attrs.get("href")
        if not href:
            return None
        entity["url"] = href
    elif kind == "custom_emoji":
        entity["custom_emoji_id"] = attrs.get("emoji-id", "")
    elif kind == "code" and str(attrs.get("class", "")).startswith("language-"):
        entity["_language"] = attrs["class"][len("language-") :]
    elif kind == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    return entity


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_KINDS = {
    "*": "bold",
    "_": "italic",
    "__": "underline",
    "~": "strikethrough",
    "||": "spoiler",
}
_MD_ENTITY_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "text_link": "TextUrl",
}


def _parse_markdown_v2(source: str) -> tuple[str, list[Json]]:
    out: list[str] = []
    pos16 = 0
    stack: list[tuple[str, int, int]] = []  # marker, start16, source index
    entities: list[Json] = []
    i = 0
    n = len(source)

    def emit(text: str) -> None:
        nonlocal pos16
        out.append(text)
        pos16 += _u16len(text)

    while i < n:
        ch = source[i]
        if ch == "\\" and i + 1 < n and ord(source[i + 1]) <= 126:
            emit(source[i + 1])
            i += 2
            continue
        if ch == "`":
            fence = source.startswith("```", i)
            start = i + (3 if fence else 1)
            j = start
            buf: list[str] = []
            while j < n and not (source.startswith("```", j) if fence else source[j] == "`"):
                if source[j] == "\\" and j + 1 < n:
                    buf.append(source[j + 1])
                    j += 2
                else:
                    buf.append(source[j])
                    j += 1
            if j >= n:
                kind = "Pre" if fence else "Code"
                raise _EntityParseError(
                    f"Can't find end of {kind} entity at byte offset {_byte_offset(source, i)}"
                )
            body = "".join(buf)
            entity: Json = {"type": "pre" if fence else "code"}
            if fence and "\n" in body:
                first, rest = body.split("\n", 1)
                if first and re.fullmatch(r"[\w+#.-]+", first):
                    entity["language"] = first
                    body = rest
            entity.update(offset=pos16, length=_u16len(body))
            emit(body)
            if entity["length"]:
                entities.append(entity)
            i = j + (3 if fence else 1)
            continue
        marker = None
        if ch == "_" and source.startswith("__", i):
            marker = "__"
        elif ch == "|" and source.startswith("||", i):
            marker = "||"
        elif ch in "*_~":
            marker = ch
        if marker is not None:
            if stack and stack[-1][0] == marker:
                _, start16, _src = stack.pop()
                if pos16 > start16:
                    entities.append(
                        {"type": _MDV2_KINDS[marker], "offset": start16, "length": pos16 - start16}
                    )
            else:
                stack.append((marker, pos16, i))
            i += len(marker)
            continue
        if ch == "[":
            stack.append(("[", pos16, i))
            i += 1
            continue
        if ch == "]" and stack and stack[-1][0] == "[":
            _, start16, src = stack.pop()
            if source.startswith("(", i + 1):
                j = i + 2
                url: list[str] = []
                while j < n and source[j] != ")":
                    if source[j] == "\\" and j + 1 < n:
                        url.append(source[j + 1])
                        j += 2
                    else:
                        url.append(source[j])
                        j += 1
                if j >= n:
                    raise _EntityParseError(
                        f"Can't find end of a URL at byte offset {_byte_offset(source, i + 1)}"
                    )
                if pos16 > start16:
                    entities.append(
                        {
                            "type": "text_link",
                            "offset": start16,
                            "length": pos16 - start16,
                            "url": "".join(url),
                        }
                    )
                i = j + 1
                continue
            i += 1
            continue
        if ch == ">" and (i == 0 or source[i - 1] == "\n"):
            i += 1  # block quotation marker: kept out of the text (no entity in this fake)
            continue
        if ch in _MDV2_RESERVED:
            raise _EntityParseError(
                f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
            )
        emit(ch)
        i += 1
    if stack:
        marker, _, src = stack[-1]
        kind = _MD_ENTITY_NAMES.get(_MDV2_KINDS.get(marker, "text_link"), "TextUrl")
        raise _EntityParseError(
            f"Can't find end of {kind} entity at byte offset {_byte_offset(source, src)}"
        )
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _parse_markdown_legacy(source: str) -> tuple[str, list[Json]]:
    out: list[str] = []
    pos16 = 0
    entities: list[Json] = []
    i = 0
    n = len(source)
    pairs = {"*": "bold", "_": "italic", "`": "code"}
    while i < n:
        ch = source[i]
        if ch == "\\" and i + 1 < n and source[i + 1] in "*_`[":
            out.append(source[i + 1])
            pos16 += 1
            i += 2
            continue
        if ch in pairs or (ch == "`" and source.startswith("```", i)):
            fence = "```" if source.startswith("```", i) else ch
            end = source.find(fence, i + len(fence))
            if end == -1:
                raise _EntityParseError(
                    "Can't find end of the entity starting at byte offset "
                    f"{_byte_offset(source, i)}"
                )
            body = source[i + len(fence) : end]
            kind = "pre" if fence == "```" else pairs[ch]
            if body:
                entities.append({"type": kind, "offset": pos16, "length": _u16len(body)})
            out.append(body)
            pos16 += _u16len(body)
            i = end + len(fence)
            continue
        if ch == "[":
            match = re.match(r"\[([^\]]*)\]\(([^)]*)\)", source[i:])
            if match:
                label = match.group(1)
                if label:
                    entities.append(
                        {
                            "type": "text_link",
                            "offset": pos16,
                            "length": _u16len(label),
                            "url": match.group(2),
                        }
                    )
                out.append(label)
                pos16 += _u16len(label)
                i += len(match.group(0))
                continue
        out.append(ch)
        pos16 += _u16len(ch)
        i += 1
    return "".join(out), entities


def _strip_text(text: str, entities: list[Json]) -> tuple[str, list[Json]]:
    """Telegram trims leading/trailing whitespace; shift and clip entities to match."""
    stripped_left = text.lstrip()
    shift = _u16len(text) - _u16len(stripped_left)
    result = stripped_left.rstrip()
    total = _u16len(result)
    kept = []
    for entity in entities:
        start = max(0, entity["offset"] - shift)
        end = min(total, entity["offset"] + entity["length"] - shift)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return result, kept


_COMMAND_RE = re.compile(r"(?<!\S)/[a-zA-Z0-9_]{1,32}(?:@[a-zA-Z0-9_]{3,32})?(?![a-zA-Z0-9_@/])")
_MENTION_RE = re.compile(r"(?<![\w@])@[a-zA-Z0-9_]{5,32}\b")


def _detect_entities(text: str) -> list[Json]:
    """Entities the server detects in users' text: bot commands and @mentions."""
    entities = []
    for regex, kind in ((_COMMAND_RE, "bot_command"), (_MENTION_RE, "mention")):
        for match in regex.finditer(text):
            entities.append(
                {
                    "type": kind,
                    "offset": _u16len(text[: match.start()]),
                    "length": _u16len(match.group(0)),
                }
            )
    entities.sort(key=lambda e: e["offset"])
    return entities


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _image_header(data: bytes) -> tuple[int, int, str]:
    """Width, height and format from the header only (no decode: cheap and bomb-safe)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.width, image.height, (image.format or "JPEG").upper()


def _photo_variants(data: bytes) -> list[tuple[bytes, int, int, str]]:
    """The sizes Telegram would offer: JPEG thumbnails for each box smaller than the image,
    then the original bytes at their real size (see the module docstring)."""
    width, height, fmt = _image_header(data)
    variants: list[tuple[bytes, int, int, str]] = []
    longest = max(width, height)
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (PHOTO_BOXES[-1], PHOTO_BOXES[-1]))
        base = image.convert("RGB")
    for box in PHOTO_BOXES:
        if longest <= box:
            break
        thumb = base.copy()
        thumb.thumbnail((box, box))
        buffer = io.BytesIO()
        thumb.save(buffer, "JPEG", quality=80)
        variants.append((buffer.getvalue(), thumb.width, thumb.height, "jpg"))
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}.get(fmt, fmt.lower())
    variants.append((data, width, height, ext))
    return variants


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------

_Handler = Callable[[_BotState, Json, dict[str, UploadedFile]], Awaitable[Any]]

# Control methods reachable over HTTP as /_control/<name>. Each maps to the Python method of the
# same name, so the in-process and HTTP control APIs cannot drift apart.
_CONTROL_METHODS = frozenset(
    {
        "add_bot",
        "inject_message",
        "inject_callback_query",
        "inject_update",
        "pending_updates",
        "calls_of",
        "get_calls",
        "sent_messages",
        "get_message",
        "file_bytes",
        "wait_for",
        "fail_next",
        "flood",
        "server_error",
        "block_user",
        "unblock_user",
        "vanish_chat",
        "restore_chat",
        "migrate_chat",
        "clear_failures",
        "clear_calls",
    }
)


class FakeTelegram(LoopbackServer):
    """In-process fake Telegram Bot API server (see the module docstring).

    A :class:`~tests.fakes.scaffold.LoopbackServer` with one origin, ``"api"``: the scaffold
    records every request (``log``; :attr:`calls` are the Bot API ones, as :class:`Call`),
    serves the injected failures (``faults``) and keeps the files (``files``, by file_id).
    All state lives on the event loop that runs the server; call the control methods from that
    loop (or over HTTP from anywhere).
    """

    record_type = Call

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        username: str = DEFAULT_USERNAME,
        first_name: str = "sdhost test bot",
        privacy_mode: bool = True,
        webhook_retry_delay: float = 0.2,
        webhook_timeout: float = 10.0,
    ) -> None:
        """Create a fake with one bot.

        ``privacy_mode`` mirrors the BotFather default: in groups the bot only receives
        commands, replies to its own messages and mentions of it; other injected group messages
        are recorded but not delivered (as on Telegram, where they never reach the bot).
        """
        super().__init__(shutdown_timeout=2.0)
        self.privacy_mode = privacy_mode
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_timeout = webhook_timeout
        self.undelivered: list[Json] = []
        self._bots: dict[str, _BotState] = {}
        self._default_token = token
        self.add_bot(token, username, first_name)
        self._chats: dict[int, Json] = {}
        self._users: dict[int, Json] = {}
        self._messages: dict[int, dict[int, _StoredMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._file_paths: dict[str, str] = {}  # file_path -> file_id (the key in ``files``)
        self._photo_sets: dict[str, list[Json]] = {}
        self._documents: dict[str, Json] = {}
        self._file_counter = itertools.count(1)
        self._media_group_counter = itertools.count(13000000000000001)
        self._callback_counter = itertools.count(1)
        self._blocked: set[int | str] = set()
        self._vanished: set[int | str] = set()
        self._migrated: dict[int, int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._methods: dict[str, _Handler] = {
            "getMe": self._m_get_me,
            "getUpdates": self._m_get_updates,
            "setWebhook": self._m_set_webhook,
            "deleteWebhook": self._m_delete_webhook,
            "getWebhookInfo": self._m_get_webhook_info,
            "setMyCommands": self._m_set_my_commands,
            "getMyCommands": self._m_get_my_commands,
            "deleteMyCommands": self._m_delete_my_commands,
            "setMyDescription": self._m_set_my_text("description"),
            "getMyDescription": self._m_get_my_text("description"),
            "setMyShortDescription": self._m_set_my_text("short_description"),
            "getMyShortDescription": self._m_get_my_text("short_description"),
            "setMyName": self._m_set_my_text("name"),
            "getMyName": self._m_get_my_text("name"),
            "sendMessage": self._m_send_message,
            "editMessageText": self._m_edit_message_text,
            "editMessageCaption": self._m_edit_message_caption,
            "editMessageReplyMarkup": self._m_edit_message_reply_markup,
            "editMessageMedia": self._m_edit_message_media,
            "deleteMessage": self._m_delete_message,
            "sendPhoto": self._m_send_photo,
            "sendDocument": self._m_send_document,
            "sendMediaGroup": self._m_send_media_group,
            "sendChatAction": self._m_send_chat_action,
            "getFile": self._m_get_file,
            "answerCallbackQuery": self._m_answer_callback_query,
            "getChat": self._m_get_chat,
            "close": self._m_true,
            "logOut": self._m_true,
        }
        self._method_names = {name.lower(): name for name in self._methods}

    # ---------------------------------------------------------------- lifecycle

    def origins(self) -> dict[str, web.Application]:
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 16 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api, name="api")
        app.router.add_route("GET", "/file/bot{token}/{path:.+}", self._handle_file, name="file")
        app.router.add_route("*", "/_control/{name}", self._handle_control, name="control")
        return {"api": app}

    def key_of(self, request: web.Request) -> str | None:
        """The bot token of ``/bot<token>/<method>`` and ``/file/bot<token>/<path>``."""
        return request.match_info.get("token")

    def describe(self, call: Call, request: web.Request) -> None:
        method = request.match_info.get("method")
        call.api_method = self._canonical(method) if method else ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeTelegram:
        """Listen on ``host:port`` (0 picks a free port; read it from :attr:`port`)."""
        await super().start(host, port)
        self._session = aiohttp.ClientSession(trust_env=False)
        return self

    async def stop(self) -> None:
        """Answer pending long polls with ``[]``, stop webhook delivery, close the server."""
        self._closing.set()
        tasks = []
        for bot in self._bots.values():
            bot.notify()
            if bot.webhook and bot.webhook.task:
                bot.webhook.task.cancel()
                tasks.append(bot.webhook.task)
        self.log.notify()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    @property
    def port(self) -> int:
        return int(self.urls["api"].rsplit(":", 1)[1])

    @property
    def root_url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        return self.urls["api"]

    @property
    def base_url(self) -> str:
        """For PTB's ``base_url`` (PTB appends the token)."""
        return f"{self.root_url}/bot"

    @property
    def base_file_url(self) -> str:
        """For PTB's ``base_file_url``."""
        return f"{self.root_url}/file/bot"

    @property
    def token(self) -> str:
        """The default bot's token."""
        return self._default_token

    # ---------------------------------------------------------------- control API: bots & updates

    def add_bot(self, token: str, username: str, first_name: str = "sdhost test bot") -> Json:
        """Register another bot token (each bot has its own updates, webhook and commands)."""
        bot = _BotState(token, username, first_name)
        self._bots[token] = bot
        return bot.user(self.privacy_mode)

    def _bot(self, token: str | None) -> _BotState:
        try:
            return self._bots[token or self._default_token]
        except KeyError:
            raise ValueError(f"unknown bot token {token!r}") from None

    def inject_update(self, update: Json, *, token: str | None = None) -> Json:
        """Queue a raw update (``update_id`` is assigned) for the bot; returns it."""
        bot = self._bot(token)
        update = copy.deepcopy(update)
        update["update_id"] = bot.next_update_id
        bot.next_update_id += 1
        bot.updates.append(update)
        bot.notify()
        return copy.deepcopy(update)

    def pending_updates(self, *, token: str | None = None) -> list[Json]:
        """Updates the bot has not confirmed yet (to assert everything was consumed)."""
        return copy.deepcopy(self._bot(token).updates)

    def inject_message(
        self,
        chat_id: int,
        user_id: int,
        text: str | None = None,
        *,
        chat_type: str = "private",
        photo_bytes: bytes | None = None,
        document_bytes: bytes | None = None,
        document_name: str | None = None,
        caption: str | None = None,
        reply_to_message_id: int | None = None,
        media_group_id: str | None = None,
        language_code: str | None = "en",
        username: str | None = None,
        first_name: str = "Ann",
        chat_title: str | None = None,
        token: str | None = None,
    ) -> Json:
        """A user sends a message; returns the Update.

        In a group with privacy mode on, a message Telegram would not show the bot (no command,
        no reply to the bot, no mention) is not queued: it comes back with ``update_id`` 0 and
        is appended to :attr:`undelivered`.

        Photos are stored with thumbnails plus the original as the largest size, so that
        ``getFile`` + download of the largest ``PhotoSize`` returns ``photo_bytes`` exactly.
        Commands get ``bot_command`` entities; replies carry the full replied-to message.
        An album is several messages with the same ``media_group_id`` (Bot API, Message:
        "media_group_id: Optional. The unique identifier of a media message group this
        message belongs to"), each its own update; clients put the caption on one item.
        """
        bot = self._bot(token)
        user: Json = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        self._users[user_id] = user
        chat = self._chats.get(chat_id)
        if chat is None or chat.get("type") != chat_type:
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat["first_name"] = first_name
                if username:
                    chat["username"] = username
            else:
                chat["title"] = chat_title or f"Test group {chat_id}"
            self._chats[chat_id] = chat
        message: Json = {
            "message_id": self._allocate_message_id(chat_id),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
        }
        if text is not None:
            message["text"] = text
            entities = _detect_entities(text)
            if entities:
                message["entities"] = entities
        if photo_bytes is not None:
            message["photo"] = self._store_photo(photo_bytes)
        if document_bytes is not None:
            message["document"] = self._store_document(
                document_bytes, document_name or "file", None
            )
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if caption is not None:
            message["caption"] = caption
            entities = _detect_entities(caption)
            if entities:
                message["caption_entities"] = entities
        if reply_to_message_id is not None:
            replied = self._stored(chat_id, reply_to_message_id)
            if replied is None:
                raise ValueError(f"no message {reply_to_message_id} in chat {chat_id}")
            message["reply_to_message"] = self._as_reply(replied.message)
        self._store_message(chat_id, message, token=None, method="inject_message")
        update: Json = {"message": copy.deepcopy(message)}
        if not self._visible_to_bot(bot, message):
            update["update_id"] = 0
            self.undelivered.append(update)
            return update
        return self.inject_update(update, token=bot.token)

    def inject_callback_query(
        self,
        chat_id: int,
        user_id: int,
        message_id: int,
        data: str,
        *,
        first_name: str = "Ann",
        username: str | None = None,
        language_code: str | None = "en",
        token: str | None = None,
    ) -> Json:
        """A user presses an inline button with ``data`` on the bot's message; returns the Update.

        Refuses (ValueError) a press that cannot happen on Telegram: unknown or deleted message,
        or no button carrying that callback_data (e.g. the keyboard was edited away).
        """
        bot = self._bot(token)
        stored = self._stored(chat_id, message_id)
        if stored is None or stored.deleted:
            raise ValueError(f"no message {message_id} in chat {chat_id}")
        markup = stored.message.get("reply_markup") or {}
        buttons = [b for row in markup.get("inline_keyboard", []) for b in row]
        if not any(b.get("callback_data") == data for b in buttons):
            raise ValueError(
                f"message {message_id} has no inline button with callback_data {data!r}"
            )
        user = self._users.get(user_id) or {"id": user_id, "is_bot": False}
        user = {**user, "first_name": user.get("first_name", first_name)}
        if username:
            user["username"] = username
        if language_code and "language_code" not in user:
            user["language_code"] = language_code
        query_id = f"{bot.id}{next(self._callback_counter):010d}"
        bot.callback_queries[query_id] = False
        query = {
            "id": query_id,
            "from": user,
            "message": copy.deepcopy(stored.message),
            "chat_instance": str(abs(bot.id * 1_000_003 + chat_id) % 10**18),
            "data": data,
        }
        return self.inject_update({"callback_query": query}, token=bot.token)

    # ---------------------------------------------------------------- control API: inspection

    @property
    def calls(self) -> list[Call]:
        """The Bot API calls, in arrival order (one still being answered has status 0)."""
        return self.log.calls_of("api")

    def get_calls(self, method: str | None = None, *, since: int = 0) -> list[Call]:
        """Recorded calls from index ``since`` on, optionally of one method."""
        wanted = self._canonical(method) if method else None
        return [c for c in self.calls[since:] if wanted is None or c.api_method == wanted]

    def calls_of(self, method: str) -> list[Call]:  # type: ignore[override]
        """All recorded calls of one Bot API method (case-insensitive, like the server)."""
        return self.get_calls(method)

    def clear_calls(self) -> None:
        self.log.clear()

    def sent_messages(self, chat_id: int) -> list[SentMessage]:
        """Every message any bot sent to the chat, in order, current state plus bytes."""
        result = []
        for message_id, stored in sorted(self._messages.get(chat_id, {}).items()):
            if stored.token is None:
                continue
            message = copy.deepcopy(stored.message)
            photo = document = None
            if message.get("photo"):
                photo = self.files.data(message["photo"][-1]["file_id"])
            if message.get("document"):
                document = self.files.data(message["document"]["file_id"])
            result.append(
                SentMessage(
                    chat_id=chat_id,
                    message_id=message_id,
                    method=stored.method,
                    message=message,
                    deleted=stored.deleted,
                    history=copy.deepcopy(stored.history),
                    photo_bytes=photo,
                    document_bytes=document,
                )
            )
        return result

    def get_message(self, chat_id: int, message_id: int) -> Json | None:
        """Current state of any message (user's or bot's), or None."""
        stored = self._stored(chat_id, message_id)
        return copy.deepcopy(stored.message) if stored else None

    def file_bytes(self, file_id: str) -> bytes:
        """The stored bytes behind a file_id (KeyError if unknown)."""
        return self.files.data(file_id)

    async def wait_for(
        self,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,
        *,
        method: str | None = None,
        chat_id: int | str | None = None,
        since: int = 0,
    ) -> Call:
        """Wait until a recorded call (index >= ``since``) matches; return the first match.

        ``method`` and ``chat_id`` are the filters the HTTP control API can express; the
        predicate adds anything else. Raises TimeoutError listing what was recorded.
        """
        wanted = self._canonical(method) if method else None

        def matches(call: Call) -> bool:
            if wanted is not None and call.api_method != wanted:
                return False
            if chat_id is not None and str(call.params.get("chat_id")) != str(chat_id):
                return False
            return predicate is None or predicate(call)

        calls = self.calls
        first = calls[since].index if since < len(calls) else len(self.log)
        try:
            return await self.log.wait_for_call("api", where=matches, since=first, timeout=timeout)
        except TimeoutError:
            seen = [c.api_method for c in self.calls[since:]][-20:]
            raise TimeoutError(
                f"no matching call within {timeout}s; recent calls: {seen}"
            ) from None

    # ---------------------------------------------------------------- control API: failures

    def fail_next(
        self,
        n: int = 1,
        *,
        error_code: int = 400,
        description: str | None = None,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        method: str | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Make the next ``n`` matching calls fail with the given error.

        A rule without ``method`` never hits ``getUpdates``: otherwise a polling loop would
        race the test for it.
        """
        parameters: Json = {}
        if retry_after is not None:
            parameters["retry_after"] = retry_after
        if migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = migrate_to_chat_id
        html = None
        if description is None:
            description = {
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden",
                404: "Not Found",
                409: "Conflict",
                429: f"Too Many Requests: retry after {retry_after or 1}",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(error_code, "Error")
        if error_code == 502:
            html = (
                "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>"
                "\r\n</body>\r\n</html>\r\n"
            )
        wanted = self._canonical(method) if method else None
        chat = self._norm_chat(chat_id)

        def on(call: Recorded) -> bool:
            if not isinstance(call, Call) or call.endpoint != "api":
                return False
            if wanted is None and call.api_method == "getUpdates":
                return False
            if wanted is not None and call.api_method != wanted:
                return False
            return chat is None or self._norm_chat(call.chat_id) == chat

        error = TelegramApiError(error_code, description, parameters or None)
        if html is not None:
            self.faults.fail(error_code, html, on=on, times=n, content_type="text/html")
        else:
            self.faults.fail(error_code, error.body(), on=on, times=n)

    def flood(
        self,
        n: int = 1,
        retry_after: int = 1,
        *,
        method: str | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Next ``n`` matching calls answer 429 "Too Many Requests: retry after S"."""
        self.fail_next(
            n,
            error_code=429,
            description=f"Too Many Requests: retry after {retry_after}",
            retry_after=retry_after,
            method=method,
            chat_id=chat_id,
        )

    def server_error(
        self,
        n: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Next ``n`` matching calls answer 500 (JSON) or 502 (nginx HTML page)."""
        self.fail_next(n, error_code=status, method=method, chat_id=chat_id)

    def block_user(self, chat_id: int | str) -> None:
        """Sends and edits to the chat answer 403 "Forbidden: bot was blocked by the user"."""
        self._blocked.add(self._norm_chat(chat_id))

    def unblock_user(self, chat_id: int | str) -> None:
        self._blocked.discard(self._norm_chat(chat_id))

    def vanish_chat(self, chat_id: int | str) -> None:
        """Every call naming the chat answers 400 "Bad Request: chat not found"."""
        self._vanished.add(self._norm_chat(chat_id))

    def restore_chat(self, chat_id: int | str) -> None:
        self._vanished.discard(self._norm_chat(chat_id))

    def migrate_chat(self, chat_id: int, new_chat_id: int | None = None) -> int:
        """The group became a supergroup: calls naming the old id answer 400 with
        ``parameters.migrate_to_chat_id`` (PTB raises ChatMigrated). Returns the new id."""
        if new_chat_id is None:
            new_chat_id = -1000000000000 - abs(chat_id)
        self._migrated[chat_id] = new_chat_id
        old = self._chats.get(chat_id, {})
        self._chats[new_chat_id] = {
            "id": new_chat_id,
            "type": "supergroup",
            "title": old.get("title", f"Test group {chat_id}"),
        }
        return new_chat_id

    def clear_failures(self) -> None:
        """Drop pending fail_next/flood/server_error rules and chat switches."""
        self.faults.clear()
        self._blocked.clear()
        self._vanished.clear()
        self._migrated.clear()

    # ---------------------------------------------------------------- helpers: state

    def _canonical(self, method: str) -> str:
        return self._method_names.get(method.lower(), method)

    @staticmethod
    def _norm_chat(chat_id: int | str | None) -> int | str | None:
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            return int(chat_id)
        return chat_id

    def _allocate_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _stored(self, chat_id: int, message_id: int) -> _StoredMessage | None:
        return self._messages.get(chat_id, {}).get(message_id)

    def _store_message(
        self, chat_id: int, message: Json, *, token: str | None, method: str
    ) -> None:
        self._messages.setdefault(chat_id, {})[message["message_id"]] = _StoredMessage(
            copy.deepcopy(message), token, method
        )

    @staticmethod
    def _as_reply(message: Json) -> Json:
        """Telegram never nests reply_to_message more than one level."""
        reply = copy.deepcopy(message)
        reply.pop("reply_to_message", None)
        return reply

    def _visible_to_bot(self, bot: _BotState, message: Json) -> bool:
        """Privacy mode: in groups only commands, replies to the bot and mentions arrive."""
        if not self.privacy_mode or message["chat"]["type"] not in ("group", "supergroup"):
            return True
        replied = message.get("reply_to_message")
        if replied and replied.get("from", {}).get("id") == bot.id:
            return True
        for text_key, ent_key in (("text", "entities"), ("caption", "caption_entities")):
            text = message.get(text_key) or ""
            for entity in message.get(ent_key, []):
                chunk = text[entity["offset"] : entity["offset"] + entity["length"]]
                if entity["type"] == "bot_command":
                    suffix = chunk.partition("@")[2]
                    if not suffix or suffix.lower() == bot.username.lower():
                        return True
                if entity["type"] == "mention" and chunk[1:].lower() == bot.username.lower():
                    return True
        return False

    def _new_file(self, data: bytes, kind: str, ext: str, mime_type: str) -> str:
        """Keep the bytes in :attr:`files` under a new file_id (returned); its ``filename`` is
        the ``file_path`` getFile answers."""
        number = next(self._file_counter)
        folder = "photos" if kind == "photo" else "documents"
        prefix = "AgAC" if kind == "photo" else "BQAC"  # the real prefixes of these kinds
        file_id = f"{prefix}fake{number:06d}{secrets.token_hex(6)}"
        file_path = f"{folder}/file_{number}.{ext}"
        self.files.put(data, key=file_id, content_type=mime_type, filename=file_path)
        self._file_paths[file_path] = file_id
        return file_id

    @staticmethod
    def _unique_id(data: bytes) -> str:
        return f"AQAD{hashlib.sha256(data).hexdigest()[:14]}"

    def _store_photo(self, data: bytes) -> list[Json]:
        """Store a user's photo (no Bot API limits apply to what users send)."""
        return self._register_photo(_photo_variants(data))

    def _register_photo(self, variants: list[tuple[bytes, int, int, str]]) -> list[Json]:
        """Store each size as a file and remember the set, so any size's file_id can be
        re-sent as the whole photo."""
        sizes = []
        for variant, width, height, ext in variants:
            mime = mimetypes.types_map.get(f".{ext}", "image/jpeg")
            file_id = self._new_file(variant, "photo", ext, mime)
            sizes.append(
                {
                    "file_id": file_id,
                    "file_unique_id": self._unique_id(variant),
                    "width": width,
                    "height": height,
                    "file_size": len(variant),
                }
            )
        for size in sizes:
            self._photo_sets[size["file_id"]] = sizes
        return copy.deepcopy(sizes)

    def _store_document(self, data: bytes, filename: str, content_type: str | None) -> Json:
        mime = mimetypes.guess_type(filename)[0] or content_type or "application/octet-stream"
        ext = filename.rsplit(".", 1)[1].lower() if "." in filename else "bin"
        file_id = self._new_file(data, "document", re.sub(r"[^a-z0-9]", "", ext) or "bin", mime)
        document = {
            "file_id": file_id,
            "file_unique_id": self._unique_id(data),
            "file_name": filename,
            "mime_type": mime,
            "file_size": len(data),
        }
        self._documents[file_id] = document
        return copy.deepcopy(document)

    def _ensure_chat(self, chat_id: int) -> Json:
        chat = self._chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
            elif chat_id <= -1000000000000:
                chat = {"id": chat_id, "type": "supergroup", "title": f"Test group {chat_id}"}
            else:
                chat = {"id": chat_id, "type": "group", "title": f"Test group {chat_id}"}
            self._chats[chat_id] = chat
        return chat

    def _resolve_chat_id(self, raw: Any) -> int:
        if isinstance(raw, bool) or raw in (None, ""):
            raise _bad("chat_id is empty")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and raw.startswith("@"):
            for chat in self._chats.values():
                if str(chat.get("username", "")).lower() == raw[1:].lower():
                    return int(chat["id"])
        raise TelegramApiError(400, ERR_CHAT_NOT_FOUND)

    def _target_chat(self, params: Json, method: str, *, create: bool = True) -> Json:
        """Resolve ``chat_id`` and apply the chat switches (vanished, migrated, blocked)."""
        raw = params.get("chat_id")
        chat_id = self._resolve_chat_id(raw)
        if chat_id in self._vanished:
            raise TelegramApiError(400, ERR_CHAT_NOT_FOUND)
        if chat_id in self._migrated:
            raise TelegramApiError(
                400, ERR_MIGRATED, {"migrate_to_chat_id": self._migrated[chat_id]}
            )
        if chat_id in self._blocked and method.startswith(_BLOCKABLE_PREFIXES):
            raise TelegramApiError(403, ERR_BLOCKED)
        if not create and chat_id not in self._chats:
            raise TelegramApiError(400, ERR_CHAT_NOT_FOUND)
        return self._ensure_chat(chat_id)

    def _format(
        self,
        text: Any,
        parse_mode: Any,
        entities: Any,
        *,
        limit: int,
        caption: bool,
    ) -> tuple[str, list[Json]]:
        """Apply parse_mode and Telegram's trimming and length rules to a text or caption."""
        if text is None:
            text = ""
        if not isinstance(text, str):
            text = json.dumps(text)
        mode = (parse_mode or "").lower() if isinstance(parse_mode, str) else ""
        try:
            if mode == "html":
                plain, ents = _parse_html(text)
            elif mode == "markdownv2":
                plain, ents = _parse_markdown_v2(text)
            elif mode == "markdown":
                plain, ents = _parse_markdown_legacy(text)
            elif mode:
                raise _bad(f"unsupported parse_mode {parse_mode!r}")
            else:
                plain, ents = text, list(entities) if isinstance(entities, list) else []
        except _EntityParseError as exc:
            raise _bad(f"can't parse entities: {exc}") from None
        plain, ents = _strip_text(plain, ents)
        if len(plain) > limit:
            raise _bad("message caption is too long" if caption else "message is too long")
        if not plain and not caption:
            raise _bad("message text is empty")
        return plain, ents

    @staticmethod
    def _check_markup(markup: Any) -> Json | None:
        """Validate reply_markup; return what a returned Message echoes (inline keyboards)."""
        if markup is None or markup == "":
            return None
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            return None  # reply keyboards / remove / force_reply are not echoed in Message
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise _bad("can't parse inline keyboard button: InlineKeyboardButton must be an Object")
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not button.get("text"):
                    raise _bad("can't parse inline keyboard button: Text must be non-empty")
                if "callback_data" in button:
                    data = button["callback_data"]
                    size = len(str(data).encode("utf-8"))
                    if not isinstance(data, str) or not 1 <= size <= MAX_CALLBACK_DATA:
                        raise _bad("BUTTON_DATA_INVALID")
                elif len(button) == 1:
                    raise _bad(
                        "can't parse inline keyboard button: Text buttons are unallowed in the "
                        "inline keyboard"
                    )
        return copy.deepcopy(markup)

    def _reply_target(self, chat: Json, params: Json) -> Json | None:
        reply_id = None
        allow_without = bool(params.get("allow_sending_without_reply"))
        reply_params = params.get("reply_parameters")
        if isinstance(reply_params, dict):
            reply_id = reply_params.get("message_id")
            allow_without = bool(reply_params.get("allow_sending_without_reply", allow_without))
        elif params.get("reply_to_message_id") is not None:
            reply_id = params.get("reply_to_message_id")
        if reply_id is None:
            return None
        stored = self._stored(chat["id"], int(reply_id))
        if stored is None or stored.deleted:
            if allow_without:
                return None
            raise _bad("message to be replied not found")
        return self._as_reply(stored.message)

    def _new_bot_message(
        self,
        bot: _BotState,
        chat: Json,
        content: Json,
        params: Json,
        method: str,
        *,
        reply_to: Json | None,
        markup: Json | None,
        message_id: int | None = None,
    ) -> Json:
        message: Json = {
            "message_id": message_id or self._allocate_message_id(chat["id"]),
            "from": bot.sender(),
            "chat": copy.deepcopy(chat),
            "date": int(time.time()),
        }
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        message.update(content)
        if markup is not None:
            message["reply_markup"] = markup
        if params.get("protect_content"):
            message["has_protected_content"] = True
        self._store_message(chat["id"], message, token=bot.token, method=method)
        return message

    def _set_text(
        self, content: Json, key: str, text: str, entities: list[Json], *, caption: bool
    ) -> None:
        if caption and not text:
            return
        content[key] = text
        if entities:
            content["caption_entities" if caption else "entities"] = entities

    # ---------------------------------------------------------------- helpers: media input

    async def _photo_input(
        self, value: Any, files: dict[str, UploadedFile], field: str
    ) -> list[Json]:
        """Resolve a photo given as upload, attach://name or file_id; enforce sendPhoto rules."""
        upload = self._upload(value, files, field)
        if upload is None:
            if isinstance(value, str) and value in self._photo_sets:
                return copy.deepcopy(self._photo_sets[value])
            if isinstance(value, str) and value in self._documents:
                raise _bad("can't use file of type Document as Photo")
            if value in (None, ""):
                raise _bad("there is no photo in the request")
            if isinstance(value, str) and "://" in value:
                raise _bad("failed to get HTTP URL content")  # the fake fetches no URLs
            raise _bad("wrong file identifier/HTTP URL specified")
        data = upload.data
        if len(data) > MAX_PHOTO_BYTES:
            # What Telegram answers for a photo over 10 MB (an MTProto error passed through).
            raise _bad("PHOTO_SAVE_FILE_INVALID")
        try:
            width, height, _fmt = _image_header(data)
        except Exception:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        ratio = max(width, height) / max(1, min(width, height))
        if width + height > MAX_PHOTO_DIM_SUM or ratio > MAX_PHOTO_RATIO:
            raise _bad("PHOTO_INVALID_DIMENSIONS")
        try:
            variants = await asyncio.to_thread(_photo_variants, data)
        except Exception:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        return self._register_photo(variants)

    def _document_input(self, value: Any, files: dict[str, UploadedFile], field: str) -> Json:
        upload = self._upload(value, files, field)
        if upload is None:
            if isinstance(value, str) and value in self._documents:
                return copy.deepcopy(self._documents[value])
            if isinstance(value, str) and value in self._photo_sets:
                raise _bad("can't use file of type Photo as Document")
            if value in (None, ""):
                raise _bad("there is no document in the request")
            if isinstance(value, str) and "://" in value:
                raise _bad("failed to get HTTP URL content")
            raise _bad("wrong file identifier/HTTP URL specified")
        if len(upload.data) > MAX_UPLOAD_BYTES:
            raise TelegramApiError(413, "Request Entity Too Large")
        if not upload.data:
            raise _bad("file must be non-empty")
        return self._store_document(upload.data, upload.filename or "file", upload.content_type)

    @staticmethod
    def _upload(value: Any, files: dict[str, UploadedFile], field: str) -> UploadedFile | None:
        if isinstance(value, str) and value.startswith("attach://"):
            name = value[len("attach://") :]
            if name not in files:
                raise _bad(f'can\'t parse InputMedia: media "{value}" not found')
            return files[name]
        if value in (None, "") and field in files:
            return files[field]
        return None

    # ---------------------------------------------------------------- Bot API methods

    async def _m_true(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
        return True

    async def _m_get_me(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        return bot.user(self.privacy_mode)

    async def _m_get_updates(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> list[Json]:
        if bot.webhook is not None:
            raise TelegramApiError(409, ERR_WEBHOOK_ACTIVE)
        offset = int(p.get("offset") or 0)
        limit = min(100, max(1, int(p.get("limit") or 100)))
        timeout = max(0.0, float(p.get("timeout") or 0))
        if "allowed_updates" in p:
            allowed = p["allowed_updates"]
            bot.allowed_updates = list(allowed) if isinstance(allowed, list) and allowed else None
        bot.poll_generation += 1
        generation = bot.poll_generation
        bot.notify()  # an older long poll of this bot is answered 409, as on Telegram
        bot.confirm(offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = bot.changed
            if self._closing.is_set():
                return []
            if bot.poll_generation != generation:
                raise TelegramApiError(409, ERR_OTHER_POLL)
            if bot.webhook is not None:
                raise TelegramApiError(409, ERR_WEBHOOK_ACTIVE)
            updates = bot.take(limit)
            if updates:
                return updates
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await wait_for_event(changed, remaining)

    async def _m_set_webhook(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
        url = p.get("url") or ""
        if not url:
            return await self._m_delete_webhook(bot, p, f)
        if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = p.get("secret_token") or None
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _bad("secret token contains unallowed characters")
        max_connections = int(p.get("max_connections") or 40)
        if not 1 <= max_connections <= 100:
            raise _bad("bad webhook: max_connections must be between 1 and 100")
        allowed = p.get("allowed_updates")
        if p.get("drop_pending_updates"):
            bot.updates.clear()
        if isinstance(allowed, list):
            bot.allowed_updates = list(allowed) or None
        self._stop_webhook(bot)
        webhook = _Webhook(url, secret, max_connections, bot.allowed_updates)
        bot.webhook = webhook
        webhook.task = asyncio.create_task(self._webhook_worker(bot, webhook))
        bot.notify()
        return True

    async def _m_delete_webhook(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
        if p.get("drop_pending_updates"):
            bot.updates.clear()
        self._stop_webhook(bot)
        return True

    def _stop_webhook(self, bot: _BotState) -> None:
        if bot.webhook is not None:
            if bot.webhook.task is not None:
                bot.webhook.task.cancel()
            bot.webhook = None
            bot.notify()

    async def _m_get_webhook_info(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> Json:
        info: Json = {
            "url": bot.webhook.url if bot.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(bot.updates),
        }
        if bot.webhook:
            info["max_connections"] = bot.webhook.max_connections
            if bot.allowed_updates:
                info["allowed_updates"] = bot.allowed_updates
            if bot.webhook.last_error_date:
                info["last_error_date"] = bot.webhook.last_error_date
                info["last_error_message"] = bot.webhook.last_error_message
        return info

    async def _webhook_worker(self, bot: _BotState, webhook: _Webhook) -> None:
        """Deliver pending updates one at a time, in order, retrying until the bot says 2xx."""
        while not self._closing.is_set() and bot.webhook is webhook:
            changed = bot.changed
            pending = bot.take(1)
            if not pending:
                await changed.wait()
                continue
            update = pending[0]
            headers = {"Content-Type": "application/json"}
            if webhook.secret_token:
                headers["X-Telegram-Bot-Api-Secret-Token"] = webhook.secret_token
            error: str | None = None
            try:
                assert self._session is not None
                async with self._session.post(
                    webhook.url,
                    data=json.dumps(update),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                ) as response:
                    if not 200 <= response.status < 300:
                        error = (
                            f"Wrong response from the webhook: {response.status} {response.reason}"
                        )
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientConnectionError, OSError):
                error = "Connection refused"
            except TimeoutError:
                error = "Read timeout expired"
            if error is None:
                bot.confirm(update["update_id"] + 1)
            else:
                webhook.last_error_date = int(time.time())
                webhook.last_error_message = error
                await asyncio.sleep(self.webhook_retry_delay)

    @staticmethod
    def _commands_key(p: Json) -> tuple[str, str]:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(p.get("language_code") or "")

    async def _m_set_my_commands(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad("too many commands")
        for command in commands:
            if not isinstance(command, dict):
                raise _bad("can't parse BotCommand")
            name = command.get("command")
            desc = command.get("description")
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(desc, str) or not 1 <= len(desc.strip()) <= 256:
                raise _bad("BOT_COMMAND_INVALID")  # fake wording for a bad description
        bot.commands[self._commands_key(p)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _m_get_my_commands(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> list[Json]:
        return copy.deepcopy(bot.commands.get(self._commands_key(p), []))

    async def _m_delete_my_commands(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> bool:
        bot.commands.pop(self._commands_key(p), None)
        return True

    def _m_set_my_text(self, field: str) -> _Handler:
        async def handler(bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
            bot.texts[(field, str(p.get("language_code") or ""))] = str(p.get(field) or "")
            return True

        return handler

    def _m_get_my_text(self, field: str) -> _Handler:
        async def handler(bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
            key = (field, str(p.get("language_code") or ""))
            default = bot.first_name if field == "name" else ""
            return {field: bot.texts.get(key, default)}

        return handler

    async def _m_send_message(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        chat = self._target_chat(p, "sendMessage")
        text, entities = self._format(
            p.get("text"), p.get("parse_mode"), p.get("entities"), limit=MAX_TEXT, caption=False
        )
        markup = self._check_markup(p.get("reply_markup"))
        reply_to = self._reply_target(chat, p)
        content: Json = {}
        self._set_text(content, "text", text, entities, caption=False)
        return self._new_bot_message(
            bot, chat, content, p, "sendMessage", reply_to=reply_to, markup=markup
        )

    async def _m_send_photo(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        chat = self._target_chat(p, "sendPhoto")
        caption, entities = self._format(
            p.get("caption"),
            p.get("parse_mode"),
            p.get("caption_entities"),
            limit=MAX_CAPTION,
            caption=True,
        )
        markup = self._check_markup(p.get("reply_markup"))
        reply_to = self._reply_target(chat, p)
        sizes = await self._photo_input(p.get("photo"), f, "photo")
        content: Json = {"photo": sizes}
        self._set_text(content, "caption", caption, entities, caption=True)
        if p.get("has_spoiler"):
            content["has_media_spoiler"] = True
        if p.get("show_caption_above_media"):
            content["show_caption_above_media"] = True
        return self._new_bot_message(
            bot, chat, content, p, "sendPhoto", reply_to=reply_to, markup=markup
        )

    async def _m_send_document(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        chat = self._target_chat(p, "sendDocument")
        caption, entities = self._format(
            p.get("caption"),
            p.get("parse_mode"),
            p.get("caption_entities"),
            limit=MAX_CAPTION,
            caption=True,
        )
        markup = self._check_markup(p.get("reply_markup"))
        reply_to = self._reply_target(chat, p)
        document = self._document_input(p.get("document"), f, "document")
        content: Json = {"document": document}
        self._set_text(content, "caption", caption, entities, caption=True)
        return self._new_bot_message(
            bot, chat, content, p, "sendDocument", reply_to=reply_to, markup=markup
        )

    async def _media_content(
        self, item: Any, files: dict[str, UploadedFile], index: int | None
    ) -> Json:
        """Build message content for one InputMedia (photo or document)."""
        if not isinstance(item, dict):
            raise _bad("can't parse InputMedia: media must be an Object")
        kind = item.get("type")
        caption, entities = self._format(
            item.get("caption"),
            item.get("parse_mode"),
            item.get("caption_entities"),
            limit=MAX_CAPTION,
            caption=True,
        )
        content: Json = {}
        try:
            if kind == "photo":
                content["photo"] = await self._photo_input(item.get("media"), files, "")
                if item.get("has_spoiler"):
                    content["has_media_spoiler"] = True
            elif kind == "document":
                content["document"] = self._document_input(item.get("media"), files, "")
            else:
                # fake wording: videos, audio and animations are not modelled
                raise _bad(f"the fake supports photo and document media only, not {kind!r}")
        except TelegramApiError as exc:
            if index is None or exc.status != 400:
                raise
            reason = exc.description.removeprefix("Bad Request: ")
            raise _bad(
                f'failed to send message #{index} with the error message "{reason}"'
            ) from None
        self._set_text(content, "caption", caption, entities, caption=True)
        return content

    async def _m_send_media_group(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> list[Json]:
        chat = self._target_chat(p, "sendMediaGroup")
        media = p.get("media")
        if not isinstance(media, list):
            raise _bad("can't parse media JSON object")
        if len(media) > MAX_ALBUM:
            raise _bad("too many messages to send as an album")
        if len(media) < MIN_ALBUM:
            raise _bad("media group must include 2-10 items")  # fake wording (Bot API docs)
        reply_to = self._reply_target(chat, p)
        contents = [await self._media_content(item, f, i + 1) for i, item in enumerate(media)]
        group_id = str(next(self._media_group_counter))
        messages = []
        for content in contents:
            content["media_group_id"] = group_id
            messages.append(
                self._new_bot_message(
                    bot, chat, content, p, "sendMediaGroup", reply_to=reply_to, markup=None
                )
            )
        return messages

    async def _m_send_chat_action(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> bool:
        self._target_chat(p, "sendChatAction")
        if p.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    def _editable(self, bot: _BotState, p: Json, method: str) -> _StoredMessage:
        if p.get("inline_message_id"):
            raise _bad("MESSAGE_ID_INVALID")  # inline mode is not modelled
        chat = self._target_chat(p, method)
        if p.get("message_id") in (None, ""):
            raise _bad("message identifier is not specified")
        stored = self._stored(chat["id"], int(p["message_id"]))
        if stored is None or stored.deleted:
            raise _bad("message to edit not found")
        if stored.token != bot.token:
            raise _bad("message can't be edited")
        return stored

    @staticmethod
    def _without_edit_date(message: Json) -> Json:
        new = copy.deepcopy(message)
        new.pop("edit_date", None)
        return new

    def _commit_edit(self, stored: _StoredMessage, new: Json) -> Json:
        if new == self._without_edit_date(stored.message):
            raise TelegramApiError(400, ERR_NOT_MODIFIED)
        stored.history.append(copy.deepcopy(stored.message))
        new["edit_date"] = int(time.time())
        stored.message = new
        return copy.deepcopy(new)

    async def _m_edit_message_text(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> Json:
        stored = self._editable(bot, p, "editMessageText")
        if "text" not in stored.message:
            raise _bad("there is no text in the message to edit")
        text, entities = self._format(
            p.get("text"), p.get("parse_mode"), p.get("entities"), limit=MAX_TEXT, caption=False
        )
        markup = self._check_markup(p.get("reply_markup"))
        new = self._without_edit_date(stored.message)
        new.pop("entities", None)
        new.pop("reply_markup", None)  # an edit without reply_markup removes the keyboard
        self._set_text(new, "text", text, entities, caption=False)
        if markup is not None:
            new["reply_markup"] = markup
        return self._commit_edit(stored, new)

    async def _m_edit_message_caption(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> Json:
        stored = self._editable(bot, p, "editMessageCaption")
        if "photo" not in stored.message and "document" not in stored.message:
            raise _bad("there is no caption in the message to edit")
        caption, entities = self._format(
            p.get("caption"),
            p.get("parse_mode"),
            p.get("caption_entities"),
            limit=MAX_CAPTION,
            caption=True,
        )
        markup = self._check_markup(p.get("reply_markup"))
        new = self._without_edit_date(stored.message)
        for key in ("caption", "caption_entities", "reply_markup"):
            new.pop(key, None)
        self._set_text(new, "caption", caption, entities, caption=True)
        if markup is not None:
            new["reply_markup"] = markup
        return self._commit_edit(stored, new)

    async def _m_edit_message_reply_markup(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> Json:
        stored = self._editable(bot, p, "editMessageReplyMarkup")
        markup = self._check_markup(p.get("reply_markup"))
        new = self._without_edit_date(stored.message)
        new.pop("reply_markup", None)
        if markup is not None:
            new["reply_markup"] = markup
        return self._commit_edit(stored, new)

    async def _m_edit_message_media(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> Json:
        stored = self._editable(bot, p, "editMessageMedia")
        if "photo" not in stored.message and "document" not in stored.message:
            raise _bad("there is no media in the message to edit")
        markup = self._check_markup(p.get("reply_markup"))
        content = await self._media_content(p.get("media"), f, None)
        new = self._without_edit_date(stored.message)
        for key in (
            "photo",
            "document",
            "caption",
            "caption_entities",
            "has_media_spoiler",
            "reply_markup",
        ):
            new.pop(key, None)
        new.update(content)
        if markup is not None:
            new["reply_markup"] = markup
        return self._commit_edit(stored, new)

    async def _m_delete_message(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> bool:
        chat = self._target_chat(p, "deleteMessage")
        if p.get("message_id") in (None, ""):
            raise _bad("message identifier is not specified")
        stored = self._stored(chat["id"], int(p["message_id"]))
        if stored is None or stored.deleted:
            raise _bad("message to delete not found")
        stored.deleted = True
        return True

    async def _m_get_file(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        file_id = p.get("file_id")
        stored = self.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise _bad("wrong file_id or the file is temporarily unavailable")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:
            raise _bad("file is too big")
        return {
            "file_id": stored.key,
            "file_unique_id": self._unique_id(stored.data),
            "file_size": len(stored.data),
            "file_path": stored.filename,
        }

    async def _m_answer_callback_query(
        self, bot: _BotState, p: Json, f: dict[str, UploadedFile]
    ) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        if bot.callback_queries.get(query_id) is not False:
            raise TelegramApiError(400, ERR_QUERY_TOO_OLD)
        if len(str(p.get("text") or "")) > MAX_CALLBACK_ANSWER:
            raise _bad("MESSAGE_TOO_LONG")
        bot.callback_queries[query_id] = True
        return True

    async def _m_get_chat(self, bot: _BotState, p: Json, f: dict[str, UploadedFile]) -> Json:
        chat = self._target_chat(p, "getChat", create=False)
        info = copy.deepcopy(chat)
        info.update(
            accent_color_id=0,
            max_reaction_count=11,
            accepted_gift_types={
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        )
        return info

    # ---------------------------------------------------------------- HTTP: Bot API

    @staticmethod
    def _check_body(call: Call, content_type: str) -> None:
        """Refuse what the real server refuses before any method runs: a JSON body that is not
        an object, an upload over 50 MB."""
        if content_type == "application/json" and call.raw and not isinstance(call.json, dict):
            raise _bad("can't parse JSON object")  # fake wording
        size = sum(len(f.data) for f in call.files) + sum(len(v) for v in call.form.values())
        if size > MAX_UPLOAD_BYTES:
            raise TelegramApiError(413, "Request Entity Too Large")

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        call: Call = self.record(request)
        try:
            self._check_body(call, request.content_type if request.method == "POST" else "")
            bot = self._bots.get(call.token)
            if bot is None:
                raise TelegramApiError(401, "Unauthorized")
            handler = self._methods.get(call.api_method)
            if handler is None:
                raise TelegramApiError(404, "Not Found")
            result = await handler(bot, call.params, call.uploads)
            status, body = 200, {"ok": True, "result": result}
        except TelegramApiError as exc:
            status, body = exc.status, exc.body()
        except (ValueError, TypeError) as exc:
            # Malformed parameters (e.g. a non-numeric message_id): Telegram answers 400.
            status, body = 400, _bad(f"invalid parameter: {exc}").body()
        return web.json_response(body, status=status)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] not in self._bots:
            return web.json_response(TelegramApiError(401, "Unauthorized").body(), status=401)
        file_id = self._file_paths.get(request.match_info["path"])
        if file_id is None:
            return web.json_response(TelegramApiError(404, "Not Found").body(), status=404)
        return self.files.response(file_id)

    # ---------------------------------------------------------------- HTTP: control API

    async def _handle_control(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _CONTROL_METHODS:
            return web.json_response({"error": f"unknown control method {name!r}"}, status=404)
        kwargs: Json = {k: _decode_value(k, v) for k, v in request.query.items()}
        call: Call = self.record(request)  # the scaffold has read the body already
        if call.raw:
            if not isinstance(call.json, dict):
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            kwargs.update(call.json)
        include_bytes = bool(kwargs.pop("include_bytes", False))
        for key in [k for k in kwargs if k.endswith("_b64")]:
            value = kwargs.pop(key)
            kwargs[key[: -len("_b64")]] = base64.b64decode(value) if value is not None else None
        try:
            result = getattr(self, name)(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
        except TimeoutError as exc:
            return web.json_response({"error": str(exc)}, status=408)
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=400)
        return web.json_response({"ok": True, "result": _to_json(result, include_bytes)})


def _to_json(value: Any, include_bytes: bool) -> Any:
    if isinstance(value, Call):
        return value.to_json(include_bytes)
    if isinstance(value, SentMessage):
        return value.to_json(include_bytes=True)
    if isinstance(value, bytes):
        return {"data_b64": _b64(value)}
    if isinstance(value, list):
        return [_to_json(v, include_bytes) for v in value]
    return value


class FakeTelegramRemote:
    """Client for the HTTP control API of a fake running in another process.

    Each method posts to ``/_control/<name>`` and mirrors the :class:`FakeTelegram` method of
    the same name, but returns JSON (calls and sent messages as dicts, bytes base64-encoded
    under ``*_b64`` keys) and is always async.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=30.0)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> FakeTelegramRemote:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, name: str, **kwargs: Any) -> Any:
        """Invoke any control method; ``bytes`` arguments are sent as ``<name>_b64``."""
        body = {}
        for key, value in kwargs.items():
            if isinstance(value, bytes):
                body[f"{key}_b64"] = _b64(value)
            else:
                body[key] = value
        response = await self._client.post(f"/_control/{name}", json=body)
        payload = response.json()
        if response.status_code == 408:
            raise TimeoutError(payload.get("error"))
        if response.status_code != 200:
            raise ValueError(payload.get("error", response.text))
        return payload["result"]

    async def inject_message(
        self, chat_id: int, user_id: int, text: str | None = None, **kw: Any
    ) -> Json:
        return await self.call("inject_message", chat_id=chat_id, user_id=user_id, text=text, **kw)

    async def inject_callback_query(
        self, chat_id: int, user_id: int, message_id: int, data: str, **kw: Any
    ) -> Json:
        return await self.call(
            "inject_callback_query",
            chat_id=chat_id,
            user_id=user_id,
            message_id=message_id,
            data=data,
            **kw,
        )

    async def calls_of(self, method: str) -> list[Json]:
        return await self.call("calls_of", method=method)

    async def sent_messages(self, chat_id: int) -> list[Json]:
        return await self.call("sent_messages", chat_id=chat_id)

    async def wait_for(
        self,
        *,
        method: str | None = None,
        chat_id: int | str | None = None,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Json:
        return await self.call(
            "wait_for", method=method, chat_id=chat_id, timeout=timeout, since=since
        )


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeTelegram(
        args.token[0], username=args.username, privacy_mode=not args.no_privacy_mode
    )
    for extra in args.token[1:]:
        fake.add_bot(extra, f"{args.username}_{extra.split(':', 1)[0]}")
    await fake.start(args.host, args.port)
    print(f"READY {fake.root_url}", flush=True)
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
    """Entry point of ``python -m tests.fakes.telegram``."""
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--token", action="append", help=f"bot token (repeatable; default {DEFAULT_TOKEN})"
    )
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--no-privacy-mode", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.token = args.token or [DEFAULT_TOKEN]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(args))


__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_USERNAME",
    "Call",
    "FakeTelegram",
    "FakeTelegramRemote",
    "SentMessage",
    "TelegramApiError",
    "UploadedFile",
]

if __name__ == "__main__":
    main()
