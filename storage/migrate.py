"""Run Alembic from code: ``sdhost db upgrade`` and the automatic upgrade at start-up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: one process per SQLite file is the norm there
    fcntl = None  # type: ignore[assignment]

from alembic import command
from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (which share a SQLite file
    only on one machine, where flock works). PostgreSQL takes an advisory lock in env.py."""
    parsed = make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or fcntl is None:
        yield
        return
    lock_path = Path(db).with_name(Path(db).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Alembic's ``context`` is a process-wide proxy: two upgrades on threads of one process
# would configure each other's migrations.
_IN_PROCESS = threading.Lock()


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Upgrade; safe when several processes start on a fresh database at once."""
    with _IN_PROCESS, _sqlite_file_lock(url):
        command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Alembic's env runs its own event loop, so it gets a thread of its own."""
    await asyncio.to_thread(upgrade_sync, url, revision)


def current_heads(url: str) -> list[str]:
    from alembic.script import ScriptDirectory

    return list(ScriptDirectory.from_config(alembic_config(url)).get_heads())
