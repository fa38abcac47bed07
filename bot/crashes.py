"""Crash reports: telling a job that kills its process from a process that was killed.

A worker process writes Python's ``faulthandler`` output to its own file,
``<data.dir>/crashes/<owner>.log``. A fatal signal raised inside the process (SIGSEGV,
SIGABRT, SIGBUS, SIGFPE, SIGILL: a native library crashing on one job's input) leaves a
traceback there; a ``kill -9``, the OOM killer or the machine losing power leaves the file
empty. When a dead owner's jobs are taken back, a non-empty file means the run ended by
the job's own doing (it counts as an attempt); anything else is bad luck (it does not).

The file is opened once and kept open (faulthandler writes to the descriptor from a signal
handler, where nothing may be allocated); a clean stop closes and removes it.
"""

from __future__ import annotations

import faulthandler
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from bot.owners import owner_is_dead

CRASH_DIR = "crashes"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

_armed: IO[str] | None = None
_armed_path: Path | None = None


def crash_file(data_dir: Path, owner: str) -> Path:
    """Where ``owner`` (``host:pid:random``) writes its crash report: ``pid-random@host.log``
    with the host name made safe for a file name."""
    host, _, rest = owner.partition(":")
    name = f"{_UNSAFE.sub('_', rest.replace(':', '-'))}@{_UNSAFE.sub('_', host)}.log"
    return Path(data_dir) / CRASH_DIR / name


def _owner_of(path: Path) -> str | None:
    """The owner a crash file belongs to, if it was written on this host."""
    name = path.name
    if not name.endswith(".log") or "@" not in name:
        return None
    rest, _, host = name[: -len(".log")].rpartition("@")
    here = socket.gethostname()
    if host != _UNSAFE.sub("_", here):
        return None
    pid, sep, rand = rest.partition("-")
    if not sep or not pid.isdigit():
        return None
    return f"{here}:{pid}:{rand}"


def arm(data_dir: Path, owner: str) -> Path:
    """Send this process's fatal-signal tracebacks to ``owner``'s crash file (once per
    process; a later call moves them to the new owner's file)."""
    global _armed, _armed_path
    disarm()
    path = crash_file(data_dir, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", encoding="utf-8")  # kept open for the signal handler
    _armed, _armed_path = f, path
    faulthandler.enable(file=f, all_threads=True)
    return path


def disarm() -> None:
    """A clean stop: no crash to report; remove the (empty) file."""
    global _armed, _armed_path
    if _armed is None:
        return
    faulthandler.disable()
    _armed.close()
    if _armed_path is not None:
        try:
            if _armed_path.stat().st_size == 0:
                _armed_path.unlink()
        except OSError:
            pass
    _armed = _armed_path = None


def fatal_report(data_dir: Path, owner: str) -> str | None:
    """The traceback ``owner`` left when a fatal signal killed it, or None (no file: an
    owner on another host, or an older version; an empty file: killed from outside)."""
    try:
        text = crash_file(data_dir, owner).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.strip() or None


def forget(data_dir: Path, owners: Iterable[str]) -> None:
    """Remove the crash files of owners whose jobs have been accounted for."""
    for owner in owners:
        try:
            crash_file(data_dir, owner).unlink(missing_ok=True)
        except OSError:
            pass


def sweep(data_dir: Path, me: str, still_running: Iterable[str]) -> int:
    """Remove crash files of dead processes on this host that hold no job any more (one
    that crashed or was killed while idle); return how many."""
    folder = Path(data_dir) / CRASH_DIR
    keep = set(still_running)
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for path in entries:
        owner = _owner_of(path)
        if owner is None or owner in keep or not owner_is_dead(owner, me):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
