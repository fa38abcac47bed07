"""What Telegram accepts from a bot: text, caption, photo and file limits (Bot API)."""

from __future__ import annotations

MAX_TEXT = 4096


MAX_CAPTION = 1024


MAX_PHOTO_BYTES = 10 * 1024 * 1024


MAX_PHOTO_DIM_SUM = 10_000


MAX_PHOTO_RATIO = 20


MAX_UPLOAD_MB = 50


MAX_DOWNLOAD_MB = 20


LOCAL_MAX_MB = 2000  # a local Bot API server


ALBUM_MAX = 10


def photo_fits(size: int, width: int, height: int) -> bool:
    """Whether Telegram takes it as a photo (else it goes as a document)."""
    if size > MAX_PHOTO_BYTES or width + height > MAX_PHOTO_DIM_SUM:
        return False
    return max(width, height) <= MAX_PHOTO_RATIO * max(1, min(width, height))


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at line ends where possible."""
    text = text or "…"
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut <= 0:
            cut = limit
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    out.append(text)
    return out
