"""Who holds a lease: ``host:pid:random`` names, and telling whether their process is gone."""

from __future__ import annotations

import os
import socket
import uuid


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str, me: str) -> bool:
    """True when ``owner`` is a process on this host that no longer exists.

    A pid equal to ours under a different owner name is a dead predecessor whose pid was
    reused (common in containers, where the bot is often pid 1 after every restart).
    Owners on other hosts are never judged dead here; their leases lapse instead.
    """
    try:
        host, pid_s, _ = owner.split(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname() or owner == me:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
