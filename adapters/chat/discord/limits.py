"""What Discord accepts: message, embed and token limits, and the errors of a dead token."""

from __future__ import annotations

from bot.text import clip

MAX_CONTENT = 2000


MAX_EMBEDS = 10  # per message


EMBED_TEXT = 500  # per embed: ten stay within Discord's 6000 characters of embeds a message


TOKEN_LIFETIME_S = 15 * 60


DEFAULT_LIMIT = 10 * 1024 * 1024


# Webhook errors that mean "this interaction token can no longer be used".
TOKEN_GONE = {10015, 50027}


def _clip(text: str, limit: int = MAX_CONTENT) -> str:
    text = text or "…"
    return clip(text, limit)
