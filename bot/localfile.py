"""Reading a picture the operator names by path (the console only): regular files, capped.

A path can name anything: ``/dev/zero`` and ``/dev/urandom`` never end, a FIFO blocks the
reader until someone writes to it, a directory cannot be read, ``/proc`` files claim to be
empty. So the file is opened without blocking (a FIFO then opens at once instead of waiting
for a writer), the open descriptor is checked to be a regular file (checking the path first
and opening it after would leave a gap), and at most one byte more than the limit is read,
however big the file says it is or grows to be. Synchronous; callers use a thread.

Files the bot *writes* into folders others can reach (model downloads, harvested images)
are opened by :func:`create_new` and :func:`open_existing`, which never follow a symbolic
link: a ``.part`` planted as a link to a file elsewhere is refused (:class:`UnsafeFile`),
not written through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bot.errors import BadInput

_READ_CHUNK = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_local_picture(source: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``source`` names (``~`` expanded), or ``BadInput`` with
    one clear line: no such file, permission denied, a directory, not a regular file, too
    big. At most ``max_bytes`` + 1 bytes are ever read."""
    shown = source if len(source) <= 200 else source[:199] + "…"
    try:
        fd = os.open(_expand(source), _OPEN_FLAGS)
    except OSError as exc:
        raise _open_error(exc, shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadInput.of("error.file_is_directory", path=shown)
        if not stat.S_ISREG(mode):
            raise BadInput.of("error.file_not_regular", path=shown)
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            try:
                chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
            except OSError as exc:
                raise _open_error(exc, shown) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise BadInput.of("error.file_too_big", path=shown, limit=_mb(max_bytes))
        return b"".join(chunks)
    finally:
        os.close(fd)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_WRITE_FLAGS = _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class UnsafeFile(OSError):
    """A file the bot was to write is a symbolic link, or not a regular file of its own."""


def create_new(path: str | os.PathLike[str], mode: int = 0o644) -> int:
    """A new file at ``path``, open for writing (a descriptor): ``O_CREAT | O_EXCL`` with
    ``O_NOFOLLOW``, so nothing that already has the name (a file, a link, even a dangling
    one) is opened. A link there raises :class:`UnsafeFile`; another file,
    ``FileExistsError``."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _WRITE_FLAGS, mode)
    except FileExistsError:
        if os.path.islink(path):
            raise UnsafeFile(
                errno.ELOOP, "refusing to write through a symbolic link", str(path)
            ) from None
        raise


def open_existing(path: str | os.PathLike[str]) -> int:
    """An existing file at ``path``, open for reading and appending (a descriptor), only if
    it is a regular file owned by this user with no other name (no symbolic link, no hard
    link to a file elsewhere); else :class:`UnsafeFile`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | _WRITE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise UnsafeFile(
                errno.ELOOP, "refusing to write through a symbolic link", str(path)
            ) from None
        raise
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "refusing to write to what is not a regular file"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        why = "refusing to write to a file another user owns"
    elif st.st_nlink > 1:
        why = "refusing to write to a file with other names (hard links)"
    if why is not None:
        os.close(fd)
        raise UnsafeFile(errno.EPERM, why, str(path))
    return fd


def is_regular_file(source: str) -> bool:
    """Whether ``source`` names an existing regular file (a bare word that may be a file
    name or the first word of a prompt); never raises: too long, ``~nobody``, no access
    all mean no."""
    try:
        return stat.S_ISREG(os.stat(_expand(source)).st_mode)
    except (OSError, ValueError):
        return False


def _expand(source: str) -> Path:
    """``~`` and ``~user`` expanded; an unknown user's home is no such file."""
    try:
        return Path(source).expanduser()
    except RuntimeError:  # no such user, or no home directory
        raise FileNotFoundError(errno.ENOENT, "no such user", source) from None


def _open_error(exc: OSError, shown: str) -> BadInput:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        return BadInput.of("error.file_missing", path=shown)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BadInput.of("error.file_denied", path=shown)
    if exc.errno == errno.EISDIR:
        return BadInput.of("error.file_is_directory", path=shown)
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EAGAIN, errno.EWOULDBLOCK):
        return BadInput.of("error.file_not_regular", path=shown)  # sockets, devices
    return BadInput.of("error.file_unreadable", path=shown, reason=exc.strerror or str(exc))


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0") + " MB"
