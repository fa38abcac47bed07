"""The boxes Discord opens for Remix and /batch."""

from __future__ import annotations

from typing import Any

import discord


class _PromptModal(discord.ui.Modal):
    """A modal whose fields go back to the adapter as text (Remix, Batch)."""

    def __init__(
        self, name: str, title: str, fields: list[discord.ui.TextInput[Any]], done: Any
    ) -> None:
        super().__init__(title=title[:45], timeout=900, custom_id=f"sdhost:{name}")
        self.fields = fields
        for f in fields:
            self.add_item(f)
        self._done = done

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self._done(interaction, [str(f.value or "") for f in self.fields])
