"""Telegram, through python-telegram-bot (see ``adapter`` for how it keeps the core's promises)."""

from adapters.chat.telegram.adapter import TelegramAdapter
from adapters.chat.telegram.limits import photo_fits, split_text

__all__ = ["TelegramAdapter", "photo_fits", "split_text"]
