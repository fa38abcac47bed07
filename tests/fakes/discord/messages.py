"""Channels and messages: what the bot posts, edits and deletes (REST)."""

from __future__ import annotations

import copy
import re
import time

from tests.fakes.discord.base import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    MAX_CONTENT,
    MAX_EMBEDS,
    MAX_FILES,
    MSG_DEFAULT,
    MSG_REPLY,
    DiscordApiError,
    Json,
    UploadedFile,
    _delete_payload,
    _file_index,
    _form_error,
    _Message,
    _normalize_components,
    _normalize_embed,
    _now_iso,
    _Request,
    _Session,
    _unknown_message,
)


# The mixins share FakeDiscord's state (set up in server.py).
class MessagesMixin:
    """Channels and messages: what the bot posts, edits and deletes (REST)."""

    # ---------------------------------------------------------- messages

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

    # ---------------------------------------------------------- HTTP: REST/channels / messages

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

    # ---------------------------------------------------------- HTTP: REST/guilds

    async def _r_get_guild(self, req: _Request) -> Json:
        return self.guild_json(int(req.params["guild_id"]))

    async def _r_guild_channels(self, req: _Request) -> list[Json]:
        guild = self._guild(int(req.params["guild_id"]))
        return [self._public(self.channels[c]) for c in guild["_channel_ids"]]

    async def _r_guild_roles(self, req: _Request) -> list[Json]:
        return copy.deepcopy(self._guild(int(req.params["guild_id"]))["roles"])

    async def _r_guild_member(self, req: _Request) -> Json:
        return self.member_json(int(req.params["guild_id"]), int(req.params["user_id"]))
