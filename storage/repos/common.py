"""What every repository module shares: the tables and two statement helpers."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.models import (
    Batch,
    DownloadTask,
    IncomingUpdate,
    Job,
    LedgerEntry,
    ModelFileRecord,
    ModelRecord,
    OutboxEvent,
    StoredImage,
    User,
)

users = User.__table__
ledger = LedgerEntry.__table__
jobs = Job.__table__
batches = Batch.__table__
images = StoredImage.__table__
outbox = OutboxEvent.__table__
incoming = IncomingUpdate.__table__


download_tasks = DownloadTask.__table__
model_records = ModelRecord.__table__
model_files = ModelFileRecord.__table__


def _ids(name: str = "ids") -> Any:
    return bindparam(name, expanding=True)


@cache
def _insert_ignore(dialect: str, table_name: str, index: tuple[str, ...], returning: bool) -> Any:
    """``INSERT ... ON CONFLICT (index) DO NOTHING [RETURNING id]`` for one dialect."""
    table = {t.name: t for t in (users, ledger, images, outbox, incoming)}[table_name]
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(table).on_conflict_do_nothing(index_elements=list(index))
    return stmt.returning(table.c.id) if returning else stmt


def _upsert(conn: Connection, table: Any, index: tuple[str, ...], *, returning: bool) -> Any:
    return _insert_ignore(conn.dialect.name, table.name, index, returning)
