"""FakeDiscord: the server itself, its world (guilds, channels, people) and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import secrets
from typing import Any

from aiohttp import web

from tests.fakes.discord.base import (
    ALL_PERMISSIONS,
    APPLICATION_ID,
    BOT_PERMISSIONS,
    DEFAULT_ATTACHMENT_LIMIT,
    DEFAULT_TOKEN,
    EVERYONE_PERMISSIONS,
    GUILD_ID,
    INTENT_GUILD_MEMBERS,
    MAX_REQUEST_BYTES,
    OWNER_ID,
    P_ADMINISTRATOR,
    PRIVILEGED_INTENTS,
    ROLE_BOT_ID,
    USER_ID,
    Call,
    DiscordApiError,
    GatewayFrame,
    Json,
    _Attachment,
    _channel_json,
    _Connection,
    _default_guild,
    _Interaction,
    _Message,
    _now_iso,
    _role_json,
    _Session,
    _snowflake_time,
    _Snowflakes,
    _unknown_channel,
)
from tests.fakes.discord.cdn import CdnMixin
from tests.fakes.discord.control import ControlMixin
from tests.fakes.discord.gateway import GatewayMixin
from tests.fakes.discord.interactions import InteractionsMixin
from tests.fakes.discord.messages import MessagesMixin
from tests.fakes.discord.rest import RestMixin
from tests.fakes.scaffold import LoopbackServer


class FakeDiscord(
    CdnMixin,
    MessagesMixin,
    InteractionsMixin,
    GatewayMixin,
    ControlMixin,
    RestMixin,
    LoopbackServer,
):
    """The fake Discord, on the loopback scaffold (tests/fakes/scaffold.py): the ``api``
    origin serves REST under ``/api/v10``, the gateway websocket at ``/`` and the control API;
    the ``cdn`` origin serves attachments under ``/cdn`` and ``/media`` (their bytes are in
    :attr:`files`, keyed by attachment id). Every request is in :attr:`log`; :meth:`calls`
    lists the answered REST ones.

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
        super().__init__()
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
        self.presence_updates: list[Json] = []
        self._frames: list[GatewayFrame] = []
        self._buckets: dict[str, tuple[float, int]] = {}
        self._cdn_key = secrets.token_bytes(16)
        self._sessions: dict[str, _Session] = {}
        self._connections: list[_Connection] = []
        self._conn_numbers = itertools.count(1)
        self._changed = asyncio.Event()
        self._routes = self._build_routes()
        self._rest_count = 0

        for spec in users or []:
            self._add_user(spec)
        if guilds is None:
            guilds = [_default_guild()]
            self._add_user({"id": USER_ID, "username": "alice", "global_name": "Alice"})
            self._add_user({"id": OWNER_ID, "username": "owner", "global_name": "Owner"})
        for spec in guilds:
            self.add_guild(spec)

    # ------------------------------------------------------------------ lifecycle

    record_type = Call

    def origins(self) -> dict[str, web.Application]:
        api = web.Application(client_max_size=MAX_REQUEST_BYTES * 4)
        api.router.add_route("*", "/api/v10/{tail:.*}", self._handle_rest, name="rest")
        api.router.add_route("*", "/_control/{name}", self._handle_control, name="control")
        api.router.add_get("/", self._handle_gateway, name="gateway")
        cdn = web.Application()
        cdn.router.add_get("/cdn/{path:.*}", self._handle_cdn, name="cdn")
        cdn.router.add_get("/media/{path:.*}", self._handle_cdn, name="media")
        return {"api": api, "cdn": cdn}

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("Authorization")

    def describe(self, call: Call, request: web.Request) -> None:
        """A REST call: its path after /api/v10, its route template, its index among REST
        calls (what ``since=`` counts)."""
        if call.endpoint != "rest":
            return
        call.rest = True
        call.path = "/" + request.match_info["tail"]
        route, _, _ = self._match(call.method, call.path)
        call.endpoint = route.key if route else f"{call.method} ?"
        call.index = self._rest_count
        self._rest_count += 1

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeDiscord:
        """Listen on ``host:port`` (0 picks a free port); the CDN gets a free port."""
        await super().start(host, port)
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
        await super().stop()

    @property
    def port(self) -> int:
        return int(self.urls["api"].rsplit(":", 1)[1])

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.urls["api"]

    @property
    def cdn_url(self) -> str:
        return self.urls["cdn"]

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be set to."""
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must be set to (and /gateway/bot answers)."""
        return "ws" + self.url.removeprefix("http") + "/"

    @property
    def cdn_base(self) -> str:
        return f"{self.cdn_url}/cdn"

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
