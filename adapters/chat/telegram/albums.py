"""Albums a person sent: remembered for a while, so /img2img on one item uses them all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from telegram import (
    Message,
)

# An album comes as several messages sharing a media_group_id (Bot API, Message:
# "media_group_id ... The unique identifier of a media message group this message belongs
# to", https://core.telegram.org/bots/api#message), one update each. The ones seen lately
# are remembered (bounded) so that /img2img on one item, or in reply to one, uses them all.
ALBUM_MEMORY_GROUPS = 200


ALBUM_MEMORY_S = 3600.0


ALBUM_SETTLE_S = 1.5  # an album captioned /img2img waits this long after its last item


ALBUM_SETTLE_MAX_S = 10.0


@dataclass(slots=True)
class _Album:
    """The items of one album seen so far (message id -> message), and when the last came."""

    items: dict[int, Message] = field(default_factory=dict)
    last: float = 0.0
    hinted: bool = False


class AlbumMemory:
    """Recent albums by (chat, media_group_id), the oldest forgotten first: at most
    ``groups`` albums, none older than ``max_age_s``."""

    def __init__(
        self, groups: int = ALBUM_MEMORY_GROUPS, max_age_s: float = ALBUM_MEMORY_S
    ) -> None:
        self.groups, self.max_age_s = groups, max_age_s
        self._albums: dict[tuple[int, str], _Album] = {}

    def add(self, chat_id: int, msg: Message) -> _Album | None:
        if not msg.media_group_id:
            return None
        now = time.monotonic()
        key = (chat_id, msg.media_group_id)
        album = self._albums.pop(key, None) or _Album()
        album.items[msg.message_id] = msg
        album.last = now
        self._albums[key] = album  # the newest last
        while self._albums:
            oldest_key, oldest = next(iter(self._albums.items()))
            if len(self._albums) <= self.groups and now - oldest.last <= self.max_age_s:
                break
            del self._albums[oldest_key]
        return album

    def get(self, chat_id: int, group: str | None) -> _Album | None:
        album = self._albums.get((chat_id, group)) if group else None
        if album is not None and time.monotonic() - album.last > self.max_age_s:
            return None
        return album
