"""The model registry: scanning the model folders (hashes cached by size and mtime in
``model_files``) and looking unknown files up on Civitai by hash in bulk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import (
    CivitaiError,
)
from adapters.civitai.api.transport import DEFAULT_BASE_URL
from adapters.civitai.api.types import ModelVersion
from adapters.civitai.download.folders import MODEL_EXTENSIONS, category_of
from adapters.civitai.download.partfile import _sha256_of
from adapters.civitai.download.record import DownloadRecord
from bot.status import DownloadStatus
from bot.text import clean
from storage import repos
from storage.db import Database

log = logging.getLogger(__name__)


# --- the registry: scanning model folders -------------------------------------------------------


@dataclass
class ScanReport:
    """What ``sdhost models scan`` found."""

    files: int = 0  # model files in the folders
    hashed: int = 0  # hashed now (new or changed)
    cached: int = 0  # hash taken from the cache (same size and mtime)
    new_models: int = 0  # registry rows created
    enriched: int = 0  # found on Civitai by hash
    unmatched: int = 0  # asked Civitai, unknown there
    missing: int = 0  # registry rows whose file is gone
    errors: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)  # path -> sha256


def _walk(folders: Mapping[str, Path]) -> dict[str, str]:
    """Every model file under the folders -> its kind (the deepest folder wins)."""
    found: dict[str, str] = {}
    ordered = sorted(folders.items(), key=lambda kv: -len(Path(os.path.abspath(kv[1])).parts))
    for kind, folder in ordered:
        root_dir = os.path.abspath(folder)
        if not os.path.isdir(root_dir):
            continue
        for root, dirs, files in os.walk(root_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in MODEL_EXTENSIONS:
                    continue
                found.setdefault(os.path.join(root, name), kind)
    return found


def _hash_files(
    found: Mapping[str, str], cache: Mapping[str, Any], rehash: bool, report: ScanReport
) -> list[dict[str, Any]]:
    """(path, sha256, size, mtime) for each file, hashing only what the cache cannot vouch
    for. Runs on a worker thread."""
    out = []
    for path in found:
        try:
            st = os.stat(path)
        except OSError as exc:
            report.errors.append(f"{path}: {exc.strerror or exc}")
            continue
        cached = cache.get(path)
        if (
            not rehash
            and cached is not None
            and cached.size_bytes == st.st_size
            and cached.mtime_ns == st.st_mtime_ns
        ):
            sha = cached.sha256
            report.cached += 1
        else:
            try:
                sha = _sha256_of(Path(path))
            except OSError as exc:
                report.errors.append(f"{path}: {exc.strerror or exc}")
                continue
            report.hashed += 1
        out.append(
            {"path": path, "sha256": sha, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        )
    return out


async def scan_models(
    db: Database,
    folders: Mapping[str, Path],
    *,
    client: CivitaiClient | None = None,
    rehash: bool = False,
    refresh: bool = False,
    base_url: str = DEFAULT_BASE_URL,
) -> ScanReport:
    """Hash the model files in ``folders`` (kind -> folder), cached by size and mtime; add
    new ones to the registry (``source`` local, named after the file), mark registry rows
    whose file is gone ``missing``, and, with a ``client``, look every file Civitai was not
    yet asked about up by SHA256 (in bulk) to fill in its name, kind, base model, ids and
    cover image. ``rehash`` ignores the cache; ``refresh`` asks Civitai again about files it
    did not know."""
    report = ScanReport()
    found = await asyncio.to_thread(_walk, folders)
    report.files = len(found)
    cache = {row.path: row for row in await db.run_read(repos.all_model_files)}
    hashed = await asyncio.to_thread(_hash_files, found, cache, rehash, report)
    now = time.time()
    by_sha: dict[str, dict[str, Any]] = {}
    for entry in hashed:
        report.paths[entry["path"]] = entry["sha256"]
        by_sha.setdefault(entry["sha256"], entry)
    gone_files = [p for p in cache if p not in found and not os.path.exists(p)]

    def record(conn: Any) -> None:
        repos.upsert_model_files(conn, [{**e, "hashed_at": now} for e in hashed])
        repos.delete_model_files(conn, gone_files)
        known = repos.models_by_sha(conn, by_sha)
        for sha, entry in by_sha.items():
            row = known.get(sha)
            if row is None:
                report.new_models += 1
                repos.upsert_model(
                    conn,
                    {
                        "sha256": sha,
                        "name": clean(Path(entry["path"]).stem, multiline=False)[:256],
                        "type": found[entry["path"]],
                        "base_model": None,
                        "size_bytes": entry["size_bytes"],
                        "source": "local",
                        "source_url": None,
                        "civitai_model_id": None,
                        "civitai_version_id": None,
                        "version_name": None,
                        "cover_image_url": None,
                        "path": entry["path"],
                        "status": "ready",
                        "enriched_at": None,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                continue
            keep_path = row.path in report.paths and report.paths[row.path] == sha
            repos.update_model(
                conn,
                sha,
                path=row.path if keep_path else entry["path"],
                size_bytes=entry["size_bytes"],
                status="ready",
                updated_at=now,
            )
        for row in repos.list_models(conn, status="ready"):
            if row.sha256 in by_sha:
                continue
            replaced = row.path in report.paths  # that path holds other content now
            if replaced or not row.path or not os.path.exists(row.path):
                repos.update_model(conn, row.sha256, status="missing", updated_at=now)
                report.missing += 1

    await db.run_write(record)
    if client is not None and by_sha:
        await _enrich(db, client, by_sha, found, refresh, base_url, report)
    return report


async def _enrich(
    db: Database,
    client: CivitaiClient,
    by_sha: Mapping[str, Mapping[str, Any]],
    found: Mapping[str, str],
    refresh: bool,
    base_url: str,
    report: ScanReport,
) -> None:
    rows = await db.run_read(repos.models_by_sha, by_sha)
    wanted = [
        sha
        for sha, row in rows.items()
        if row.civitai_version_id is None and (refresh or row.enriched_at is None)
    ]
    if not wanted:
        return
    try:
        matches = await client.versions_by_hashes(wanted)
    except CivitaiError as exc:
        report.errors.append(f"Civitai lookup by hash failed: {exc}")
        return
    now = time.time()

    def record(conn: Any) -> None:
        for sha in wanted:
            version = matches.get(sha.upper())
            if version is None:
                report.unmatched += 1
                repos.update_model(conn, sha, enriched_at=now)
                continue
            report.enriched += 1
            file = version.file_with_hash(sha)
            model_type = version.model.type if version.model else None
            kind = category_of(model_type, file.type if file else None)
            if kind == "other":
                kind = found.get(by_sha[sha]["path"], "other")
            values: dict[str, Any] = {
                "type": kind,
                "base_model": version.base_model,
                "source": "civitai",
                "source_url": _source_url(base_url, version.model_id, version.id),
                "civitai_model_id": version.model_id,
                "civitai_version_id": version.id,
                "version_name": version.name,
                "cover_image_url": _cover_image(version),
                "enriched_at": now,
                "updated_at": now,
            }
            if version.model and version.model.name:
                values["name"] = version.model.name[:256]
            repos.update_model(conn, sha, **values)

    await db.run_write(record)


def _cover_image(version: ModelVersion) -> str | None:
    images = [i for i in version.images if i.url]
    safe = [i for i in images if i.level == 1]
    chosen = next(iter(safe or images), None)
    return chosen.url if chosen is not None else None


def _source_url(base_url: str, model_id: int | None, version_id: int | None) -> str | None:
    if model_id is None:
        return None
    url = f"{base_url}/models/{model_id}"
    return f"{url}?modelVersionId={version_id}" if version_id is not None else url


async def record_done(
    db: Database, state: DownloadRecord, final: Path, sha: str, size: int, owner: str, base_url: str
) -> None:
    """A download is in place: its task row (leased to ``owner``) is done, and the file is in
    the registry (``models``, ``model_files``), in one transaction. ``state`` is updated."""
    now = time.time()
    mtime_ns = (await asyncio.to_thread(final.stat)).st_mtime_ns
    state.path, state.file_name = str(final), final.name
    state.sha256, state.bytes_done, state.bytes_total = sha, size, size
    state.status, state.finished_at = DownloadStatus.DONE, now
    state.speed = state.eta_s = None
    task_values = {
        "status": DownloadStatus.DONE,
        "path": state.path,
        "file_name": state.file_name,
        "sha256": sha,
        "bytes_done": size,
        "bytes_total": size,
        "speed": None,
        "eta_s": None,
        "error": None,
        "owner": None,
        "attempts": state.attempts,
        "finished_at": now,
        "updated_at": now,
    }
    model_row = _model_row(state, sha, size, final, now, base_url)
    file_row = {
        "path": str(final),
        "sha256": sha,
        "size_bytes": size,
        "mtime_ns": mtime_ns,
        "hashed_at": now,
    }

    def write(conn: Any) -> None:
        repos.update_download_task(
            conn, state.id, if_owner=owner, if_status=(DownloadStatus.RUNNING,), **task_values
        )
        repos.upsert_model(conn, model_row)
        repos.upsert_model_files(conn, [file_row])

    await db.run_write(write)
    log.info("download #%d: %r saved as %r", state.id, state.label, str(final))


def _model_row(
    state: DownloadRecord, sha: str, size: int, path: Path, now: float, base_url: str
) -> dict[str, Any]:
    meta = state.meta
    model_id = state.model_id
    return {
        "sha256": sha,
        "name": clean(meta.get("model_name") or state.model_name or path.stem, multiline=False)[
            :256
        ],
        "type": state.model_type or "other",
        "base_model": (meta.get("base_model") or None),
        "size_bytes": size,
        "source": "civitai",
        "source_url": _source_url(base_url, model_id, state.version_id),
        "civitai_model_id": model_id,
        "civitai_version_id": state.version_id,
        "version_name": meta.get("version_name"),
        "cover_image_url": meta.get("cover_image_url"),
        "path": str(path),
        "status": "ready",
        "enriched_at": now,
        "created_at": now,
        "updated_at": now,
    }
