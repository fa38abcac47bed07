"""The preview messages a process has in Telegram chats, written down so none is left forever.

A job's live preview on Telegram is a photo message of its own, next to the text status
message (Telegram cannot turn a text message into a photo), deleted once the pictures or
the outcome are in the chat. Only the process that sent it knows its id. A process that
stops deletes its previews on the way out; one that dies cannot, so each process writes its
previews down in a file of its own under ``data.dir/telegram/previews/``, next to a lock it
holds while it lives. A process starting takes over the files whose lock nobody holds (their
process is gone) and deletes the messages they list: the job, if it is still running, gets a
new preview from whichever process runs it now.

Without ``fcntl`` (Windows) nothing is written down and only the clean stop deletes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_LEFTOVERS = 10_000  # messages taken over from dead processes at one start, at most


class PreviewLedger:
    """This process's preview messages (chat id, message id), on disk (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.messages: set[tuple[int, int]] = set()
        self._name = uuid.uuid4().hex
        self._lock: IO[bytes] | None = None

    @property
    def enabled(self) -> bool:
        return fcntl is not None

    def open(self) -> list[tuple[int, int]]:
        """Take this process's lock; returns the messages dead processes left behind (their
        files are gone once this returns: deleting the messages is the caller's)."""
        if fcntl is None or self._lock is not None:
            return []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # locked under another name first: nobody takes it over before it is held
            fresh = self.folder / f"{self._name}.new"
            lock = open(fresh, "wb")  # held while the process lives
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(fresh, self.folder / f"{self._name}.lock")
        except OSError as exc:
            log.warning("telegram: cannot keep track of preview messages: %s", exc)
            return []
        self._lock = lock
        return self._take_over()

    def close(self) -> None:
        """The clean way out (the previews were deleted): no file is left."""
        if self._lock is None:
            return
        if not self.messages:
            with contextlib.suppress(OSError):
                (self.folder / f"{self._name}.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.folder / f"{self._name}.lock").unlink(missing_ok=True)
        self._lock.close()  # releases the lock: a file left is taken over by the next start
        self._lock = None

    def add(self, chat_id: int, message_id: int) -> None:
        self.messages.add((chat_id, message_id))
        self._write()

    def remove(self, chat_id: int, message_id: int) -> None:
        if (chat_id, message_id) in self.messages:
            self.messages.discard((chat_id, message_id))
            self._write()

    def _write(self) -> None:
        if self._lock is None:
            return
        path = self.folder / f"{self._name}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(sorted(self.messages)))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("telegram: cannot write down preview messages: %s", exc)

    def _take_over(self) -> list[tuple[int, int]]:
        assert fcntl is not None
        left: list[tuple[int, int]] = []
        for lock_path in sorted(self.folder.glob("*.lock")):
            name = lock_path.stem
            if name == self._name:
                continue
            try:
                with open(lock_path, "rb") as other:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its process is gone
                    left.extend(_read(self.folder / f"{name}.json"))
                    (self.folder / f"{name}.json").unlink(missing_ok=True)
                    lock_path.unlink(missing_ok=True)
            except OSError:
                continue  # alive (locked), or taken over by another process just now
        return left[:MAX_LEFTOVERS]


def _read(path: Path) -> list[tuple[int, int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out: list[tuple[int, int]] = []
    if isinstance(data, list):
        for item in data:
            if (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            ):
                out.append((item[0], item[1]))
    return out
