"""The boxes Discord opens for Remix and /batch.

Every box opened has an identity of its own: its ``custom_id`` carries the id of the
interaction that opened it (``sdhost:remix:<interaction id>``). discord.py keeps one open
box per ``custom_id``, so with one fixed id a second person's box replaced the first: the
first submit got the second person's picture and the second submit found nothing
("This interaction failed"). Discord sends the ``custom_id`` back with the submit, which
finds the right box, however many are open.
"""

from __future__ import annotations

from typing import Any

import discord

BOX_TIMEOUT_S = 900  # an interaction token lives 15 minutes: so does the box


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
