"""Application commands and interactions: callbacks, follow-ups, modals."""

from __future__ import annotations

import copy
import re
import secrets
import time
from typing import Any

from tests.fakes.discord.base import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    C_SELECTS,
    C_STRING_SELECT,
    CB_AUTOCOMPLETE,
    CB_DEFERRED_MESSAGE,
    CB_DEFERRED_UPDATE,
    CB_MESSAGE,
    CB_MODAL,
    CB_PONG,
    CB_UPDATE,
    EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    MAX_CHOICES,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    MSG_CHAT_INPUT,
    MSG_CONTEXT_MENU,
    MSG_DEFAULT,
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
    Call,
    DiscordApiError,
    Json,
    _attachment_arg,
    _b64,
    _delete_payload,
    _form_error,
    _Interaction,
    _invalid_webhook_token,
    _Message,
    _modal_submission,
    _Request,
    _unknown_interaction,
    _unknown_message,
    _unknown_webhook,
    _validate_modal,
    _validate_options,
    _walk_components,
)


# The mixins share FakeDiscord's state (set up in server.py).
class InteractionsMixin:
    """Application commands and interactions: callbacks, follow-ups, modals."""

    # ---------------------------------------------------------- commands

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

    # ---------------------------------------------------------- interactions

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
        return [c for c in self.calls() if f"/{token}/" in c.path or c.path.endswith(f"/{token}")]

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

    # ---------------------------------------------------------- HTTP: REST/commands

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

    # ---------------------------------------------------------- HTTP: REST/interactions

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
            # (receiving-and-responding.mdx, deprecated but still live). It keeps the
            # defer's ephemeral flag, whatever the follow-up's own flags say
            # (_edit_message): an ephemeral defer makes that follow-up private too. Once
            # the original was edited, follow-ups are messages of their own (below).
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
