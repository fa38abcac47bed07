"""What chat adapters share about status messages: their text and their paced edits.

A job's status message is edited as it runs. Platforms limit edits, so only the newest
state of each message is kept and sent at most once per ``interval`` per lane (a chat on
Telegram, a message on Discord); several updates in between become one edit. Once the
outbox has written a message's outcome it is final, and older progress never overwrites it.

A job's live preview (the picture a self-hosted GPU reports as it develops,
``Progress.preview``) goes with its status message, paced the same way on its own editor
(``[images] preview_interval_s``): only the newest waits, and when its turn comes it is
shrunk once to a small JPEG (``shrink_preview``), off the event loop, through
``bot.imaging`` (the decompression-bomb limits hold). One that does not decode is dropped
(logged at debug); the text progress goes on regardless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from bot.chat import ChatAdapter, Delivery, Progress
from bot.commands import format_batch_status, format_outcome, format_status
from bot.errors import BadInput
from bot.imaging import make_preview
from bot.results import Results
from bot.status import JOB_ACTIVE
from bot.waiting import wait_for_event

log = logging.getLogger(__name__)

# The console's tag line says what happened; in a chat a mark does (zh text has the word).
OUTCOME_MARK = {"finished": "✅ ", "failed": "⚠️ ", "cancelled": "🚫 "}
MAX_REMEMBERED = 20_000  # final status messages kept in mind

PREVIEW_SIDE = 512  # the long side of a live preview in the chat, in pixels
PREVIEW_QUALITY = 70  # JPEG quality: a preview is looked at for seconds
# What a preview may decode to at most: a 2048x2048 picture, well over any GPU's preview.
PREVIEW_MAX_PIXELS = 4_194_304


def outcome_text(kind: str, job_id: int, payload: dict[str, Any], lang: str) -> str:
    text = format_outcome(kind, job_id, payload, lang)
    if kind == "cancelled" and lang == "en":
        text = f"cancelled: {text}"
    return OUTCOME_MARK.get(kind, "") + text


async def progress_text(results: Results, update: Progress, lang: str) -> str | None:
    """The status text for a progress update; None when the job is over (the outcome says
    it)."""
    if update.text is not None:
        return update.text
    if update.batch_id is not None:
        counts = await results.batch_counts(update.batch_id)
        return format_batch_status(update.batch_id, counts, sum(counts.values()), lang)
    view = await results.jobs.job(None, update.job_id)
    if view.status not in JOB_ACTIVE:
        return None
    return format_status(view, lang)


def preview_digest(data: bytes) -> bytes:
    """What tells two previews apart (the status shows one already: not sent again)."""
    return hashlib.sha256(data).digest()


def shrink_preview(data: bytes) -> bytes | None:
    """A live preview as a small JPEG (at most ``PREVIEW_SIDE`` a side), or None when it
    does not decode. Synchronous and CPU-bound: run it with ``asyncio.to_thread``."""
    try:
        return make_preview(
            data, max_side=PREVIEW_SIDE, max_pixels=PREVIEW_MAX_PIXELS, quality=PREVIEW_QUALITY
        )
    except BadInput as exc:
        log.debug("a preview was dropped: %s", exc)
    except Exception as exc:  # Pillow's own surprises: a preview is never worth an error
        log.debug("a preview was dropped: %r", exc)
    return None


class ProgressEditor:
    def __init__(
        self,
        interval: float,
        lane: Callable[[Any], Hashable],
        send: Callable[[Any, Progress], Coroutine[Any, Any, None]],
        *,
        on_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.interval = interval
        self.lane = lane
        self.send = send
        self.on_stop = on_stop
        self.dirty: dict[Any, Progress] = {}
        self._final: dict[Any, None] = {}
        self._last: dict[Hashable, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="status-edits")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.on_stop is not None:
            await self.on_stop()

    def update(self, key: Any, progress: Progress) -> None:
        """The newest state of a status message; sent when its lane's turn comes."""
        if key in self._final:
            return
        self.dirty[key] = progress
        self._wake.set()

    def retry_later(self, key: Any, progress: Progress) -> None:
        """Could not send now: keep it, unless something newer came in meanwhile."""
        if key not in self._final:
            self.dirty.setdefault(key, progress)
            self._wake.set()

    def finish(self, key: Any) -> None:
        self._final[key] = None
        self.dirty.pop(key, None)
        if len(self._final) > MAX_REMEMBERED:
            for old in list(self._final)[: MAX_REMEMBERED // 2]:
                del self._final[old]

    def is_final(self, key: Any) -> bool:
        return key in self._final

    async def _loop(self) -> None:
        while True:
            if not self.dirty:
                self._wake.clear()
                await self._wake.wait()
            now = time.monotonic()
            wait = self.interval
            busy: set[Hashable] = set()
            for key in list(self.dirty):
                lane = self.lane(key)
                ready_at = self._last.get(lane, 0.0) + self.interval
                if ready_at > now or lane in busy:
                    wait = min(wait, max(0.01, ready_at - now))
                    continue
                progress = self.dirty.pop(key)
                busy.add(lane)
                self._last[lane] = now
                task = asyncio.create_task(self.send(key, progress))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self.dirty:
                self._wake.clear()
                await wait_for_event(self._wake, wait)


class ResultsAdapter(ChatAdapter):
    """A chat adapter that posts pictures (several at once where it can) and outcomes."""

    results: Results

    async def deliver(self, delivery: Delivery) -> None:
        if delivery.kind == "image":
            await self.send_pictures([delivery])
        else:
            await self.send_outcome(await self.as_it_is_now(delivery))

    async def as_it_is_now(self, delivery: Delivery) -> Delivery:
        """The outcome with the person's balance as it is now: the outbox may deliver it
        well after the job finished, when other jobs were charged or refunded since (the
        event's balance is the one at the finish, kept if the database cannot say)."""
        if "balance" not in delivery.payload:
            return delivery
        try:
            balance = await self.results.jobs.owner_balance(delivery.job_id)
        except Exception:
            log.warning("reading the balance for job %s failed", delivery.job_id, exc_info=True)
            return delivery
        if balance is None:
            return delivery
        return dataclasses.replace(delivery, payload={**delivery.payload, "balance": balance})

    async def deliver_group(self, deliveries: list[Delivery]) -> None:
        await self.send_pictures(deliveries)

    async def send_pictures(self, deliveries: list[Delivery]) -> None:
        raise NotImplementedError

    async def send_outcome(self, delivery: Delivery) -> None:
        raise NotImplementedError
