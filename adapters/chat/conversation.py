"""One conversation, whatever the platform: who may talk, in which language, the status
message and its paced edits, notices, and what a chat's NSFW policy does to a picture.

A platform adapter subclasses ``Conversation`` and supplies only what differs: where a
reply target's status message is (``status_key``), how to edit it (``edit_status``) and how
to post a notice (``post_notice``). Everything else is written once here, so a fix made for
one platform is made for all of them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable
from typing import Any, Literal

from adapters.chat.status import ProgressEditor, ResultsAdapter, progress_text
from bot.chat import Progress, UserRef
from bot.i18n import normalize
from bot.results import Results
from bot.status import JOB_TERMINAL

log = logging.getLogger(__name__)

PicturePolicy = Literal["send", "spoiler", "withhold"]


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

    def setup_conversation(self) -> None:
        self.results = Results(self.app.jobs)
        self.edits = ProgressEditor(self.cfg.progress_edit_s, self.lane, self._edit_progress)

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

    def reply_lang(self, reply_to: dict[str, Any]) -> str:
        return str(reply_to.get("lang") or self.cfg.default_lang)

    # --- the status message --------------------------------------------------------------

    def status_key(self, reply_to: dict[str, Any]) -> Hashable | None:
        """The status message a reply target points at, or None."""
        raise NotImplementedError

    def lane(self, key: Any) -> Hashable:
        """Edits in one lane are paced together (a chat on Telegram, a message on Discord)."""
        hashable: Hashable = key
        return hashable

    async def edit_status(self, reply_to: dict[str, Any], key: Any, text: str) -> None:
        raise NotImplementedError

    def status_lock(self, key: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a status edit; a platform that orders a chat's calls overrides it."""
        return contextlib.nullcontext()

    def has_room(self, key: Any) -> bool:
        """False when the platform's budget for this lane is spoken for: try again later."""
        return True

    async def progress(self, update: Progress) -> None:
        if update.stage in JOB_TERMINAL:
            return  # the outbox event says it, with the details
        self.mark_dirty(update)

    def mark_dirty(self, update: Progress) -> None:
        key = self.status_key(update.reply_to)
        if key is not None:
            self.edits.update(key, update)

    async def show_status(
        self, reply_to: dict[str, Any], text: str, *, final: bool = False
    ) -> None:
        key = self.status_key(reply_to)
        if key is None:
            return
        if not final:
            self.edits.update(key, Progress(0, 0, "status", reply_to=reply_to, text=text))
            return
        self.edits.finish(key)
        async with self.status_lock(key):
            try:
                await self.edit_status(reply_to, key, text)
            except Exception as exc:
                if not self.is_gone(exc):
                    log.warning("%s: status edit failed: %s", self.platform, exc)

    async def _edit_progress(self, key: Any, update: Progress) -> None:
        try:
            text = await progress_text(self.results, update, self.reply_lang(update.reply_to))
            if text is None:
                return
            async with self.status_lock(key):
                if self.edits.is_final(key):
                    return
                if not self.has_room(key):
                    self.edits.retry_later(key, update)
                    return
                await self.edit_status(update.reply_to, key, text)
        except Exception as exc:
            if not self.is_gone(exc):
                log.info("%s: progress edit failed: %s", self.platform, exc)

    # --- notices -------------------------------------------------------------------------

    async def post_notice(self, reply_to: dict[str, Any], text: str) -> None:
        raise NotImplementedError

    async def announce(self, reply_to: dict[str, Any], text: str) -> None:
        try:
            await self.post_notice(reply_to, text)
        except Exception as exc:
            if not self.is_gone(exc):
                log.warning("%s: a notice failed: %s", self.platform, exc)

    def is_gone(self, exc: Exception) -> bool:
        """The chat can never be reached again (blocked, deleted): not worth a warning."""
        return False
