"""The buttons under results and notices; their ids carry what they act on, so they
work after any restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

import discord

if TYPE_CHECKING:
    from adapters.chat.discord.adapter import DiscordAdapter


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"sd:(?P<action>[rvoidu]):(?P<job>[0-9]{1,19}):(?P<idx>[0-9]{1,9})",
):
    """A button under a picture. Everything it needs is in its custom id."""

    STYLES: ClassVar[dict[str, discord.ButtonStyle]] = {
        "r": discord.ButtonStyle.primary,
        "v": discord.ButtonStyle.secondary,
        "o": discord.ButtonStyle.secondary,
        "i": discord.ButtonStyle.secondary,
        "d": discord.ButtonStyle.danger,
        "u": discord.ButtonStyle.secondary,
    }

    def __init__(self, action: str, job: int, idx: int, label: str = "", row: int | None = None):
        super().__init__(
            discord.ui.Button(
                label=label or action,
                style=self.STYLES[action],
                custom_id=f"sd:{action}:{job}:{idx}",
                row=row,
            )
        )
        self.action, self.job, self.idx = action, job, idx

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
    ) -> ResultButton:
        label = cast(discord.ui.Button[Any], item).label  # the item this class wraps
        return cls(match["action"], int(match["job"]), int(match["idx"]), label or "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        adapter: DiscordAdapter = interaction.client.sdhost_adapter
        await adapter.on_button(interaction, self.action, self.job, self.idx)


class CommandButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"sd:x:(?P<command>/.+)",
):
    """A button that runs a command as whoever presses it (``bot.commands.Action``); the
    command is its custom id, so it needs no state and survives restarts."""

    def __init__(self, command: str, label: str = "", row: int | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=label[:80] or command,
                style=discord.ButtonStyle.secondary,
                custom_id=f"sd:x:{command}",
                row=row,
            )
        )
        self.command = command

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
    ) -> CommandButton:
        return cls(match["command"], cast(discord.ui.Button[Any], item).label or "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        adapter: DiscordAdapter = interaction.client.sdhost_adapter
        await adapter._command(interaction, self.command)
