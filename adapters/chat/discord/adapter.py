"""Discord, through discord.py: slash commands, "Remix" on any picture, persistent buttons.

How it keeps the core's promises on Discord:

* Every interaction is acknowledged at once (deferred), well inside Discord's 3 seconds.
  Mistakes found without waiting (``options``: flags, options, uploads as Discord describes
  them) are answered before that, ephemerally, so the channel sees accepted requests only.
* A command that may start a job is deferred ephemerally, so what the core refuses after
  that (credits, the queue limit, a ban, an upload that does not decode) is said to the
  person only. Once the core accepts the job (``Incoming.on_accept``) the private response
  says so and a public follow-up becomes the job's status message (its id goes with the
  job): the channel sees accepted jobs, their progress and outcome. The private response is
  edited first: while a deferred response still "thinks", the first follow-up would fill it
  (and be ephemeral with it).
* Pictures arrive through the outbox as follow-ups on the interaction's webhook while its
  token is fresh; past ``15 min - token_margin_s`` (or when Discord says the token is no
  longer valid) they are posted in the channel with a mention, with the bot's own token:
  a long queue never loses a result.
* Button custom ids are ``sd:action:job:index`` and are handled by a ``DynamicItem``, so
  buttons on old messages work after any restart; the rest is read back from the database.
* Uploads respect the limit the interaction reported (``attachment_size_limit``): a picture
  over it is re-encoded as JPEG, smaller if need be.
* discord.py waits out 429s itself (per route and global), so rate limits delay, never drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands

from adapters.chat.conversation import RemakeAction, picture_policy
from adapters.chat.discord.buttons import CommandButton, ResultButton
from adapters.chat.discord.commands import SlashCommands
from adapters.chat.discord.delivery import NO_MENTIONS, DiscordDelivery
from adapters.chat.discord.limits import (
    DEFAULT_LIMIT,
    EMBED_TEXT,
    MAX_EMBEDS,
    TOKEN_LIFETIME_S,
    _clip,
)
from adapters.chat.discord.translator import Translator
from bot.chat import ReplyTo, ResponseToken, UserRef
from bot.commands import Action, Incoming, Picture, Reply, format_image_info
from bot.config import DiscordConfig
from bot.errors import UserError
from bot.host import ChatHost
from bot.i18n import t

log = logging.getLogger(__name__)

# The buttons that start a job (``Conversation.remake``), by their letter in custom ids.
REMAKES: dict[str, RemakeAction] = {"r": "reroll", "v": "vary", "u": "upscale"}


class DiscordAdapter(DiscordDelivery):
    platform = "discord"
    max_group = 4  # a job's pictures in one message (a row of buttons each, and Upscale: 5)

    def __init__(self, app: ChatHost, cfg: DiscordConfig | None = None) -> None:
        self.app = app
        self.cfg = cfg or app.config.discord
        # sdhost has no voice: discord.py's "voice will NOT be supported" is noise to it
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        self.client: discord.Client = self._client_class()(
            **self._shards(),
            intents=discord.Intents.default(),
            # nothing the bot writes pings anyone unless a call says so (delivery.py)
            allowed_mentions=discord.AllowedMentions.none(),
            # None: learnt at login (discord.py reads it with .get; its TypedDict says int)
            application_id=self.cfg.application_id or None,  # type: ignore[arg-type]
        )
        self.client.sdhost_adapter = self  # type: ignore[attr-defined]
        self.tree = app_commands.CommandTree(self.client)
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]
        self.slash_commands = SlashCommands(self)
        self.slash_commands.register(self.tree)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False
        # progress edits: the newest state per status message, one edit per message
        # every progress_edit_s
        self.setup_conversation()
        self.setup_delivery()
        self.interactions_handled = 0  # answered (the response edited), for benchmarks

        @self.client.event
        async def on_ready() -> None:
            self._ready.set()

        @self.client.event
        async def on_interaction(interaction: discord.Interaction[Any]) -> None:
            await self.slash_commands.stale_box(interaction)

    # --- lifecycle -----------------------------------------------------------------------

    def _client_class(self) -> type[discord.Client]:
        cfg = self.cfg
        if cfg.sharded or cfg.shard_ids or cfg.shard_count:
            return discord.AutoShardedClient
        return discord.Client

    def _shards(self) -> dict[str, Any]:
        """This process's slice of the shards: ``shard_ids`` of ``shard_count`` (another
        process runs the others); ``shard_count`` alone: all of them, here."""
        shards: dict[str, Any] = {}
        if self.cfg.shard_count:
            shards["shard_count"] = self.cfg.shard_count
        if self.cfg.shard_ids:
            shards["shard_ids"] = list(self.cfg.shard_ids)
        return shards

    def _point_at_endpoints(self) -> None:
        import discord.gateway
        import discord.http
        import yarl

        discord.http.Route.BASE = self.cfg.api_base_url.rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.cfg.gateway_url)

    async def connect(self) -> None:
        self._point_at_endpoints()
        try:
            await self.client.login(self.cfg.token)
        except discord.LoginFailure:
            raise UserError(
                "Discord rejected discord.token: copy it again from the Developer Portal "
                "(your application > Bot > Reset Token)"
            ) from None
        except (discord.HTTPException, OSError) as exc:
            raise UserError(f"cannot reach Discord at {self.cfg.api_base_url}: {exc}") from None
        self.client.add_dynamic_items(ResultButton, CommandButton)
        await self.tree.set_translator(Translator())
        if self.cfg.sync_commands:
            await self.sync()

    async def sync(self) -> list[str]:
        """Publish the slash commands: to the configured guilds at once, else globally."""
        names: list[str] = []
        if self.cfg.guild_ids:
            for gid in self.cfg.guild_ids:
                guild = discord.Object(id=gid)
                self.tree.copy_global_to(guild=guild)
                names = [c.name for c in await self.tree.sync(guild=guild)]
        else:
            names = [c.name for c in await self.tree.sync()]
        return names

    async def listen(self) -> None:
        self._task = asyncio.create_task(self.client.connect(reconnect=True), name="discord")
        self.start_status_edits()
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, timeout=60, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if self._task in done:
                self._task.result()  # the gateway refused us: say why
            log.warning("discord: not ready after 60 s; still trying in the background")

    async def stop_listening(self) -> None:
        self._closing = True  # new interactions are left alone from here on
        await self.stop_status_edits()

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- who and where -------------------------------------------------------------------

    def _user(self, who: discord.abc.User) -> UserRef:
        return UserRef("discord", str(who.id), who.name, None)

    def _allowed(self, interaction: discord.Interaction[Any]) -> bool:
        cfg = self.cfg
        if not (cfg.allowed_guilds or cfg.allowed_channels or cfg.allowed_roles):
            return True
        if self.is_admin(interaction.user.id):
            return True
        if interaction.guild_id in cfg.allowed_guilds:
            return True
        if interaction.channel_id in cfg.allowed_channels:
            return True
        roles = getattr(interaction.user, "roles", [])
        return any(r.id in cfg.allowed_roles for r in roles)

    async def _lang(self, interaction: discord.Interaction[Any]) -> str:
        return await self.lang_of(self._user(interaction.user), str(interaction.locale))

    def _nsfw_channel(self, interaction: discord.Interaction[Any]) -> bool:
        channel = interaction.channel
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw()) if callable(is_nsfw) else False

    def _reply_to(
        self, interaction: discord.Interaction[Any], lang: str, status: int | None
    ) -> ReplyTo:
        return ReplyTo(
            platform="discord",
            chat=interaction.channel_id,
            community=interaction.guild_id,
            person=str(interaction.user.id),
            response=ResponseToken(
                app=int(interaction.application_id or 0),
                token=interaction.token,
                until=interaction.created_at.timestamp()
                + TOKEN_LIFETIME_S
                - self.cfg.token_margin_s,
            ),
            status_message=status,
            upload_limit=int(getattr(interaction, "filesize_limit", 0) or DEFAULT_LIMIT),
            nsfw_ok=self._nsfw_channel(interaction),
            lang=lang,
        )

    # --- commands ------------------------------------------------------------------------

    async def _command(
        self,
        interaction: discord.Interaction[Any],
        text: str | list[str],
        *,
        attachment: discord.Attachment | None = None,
        more_attachments: Sequence[discord.Attachment] = (),
        image: bytes | None = None,
    ) -> None:
        """Acknowledge at once, run the shared command(s), answer by editing the response.
        A command that may start a job or a download is acknowledged privately; once the
        core accepts it, its status message is a public follow-up (``_open_status``)."""
        if self._closing:
            return
        if not self._allowed(interaction):
            lang = await self._lang(interaction)
            await interaction.response.send_message(t(lang, "dc.not_allowed"), ephemeral=True)
            return
        starts = isinstance(text, str) and self.app.commands.wants_status(text)
        if not interaction.response.is_done():
            # may start a job: private until the core accepts it (see the module docstring)
            await interaction.response.defer(thinking=True, ephemeral=starts)
        lang = await self._lang(interaction)
        reply_to = self._reply_to(interaction, lang, None)
        opened: dict[str, Any] = {}
        on_accept = functools.partial(self._open_status, interaction, lang, opened)
        user = self._user(interaction.user)
        more: list[bytes] = []
        try:
            if attachment is not None:
                # a banned person's upload is not even downloaded
                await self.app.jobs.check_not_banned(user)
                image = await self._read_attachment(attachment)
                for extra in more_attachments:  # image2..image4, in order
                    more.append(await self._read_attachment(extra))
        except UserError as exc:
            await self._respond(interaction, exc.render(lang))
            return
        replies: list[Reply] = []
        for one in [text] if isinstance(text, str) else text:
            reply = await self.app.commands.handle(
                Incoming(
                    user=user,
                    text=one,
                    reply_to=reply_to,
                    image=image,
                    more_images=tuple(more),
                    message_key=f"discord:{interaction.id}",
                    is_admin=self.is_admin(interaction.user.id),
                    lang=str(interaction.locale),
                    nsfw_ok=reply_to.nsfw_ok or self.cfg.nsfw == "allow",
                    texts="discord",  # /help and /start say chat.help.discord
                    on_accept=on_accept if starts else None,
                )
            )
            replies.append(reply)
        status = opened.get("status_message")
        if status is not None:  # accepted: the receipt goes on the public status message
            await self._receipt(reply_to, int(status), replies[0].text)
            self.interactions_handled += 1
            return
        text = "\n".join(r.text for r in replies)
        if len(replies) == 1:
            await self._respond(interaction, text, replies[0].pictures, replies[0].actions)
        else:
            await self._respond(interaction, text)

    async def _open_status(
        self, interaction: discord.Interaction[Any], lang: str, opened: dict[str, Any]
    ) -> dict[str, Any]:
        """The core accepted the job (``Incoming.on_accept``): the private response says so,
        then a public follow-up becomes the job's status message. In that order: while the
        deferred response still "thinks", a follow-up would fill it, privately."""
        if not opened:
            try:
                await interaction.edit_original_response(
                    content=t(lang, "dc.accepted"), allowed_mentions=NO_MENTIONS
                )
                status = await interaction.followup.send(
                    t(lang, "tg.working"), wait=True, allowed_mentions=NO_MENTIONS
                )
            except discord.HTTPException as exc:
                # the channel cannot be reached: nothing is queued or charged
                log.warning("discord: opening a status message failed: %s", exc)
                raise UserError.of("dc.status_failed") from None
            opened["status_message"] = status.id
        return dict(opened)

    async def _receipt(self, reply_to: ReplyTo, status: int, text: str) -> None:
        """The receipt (or a late refusal) on the public status message, unless what the
        job started shows more already (its pictures or its outcome)."""
        if self.receipt_is_past(status):
            return
        try:
            await self.put_status(reply_to.with_(status_message=status), status, text)
        except Exception as exc:  # the outbox shows the job's progress and outcome anyway
            log.warning("discord: showing a receipt failed: %s", exc)

    async def _refuse(self, interaction: discord.Interaction[Any], error: UserError) -> None:
        """A mistake found before anything was shown: said only to the person (ephemeral),
        so the channel sees accepted jobs only."""
        if self._closing:
            return
        lang = await self._lang(interaction)
        allowed = self._allowed(interaction)
        text = error.render(lang) if allowed else t(lang, "dc.not_allowed")
        await interaction.response.send_message(_clip(text), ephemeral=True)
        self.interactions_handled += 1

    async def _respond(
        self,
        interaction: discord.Interaction[Any],
        text: str,
        pictures: Sequence[Picture] = (),
        actions: Sequence[Action] = (),
    ) -> None:
        """Edit the deferred response into the answer: pictures as embeds over attached
        files (up to ten), actions as buttons. Should the pictures be refused, the text
        goes alone."""
        kw: dict[str, Any] = {}
        if actions:
            view = discord.ui.View(timeout=None)
            for i, action in enumerate(actions[:25]):
                view.add_item(CommandButton(action.command, action.label, row=i // 5))
            kw["view"] = view
        files, embeds = [], []
        for i, picture in enumerate(pictures[:MAX_EMBEDS]):
            name = f"picture-{i + 1}.jpg"
            files.append(discord.File(io.BytesIO(picture.data), filename=name))
            caption = _clip(picture.caption, EMBED_TEXT) if picture.caption else None
            embed = discord.Embed(description=caption)
            embeds.append(embed.set_image(url=f"attachment://{name}"))
        try:
            try:
                await interaction.edit_original_response(
                    content=_clip(text), attachments=files, embeds=embeds, **kw
                )
            except discord.HTTPException as exc:
                if not files:
                    raise
                log.info("discord: the pictures of a reply were refused (%s); text only", exc)
                await interaction.edit_original_response(content=_clip(text), **kw)
        except discord.HTTPException as exc:
            log.warning("discord: answering interaction %s failed: %s", interaction.id, exc)
        self.interactions_handled += 1

    async def _read_attachment(self, attachment: discord.Attachment) -> bytes:
        limit = self.app.config.images.max_input_bytes
        if attachment.size > limit:
            raise UserError.of(
                "tg.too_big_input", mb=attachment.size / 1024 / 1024, limit=limit / 1024 / 1024
            )
        try:
            return await attachment.read()
        except (discord.HTTPException, discord.NotFound):
            raise UserError.of("dc.picture_gone") from None

    async def _on_tree_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        log.error("discord: command failed", exc_info=error)
        lang: str = self.cfg.default_lang
        with contextlib.suppress(Exception):
            lang = await self._lang(interaction)
        text = t(lang, "error.internal", ref=str(interaction.id)[-8:])
        with contextlib.suppress(Exception):
            if interaction.response.is_done():
                await interaction.edit_original_response(content=text)
            else:
                await interaction.response.send_message(text, ephemeral=True)

    # --- buttons -------------------------------------------------------------------------

    async def _send_original(
        self,
        interaction: discord.Interaction[Any],
        presser: UserRef,
        lang: str,
        job_id: int,
        idx: int,
    ) -> None:
        """The PNG of a picture, under the channel's NSFW policy. Anyone who sees the
        picture may ask: the requester gets it in the channel, anyone else privately."""
        picture = await self.results.picture(job_id, idx, by=presser)
        me = await self.app.jobs.user(presser)
        await interaction.response.defer(thinking=True, ephemeral=me.id != picture.job.user_id)
        policy = "allow" if self._nsfw_channel(interaction) else self.cfg.nsfw
        shown = picture_policy(_shown_as_spoiler(interaction.message, job_id, idx), policy)
        if shown == "withhold":
            await self._respond(interaction, t(lang, "dc.nsfw_blocked", k=idx + 1, job=job_id))
            return
        data = await self.results.picture_bytes(picture)
        limit = int(getattr(interaction, "filesize_limit", 0) or DEFAULT_LIMIT)
        if len(data) > limit:
            mb, limit_mb = len(data) / 1024 / 1024, limit // 1024 // 1024
            await self._respond(interaction, t(lang, "dc.original_too_big", mb=mb, limit=limit_mb))
            return
        name = f"sdhost-{job_id}-{idx + 1}.png"
        await interaction.edit_original_response(
            content=t(lang, "tg.original_caption", job=job_id, k=idx + 1),
            attachments=[discord.File(io.BytesIO(data), name, spoiler=shown == "spoiler")],
            allowed_mentions=NO_MENTIONS,
        )

    async def on_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: int, idx: int
    ) -> None:
        lang = await self._lang(interaction)
        if not self._allowed(interaction):
            await interaction.response.send_message(t(lang, "dc.not_allowed"), ephemeral=True)
            return
        try:
            presser = self._user(interaction.user)
            if action == "i":
                picture = await self.results.picture(job_id, idx, by=presser)
                await interaction.response.send_message(
                    _clip(format_image_info(picture.job, picture.image, lang)), ephemeral=True
                )
            elif action == "d":
                picture = await self.results.picture(job_id, idx, by=presser)
                me = await self.app.jobs.user(presser)
                if me.id != picture.job.user_id:
                    await interaction.response.send_message(t(lang, "dc.not_yours"), ephemeral=True)
                    return
                await interaction.response.defer(ephemeral=True, thinking=True)
                if interaction.message is not None:
                    await interaction.message.delete()
                await interaction.edit_original_response(content=t(lang, "dc.deleted"))
            elif action == "o":
                await self._send_original(interaction, presser, lang, job_id, idx)
            else:
                # private until the core accepts the job, like a command (see _command)
                await interaction.response.defer(thinking=True, ephemeral=True)
                reply_to = self._reply_to(interaction, lang, None)
                text, status = await self.remake(
                    REMAKES[action],
                    self._user(interaction.user),
                    job_id,
                    idx,
                    reply_to,
                    lang,
                    idem_key=f"discord:{interaction.id}",
                    open_status=functools.partial(self._open_status, interaction, lang),
                )
                if status is not None:
                    await self._receipt(reply_to, int(status), text)
                    self.interactions_handled += 1
                else:
                    await self._respond(interaction, text)
        except UserError as exc:
            if interaction.response.is_done():
                await self._respond(interaction, exc.render(lang))
            else:
                await interaction.response.send_message(exc.render(lang), ephemeral=True)


def _shown_as_spoiler(message: discord.Message | None, job_id: int, idx: int) -> bool:
    """Whether the message under the button shows picture ``idx`` of the job as a spoiler
    (delivery spoilers a picture flagged NSFW where the channel's policy asks for it; the
    flag itself is not stored with the picture)."""
    name = f"sdhost-{job_id}-{idx + 1}."
    for attachment in message.attachments if message is not None else ():
        if attachment.filename.removeprefix("SPOILER_").startswith(name):
            return attachment.is_spoiler()
    return False
