"""A loopback fake of Discord (REST API v10, the gateway websocket and the attachment CDN).

Why a fake server and not mocks: sdhost's Discord adapter is built on discord.py, and the bugs that
matter (an ack later than 3 s, a follow-up after the 15-minute token lifetime, 413/40005 for big
images, 429s with ``retry_after``, expired CDN links, buttons that must survive a restart, modals)
only show up when the real client talks HTTP and websocket to something that answers like
Discord. The fake speaks the wire format discord.py 2.7 expects, records every call, and exposes
a control API to inject interactions, user messages and failures. It stands on the loopback
scaffold (tests/fakes/scaffold.py): the scaffold records each request (:class:`Call` is its
record), serves injected faults and keeps attachment bytes in its FileStore; the gateway
websocket is the fake's own code, served on the REST origin.

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

from tests.fakes.discord.base import (
    ALL_PERMISSIONS,
    APP_FLAG_COMMAND_BADGE,
    APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED,
    APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED,
    APP_FLAG_GATEWAY_PRESENCE_LIMITED,
    APPLICATION_COMMAND,
    APPLICATION_ID,
    ATTACHMENT_FLAG_SPOILER,
    AUTOCOMPLETE,
    BOT_PERMISSIONS,
    BOT_USER_ID,
    C_ACTION_ROW,
    C_BUTTON,
    C_FILE_UPLOAD,
    C_LABEL,
    C_SELECTS,
    C_STRING_SELECT,
    C_TEXT_INPUT,
    CB_AUTOCOMPLETE,
    CB_DEFERRED_MESSAGE,
    CB_DEFERRED_UPDATE,
    CB_MESSAGE,
    CB_MODAL,
    CB_PONG,
    CB_UPDATE,
    CDN_GONE,
    CHANNEL_ID,
    DEFAULT_ATTACHMENT_LIMIT,
    DEFAULT_TOKEN,
    DISCORD_EPOCH_MS,
    EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    GUILD_ID,
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
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILD_PRESENCES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    MAX_CHOICES,
    MAX_CONTENT,
    MAX_CUSTOM_ID,
    MAX_EMBEDS,
    MAX_FILES,
    MAX_REQUEST_BYTES,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    MSG_CHAT_INPUT,
    MSG_CONTEXT_MENU,
    MSG_DEFAULT,
    MSG_REPLY,
    NSFW_CHANNEL_ID,
    OPT_ATTACHMENT,
    OPT_BOOLEAN,
    OPT_CHANNEL,
    OPT_INTEGER,
    OPT_MENTIONABLE,
    OPT_NUMBER,
    OPT_ROLE,
    OPT_STRING,
    OPT_SUB_COMMAND,
    OPT_SUB_GROUP,
    OPT_USER,
    OWNER_ID,
    P_ADD_REACTIONS,
    P_ADMINISTRATOR,
    P_ATTACH_FILES,
    P_EMBED_LINKS,
    P_MANAGE_MESSAGES,
    P_READ_HISTORY,
    P_SEND_MESSAGES,
    P_USE_APP_COMMANDS,
    P_USE_EXTERNAL_EMOJIS,
    P_VIEW_CHANNEL,
    PING,
    PRIVILEGED_INTENTS,
    ROLE_ARTIST_ID,
    ROLE_BOT_ID,
    USER_ID,
    Call,
    CdnFetch,
    DiscordApiError,
    GatewayFrame,
    Json,
    MiB,
    UploadedFile,
)
from tests.fakes.discord.remote import FakeDiscordRemote, point_discord_at
from tests.fakes.discord.server import FakeDiscord

__all__ = [
    "ALL_PERMISSIONS",
    "APPLICATION_COMMAND",
    "APPLICATION_ID",
    "APP_FLAG_COMMAND_BADGE",
    "APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED",
    "APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED",
    "APP_FLAG_GATEWAY_PRESENCE_LIMITED",
    "ATTACHMENT_FLAG_SPOILER",
    "AUTOCOMPLETE",
    "BOT_PERMISSIONS",
    "BOT_USER_ID",
    "CB_AUTOCOMPLETE",
    "CB_DEFERRED_MESSAGE",
    "CB_DEFERRED_UPDATE",
    "CB_MESSAGE",
    "CB_MODAL",
    "CB_PONG",
    "CB_UPDATE",
    "CDN_GONE",
    "CHANNEL_ID",
    "C_ACTION_ROW",
    "C_BUTTON",
    "C_FILE_UPLOAD",
    "C_LABEL",
    "C_SELECTS",
    "C_STRING_SELECT",
    "C_TEXT_INPUT",
    "DEFAULT_ATTACHMENT_LIMIT",
    "DEFAULT_TOKEN",
    "DISCORD_EPOCH_MS",
    "EVERYONE_PERMISSIONS",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "GUILD_ID",
    "GW_ALREADY_AUTHENTICATED",
    "GW_AUTH_FAILED",
    "GW_DECODE_ERROR",
    "GW_DISALLOWED_INTENTS",
    "GW_INVALID_INTENTS",
    "GW_INVALID_SHARD",
    "GW_INVALID_VERSION",
    "GW_NOT_AUTHENTICATED",
    "GW_RATE_LIMITED",
    "GW_SESSION_TIMED_OUT",
    "GW_UNKNOWN_OPCODE",
    "INTENT_DIRECT_MESSAGES",
    "INTENT_GUILDS",
    "INTENT_GUILD_MEMBERS",
    "INTENT_GUILD_MESSAGES",
    "INTENT_GUILD_PRESENCES",
    "INTENT_MESSAGE_CONTENT",
    "MAX_CHOICES",
    "MAX_CONTENT",
    "MAX_CUSTOM_ID",
    "MAX_EMBEDS",
    "MAX_FILES",
    "MAX_REQUEST_BYTES",
    "MESSAGE_COMPONENT",
    "MODAL_SUBMIT",
    "MSG_CHAT_INPUT",
    "MSG_CONTEXT_MENU",
    "MSG_DEFAULT",
    "MSG_REPLY",
    "NSFW_CHANNEL_ID",
    "OPT_ATTACHMENT",
    "OPT_BOOLEAN",
    "OPT_CHANNEL",
    "OPT_INTEGER",
    "OPT_MENTIONABLE",
    "OPT_NUMBER",
    "OPT_ROLE",
    "OPT_STRING",
    "OPT_SUB_COMMAND",
    "OPT_SUB_GROUP",
    "OPT_USER",
    "OWNER_ID",
    "PING",
    "PRIVILEGED_INTENTS",
    "P_ADD_REACTIONS",
    "P_ADMINISTRATOR",
    "P_ATTACH_FILES",
    "P_EMBED_LINKS",
    "P_MANAGE_MESSAGES",
    "P_READ_HISTORY",
    "P_SEND_MESSAGES",
    "P_USE_APP_COMMANDS",
    "P_USE_EXTERNAL_EMOJIS",
    "P_VIEW_CHANNEL",
    "ROLE_ARTIST_ID",
    "ROLE_BOT_ID",
    "USER_ID",
    "Call",
    "CdnFetch",
    "DiscordApiError",
    "FakeDiscord",
    "FakeDiscordRemote",
    "GatewayFrame",
    "Json",
    "MiB",
    "UploadedFile",
    "point_discord_at",
]
