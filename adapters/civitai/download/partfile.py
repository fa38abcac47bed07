"""The ``.part`` file a download streams into: opened without following links, its SHA256
computed on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from adapters.civitai.download.errors import DownloadError
from bot.localfile import UnsafeFile, create_new, open_existing

log = logging.getLogger(__name__)


# --- the .part file -----------------------------------------------------------------------------


class _PartFile:
    """A download's ``.part`` file with the SHA256 of what it holds so far. The methods
    ending in ``_sync`` do file I/O and run on a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._sha = hashlib.sha256()
        self._file: Any = None

    def open_sync(self) -> None:
        """Create the ``.part`` (exclusively), or open the one a paused download left; a
        symbolic link (or a file that is not a regular one of ours) is refused, never
        written through."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                fd = create_new(self.path)
            except FileExistsError:
                fd = open_existing(self.path)
        except UnsafeFile as exc:
            raise DownloadError(f"{exc.strerror}: {self.path}") from None
        self._file = os.fdopen(fd, "ab")  # kept open across the download
        size = os.fstat(fd).st_size
        self._sha = hashlib.sha256()
        offset = 0
        while offset < size:  # resuming: hash what is already there (through this fd)
            chunk = os.pread(fd, min(1 << 20, size - offset), offset)
            if not chunk:
                break
            self._sha.update(chunk)
            offset += len(chunk)
        self.size = offset

    def write_sync(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha.update(chunk)
        self.size += len(chunk)

    def reset_sync(self) -> None:
        self._file.flush()
        self._file.truncate(0)
        self._file.seek(0)  # the descriptor may lack O_APPEND (a new file): write from 0
        self._sha = hashlib.sha256()
        self.size = 0

    def finish_sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close_sync(self) -> None:
        if self._file is not None and not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()

    def discard_sync(self) -> None:
        self.close_sync()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
