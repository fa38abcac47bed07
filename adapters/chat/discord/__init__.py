"""Discord, through discord.py (see ``adapter`` for how it keeps the core's promises)."""

from adapters.chat.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
