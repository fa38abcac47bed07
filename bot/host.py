"""What a chat adapter may use of the running core: a narrow view, not the whole ``App``.

Adapters are written against this protocol, so they never import ``bot.app`` (which wires
them in) and a test can host an adapter on anything that has these parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from bot.chat import ChatAdapter
from bot.commands import Commands
from bot.config import Config
from bot.delivery import Deliverer
from bot.inbox import Inbox
from bot.jobs import JobService
from bot.providers import Provider


class ChatHost(Protocol):
    """The core as a chat adapter sees it."""

    @property
    def config(self) -> Config:
        """The settings (the adapter reads its own section, admins, image limits)."""

    @property
    def commands(self) -> Commands:
        """Handles a person's message: ``handle``, ``busy``, ``wants_status``, extensions."""

    @property
    def jobs(self) -> JobService:
        """A person's language, ban state and jobs; pictures for buttons."""

    @property
    def providers(self) -> Mapping[str, Provider]:
        """The model catalogue (names offered in command pickers)."""

    @property
    def deliverer(self) -> Deliverer:
        """Whether every result has been delivered (the console waits for it)."""

    def inbox(self, source: str, *, lease_s: float = ...) -> Inbox:
        """Updates pushed to any process for ``source`` (one bot), handled once, in order
        per chat, by whichever process claims them."""


class RunningHost(ChatHost, Protocol):
    """A core an adapter may also start and stop (the console runs one for its session)."""

    def add_adapter(self, adapter: ChatAdapter) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
