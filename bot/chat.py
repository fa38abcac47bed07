"""What the core expects of a chat platform adapter, and what it hands over.

Delivery is at-least-once through the outbox: an adapter's ``deliver`` is called for every
event until it returns, and the event is marked sent right after. An adapter raises
``DeliveryRetry`` when the platform asks it to wait (flood control) and ``DeliveryGone`` when
the target can never be reached (the person blocked the bot, the chat was deleted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class UserRef:
    """A person as a platform knows them."""

    platform: str
    id: str
    name: str = ""
    locale: str | None = None

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.id}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox event. ``kind`` is image | finished | failed | cancelled."""

    id: int
    job_id: int
    kind: str
    idx: int
    payload: dict[str, Any]
    attempts: int = 0

    @property
    def reply_to(self) -> dict[str, Any]:
        return self.payload.get("reply_to", {})


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: int
    percent: int
    stage: str  # received | submitted | generating | done
    reply_to: dict[str, Any] = field(default_factory=dict)
    batch_id: int | None = None
    # A status text already written, shown as is: the state of something that is not a job
    # (a model download), sent through the same paced edits as job progress.
    text: str | None = None


class DeliveryRetry(Exception):
    def __init__(self, retry_after: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {retry_after}s")
        self.retry_after = retry_after


class DeliveryGone(Exception):
    """The target is permanently unreachable; the event is dropped (and logged)."""


class ChatAdapter(ABC):
    platform: str
    # Consecutive pictures of one job handed over in one call (an album); 1: one by one.
    max_group: int = 1

    @abstractmethod
    async def deliver(self, delivery: Delivery) -> None: ...

    async def deliver_group(self, deliveries: list[Delivery]) -> None:
        """Deliver several picture events of one job together, all or nothing.

        Only called with more than one event when ``max_group`` > 1; the events are marked
        sent together once it returns.
        """
        for delivery in deliveries:
            await self.deliver(delivery)

    # Lifecycle, called by App: ``connect`` before the core starts (log in; deliveries may
    # come from then on), ``listen`` once it runs (take commands), ``stop_listening`` before
    # it stops, ``disconnect`` after. All optional.
    async def connect(self) -> None:  # noqa: B027
        pass

    async def listen(self) -> None:  # noqa: B027
        pass

    async def stop_listening(self) -> None:  # noqa: B027
        pass

    async def disconnect(self) -> None:  # noqa: B027
        pass

    async def progress(self, update: Progress) -> None:  # noqa: B027 - optional
        """Best effort and unthrottled from the core's side: adapters pace their own edits.

        Called inline by the running job, so it must return quickly: an adapter that edits
        a message over the network records the latest state and sends it from a task of
        its own.
        """

    async def show_status(  # noqa: B027 - optional
        self, reply_to: dict[str, Any], text: str, *, final: bool = False
    ) -> None:
        """Show ``text`` on the status message ``reply_to`` names, for something that is not a
        job (a model download). Paced like job progress, so it must return quickly;
        ``final`` is the last state: sent now, and nothing older may overwrite it."""

    async def announce(self, reply_to: dict[str, Any], text: str) -> None:  # noqa: B027
        """A new message in the chat of ``reply_to`` (news worth a notification, such as a
        finished download, where an edit would go unnoticed). Best effort."""
