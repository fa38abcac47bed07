"""Content-addressed storage for generated images, their thumbnails and uploaded inputs.

Files are named by the SHA-256 of their bytes, so storing the same picture twice costs
nothing and a database row only needs the hash. Writes go to a temporary file in the target
directory and are renamed into place after an fsync: a crash leaves at worst a stray
``.tmp-*`` file, never a truncated file under a final name that a later ``put`` would
mistake for a good copy.

Nothing is ever overwritten or edited in place, so the store only grows: ``sweep`` removes
what no row refers to (the pictures of jobs that ended quarantined or failed before their
rows were written, ``.tmp-*`` leftovers of a kill).

The methods are synchronous (plain file I/O); async callers wrap them in
``asyncio.to_thread``. ``PictureStore`` is what the rest of the bot sees; ``FileStore`` here
and ``storage.s3.S3Store`` (a bucket, same keys) both are one, chosen by ``data.store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "KINDS",
    "FileStore",
    "PictureStore",
    "StorageError",
    "StorageUnavailable",
    "StoredFile",
    "key_for",
]

KINDS = frozenset({"images", "thumbs", "inputs"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,8}")
TEMP_PREFIX = ".tmp-"


class StorageError(Exception):
    """The store answered with something unusable (an object larger than any picture we
    write, bytes that are not what their name says): a fault of the store, not of a job."""


class StorageUnavailable(StorageError):
    """The store cannot be reached or refuses to work (connection refused, timeouts, 5xx
    after retries, credentials refused). Nothing was half-written; trying again later may
    succeed. The scheduler puts a job that meets this back in the queue without counting
    an attempt (see ``bot.scheduler``)."""


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    path: Path | None  # on this machine's disk; None in a store that has no local files
    size: int


def key_for(sha256: str, *, kind: str = "images", ext: str = "png") -> str:
    """``<kind>/<sha[:2]>/<sha>.<ext>``: the name of a file in every store (relative to the
    folder of the local one, the key in a bucket). Arguments are validated because a hash
    may come from a chat command or a URL, and must never be able to point elsewhere."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {sorted(KINDS)}")
    if not _EXT.fullmatch(ext):
        raise ValueError(f"bad file extension {ext!r}")
    return f"{kind}/{sha256[:2]}/{sha256}.{ext}"


class PictureStore(Protocol):
    """What the bot needs of a store of pictures. Synchronous: async callers use
    ``asyncio.to_thread``. Every method may raise ``StorageUnavailable``."""

    def put(self, data: bytes, *, kind: str = "images", ext: str = "png") -> StoredFile: ...

    def put_thumbnail(self, sha256: str, data: bytes) -> object: ...

    def get(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bytes:
        """The bytes; ``FileNotFoundError`` if there are none."""
        ...

    def exists(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bool: ...

    def locate(self, sha256: str, *, kind: str = "images", ext: str = "png") -> str:
        """Where a person finds the file (a path, an s3:// or public URL): for display only,
        nothing opens it."""
        ...

    def describe(self) -> str:
        """The store in a few words, for messages (a folder, a bucket)."""
        ...

    def sweep(self, referenced: Collection[str], *, keep_since: float) -> Sequence[object]:
        """Remove what no row refers to and is older than ``keep_since``; what went."""
        ...


class FileStore:
    """``root/<kind>/<sha[:2]>/<sha>.<ext>``; the two-character fan-out keeps directories
    small enough for every filesystem to list quickly."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, *, kind: str = "images", ext: str = "png") -> Path:
        """Where a file lives (``key_for`` validates the arguments)."""
        return self.root / key_for(sha256, kind=kind, ext=ext)

    def locate(self, sha256: str, *, kind: str = "images", ext: str = "png") -> str:
        return str(self.path_for(sha256, kind=kind, ext=ext))

    def describe(self) -> str:
        return str(self.root)

    def put(self, data: bytes, *, kind: str = "images", ext: str = "png") -> StoredFile:
        """Store ``data`` under its own hash; a no-op when an intact copy is already there."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, kind=kind, ext=ext)
        _write_once(path, data)
        return StoredFile(sha256=sha, path=path, size=len(data))

    def put_thumbnail(self, sha256: str, data: bytes) -> Path:
        """Store a thumbnail under the hash of the image it previews (not its own hash), so
        it can be found from the image alone.

        Not fsynced: a thumbnail can always be made again from its image, and the fsyncs
        are most of the cost of storing a small picture.
        """
        path = self.path_for(sha256, kind="thumbs", ext="webp")
        _write_once(path, data, durable=False)
        return path

    def get(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bytes:
        """The stored bytes; ``FileNotFoundError`` if there are none."""
        return self.path_for(sha256, kind=kind, ext=ext).read_bytes()

    def exists(self, sha256: str, *, kind: str = "images", ext: str = "png") -> bool:
        return self.path_for(sha256, kind=kind, ext=ext).is_file()

    def sweep(self, referenced: Collection[str], *, keep_since: float) -> list[Path]:
        """Remove files no row refers to; return their paths.

        ``referenced`` holds every sha256 a row names (images and inputs alike). A file
        changed at or after ``keep_since`` (a timestamp) is kept whatever the rows say: a
        running job writes its pictures' rows after their files, and an input is stored
        just before its job's row (``put`` refreshes the time of a file it finds already
        there, so one being stored again counts as new). A thumbnail stays while its
        picture does. ``.tmp-*`` files are the remains of a write cut short by a kill once
        they are older than ``keep_since``.
        """
        removed: list[Path] = []
        kept_images: set[str] = set()
        for kind in ("images", "inputs", "thumbs"):
            for path in _files_under(self.root / kind):
                name = path.name
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if mtime >= keep_since:
                    if kind == "images":
                        kept_images.add(name.split(".", 1)[0])
                    continue
                if not name.startswith(TEMP_PREFIX):
                    sha = name.split(".", 1)[0]
                    if not _SHA256.fullmatch(sha):
                        continue  # not ours: leave it alone
                    if sha in referenced or (kind == "thumbs" and sha in kept_images):
                        if kind == "images":
                            kept_images.add(sha)
                        continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
        return removed


def _files_under(folder: Path) -> list[Path]:
    """The files in ``folder``'s two-character fan-out directories."""
    out: list[Path] = []
    try:
        subdirs = [d for d in folder.iterdir() if d.is_dir()]
    except FileNotFoundError:
        return out
    for d in sorted(subdirs):
        try:
            out.extend(sorted(p for p in d.iterdir() if p.is_file()))
        except FileNotFoundError:
            continue
    return out


def _write_once(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Atomically create ``path`` with ``data`` unless a file of the right size is there.

    Size is the cheap integrity check: a content-addressed file of the right length is
    taken as intact (re-hashing every hit would read the whole file). A wrong-sized one is
    replaced.
    """
    try:
        if path.stat().st_size == len(data):
            # Stored again now: fresh in the sweep's eyes until a row names it.
            with contextlib.suppress(OSError):
                os.utime(path)
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
    # os.open rather than tempfile.mkstemp: mkstemp makes 0600 files, and stored images
    # may be served by another user (a web server); this honours the umask instead.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; POSIX only (Windows cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
