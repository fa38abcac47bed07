"""The checkpoint and LoRAs an image's meta names, matched to model files on this host.

``client.meta_resources`` reads them from a Civitai image's meta (names, weights, short
hashes, Civitai version ids); here each is looked up in the model registry
(``storage/repos/models.py``, filled by downloads and ``sdhost models scan``):

1. by Civitai model version id (``civitaiResources``, ``fluxMode``, an AIR), then
2. by hash: an AutoV2 short hash (10 hex digits) is the start of the file's SHA256, a SHA256
   is the SHA256. A1111's LoRA hashes are often AutoV3 (12 hex digits, a hash of the tensors
   only) and AutoV1/CRC32 are 8: those match no SHA256, so
3. for a LoRA, with a client, Civitai is asked (by hash, or by version id; both lookups are
   cached) which file that is, and its SHA256 is looked up. A LoRA named only by its
   version id also gets its file's name from there, so it can be written as
   ``<lora:NAME:W>``.

No self-hosted provider exists yet; "use these settings" carries the local names in the
prompt's LoRA tags and the receipt, ready for one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import CivitaiError
from adapters.civitai.api.meta import Resource
from adapters.civitai.api.types import ModelVersion
from storage import repos

log = logging.getLogger(__name__)

MAX_REMOTE = 8  # Civitai lookups for one image at most (each cached by the client)


@dataclass(frozen=True, slots=True)
class Resolved:
    """One resource and what it is here: ``local`` the registry row (``None`` when this host
    has no such file), ``name`` the best name to write (the local file's stem, else Civitai's
    file stem, else the meta's name)."""

    resource: Resource
    local: Any = None
    name: str | None = None
    sha256: str | None = None


def local_name(row: Any) -> str:
    """The name A1111-style tools know a registry file by: its file's stem."""
    return PurePath(row.path or row.name).stem


def match_local(conn: Any, resources: Sequence[Resource]) -> list[Any]:
    """The registry row of each resource (``None`` when none matches), by version id, then by
    a hash that is (the start of) a SHA256. Only files that are there (status ``ready``)."""
    by_version = repos.models_by_version(conn, [r.version_id for r in resources if r.version_id])
    out: list[Any] = []
    for r in resources:
        row = by_version.get(r.version_id) if r.version_id else None
        if row is None and r.hash and len(r.hash) in (10, 64):
            rows = repos.models_by_sha_prefix(conn, r.hash)
            row = rows[0] if len(rows) == 1 else None  # an ambiguous prefix matches nothing
        out.append(row if row is not None and row.status == "ready" else None)
    return out


def match_sha(conn: Any, shas: Sequence[str | None]) -> list[Any]:
    found = repos.models_by_sha(conn, [s for s in shas if s])
    return [found.get(s.lower()) if s else None for s in shas]


def _file_of(version: ModelVersion, hash_: str | None) -> tuple[str | None, str | None]:
    file = (version.file_with_hash(hash_) if hash_ else None) or version.primary_file
    if file is None:
        return None, None
    return file.hash("SHA256"), PurePath(file.name).stem if file.name else None


async def resolve_resources(
    db: Any, resources: Sequence[Resource], client: CivitaiClient | None = None
) -> list[Resolved]:
    """Each resource with its local file (see the module notes). ``db`` has ``run_read``
    (``storage.db.Database``); ``client`` (optional) asks Civitai about what the registry
    cannot match by itself. Civitai failures leave a resource unresolved, never raise."""
    rows = await db.run_read(match_local, list(resources)) if db is not None else []
    rows = rows or [None] * len(resources)
    remote: dict[int, tuple[str | None, str | None]] = {}
    if client is not None:
        for i, r in enumerate(resources):
            if len(remote) >= MAX_REMOTE:
                break
            # LoRAs only: a checkpoint's AutoV2 already is a SHA256 prefix, so asking Civitai
            # would rarely find more, and it would cost every "use" a request
            if r.kind != "lora" or rows[i] is not None or not (r.hash or r.version_id):
                continue
            try:
                if r.hash:
                    version = await client.version_by_hash(r.hash)
                else:
                    assert r.version_id is not None
                    version = await client.model_version(r.version_id)
            except CivitaiError as exc:
                log.info("civitai: %s %s not resolved: %s", r.kind, r.name or r.version_id, exc)
                continue
            remote[i] = _file_of(version, r.hash)
        if remote and db is not None:
            keys = list(remote)
            found = await db.run_read(match_sha, [remote[i][0] for i in keys])
            for i, row in zip(keys, found, strict=True):
                if row is not None and row.status == "ready":
                    rows[i] = row
    out = []
    for i, r in enumerate(resources):
        row = rows[i]
        sha, stem = remote.get(i, (None, None))
        name = local_name(row) if row is not None else (r.name or stem)
        out.append(Resolved(r, row, name, row.sha256 if row is not None else sha))
    return out


__all__ = ["Resolved", "local_name", "match_local", "resolve_resources"]
