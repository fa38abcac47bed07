"""The model registry: model files on disk and what Civitai says they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.repos.common import (
    _ids,
    model_files,
    model_records,
)

_MODEL = select(model_records).where(model_records.c.sha256 == bindparam("sha"))
_MODELS_BY_SHA = select(model_records).where(model_records.c.sha256.in_(_ids("shas")))
_MODEL_FILES = select(model_files)
_MODELS_BY_PREFIX = select(model_records).where(
    model_records.c.sha256.startswith(bindparam("prefix"))
)
_MODELS_BY_VERSION = select(model_records).where(
    model_records.c.civitai_version_id.in_(_ids("vids"))
)


def _upsert_on(
    conn: Connection, table: Any, key: str, row: Mapping[str, Any], keep: Sequence[str]
) -> None:
    make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = make(table).values(**row)
    changes = {k: stmt.excluded[k] for k in row if k != key and k not in keep}
    conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changes))


def upsert_model(conn: Connection, values: Mapping[str, Any]) -> None:
    """Insert a registry row, or update the one with this ``sha256`` (``created_at`` kept)."""
    _upsert_on(conn, model_records, "sha256", values, keep=("created_at",))


def get_model(conn: Connection, sha256: str) -> Row[Any] | None:
    return conn.execute(_MODEL, {"sha": sha256.lower()}).first()


def models_by_sha(conn: Connection, shas: Iterable[str]) -> dict[str, Row[Any]]:
    wanted = sorted({s.lower() for s in shas})
    out: dict[str, Row[Any]] = {}
    for start in range(0, len(wanted), 500):
        for row in conn.execute(_MODELS_BY_SHA, {"shas": wanted[start : start + 500]}).all():
            out[row.sha256] = row
    return out


def models_by_sha_prefix(conn: Connection, prefix: str) -> list[Row[Any]]:
    """Registry rows whose SHA256 starts with ``prefix`` (an AutoV2 short hash is the first 10
    hex digits of the SHA256); ``[]`` for anything that is not 8 to 64 hex digits."""
    wanted = prefix.strip().lower()
    if not 8 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
        return []
    return list(conn.execute(_MODELS_BY_PREFIX, {"prefix": wanted}).all())


def models_by_version(conn: Connection, version_ids: Iterable[int]) -> dict[int, Row[Any]]:
    """Registry rows by the Civitai model version they came from (one per version)."""
    wanted = sorted({int(v) for v in version_ids})
    if not wanted:
        return {}
    rows = conn.execute(_MODELS_BY_VERSION, {"vids": wanted}).all()
    return {row.civitai_version_id: row for row in rows}


def list_models(
    conn: Connection, *, type: str | None = None, status: str | None = None
) -> list[Row[Any]]:
    """Registry rows by name, optionally of one ``type`` and/or ``status``."""
    stmt = select(model_records).order_by(model_records.c.name, model_records.c.sha256)
    if type is not None:
        stmt = stmt.where(model_records.c.type == type)
    if status is not None:
        stmt = stmt.where(model_records.c.status == status)
    return list(conn.execute(stmt).all())


def update_model(conn: Connection, sha256: str, **values: Any) -> bool:
    stmt = update(model_records).where(model_records.c.sha256 == sha256.lower()).values(**values)
    return bool(conn.execute(stmt).rowcount)


def all_model_files(conn: Connection) -> list[Row[Any]]:
    """The scan's hash cache: (path, sha256, size_bytes, mtime_ns, hashed_at) rows."""
    return list(conn.execute(_MODEL_FILES).all())


def upsert_model_files(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        _upsert_on(conn, model_files, "path", row, keep=())


def delete_model_files(conn: Connection, paths: Iterable[str]) -> int:
    wanted = list(paths)
    if not wanted:
        return 0
    return conn.execute(delete(model_files).where(model_files.c.path.in_(wanted))).rowcount
