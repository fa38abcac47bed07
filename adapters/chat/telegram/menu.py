"""The commands the Telegram client lists. Their words are in ``bot.chat_texts``."""

from __future__ import annotations

# The commands the Telegram client lists (setMyCommands), in menu order.
MENU = (
    "imagine",
    "img2img",
    "batch",
    "upscale",
    "credits",
    "jobs",
    "cancel",
    "retry",
    "models",
    "settings",
    "lang",
    "help",
)
EXTENSION_MENU = ("civitai",)  # listed when that extension is on
