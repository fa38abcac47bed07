"""One conversation, whatever the platform: who may talk, in which language, the status
message and its paced edits, notices, and what a chat's NSFW policy does to a picture.

A platform adapter subclasses ``Conversation`` and supplies only what differs: where a
reply target's status message is (``status_key``), how to edit it (``edit_status``) and how
to post a notice (``post_notice``). Everything else is written once here, so a fix made for
one platform is made for all of them.

A status message is edited through ``put_status``, which never sends the text the message
shows already (Telegram refuses such an edit with "message is not modified"; Discord would
just spend a call): the last text per message is kept (bounded), and on the way out a digest
of it is written on each running job's reply target, so the process that goes on with the
job after a restart does not send it again either. A progress edit's text is rendered when
its turn comes, under the chat's lock, so it shows the job as it is then, not as it was
when the edit was queued behind pictures.

A job's live preview (see ``adapters.chat.status``) goes with its status message: paced on its
own, shown by the platform (``show_preview``), and taken away (``end_preview``) once the
job's pictures or its outcome are in the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Literal

from adapters.chat.status import (
    ProgressEditor,
    ResultsAdapter,
    preview_digest,
    progress_text,
    shrink_preview,
)
from bot.chat import Delivery, DeliveryGone, DeliveryRetry, Progress, ReplyTo, UserRef
from bot.commands import format_receipt
from bot.errors import UserError
from bot.i18n import normalize
from bot.results import Results
from bot.status import JOB_TERMINAL
from storage.files import StorageUnavailable

log = logging.getLogger(__name__)
# How long a picture event waits when the picture store cannot be reached.
STORAGE_RETRY_S = 15.0

MAX_SHOWN = 20_000  # status messages whose last text is kept in mind


def text_digest(text: str) -> str:
    """A short digest of a status text (what is written on a job's reply target)."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


PicturePolicy = Literal["send", "spoiler", "withhold"]
# What the buttons under a picture that start a job do (``Conversation.remake``).
RemakeAction = Literal["reroll", "vary", "upscale"]
REMAKE_ACTIONS: tuple[RemakeAction, ...] = ("reroll", "vary", "upscale")


def picture_policy(nsfw: bool, policy: str) -> PicturePolicy:
    """What a chat does with a picture: ``policy`` is the chat's setting (allow, blur or
    spoiler, block)."""
    if not nsfw or policy == "allow":
        return "send"
    if policy == "block":
        return "withhold"
    return "spoiler"


class Conversation(ResultsAdapter):
    """The shared half of a chat adapter (see the module docstring)."""

    app: Any
    cfg: Any  # the platform's config section: admin_ids, default_lang, progress_edit_s
    results: Results
    edits: ProgressEditor
    previews: ProgressEditor

    def setup_conversation(self) -> None:
        self.results = Results(self.app.jobs)
        self.edits = ProgressEditor(
            self.cfg.progress_edit_s, self.lane, self._edit_progress, on_stop=self._note_shown
        )
        # a job's live preview: one picture edit per status message this often; 0: none
        self.preview_interval_s = float(self.app.config.images.preview_interval_s)
        self.previews = ProgressEditor(
            self.preview_interval_s or 1.0,
            lambda key: key,
            self._edit_preview,
            on_stop=self.previews_stopped,
        )
        # status key -> the digest of the preview it shows (bounded)
        self._preview_shown: OrderedDict[Hashable, bytes] = OrderedDict()
        self._preview_locks: weakref.WeakValueDictionary[Any, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # status key -> (the text it shows, the job whose state that is; 0: not a job's)
        self._shown: OrderedDict[Hashable, tuple[str, int]] = OrderedDict()
        # status messages whose job's pictures are in the chat: a receipt is past for them
        self._pictured: OrderedDict[Hashable, None] = OrderedDict()

    # --- who -----------------------------------------------------------------------------

    def is_admin(self, user_id: int) -> bool:
        return (
            user_id in self.cfg.admin_ids
            or f"{self.platform}:{user_id}" in self.app.config.admin.users
        )

    async def lang_of(self, user: UserRef, locale: str | None = None) -> str:
        """The person's language: chosen with /lang, else their client's, else the bot's."""
        stored = await self.app.jobs.user_lang(user)
        return stored or normalize(locale or user.locale) or self.cfg.default_lang

    def reply_lang(self, reply_to: ReplyTo) -> str:
        return reply_to.lang or self.cfg.default_lang

    # --- the status message --------------------------------------------------------------

    def status_key(self, reply_to: ReplyTo) -> Hashable | None:
        """The status message a reply target points at, or None."""
        raise NotImplementedError

    def lane(self, key: Any) -> Hashable:
        """Edits in one lane are paced together (a chat on Telegram, a message on Discord)."""
        hashable: Hashable = key
        return hashable

    async def edit_status(self, reply_to: ReplyTo, key: Any, text: str) -> None:
        raise NotImplementedError

    def status_lock(self, key: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a status edit; a platform that orders a chat's calls overrides it."""
        return contextlib.nullcontext()

    def has_room(self, key: Any) -> bool:
        """False when the platform's budget for this lane is spoken for: try again later."""
        return True

    def shows(self, key: Hashable, reply_to: ReplyTo, text: str) -> bool:
        """Whether the status message shows ``text`` already (sent by this process, or
        noted on the job's reply target by the one before)."""
        entry = self._shown.get(key)
        if entry is not None:
            return entry[0] == text
        return reply_to.shown == text_digest(text)

    def _remember(self, key: Hashable, text: str, job_id: int) -> None:
        self._shown[key] = (text, job_id)
        self._shown.move_to_end(key)
        while len(self._shown) > MAX_SHOWN:
            self._shown.popitem(last=False)

    async def put_status(
        self, reply_to: ReplyTo, key: Hashable, text: str, *, job_id: int = 0
    ) -> None:
        """Edit the status message to ``text`` unless that is what it shows; ``job_id``:
        the job whose state the text is (0: a receipt, a refusal, not a job's state)."""
        if not self.shows(key, reply_to, text):
            await self.edit_status(reply_to, key, text)
        self._remember(key, text, job_id)

    def note_pictures_shown(self, key: Hashable) -> None:
        """The job of this status message has pictures in the chat: a receipt that comes
        later would show it as queued again (see ``receipt_is_past``)."""
        self._pictured[key] = None
        self._pictured.move_to_end(key)
        while len(self._pictured) > MAX_SHOWN:
            self._pictured.popitem(last=False)

    def receipt_is_past(self, key: Hashable) -> bool:
        """Whether the status message shows more than a receipt could: its job's outcome,
        or its pictures came already."""
        return self.edits.is_final(key) or key in self._pictured

    async def _note_shown(self) -> None:
        """On the way out: note on each running job's reply target what its status message
        shows, for the process that goes on with it."""
        shown = {
            job_id: text_digest(text)
            for key, (text, job_id) in self._shown.items()
            if job_id > 0 and not self.edits.is_final(key)
        }
        try:
            await self.app.jobs.note_status_shown(shown)
        except Exception as exc:
            log.warning("%s: could not note what status messages show: %s", self.platform, exc)

    def start_status_edits(self) -> None:
        self.edits.start()
        self.previews.start()

    async def stop_status_edits(self) -> None:
        await self.previews.stop()
        await self.edits.stop()

    async def progress(self, update: Progress) -> None:
        if update.stage in JOB_TERMINAL:
            return  # the outbox event says it, with the details
        if update.preview is not None:
            self.mark_preview(update)
            update = dataclasses.replace(update, preview=None)  # the text needs no picture
        self.mark_dirty(update)

    def mark_dirty(self, update: Progress) -> None:
        key = self.status_key(update.reply_to)
        if key is not None:
            self.edits.update(key, update)

    async def show_status(self, reply_to: ReplyTo, text: str, *, final: bool = False) -> None:
        key = self.status_key(reply_to)
        if key is None:
            return
        if not final:
            self.edits.update(key, Progress(0, 0, "status", reply_to=reply_to, text=text))
            return
        self.edits.finish(key)
        async with self.status_lock(key):
            try:
                await self.put_status(reply_to, key, text)
            except Exception as exc:
                if not self.is_gone(exc):
                    log.warning("%s: status edit failed: %s", self.platform, exc)

    async def _edit_progress(self, key: Any, update: Progress) -> None:
        try:
            async with self.status_lock(key):
                if self.edits.is_final(key):
                    return
                if not self.has_room(key):
                    self.edits.retry_later(key, update)
                    return
                # rendered now: the job as it is, not as it was when this edit was queued
                lang = self.reply_lang(update.reply_to)
                text = await progress_text(self.results, update, lang)
                if text is None:
                    return
                job_id = update.job_id if update.text is None else 0
                await self.put_status(update.reply_to, key, text, job_id=job_id)
        except Exception as exc:
            if not self.is_gone(exc):
                log.info("%s: progress edit failed: %s", self.platform, exc)

    # --- the live preview ----------------------------------------------------------------

    def mark_preview(self, update: Progress) -> None:
        """The newest picture of a running job: shown with its status when its turn comes.
        A batch's status counts its tasks and shows none of their pictures."""
        if self.preview_interval_s <= 0 or update.batch_id is not None:
            return
        key = self.status_key(update.reply_to)
        if key is None or self.receipt_is_past(key):
            return
        if self.preview_policy(update.reply_to) == "withhold":
            return
        self.previews.update(key, update)

    def preview_policy(self, reply_to: ReplyTo) -> PicturePolicy:
        """What the chat does with a preview: nothing has judged it yet, so the chat's NSFW
        policy holds as for a flagged picture (a spoiler where NSFW is hidden, no preview
        where it is blocked)."""
        return "send"

    def _preview_lock(self, key: Any) -> asyncio.Lock:
        """Held around showing and taking away a status message's preview, so the last
        preview sent is the one taken away."""
        lock = self._preview_locks.get(key)
        if lock is None:
            lock = self._preview_locks[key] = asyncio.Lock()
        return lock

    async def _edit_preview(self, key: Any, update: Progress) -> None:
        raw = update.preview
        if raw is None:
            return
        try:
            async with self._preview_lock(key):
                if self.previews.is_final(key) or self.receipt_is_past(key):
                    return
                if not self.has_room(key):
                    self.previews.retry_later(key, update)
                    return
                digest = preview_digest(raw)
                if self._preview_shown.get(key) == digest:
                    return  # the status shows this picture already
                picture = await asyncio.to_thread(shrink_preview, raw)
                if picture is None or self.previews.is_final(key):
                    return  # not a picture (logged at debug): the text progress goes on
                spoiler = self.preview_policy(update.reply_to) == "spoiler"
                await self.show_preview(
                    update.reply_to, key, picture, job_id=update.job_id, spoiler=spoiler
                )
                self._preview_shown[key] = digest
                self._preview_shown.move_to_end(key)
                while len(self._preview_shown) > MAX_SHOWN:
                    self._preview_shown.popitem(last=False)
        except Exception as exc:
            if not self.is_gone(exc):
                log.info("%s: a preview edit failed: %s", self.platform, exc)

    async def end_preview(self, reply_to: ReplyTo) -> None:
        """The job's pictures or its outcome are in the chat: no preview comes any more, and
        the one shown goes (``drop_preview``). Best effort: a preview left is no error."""
        key = self.status_key(reply_to)
        if key is None:
            return
        self.previews.finish(key)
        try:
            async with self._preview_lock(key):  # after a preview edit under way
                if self._preview_shown.pop(key, None) is not None:
                    await self.drop_preview(reply_to, key)
        except Exception as exc:
            if not self.is_gone(exc):
                log.info("%s: taking a preview away failed: %s", self.platform, exc)

    async def show_preview(
        self, reply_to: ReplyTo, key: Any, picture: bytes, *, job_id: int, spoiler: bool
    ) -> None:
        """Show ``picture`` (a small JPEG, behind a spoiler if ``spoiler``) with the status
        message of job ``job_id``, in place of the one shown before."""

    async def drop_preview(self, reply_to: ReplyTo, key: Any) -> None:
        """Take the preview shown with the status message away."""

    async def previews_stopped(self) -> None:
        """On the way out, after the last preview edit: previews this process showed can be
        taken away (nobody else knows of them)."""

    async def deliver(self, delivery: Delivery) -> None:
        await super().deliver(delivery)
        if delivery.payload.get("batch_id") is None:
            await self.end_preview(delivery.reply_to)

    async def deliver_group(self, deliveries: list[Delivery]) -> None:
        await super().deliver_group(deliveries)
        if deliveries and deliveries[0].payload.get("batch_id") is None:
            await self.end_preview(deliveries[0].reply_to)

    async def delivered_picture(self, payload: Mapping[str, Any]) -> bytes:
        """The bytes of a picture event, from the store by its sha256 (never from a path:
        the store may be a bucket, and the picture made by a process on another machine).
        A picture gone from the store drops the event; a store that cannot be reached now
        puts it off."""
        try:
            return await self.results.stored_picture(str(payload["sha256"]))
        except FileNotFoundError:
            raise DeliveryGone(f"the picture {payload['sha256']} is gone from the store") from None
        except StorageUnavailable as exc:
            raise DeliveryRetry(STORAGE_RETRY_S, str(exc)) from exc

    # --- buttons -------------------------------------------------------------------------

    def can_upscale(self, payload: Mapping[str, Any]) -> bool:
        """Whether a delivered picture (its outbox payload) gets an Upscale button: its
        job's provider can upscale."""
        return self.results.can_upscale(str(payload.get("model") or ""))

    async def remake(
        self,
        action: RemakeAction,
        user: UserRef,
        job_id: int,
        idx: int,
        reply_to: ReplyTo,
        lang: str,
        *,
        idem_key: str,
        open_status: Callable[..., Awaitable[Any]],
    ) -> tuple[str, Any]:
        """Reroll, Vary or Upscale a picture: the receipt or the refusal to show, and the
        status message ``open_status`` made once the core accepted the job (None: refused,
        or the same press again). ``open_status(opened, ...)`` is the platform's
        ``on_accept`` with a dict to note the message in."""
        run = {
            "reroll": self.results.reroll,
            "vary": self.results.vary,
            "upscale": self.results.upscale,
        }[action]
        opened: dict[str, Any] = {}
        try:
            receipt = await run(
                user,
                job_id,
                idx,
                reply_to,
                idem_key=idem_key,
                on_accept=functools.partial(open_status, opened),
            )
            text = format_receipt(receipt, lang)
        except UserError as exc:
            text = exc.render(lang)
        return text, opened.get("status_message")

    # --- notices -------------------------------------------------------------------------

    async def post_notice(self, reply_to: ReplyTo, text: str) -> None:
        raise NotImplementedError

    async def announce(self, reply_to: ReplyTo, text: str) -> None:
        try:
            await self.post_notice(reply_to, text)
        except Exception as exc:
            if not self.is_gone(exc):
                log.warning("%s: a notice failed: %s", self.platform, exc)

    def is_gone(self, exc: Exception) -> bool:
        """The chat can never be reached again (blocked, deleted): not worth a warning."""
        return False
