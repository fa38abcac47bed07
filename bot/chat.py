"""What the core expects of a chat platform adapter, and what it hands over.

Delivery is at-least-once through the outbox: an adapter's ``deliver`` is called for every
event until it returns, and the event is marked sent right after. An adapter raises
``DeliveryRetry`` when the platform asks it to wait (flood control) and ``DeliveryGone`` when
the target can never be reached (the person blocked the bot, the chat was deleted).

Every outbox event carries its audience, the recipient its reply target names
(``audience_of``). Most platforms can be delivered to by any process; one whose delivery is
bound to a process (a console prints in its own terminal) says which audiences it serves
(``ChatAdapter.audiences``), and gets only their events and their live progress.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUDIENCE_MAX = 160  # the width of outbox.audience


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


def audience_of(reply_to: Mapping[str, Any]) -> str | None:
    """Who an event for ``reply_to`` is for: ``"platform:chat"``; None if it names no chat.

    The same text whichever process writes the event and whichever serves the person, so a
    bound adapter can claim exactly its people's events.
    """
    platform, chat = reply_to.get("platform"), reply_to.get("chat")
    if not platform or chat is None or chat == "":
        return None
    return f"{platform}:{chat}"[:AUDIENCE_MAX]


def outbox_address(reply_to: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that say where an outbox event goes: every writer of events uses it."""
    return {"platform": reply_to.get("platform", ""), "audience": audience_of(reply_to)}


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

    def audiences(self) -> frozenset[str] | None:
        """The audiences (``audience_of``) this process delivers to, if delivery on this
        platform is bound to the process, such as a terminal; None: any process of the
        platform delivers any of its events. A bound adapter gets only these audiences'
        events, progress and status lines; the others wait for the process serving them.
        """
        return None

    def serves(self, reply_to: Mapping[str, Any]) -> bool:
        served = self.audiences()
        return served is None or audience_of(reply_to) in served

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
