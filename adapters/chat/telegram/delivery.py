"""Telegram delivery: pictures, outcomes and the status message, paced per chat.

Pictures arrive through the outbox (at least once, in order). Pictures that are ready
together go as one album, and its buttons on a message of their own; everything sent to a
chat is paced (see ``pacing``) and flood waits delay, never drop. ``TelegramAdapter``
inherits this; what it takes in (messages, buttons) is in ``adapter``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, ReplyParameters
from telegram.error import BadRequest

from adapters.chat.conversation import Conversation, PicturePolicy, picture_policy
from adapters.chat.status import outcome_text
from adapters.chat.telegram.albums import AlbumMemory
from adapters.chat.telegram.limits import (
    ALBUM_MAX,
    LOCAL_MAX_MB,
    MAX_CAPTION,
    MAX_TEXT,
    MAX_UPLOAD_MB,
    photo_fits,
)
from adapters.chat.telegram.pacing import Pacer, is_gone
from adapters.chat.telegram.previews import PreviewLedger
from bot.chat import Delivery, DeliveryGone, DeliveryRetry, Progress, ReplyTo
from bot.config import TelegramConfig
from bot.i18n import t
from bot.text import clip

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Outgoing:
    """A picture waiting for its turn in a chat; ``done`` resolves once it is in the chat."""

    delivery: Delivery
    data: bytes | None  # None: a text notice instead (withheld or too large)
    as_photo: bool
    spoiler: bool
    caption: str
    notice: str = ""
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def reply_message(self) -> int | None:
        return self.delivery.reply_to.source_message

    @property
    def thread(self) -> int | None:
        return self.delivery.reply_to.thread


class TelegramDelivery(Conversation):
    """The sending half of the Telegram adapter: pictures, outcomes, status edits, notices."""

    cfg: TelegramConfig
    pacer: Pacer
    albums: AlbumMemory
    _chat_locks: dict[int, asyncio.Lock]
    _outgoing: dict[int, list[_Outgoing]]
    _status_locks: weakref.WeakValueDictionary[Any, asyncio.Lock]

    def setup_delivery(self) -> None:
        self._chat_locks = {}  # pictures: one sender per chat, which sends what waits there
        self._outgoing = {}
        # a status message's edits, one at a time (kept while someone holds or awaits it)
        self._status_locks = weakref.WeakValueDictionary()
        # status message -> the photo message showing its job's live preview
        self._preview_messages: dict[tuple[int, int], int] = {}
        data_dir = Path(self.app.config.data.dir)
        self.preview_ledger = PreviewLedger(data_dir / "telegram" / "previews")

    @property
    def bot(self) -> Any:
        raise NotImplementedError

    def _nsfw_policy(self, chat_id: int) -> str:
        raise NotImplementedError

    def _lock(self, chat_id: int) -> asyncio.Lock:
        lock = self._chat_locks.get(chat_id)
        if lock is None:
            lock = self._chat_locks[chat_id] = asyncio.Lock()
        return lock

    async def send_pictures(self, deliveries: list[Delivery]) -> None:
        chat_id = int(deliveries[0].reply_to.chat or 0)
        items = [await self._prepare(d, chat_id) for d in deliveries]
        queue = self._outgoing.setdefault(chat_id, [])
        queue.extend(items)
        try:
            await self._drain(chat_id, queue, items)
        except asyncio.CancelledError:
            # what nobody took yet stays with the outbox, which sends it again
            queue[:] = [item for item in queue if item not in items]
            raise
        if not queue:
            self._outgoing.pop(chat_id, None)
        for item in items:
            if item.done.cancelled():  # its sender was stopped: the outbox sends it again
                raise DeliveryRetry(0.0, "stopped while sending")
            item.done.result()  # raises what its send raised
        for d in deliveries:
            key = self.status_key(d.reply_to)
            if key is not None and d.payload.get("batch_id") is None:
                self.note_pictures_shown(key)

    async def _drain(self, chat_id: int, queue: list[_Outgoing], items: list[_Outgoing]) -> None:
        async with self._lock(chat_id):
            # Whoever holds the chat sends everything waiting there, as albums where it can:
            # pictures that finished while the previous send was paced go out together.
            while not all(item.done.done() for item in items):
                batch = _take_album(queue)
                try:
                    await self._send_batch(chat_id, batch)
                except asyncio.CancelledError:
                    for item in batch:
                        item.done.cancel()
                    raise
                except Exception as exc:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                else:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_result(None)

    async def _prepare(self, d: Delivery, chat_id: int) -> _Outgoing:
        p = d.payload
        lang = d.reply_to.lang or self.cfg.default_lang
        k = int(p["index"]) + 1
        caption = f"#{d.job_id} · {k}/{p['count']} · seed {p['seed']}"
        if p.get("batch_id") is not None:
            caption += f"\n{clip(str(p.get('prompt', '')), 300)}"
        policy = self._nsfw_policy(chat_id)
        if p.get("nsfw") and policy == "block":
            notice = t(lang, "tg.nsfw_blocked", k=k, job=d.job_id)
            return _Outgoing(d, None, False, False, caption, notice=notice)
        data = await self.delivered_picture(p)
        limit = (LOCAL_MAX_MB if self.cfg.local_mode else MAX_UPLOAD_MB) * 1024 * 1024
        if len(data) > limit:
            notice = t(
                lang,
                "tg.too_big_upload",
                k=k,
                job=d.job_id,
                mb=len(data) / 1024 / 1024,
                limit=limit // 1024 // 1024,
            )
            return _Outgoing(d, None, False, False, caption, notice=notice)
        as_photo = photo_fits(len(data), int(p["width"]), int(p["height"]))
        spoiler = bool(p.get("nsfw")) and policy == "blur"
        return _Outgoing(d, data, as_photo, spoiler, caption)

    def _keyboard(self, items: list[_Outgoing], lang: str) -> InlineKeyboardMarkup:
        """Reroll, Vary, Original, Info under each picture, and Upscale under those whose
        provider can upscale (``Conversation.can_upscale``). Callback data is
        ``action:job:index``, at most 31 bytes of Telegram's 64."""
        labels = [
            ("r", t(lang, "tg.btn.reroll")),
            ("v", t(lang, "tg.btn.vary")),
            ("o", t(lang, "tg.btn.original")),
            ("i", t(lang, "tg.btn.info")),
        ]
        upscale = ("u", t(lang, "tg.btn.upscale"))
        rows = []
        for n, item in enumerate(items, start=1):
            d = item.delivery
            ref = f"{d.job_id}:{d.payload['index']}"
            shown = [*labels, upscale] if self.can_upscale(d.payload) else labels
            if len(items) == 1:
                row = [
                    InlineKeyboardButton(label, callback_data=f"{a}:{ref}") for a, label in shown
                ]
                # Reroll, Vary (and Upscale) above Original and Info: rows of two or three
                # read better than five in a row
                rows = [row[:2] + row[4:], row[2:4]]
            else:
                rows.append(
                    [
                        InlineKeyboardButton(
                            f"{label.split(' ', 1)[0]} {n}", callback_data=f"{a}:{ref}"
                        )
                        for a, label in shown
                    ]
                )
        return InlineKeyboardMarkup(rows)

    async def _send_batch(self, chat_id: int, batch: list[_Outgoing]) -> None:
        first = batch[0]
        lang = first.delivery.reply_to.lang or self.cfg.default_lang
        reply = (
            ReplyParameters(first.reply_message, allow_sending_without_reply=True)
            if first.reply_message
            else None
        )
        thread = first.thread
        if first.data is None:
            await self.pacer.deliver(
                chat_id,
                lambda cid: self.bot.send_message(
                    cid, first.notice, reply_parameters=reply, message_thread_id=thread
                ),
            )
            return
        if len(batch) == 1:
            await self._send_single(chat_id, first, reply, lang)
            return
        media = [
            InputMediaPhoto(
                cast(bytes, item.data),  # an album holds pictures only (_take_album)
                caption=clip(item.caption, MAX_CAPTION),
                has_spoiler=item.spoiler or None,
                filename=f"sdhost-{item.delivery.job_id}-{item.delivery.payload['index'] + 1}.png",
            )
            for item in batch
        ]
        sent = await self.pacer.deliver(
            chat_id,
            lambda cid: self.bot.send_media_group(
                cid, media, reply_parameters=reply, message_thread_id=thread
            ),
            messages=len(media),
        )
        for message in sent:  # a reply to any of them may use them all (/img2img)
            self.albums.add(chat_id, message)
        # An album carries no buttons; they go on a message of their own, best effort (the
        # pictures are what must arrive, and resending an album for its buttons would not do).
        anchor = ReplyParameters(sent[0].message_id, allow_sending_without_reply=True)
        markup = self._keyboard(batch, lang)
        try:
            await self.pacer.deliver(
                chat_id,
                lambda cid: self.bot.send_message(
                    cid,
                    t(lang, "tg.album_buttons", n=len(batch)),
                    reply_markup=markup,
                    reply_parameters=anchor,
                    message_thread_id=thread,
                ),
                urgent=True,  # right under its album, before other sends waiting
            )
        except Exception:
            log.warning("telegram: the buttons for an album in chat %s were lost", chat_id)

    async def _send_single(
        self, chat_id: int, item: _Outgoing, reply: ReplyParameters | None, lang: str
    ) -> None:
        markup = self._keyboard([item], lang)
        caption = clip(item.caption, MAX_CAPTION)
        name = f"sdhost-{item.delivery.job_id}-{item.delivery.payload['index'] + 1}.png"
        if item.as_photo:
            try:
                await self.pacer.deliver(
                    chat_id,
                    lambda cid: self.bot.send_photo(
                        cid,
                        item.data,
                        caption=caption,
                        reply_markup=markup,
                        has_spoiler=item.spoiler or None,
                        reply_parameters=reply,
                        message_thread_id=item.thread,
                        filename=name,
                    ),
                )
                return
            except BadRequest as exc:
                # Telegram judges photos by rules of its own (PHOTO_INVALID_DIMENSIONS,
                # IMAGE_PROCESS_FAILED): a document always goes through.
                if is_gone(exc):
                    raise
                log.info("telegram: photo refused (%s); sending it as a file", exc.message)
        await self.pacer.deliver(
            chat_id,
            lambda cid: self.bot.send_document(
                cid,
                item.data,
                filename=name,
                caption=caption,
                reply_markup=markup,
                disable_content_type_detection=True,
                reply_parameters=reply,
                message_thread_id=item.thread,
            ),
        )

    async def send_outcome(self, d: Delivery) -> None:
        reply_to = d.reply_to
        chat_id = int(reply_to.chat or 0)
        lang = reply_to.lang or self.cfg.default_lang
        text = outcome_text(d.kind, d.job_id, d.payload, lang)
        status = reply_to.status_message
        batch = d.payload.get("batch_id")
        if batch is None and status is not None:
            key = (chat_id, status)
            self.edits.finish(key)
            async with self.status_lock(key):
                try:
                    await self.put_status(reply_to, key, text, job_id=d.job_id)
                except BadRequest as exc:
                    if is_gone(exc):
                        raise DeliveryGone(str(exc)) from exc
                    raise
        if d.kind == "failed" or (batch is None and status is None):
            reply = reply_to.source_message
            await self.pacer.deliver(
                chat_id,
                lambda cid: self.bot.send_message(
                    cid,
                    clip(text, MAX_TEXT),
                    reply_parameters=ReplyParameters(int(reply), allow_sending_without_reply=True)
                    if reply
                    else None,
                    message_thread_id=reply_to.thread,
                ),
            )
        if batch is not None and status is not None:
            self.mark_dirty(Progress(d.job_id, 100, d.kind, reply_to=reply_to, batch_id=int(batch)))

    async def _edit_status(self, chat_id: int, message_id: int, text: str) -> None:
        """Put a reply on a status message (a receipt, a refusal), unless its job has gone
        past it: its pictures or outcome came first (a receipt would say "queued" again)."""
        key = (chat_id, message_id)
        async with self.status_lock(key):
            if not self.receipt_is_past(key):
                await self.put_status(ReplyTo(), key, text)

    async def _send_status_edit(self, chat_id: int, message_id: int, text: str) -> None:
        """Edit a status message; if it is gone, say it in a new message instead."""
        text = clip(text, MAX_TEXT)
        try:
            await self.pacer.call(
                chat_id,
                lambda cid: self.bot.edit_message_text(text, chat_id=cid, message_id=message_id),
                urgent=True,  # where a job stands goes before more pictures
            )
        except BadRequest as exc:
            lowered = exc.message.lower()
            if "not modified" in lowered:
                return
            if "not found" in lowered or "can't be edited" in lowered:
                await self.pacer.deliver(chat_id, lambda cid: self.bot.send_message(cid, text))
                return
            raise

    # --- the live preview: a photo message next to the status (see ``previews``) ---------

    def preview_policy(self, reply_to: ReplyTo) -> PicturePolicy:
        return picture_policy(True, self._nsfw_policy(int(reply_to.chat or 0)))

    async def show_preview(
        self, reply_to: ReplyTo, key: Any, picture: bytes, *, job_id: int, spoiler: bool
    ) -> None:
        chat_id, status = key
        lang = reply_to.lang or self.cfg.default_lang
        caption = t(lang, "chat.preview", job=job_id)
        message_id = self._preview_messages.get(key)
        if message_id is not None:
            media = InputMediaPhoto(
                picture, caption=caption, has_spoiler=spoiler or None, filename="preview.jpg"
            )
            try:
                await self.pacer.call(
                    chat_id,
                    lambda cid: self.bot.edit_message_media(
                        media, chat_id=cid, message_id=message_id
                    ),
                )
                return
            except BadRequest as exc:
                lowered = exc.message.lower()
                if "not modified" in lowered:
                    return
                if "not found" not in lowered and "can't be edited" not in lowered:
                    raise
                self._forget_preview(key)  # deleted by someone: a new one
        sent = await self.pacer.call(
            chat_id,
            lambda cid: self.bot.send_photo(
                cid,
                picture,
                caption=caption,
                has_spoiler=spoiler or None,
                disable_notification=True,  # the pictures notify; their preview need not
                reply_parameters=ReplyParameters(status, allow_sending_without_reply=True),
                message_thread_id=reply_to.thread,
                filename="preview.jpg",
            ),
        )
        self._preview_messages[key] = sent.message_id
        self.preview_ledger.add(sent.chat.id, sent.message_id)

    async def drop_preview(self, reply_to: ReplyTo, key: Any) -> None:
        message_id = self._preview_messages.get(key)
        if message_id is not None:
            await self._delete_preview(key[0], message_id)
            self._forget_preview(key)

    def _forget_preview(self, key: tuple[int, int]) -> None:
        message_id = self._preview_messages.pop(key, None)
        if message_id is not None:
            self.preview_ledger.remove(self.pacer.chat(key[0]), message_id)

    async def _delete_preview(self, chat_id: int, message_id: int) -> None:
        try:
            await self.pacer.call(
                chat_id, lambda cid: self.bot.delete_message(chat_id=cid, message_id=message_id)
            )
        except BadRequest as exc:
            if "not found" not in exc.message.lower() and not is_gone(exc):
                raise  # gone already, or its chat is: nothing is left to delete

    async def sweep_previews(self, leftovers: list[tuple[int, int]]) -> None:
        """At start: delete the preview messages processes that died left behind
        (``PreviewLedger.open``)."""
        for chat_id, message_id in leftovers:
            try:
                async with asyncio.timeout(10):
                    await self._delete_preview(chat_id, message_id)
            except Exception as exc:
                log.info("telegram: a preview message left behind stays: %s", exc)

    async def previews_stopped(self) -> None:
        """On the way out: this process's previews go (the next process runs the job on,
        with a preview of its own); what cannot be deleted now, the next start deletes."""
        try:
            async with asyncio.timeout(10):
                for key, message_id in list(self._preview_messages.items()):
                    await self._delete_preview(key[0], message_id)
                    self._forget_preview(key)
        except Exception as exc:
            log.info("telegram: preview messages left for the next start: %s", exc)
        self.preview_ledger.close()

    # --- the status message (the rest is in Conversation) -------------------------------

    def status_key(self, reply_to: ReplyTo) -> tuple[int, int] | None:
        chat, status = reply_to.chat, reply_to.status_message
        if chat is None or status is None:
            return None
        return int(chat), status

    def lane(self, key: Any) -> int:
        return int(key[0])  # Telegram limits calls per chat

    async def edit_status(self, reply_to: ReplyTo, key: Any, text: str) -> None:
        await self._send_status_edit(key[0], key[1], text)

    def status_lock(self, key: Any) -> asyncio.Lock:
        """Per status message, not per chat: its edits wait for each other, never for the
        pictures of other jobs waiting to be sent in the chat."""
        lock = self._status_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._status_locks[key] = lock
        return lock

    def has_room(self, key: Any) -> bool:
        return self.pacer.has_room(key[0])

    def is_gone(self, exc: Exception) -> bool:
        return is_gone(exc)

    async def post_notice(self, reply_to: ReplyTo, text: str) -> None:
        chat = reply_to.chat
        if chat is None:
            return
        reply = reply_to.status_message or reply_to.source_message
        await self.pacer.call(
            int(chat),
            lambda cid: self.bot.send_message(
                cid,
                clip(text, MAX_TEXT),
                reply_parameters=ReplyParameters(int(reply), allow_sending_without_reply=True)
                if reply
                else None,
                message_thread_id=reply_to.thread,
            ),
        )


def _take_album(queue: list[_Outgoing]) -> list[_Outgoing]:
    """The next send: one item, or up to ten photos for the same message as an album."""
    first = queue.pop(0)
    if first.data is None or not first.as_photo:
        return [first]
    batch = [first]
    rest: list[_Outgoing] = []
    for item in queue:
        if (
            len(batch) < ALBUM_MAX
            and item.data is not None
            and item.as_photo
            and item.reply_message == first.reply_message
            and item.thread == first.thread
        ):
            batch.append(item)
        else:
            rest.append(item)
    queue[:] = rest
    return batch
