"""Delivering to Discord: pictures and outcomes as follow-ups on the interaction while its
token lives, else as channel messages; the status message edited through the interaction
or with the bot's own token. A job's pictures go together, in one message; a rejected
interaction token is never tried again; nothing pings anyone but the requester.

``DiscordDelivery`` is the half of the adapter the outbox calls; ``DiscordAdapter``
inherits it (and the shared ``Conversation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import discord

from adapters.chat.conversation import Conversation, PicturePolicy, picture_policy
from adapters.chat.discord.buttons import ResultButton
from adapters.chat.discord.files import fit_upload
from adapters.chat.discord.limits import DEFAULT_LIMIT, TOKEN_GONE, _clip
from adapters.chat.status import outcome_text
from bot.chat import Delivery, DeliveryGone, Progress, ReplyTo, ResponseToken
from bot.config import DiscordConfig
from bot.i18n import t

log = logging.getLogger(__name__)

# No mention in a reply pings anyone: prompts and Civitai texts may hold @everyone or
# <@&role> (Discord's allowed_mentions object, resources/message.mdx "Allowed Mentions").
NO_MENTIONS = discord.AllowedMentions.none()

PROMPT_IN_CHANNEL = 100  # characters of the prompt under a picture posted in the channel

DEAD_TOKENS_KEPT = 4096  # rejected interaction tokens remembered (per process)

# A job's pictures go in one message (max_group): the outbox (bot/delivery.py) hands
# over the ones ready together, and lets a job's first pictures wait briefly for the rest.


class DiscordDelivery(Conversation):
    """Results, outcomes, notices and status edits on Discord (see the module docstring)."""

    cfg: DiscordConfig
    client: discord.Client

    # --- delivering ----------------------------------------------------------------------

    def setup_delivery(self) -> None:
        # tokens Discord rejected (401, Unknown Webhook) or that expired: never tried again
        self._dead_tokens: OrderedDict[str, None] = OrderedDict()
        # when the first picture of a job still gathering the others came (monotonic)
        # one call at a time per token, so a second call waits and sees the first one's
        # rejection instead of being rejected too
        self._token_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _token_fresh(self, reply_to: ReplyTo) -> bool:
        response = reply_to.response
        return (
            response is not None
            and response.token not in self._dead_tokens
            and response.fresh(time.time())
        )

    def _token_died(self, token: str, exc: discord.HTTPException) -> None:
        log.info(
            "discord: interaction token rejected (%s %s); the channel from now on",
            exc.status,
            exc.code,
        )
        self._dead_tokens[token] = None
        self._dead_tokens.move_to_end(token)
        while len(self._dead_tokens) > DEAD_TOKENS_KEPT:
            self._dead_tokens.popitem(last=False)

    @contextlib.asynccontextmanager
    async def _token_turn(self, token: str) -> AsyncIterator[None]:
        lock = self._token_locks.get(token)
        if lock is None:
            lock = self._token_locks[token] = asyncio.Lock()
        async with lock:
            yield

    def _hook(self, response: ResponseToken) -> discord.Webhook:
        return discord.Webhook.partial(response.app, response.token, client=self.client)

    async def _post(
        self,
        reply_to: ReplyTo,
        content: str,
        *,
        in_channel: str | None = None,
        **kw: Any,
    ) -> None:
        """A follow-up on the interaction while its token lives, else a channel message
        (``in_channel``, if given, instead of ``content``) that mentions the person, with
        the bot's token: it never expires. Only that mention may ping anyone."""
        response = reply_to.response
        if response is not None and self._token_fresh(reply_to):
            token = response.token
            async with self._token_turn(token):
                if self._token_fresh(reply_to):  # not rejected while we waited
                    try:
                        await self._hook(response).send(
                            content=_clip(content), wait=True, allowed_mentions=NO_MENTIONS, **kw
                        )
                        return
                    except discord.HTTPException as exc:
                        if not _token_rejected(exc):
                            raise _delivery_error(exc) from exc
                        self._token_died(token, exc)
                        for f in kw.get("files", ()):
                            f.reset()
        channel = self.client.get_partial_messageable(int(reply_to.chat or 0))
        user = int(reply_to.person or 0)
        text = in_channel if in_channel is not None else content
        try:
            await channel.send(
                content=_clip(f"<@{user}> {text}"),
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, users=[discord.Object(id=user)]
                ),
                **kw,
            )
        except discord.HTTPException as exc:
            raise _delivery_error(exc) from exc

    async def send_pictures(self, deliveries: list[Delivery]) -> None:
        reply_to = deliveries[0].reply_to
        lang = reply_to.lang or self.cfg.default_lang
        limit = reply_to.upload_limit or DEFAULT_LIMIT
        policy = "allow" if reply_to.nsfw_ok else self.cfg.nsfw
        files: list[discord.File] = []
        lines: list[str] = []  # as a follow-up, under the command that asked for them
        in_channel: list[str] = []  # as a channel message: with the prompt, to place them
        view = discord.ui.View(timeout=None)
        labels = [
            ("r", t(lang, "dc.btn.reroll")),
            ("v", t(lang, "dc.btn.vary")),
            ("o", t(lang, "dc.btn.original")),
            ("i", t(lang, "dc.btn.info")),
            ("d", t(lang, "dc.btn.delete")),
        ]
        for row, d in enumerate(deliveries):
            p = d.payload
            k = int(p["index"]) + 1
            line = f"#{d.job_id} · {k}/{p['count']} · seed {p['seed']}"
            prompt = str(p.get("prompt") or "")
            if p.get("batch_id") is not None:
                line += f" · {_clip(prompt, 200)}"
            placed = (
                line
                if p.get("batch_id") is not None or not prompt
                else f"{line} · {_clip(prompt, PROMPT_IN_CHANNEL)}"
            )
            shown = picture_policy(bool(p.get("nsfw")), policy)
            if shown == "withhold":
                notice = t(lang, "dc.nsfw_blocked", k=k, job=d.job_id)
                lines.append(notice)
                in_channel.append(notice)
                continue
            data = await self.delivered_picture(p)
            fitted = await asyncio.to_thread(fit_upload, data, limit)
            if fitted is None:
                notice = t(lang, "dc.too_big", k=k, job=d.job_id, limit=limit // 1024 // 1024)
                lines.append(notice)
                in_channel.append(notice)
                continue
            body, ext = fitted
            if ext != "png":
                note = " " + t(lang, "dc.reencoded", k=k, limit=limit // 1024 // 1024)
                line += note
                placed += note
            files.append(
                discord.File(
                    io.BytesIO(body), f"sdhost-{d.job_id}-{k}.{ext}", spoiler=shown == "spoiler"
                )
            )
            lines.append(line)
            in_channel.append(placed)
            for action, label in labels:
                short = label if len(deliveries) == 1 else f"{label} {k}"
                view.add_item(ResultButton(action, d.job_id, int(p["index"]), short, row=row))
            if self.can_upscale(p):
                # a row holds five buttons, each picture's row is full: the Upscale buttons
                # share the row after the last picture's (max_group 4: rows 0-3, this 4)
                label = t(lang, "dc.btn.upscale")
                short = label if len(deliveries) == 1 else f"{label} {k}"
                view.add_item(
                    ResultButton("u", d.job_id, int(p["index"]), short, row=len(deliveries))
                )
        kw: dict[str, Any] = {"files": files} if files else {}
        if view.children:
            kw["view"] = view
        await self._post(reply_to, "\n".join(lines), in_channel="\n".join(in_channel), **kw)

    async def send_outcome(self, d: Delivery) -> None:
        reply_to = d.reply_to
        lang = reply_to.lang or self.cfg.default_lang
        text = outcome_text(d.kind, d.job_id, d.payload, lang)
        status = reply_to.status_message
        batch = d.payload.get("batch_id")
        if status is not None and batch is None:
            self.edits.finish(int(status))
            await self.put_status(reply_to, int(status), text, job_id=d.job_id)
        if d.kind == "failed" or status is None:
            await self._post(reply_to, text)
        if batch is not None and status is not None:
            self.mark_dirty(Progress(d.job_id, 100, d.kind, reply_to=reply_to, batch_id=int(batch)))

    async def _edit_status(
        self,
        reply_to: ReplyTo,
        message_id: int,
        text: str | None,
        *,
        attachments: list[discord.File] | None = None,
    ) -> None:
        """Edit the status message: through the interaction while its token lives, then
        with the bot's token (the bot wrote the message, so it may). ``text`` None leaves
        the text; ``attachments`` replace the message's (an empty list: none left)."""
        kw: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
        if text is not None:
            kw["content"] = _clip(text)
        if attachments is not None:
            kw["attachments"] = attachments
        try:
            response = reply_to.response
            if response is not None and self._token_fresh(reply_to):
                token = response.token
                async with self._token_turn(token):
                    if self._token_fresh(reply_to):
                        try:
                            await self._hook(response).edit_message(message_id, **kw)
                            return
                        except discord.HTTPException as exc:
                            if not _token_rejected(exc):
                                raise
                            self._token_died(token, exc)
                            for f in attachments or ():
                                f.reset()
            channel = self.client.get_partial_messageable(int(reply_to.chat or 0))
            await channel.get_partial_message(message_id).edit(**kw)
        except discord.NotFound:
            return  # the message was deleted: nothing to show progress on
        except discord.HTTPException as exc:
            raise _delivery_error(exc) from exc

    # --- the live preview: an attachment of the status message ---------------------------

    def preview_policy(self, reply_to: ReplyTo) -> PicturePolicy:
        return picture_policy(True, "allow" if reply_to.nsfw_ok else self.cfg.nsfw)

    async def show_preview(
        self, reply_to: ReplyTo, key: Any, picture: bytes, *, job_id: int, spoiler: bool
    ) -> None:
        preview = discord.File(io.BytesIO(picture), f"preview-{job_id}.jpg", spoiler=spoiler)
        await self._edit_status(reply_to, int(key), None, attachments=[preview])

    async def drop_preview(self, reply_to: ReplyTo, key: Any) -> None:
        await self._edit_status(reply_to, int(key), None, attachments=[])

    # --- the status message (the rest is in Conversation) -------------------------------

    def status_key(self, reply_to: ReplyTo) -> int | None:
        return reply_to.status_message

    async def edit_status(self, reply_to: ReplyTo, key: Any, text: str) -> None:
        # The last word on the message takes any preview away with it: one left by a
        # process that stopped mid-job is known to nobody else.
        final = self.edits.is_final(key)
        await self._edit_status(reply_to, int(key), text, attachments=[] if final else None)

    async def post_notice(self, reply_to: ReplyTo, text: str) -> None:
        await self._post(reply_to, text)


def _token_rejected(exc: discord.HTTPException) -> bool:
    """Discord will never take this interaction token again."""
    return exc.status == 401 or exc.code in TOKEN_GONE


def _delivery_error(exc: discord.HTTPException) -> Exception:
    """What an outbox delivery should do after Discord said no."""
    if isinstance(exc, discord.Forbidden | discord.NotFound):
        return DeliveryGone(f"discord: {exc.status} {exc.text}")
    return exc
