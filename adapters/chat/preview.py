"""A job's live preview in its chat status, once for every platform: the picture a
self-hosted GPU reports as it develops (``Progress.preview``), made small and shown paced.

Only the newest preview of a status message matters: it replaces the one waiting, never
queues behind it. When its turn comes (at most one picture edit per status message every
``[images] preview_interval_s``, text progress keeping its own pace) it is shrunk once to a
small JPEG, off the event loop, through ``bot.imaging`` (the decompression-bomb limits
hold); bytes that show what the status shows already are not sent again. A preview that
does not decode is dropped (logged at debug): the text progress goes on regardless.
"""

from __future__ import annotations

import hashlib
import logging

from bot.errors import BadInput
from bot.imaging import make_preview

log = logging.getLogger(__name__)

PREVIEW_SIDE = 512  # the long side of a preview in the chat, in pixels
PREVIEW_QUALITY = 70  # JPEG quality: a preview is looked at for seconds
# What a preview may decode to at most: a 2048x2048 picture, well over any GPU's preview.
PREVIEW_MAX_PIXELS = 4_194_304


def preview_digest(data: bytes) -> bytes:
    """What tells two previews apart (the status shows one already: not sent again)."""
    return hashlib.sha256(data).digest()


def shrink_preview(data: bytes) -> bytes | None:
    """The preview as a small JPEG (at most ``PREVIEW_SIDE`` a side), or None when it does
    not decode. Synchronous and CPU-bound: run it with ``asyncio.to_thread``."""
    try:
        return make_preview(
            data, max_side=PREVIEW_SIDE, max_pixels=PREVIEW_MAX_PIXELS, quality=PREVIEW_QUALITY
        )
    except BadInput as exc:
        log.debug("a preview was dropped: %s", exc)
    except Exception as exc:  # Pillow's own surprises: a preview is never worth an error
        log.debug("a preview was dropped: %r", exc)
    return None
