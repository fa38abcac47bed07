"""The Chinese names Discord clients show in the command picker (words in ``bot.chat_texts``)."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.chat_texts import COMMAND_NAMES_ZH as ZH


class Translator(app_commands.Translator):
    """Chinese names and descriptions for Chinese Discord clients; English elsewhere."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale in (discord.Locale.chinese, discord.Locale.taiwan_chinese):
            return ZH.get(string.message)
        return None
