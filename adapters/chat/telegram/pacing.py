"""Pacing of everything the bot sends to Telegram, and what Telegram's errors mean for it.

Telegram's limits are unpublished and change with load; the FAQ asks for about one message
a second per chat, twenty a minute per group and thirty a second overall. Every call that
puts something in a chat (send, edit, album) goes through :class:`Pacer`, which keeps to
those rates with a :class:`Bucket` per chat: a small burst, then calls evenly spaced at the
chat's rate (a group's 20 a minute is one every 3 s from the first message, not 20 at once
and then a stall), an album counting as its pictures in a group. When Telegram still says
"retry after N", the Pacer holds that chat
for N seconds and tries again: a flood wait delays a message, it never drops it. A wait longer
than ``max_inline_wait_s`` is handed back to the outbox as ``DeliveryRetry`` so one flooded
chat does not pin a delivery slot for minutes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiolimiter import AsyncLimiter
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter

from bot.chat import DeliveryGone, DeliveryRetry
from bot.config import TelegramConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

BURST = 3  # calls a chat may take at once (a receipt, a picture, its buttons)
MAX_CHATS = 10_000  # per-chat buckets kept (least recently used chats are forgotten)
# Requests in flight to Telegram at once. It matches the HTTP connection pool: httpx's pool
# spends time quadratic in the requests queued inside it, so they wait here instead.
IN_FLIGHT = 16


def retry_after_s(exc: RetryAfter) -> float:
    """Seconds Telegram asked for (PTB 22 reports a timedelta or an int, with a warning)."""
    value = getattr(exc, "_retry_after", None)
    if value is None:
        value = exc.retry_after
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def is_gone(exc: Exception) -> bool:
    """The chat can never be reached again: blocked, kicked, deleted, deactivated."""
    if isinstance(exc, Forbidden):
        return True
    return isinstance(exc, BadRequest) and any(
        s in exc.message.lower()
        for s in (
            "chat not found",
            "user is deactivated",
            "peer_id_invalid",
            "chat_write_forbidden",
        )
    )


class Bucket:
    """An even rate with a small burst (GCRA, a token bucket in virtual time): calls go
    ``weight`` slots each, never more than ``burst`` at once, then evenly spaced. Callers
    that must wait are let go one by one as slots come free, in the order they asked, except
    that an ``urgent`` call (an edit that says where a job stands) goes before the sends
    waiting at the time."""

    def __init__(
        self, per_s: float, burst: int = BURST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = 1.0 / per_s
        self.tolerance = max(0, burst - 1) * self.interval
        self.clock = clock
        self._tat = 0.0  # when the bucket would be empty again ("theoretical arrival time")
        self._waiting: list[tuple[int, int, float, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def delay(self) -> float:
        """Seconds until a call could go."""
        now = self.clock()
        return max(0.0, max(self._tat, now) - self.tolerance - now)

    def has_capacity(self) -> bool:
        return not self._waiting and self.delay() <= 0.0

    def reserve(self, weight: float = 1.0) -> float:
        """Take the next slot; returns how long until it comes."""
        now = self.clock()
        tat = max(self._tat, now)
        wait = max(0.0, tat - self.tolerance - now)
        self._tat = tat + weight * self.interval
        return wait

    async def acquire(self, weight: float = 1.0, *, urgent: bool = False) -> None:
        if self.has_capacity():
            self.reserve(weight)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (0 if urgent else 1, next(self._order), weight, turn))
        self._wake_later()
        try:
            await turn
        except asyncio.CancelledError:
            turn.cancel()  # its place is skipped (a slot it was given is spent)
            raise

    def _wake_later(self) -> None:
        if self._timer is None and self._waiting:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.delay(), self._let_go)

    def _let_go(self) -> None:
        self._timer = None
        while self._waiting and self.delay() <= 0.0:
            _, _, weight, turn = heapq.heappop(self._waiting)
            if not turn.done():
                self.reserve(weight)
                turn.set_result(None)
        self._wake_later()


class Pacer:
    def __init__(self, cfg: TelegramConfig) -> None:
        self.cfg = cfg
        self.overall = AsyncLimiter(cfg.overall_per_s, 1.0)
        self._chats: OrderedDict[int, Bucket] = OrderedDict()
        self._held_until: dict[int, float] = {}
        self.migrated: dict[int, int] = {}
        self.flood_waits = 0  # how many times Telegram said "retry after" (for tests, stats)
        self.in_flight = asyncio.Semaphore(IN_FLIGHT)

    def _bucket(self, chat_id: int) -> Bucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if chat_id < 0:  # groups, supergroups and channels have negative ids
                bucket = Bucket(self.cfg.per_group_per_min / 60.0)
            else:  # a short burst (receipt, picture, buttons), then one a second
                bucket = Bucket(self.cfg.per_chat_per_s)
            self._chats[chat_id] = bucket
            while len(self._chats) > MAX_CHATS:
                self._chats.popitem(last=False)
        else:
            self._chats.move_to_end(chat_id)
        return bucket

    def has_room(self, chat_id: int) -> bool:
        """Whether a send to the chat would go now, without waiting: progress edits only use
        what pictures and replies leave over."""
        chat_id = self.chat(chat_id)
        if self._held_until.get(chat_id, 0.0) > time.monotonic():
            return False
        return self._bucket(chat_id).has_capacity() and self.overall.has_capacity()

    def chat(self, chat_id: int) -> int:
        """The chat's current id (a group that became a supergroup got a new one)."""
        return self.migrated.get(chat_id, chat_id)

    async def call(
        self,
        chat_id: int,
        fn: Callable[[int], Awaitable[T]],
        *,
        messages: int = 1,
        urgent: bool = False,
    ) -> T:
        """Run ``fn(chat_id)`` within the chat's and the bot's budget; wait out flood control.

        ``messages``: how many messages the call puts in the chat (an album: its pictures);
        a group's budget counts them all, a private chat's the call. ``urgent``: goes before
        the sends waiting for the chat's budget (a status edit)."""
        chat_id = self.chat(chat_id)
        while True:
            held = self._held_until.get(chat_id, 0.0) - time.monotonic()
            if held > 0:
                if held > self.cfg.max_inline_wait_s:
                    raise DeliveryRetry(held, f"chat {chat_id} is under flood control")
                await asyncio.sleep(held)
            await self._bucket(chat_id).acquire(messages if chat_id < 0 else 1, urgent=urgent)
            await self.overall.acquire()
            try:
                async with self.in_flight:
                    return await fn(chat_id)
            except RetryAfter as exc:
                wait = retry_after_s(exc) + 0.1
                self.flood_waits += 1
                self._held_until[chat_id] = time.monotonic() + wait
                log.info("flood control in chat %s: waiting %.1fs", chat_id, wait)
            except ChatMigrated as exc:
                new_id = int(exc.new_chat_id)
                log.info("chat %s became supergroup %s", chat_id, new_id)
                self.migrated[chat_id] = new_id
                chat_id = new_id

    async def deliver(
        self,
        chat_id: int,
        fn: Callable[[int], Awaitable[T]],
        *,
        messages: int = 1,
        urgent: bool = False,
    ) -> T:
        """``call`` for outbox deliveries: an unreachable chat is ``DeliveryGone``."""
        try:
            return await self.call(chat_id, fn, messages=messages, urgent=urgent)
        except (Forbidden, BadRequest) as exc:
            if is_gone(exc):
                raise DeliveryGone(f"telegram chat {chat_id}: {exc.message}") from exc
            raise
