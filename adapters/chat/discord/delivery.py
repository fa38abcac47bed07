"""Delivering to Discord: pictures and outcomes as follow-ups on the interaction while its
token lives, else as channel messages; the status message edited through the interaction
or with the bot's own token.

``DiscordDelivery`` is the half of the adapter the outbox calls; ``DiscordAdapter``
inherits it (and the shared ``Conversation``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import discord

from adapters.chat.conversation import Conversation
from adapters.chat.discord.buttons import ResultButton
from adapters.chat.discord.files import _read, fit_upload
from adapters.chat.discord.limits import DEFAULT_LIMIT, TOKEN_GONE, _clip
from adapters.chat.status import outcome_text
from bot.chat import Delivery, DeliveryGone, Progress
from bot.config import DiscordConfig
from bot.i18n import t

log = logging.getLogger(__name__)


class DiscordDelivery(Conversation):
    """Results, outcomes, notices and status edits on Discord (see the module docstring)."""

    cfg: DiscordConfig
    client: discord.Client

    # --- delivering ----------------------------------------------------------------------

    def _token_fresh(self, reply_to: dict[str, Any]) -> bool:
        return bool(reply_to.get("token")) and time.time() < float(reply_to.get("token_until", 0))

    async def _post(self, reply_to: dict[str, Any], content: str, **kw: Any) -> None:
        """A follow-up on the interaction while its token lives, else a channel message
        that mentions the person (with the bot's token: it never expires)."""
        if self._token_fresh(reply_to):
            hook = discord.Webhook.partial(
                int(reply_to["app"]), str(reply_to["token"]), client=self.client
            )
            try:
                await hook.send(content=_clip(content), wait=True, **kw)
                return
            except discord.HTTPException as exc:
                if exc.code not in TOKEN_GONE and exc.status != 401:
                    raise _delivery_error(exc) from exc
                log.info("discord: interaction token gone; posting in the channel instead")
        channel = self.client.get_partial_messageable(int(reply_to["channel"]))
        mention = f"<@{int(reply_to['user'])}> "
        try:
            await channel.send(
                content=_clip(mention + content),
                allowed_mentions=discord.AllowedMentions(users=True, roles=False, everyone=False),
                **kw,
            )
        except discord.HTTPException as exc:
            raise _delivery_error(exc) from exc

    async def send_pictures(self, deliveries: list[Delivery]) -> None:
        reply_to = deliveries[0].reply_to
        lang = reply_to.get("lang") or self.cfg.default_lang
        limit = int(reply_to.get("limit") or DEFAULT_LIMIT)
        nsfw_ok = bool(reply_to.get("nsfw_ok")) or self.cfg.nsfw == "allow"
        files: list[discord.File] = []
        lines: list[str] = []
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
            if p.get("batch_id") is not None:
                line += f" · {_clip(str(p.get('prompt', '')), 200)}"
            if p.get("nsfw") and not nsfw_ok and self.cfg.nsfw == "block":
                lines.append(t(lang, "dc.nsfw_blocked", k=k, job=d.job_id))
                continue
            try:
                data = await asyncio.to_thread(_read, p["path"])
            except FileNotFoundError:
                raise DeliveryGone(f"the picture file {p['path']} is gone") from None
            fitted = await asyncio.to_thread(fit_upload, data, limit)
            if fitted is None:
                lines.append(t(lang, "dc.too_big", k=k, job=d.job_id, limit=limit // 1024 // 1024))
                continue
            body, ext = fitted
            if ext != "png":
                line += " " + t(lang, "dc.reencoded", k=k, limit=limit // 1024 // 1024)
            spoiler = bool(p.get("nsfw")) and not nsfw_ok
            files.append(
                discord.File(io.BytesIO(body), f"sdhost-{d.job_id}-{k}.{ext}", spoiler=spoiler)
            )
            lines.append(line)
            for action, label in labels:
                short = label if len(deliveries) == 1 else f"{label} {k}"
                view.add_item(ResultButton(action, d.job_id, int(p["index"]), short, row=row))
        kw: dict[str, Any] = {"files": files} if files else {}
        if view.children:
            kw["view"] = view
        await self._post(reply_to, "\n".join(lines), **kw)

    async def send_outcome(self, d: Delivery) -> None:
        reply_to = d.reply_to
        lang = reply_to.get("lang") or self.cfg.default_lang
        text = outcome_text(d.kind, d.job_id, d.payload, lang)
        status = reply_to.get("message")
        batch = d.payload.get("batch_id")
        if status is not None and batch is None:
            self.edits.finish(int(status))
            await self._edit_status(reply_to, int(status), text)
        if d.kind == "failed" or status is None:
            await self._post(reply_to, text)
        if batch is not None and status is not None:
            self.mark_dirty(Progress(d.job_id, 100, d.kind, reply_to=reply_to, batch_id=int(batch)))

    async def _edit_status(self, reply_to: dict[str, Any], message_id: int, text: str) -> None:
        """Edit the status message: through the interaction while its token lives, then
        with the bot's token (the bot wrote the message, so it may)."""
        try:
            if self._token_fresh(reply_to):
                hook = discord.Webhook.partial(
                    int(reply_to["app"]), str(reply_to["token"]), client=self.client
                )
                try:
                    await hook.edit_message(message_id, content=_clip(text))
                    return
                except discord.HTTPException as exc:
                    if exc.code not in TOKEN_GONE and exc.status != 401:
                        raise
            channel = self.client.get_partial_messageable(int(reply_to["channel"]))
            await channel.get_partial_message(message_id).edit(content=_clip(text))
        except discord.NotFound:
            return  # the message was deleted: nothing to show progress on
        except discord.HTTPException as exc:
            raise _delivery_error(exc) from exc

    # --- the status message (the rest is in Conversation) -------------------------------

    def status_key(self, reply_to: dict[str, Any]) -> int | None:
        status = reply_to.get("message")
        return None if status is None else int(status)

    async def edit_status(self, reply_to: dict[str, Any], key: Any, text: str) -> None:
        await self._edit_status(reply_to, int(key), text)

    async def post_notice(self, reply_to: dict[str, Any], text: str) -> None:
        await self._post(reply_to, text)


def _delivery_error(exc: discord.HTTPException) -> Exception:
    """What an outbox delivery should do after Discord said no."""
    if isinstance(exc, discord.Forbidden | discord.NotFound):
        return DeliveryGone(f"discord: {exc.status} {exc.text}")
    return exc
