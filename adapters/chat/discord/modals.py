"""The boxes Discord opens for Remix and /batch.

Every box opened has an identity of its own: its ``custom_id`` carries the id of the
interaction that opened it (``sdhost:remix:<interaction id>``). discord.py keeps one open
box per ``custom_id``, so with one fixed id a second person's box replaced the first: the
first submit got the second person's picture and the second submit found nothing
("This interaction failed"). Discord sends the ``custom_id`` back with the submit, which
finds the right box, however many are open.

A box lives in the memory of the process that opened it. A submit for a box this process
does not know (it restarted, or the box was open longer than ``BOX_TIMEOUT_S``) is not
left to fail: the person is told to open it again (``OpenBoxes``).
"""

from __future__ import annotations

import time
from typing import Any

import discord

BOX_TIMEOUT_S = 900  # an interaction token lives 15 minutes: so does the box
_GRACE_S = 5  # a box only just timed out may still be in discord.py's hands: leave it be


class OpenBoxes:
    """The ``custom_id`` of every box this process opened within ``BOX_TIMEOUT_S``."""

    def __init__(self) -> None:
        self._opened: dict[str, float] = {}

    def add(self, custom_id: str) -> None:
        now = time.monotonic()
        self._opened = {
            k: t for k, t in self._opened.items() if now - t <= BOX_TIMEOUT_S + _GRACE_S
        }
        self._opened[custom_id] = now

    def __contains__(self, custom_id: object) -> bool:
        opened = self._opened.get(str(custom_id))
        return opened is not None and time.monotonic() - opened <= BOX_TIMEOUT_S + _GRACE_S

    @staticmethod
    def ours(custom_id: str) -> bool:
        return custom_id.startswith("sdhost:")


def box_id(kind: str, interaction: discord.Interaction[Any]) -> str:
    """The ``custom_id`` of the box ``kind`` opened by ``interaction`` (at most 100 chars)."""
    return f"sdhost:{kind}:{interaction.id}"


class _PromptModal(discord.ui.Modal):
    """A modal whose fields go back to the adapter as text (Remix, Batch)."""

    def __init__(
        self, custom_id: str, title: str, fields: list[discord.ui.TextInput[Any]], done: Any
    ) -> None:
        super().__init__(title=title[:45], timeout=BOX_TIMEOUT_S, custom_id=custom_id)
        self.fields = fields
        for f in fields:
            self.add_item(f)
        self._done = done

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self._done(interaction, [str(f.value or "") for f in self.fields])
