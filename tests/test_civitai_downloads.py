"""Model downloads and the model registry (adapters/civitai/download/) against the fake
(tests/fakes/civitai.py: FakeCivitaiDownloads, with its second "storage" origin)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import os
import re
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.types import ModelVersion
from adapters.civitai.cli import add_arguments, add_scan_arguments, run_cli, run_scan_cli
from adapters.civitai.download.errors import CivitaiArchived, TooBig, UnsafeModelFile
from adapters.civitai.download.folders import category_of, resolve_folders
from adapters.civitai.download.manager import DownloadManager
from adapters.civitai.download.naming import filename_from_disposition, part_path, sanitize_filename
from adapters.civitai.download.partfile import _PartFile
from adapters.civitai.download.record import DownloadRecord
from adapters.civitai.download.refs import DownloadRef, parse_ref, select_file
from adapters.civitai.download.registry import scan_models
from bot.errors import BadInput
from storage import repos
from storage.db import Database
from tests.conftest import make_config
from tests.fakes.civitai import (
    DANGER_IMPORTS,
    ERR_ARCHIVED,
    FakeCivitaiDownloads,
    FakeFile,
    file_hashes,
)

KEY = "civitai-secret-key-0123456789"
FAST = {"backoff_base": 0.005, "backoff_max": 0.02, "progress_interval": 0.02}


@pytest.fixture
async def fake():
    async with FakeCivitaiDownloads(keys={KEY: "alice"}) as f:
        yield f


@pytest.fixture
async def db(db_url: str):
    database = Database(db_url)
    await database.create_all()
    yield database
    await database.dispose()


def make_manager(
    db: Database,
    fake: FakeCivitaiDownloads,
    tmp_path: Path,
    *,
    api_key: str | None = KEY,
    **kw: Any,
) -> DownloadManager:
    options = {**FAST, **kw}
    return DownloadManager(
        db, models_dir=tmp_path / "models", api_key=api_key, base_url=fake.base_url, **options
    )


@pytest.fixture
async def manager(db: Database, fake: FakeCivitaiDownloads, tmp_path: Path):
    m = make_manager(db, fake, tmp_path)
    yield m
    await m.aclose()


def version_id(fake: FakeCivitaiDownloads, model_id: int, index: int = 0) -> int:
    return fake.catalogue.models[model_id].versions[index].id


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.005)


# --- the happy path ---------------------------------------------------------------------------


async def test_download_lands_checked_in_its_folder_and_registry(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4201)
    file = fake.primary_file(vid)
    fake.set_content(file.id, size=700_000)
    view = await manager.download(vid)

    assert view.status == "done", view.error
    path = Path(view.path or "")
    assert path == tmp_path / "models" / "checkpoints" / file.name
    assert path.read_bytes() == fake.content(file.id)
    assert view.sha256 == view.expected_sha256 == sha(fake.content(file.id))
    assert view.bytes_done == view.bytes_total == 700_000
    assert not part_path(path).exists()
    assert files_under(tmp_path / "models") == [f"checkpoints/{file.name}"]

    model = await db.run_read(repos.get_model, view.sha256 or "")
    assert model is not None
    assert (model.name, model.type, model.base_model, model.status) == (
        "Photon Realism",
        "checkpoint",
        "SD 1.5",
        "ready",
    )
    assert (model.civitai_model_id, model.civitai_version_id, model.version_name) == (
        4201,
        vid,
        "v2.0",
    )
    assert model.size_bytes == 700_000 and model.path == str(path) and model.source == "civitai"
    assert model.cover_image_url and model.cover_image_url.startswith(fake.urls["images"])
    assert model.source_url == f"{fake.base_url}/models/4201?modelVersionId={vid}"
    cached = {r.path: r for r in await db.run_read(repos.all_model_files)}
    assert cached[str(path)].sha256 == view.sha256

    # asking again fetches nothing
    hits = len(fake.storage_hits)
    again = await manager.download(vid)
    assert again.status == "done" and again.path == view.path
    assert len(fake.storage_hits) == hits


async def test_the_key_goes_to_the_api_only_never_to_storage(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    vid = version_id(fake, 4202)
    view = await manager.download(vid)
    assert view.status == "done", view.error

    api_hops = fake.calls_to("download")
    assert api_hops and all(c.headers.get("Authorization") == "***" for c in api_hops)
    assert all(c.user == "alice" and c.param("token") is None for c in api_hops)
    assert fake.storage_hits and not any(h.authorization for h in fake.storage_hits)
    for call in fake.calls_to("storage"):
        assert not any(k.lower() in ("authorization", "cookie") for k in call.headers)
        assert KEY not in call.path and all(KEY not in v for _, v in call.query_items)

    # and the fake does answer 400 when an Authorization header reaches storage (R2's rule),
    # so the download above succeeding proves we never sent one
    async with httpx.AsyncClient(follow_redirects=False) as http:
        hop = await http.get(
            f"{fake.base_url}/api/download/models/{vid}",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert hop.status_code == 307
        leaked = await http.get(hop.headers["location"], headers={"Authorization": f"Bearer {KEY}"})
    assert leaked.status_code == 400 and b"InvalidRequest" in leaked.content
    assert fake.storage_hits[-1].authorization


async def test_interrupted_twice_resumes_from_fresh_links_with_the_right_sha256(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    vid = version_id(fake, 4201)
    file = fake.primary_file(vid)
    fake.set_content(file.id, size=3_000_000)
    fake.drop_mid_file(times=2)  # the connection closes half-way, twice
    fake.single_use_links = True  # a signed URL used twice would be refused
    view = await manager.download(vid)

    assert view.status == "done", view.error
    assert Path(view.path or "").read_bytes() == fake.content(file.id)
    assert view.sha256 == fake.contents[file.id].sha256.lower()
    hits = fake.storage_hits
    assert [h.status for h in hits] == [200, 206, 206]
    assert hits[0].range is None
    assert hits[1].range == f"bytes={hits[0].sent}-"
    assert hits[2].range == f"bytes={hits[0].sent + hits[1].sent}-"
    assert hits[0].sent > 0 and hits[1].sent > 0
    assert fake.download_hits == 3  # a fresh signed URL for every attempt
    assert len({h.path for h in hits}) == 2  # R2 and B2 style links, as the host switches


async def test_a_range_ignored_by_storage_starts_again_from_zero(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    fake.set_content(file.id, size=1_000_000)
    fake.drop_mid_file()
    fake.ignore_range()
    view = await manager.download(vid)
    assert view.status == "done", view.error
    assert Path(view.path or "").read_bytes() == fake.content(file.id)
    assert [h.status for h in fake.storage_hits] == [200, 200]
    assert fake.storage_hits[1].range is not None  # asked for the rest, got everything


async def test_416_means_the_part_file_is_already_whole(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    content = fake.content(file.id)
    queued = await manager.enqueue(vid, start=False)
    target = tmp_path / "models" / "loras" / file.name
    target.parent.mkdir(parents=True)
    part_path(target).write_bytes(content)  # a crash after the last byte, before the rename
    await db.run_write(repos.update_download_task, queued.id, path=str(target))

    await manager.resume(queued.id)
    view = await manager.wait(queued.id)
    assert view.status == "done", view.error
    assert fake.storage_hits[-1].status == 416
    assert fake.storage_hits[-1].range == f"bytes={len(content)}-"
    assert target.read_bytes() == content and not part_path(target).exists()


async def test_416_with_a_part_file_that_does_not_fit_starts_over(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    content = fake.content(file.id)
    queued = await manager.enqueue(vid, start=False)
    target = tmp_path / "models" / "loras" / file.name
    target.parent.mkdir(parents=True)
    part_path(target).write_bytes(content + b"junk")
    await db.run_write(repos.update_download_task, queued.id, path=str(target))

    view = await manager.wait((await manager.resume(queued.id)).id)
    assert view.status == "done", view.error
    assert [h.status for h in fake.storage_hits] == [416, 200]
    assert target.read_bytes() == content


async def test_wrong_bytes_fail_and_leave_no_file(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4207)
    fake.corrupt_next()
    view = await manager.download(vid)
    assert view.status == "failed"
    assert "damaged" in (view.error or "") and "SHA256" in (view.error or "")
    assert files_under(tmp_path / "models") == []  # neither the file nor its .part
    assert await db.run_read(repos.list_models) == []
    # trying again downloads it properly
    retried = await manager.wait((await manager.resume(view.id)).id)
    assert retried.status == "done" and retried.sha256 == retried.expected_sha256


async def test_hash_mismatch_policy_keep(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4207)
    fake.corrupt_next()
    async with make_manager(db, fake, tmp_path, hash_mismatch="keep") as m:
        view = await m.download(vid)
    assert view.status == "done"
    assert view.sha256 != view.expected_sha256  # kept, as asked (Civitai's hash was "wrong")


async def test_transient_failures_are_retried(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    fake.fail_next(503, on="download", retry_after="0")
    fake.throttle(on="download", retry_after="0")  # a plain 429: rate limited, not the quota
    fake.fail_next(500, on="storage")
    fake.drop_next(on="download")
    fake.fail_next(403, "<Error><Code>AccessDenied</Code></Error>", on="storage")
    view = await manager.download(version_id(fake, 4202))
    assert view.status == "done", view.error
    assert view.attempts == 6
    assert fake.download_hits == 3  # the injected API answers never reach the route


async def test_giving_up_after_attempts_without_progress(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    fake.fail_next(502, on="storage", times=10)
    async with make_manager(db, fake, tmp_path, max_attempts=3) as m:
        view = await m.download(version_id(fake, 4202))
    assert view.status == "failed"
    assert "3 tries in a row" in (view.error or "")


# --- refusals become clear messages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "key", "expected"),
    [
        (lambda f, v: f.require_auth.add(v), None, "requires a login"),
        (lambda f, v: f.require_auth.add(v), None, "set civitai.api_key"),
        (lambda f, v: f.require_auth.add(v), "not-a-key", "did not accept civitai.api_key"),
        (lambda f, v: f.downloads_disabled.add(v), KEY, "has disabled downloads"),
        (
            lambda f, v: f.early_access.__setitem__(v, dt.datetime(2026, 9, 1, tzinfo=dt.UTC)),
            KEY,
            "Early Access on Civitai until 2026-09-01T00:00:00.000Z",
        ),
        (lambda f, v: setattr(f, "download_quota", 0), KEY, "24-hour download quota"),
        (lambda f, v: setattr(f, "blocked", True), KEY, "Civitai refused the download"),
        (
            lambda f, v: f.fail_next(410, {"error": ERR_ARCHIVED}, on="download"),
            KEY,
            "archived",
        ),
        (lambda f, v: f.challenge(on="download"), KEY, "web page"),
        (lambda f, v: f.fail_next(400, "no", on="storage"), KEY, "HTTP 400"),
    ],
)
async def test_refusals_are_clear_and_not_retried(
    fake: FakeCivitaiDownloads,
    db: Database,
    tmp_path: Path,
    setup: Any,
    key: str | None,
    expected: str,
) -> None:
    vid = version_id(fake, 4203)
    setup(fake, vid)
    async with make_manager(db, fake, tmp_path, api_key=key) as m:
        view = await m.download(vid)
    assert view.status == "failed"
    assert expected in (view.error or ""), view.error
    assert "Velvet Nights" in (view.error or "") or "HTTP 400" in expected or "quota" in expected
    assert fake.download_hits <= 1 and view.attempts == 1
    assert KEY not in (view.error or "")
    assert files_under(tmp_path / "models") == []


async def test_early_access_bought_downloads(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4203)
    fake.early_access[vid] = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    fake.purchases["alice"] = {vid}
    async with make_manager(db, fake, tmp_path) as m:
        assert (await m.download(vid)).status == "done"


async def test_archived_models_are_refused_before_any_download(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    with pytest.raises(CivitaiArchived, match="no longer available"):
        await manager.enqueue(version_id(fake, 4205))
    with pytest.raises(CivitaiArchived):
        await manager.enqueue("https://civitai.com/models/4205/old-merge")
    assert fake.download_hits == 0


async def test_a_browser_user_agent_is_never_used(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    vid = version_id(fake, 4203)
    fake.require_auth.add(vid)
    async with make_manager(manager.db, fake, manager.models_dir.parent, api_key=None) as m:
        view = await m.download(vid)
    assert "set civitai.api_key" in (view.error or "")
    assert all("mozilla" not in c.headers.get("User-Agent", "").lower() for c in fake.calls)


# --- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("../../../etc/evil.safetensors", "evil.safetensors"),
        ("..\\..\\Windows\\System32\\evil.dll", "evil.dll"),
        ("/etc/passwd", "passwd"),
        ("C:\\models\\x.ckpt", "x.ckpt"),
        ("..", "fallback.safetensors"),
        ("", "fallback.safetensors"),
        ("...", "fallback.safetensors"),
        (".hidden.pt", "hidden.pt"),
        ("CON.safetensors", "_CON.safetensors"),
        ("NUL.tar.gz", "_NUL.tar.gz"),  # the part before the first dot decides
        ("lpt9.v2.safetensors", "_lpt9.v2.safetensors"),
        ("com\u00b2.pt", "_com\u00b2.pt"),
        ("console.pt", "console.pt"),
        ("zero\u200bwidth\ufeff.pt", "zerowidth.pt"),  # format characters go
        ("line\u2028break.pt", "line break.pt"),
        ('a<b>c:d"e|f?g*h.pt', "a_b_c_d_e_f_g_h.pt"),
        ("bad\x00name\n.pt", "bad_name_.pt"),
        ("evil\u202egpj.exe", "evilgpj.exe"),  # no bidi override turns a name around
        ("c1\x9b31m\u2066.pt", "c131m.pt"),
        ("trailing. . ", "trailing"),
        ("sneaky.part", "sneaky.part_"),
        ("x" * 300 + ".safetensors", "x" * 188 + ".safetensors"),
    ],
)
def test_sanitize_filename(raw: str, expected: str) -> None:
    assert sanitize_filename(raw, "fallback.safetensors") == expected


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    st.lists(
        st.one_of(
            st.text(max_size=8),
            st.sampled_from(["/", "\\", ".", " ", "\u202e", "\u200b", "\x00", ":", ".part"]),
            st.sampled_from(["CON", "nul", "Aux", "COM1", "lpt9", "prn", "com\u00b9", ".."]),
        ),
        max_size=12,
    ).map("".join)
)
def test_a_sanitized_name_is_always_safe(raw: str) -> None:
    name = sanitize_filename(raw, "fallback.safetensors")
    assert name and name not in (".", "..") and not name.startswith(".")
    assert not any(c in name for c in '/\\<>:"|?*')
    assert not any(unicodedata.category(c).startswith("C") for c in name)
    assert not any(unicodedata.category(c) in ("Zl", "Zp") for c in name)
    assert name.split(".", 1)[0].rstrip(" ").lower() not in RESERVED_NAMES
    assert len(name.encode()) <= 200 and not name.lower().endswith(".part")
    assert sanitize_filename(name, "fallback.safetensors") == name  # stable


RESERVED_NAMES = {"con", "prn", "aux", "nul"} | {
    f"{d}{i}" for d in ("com", "lpt") for i in (*"123456789", "\u00b9", "\u00b2", "\u00b3")
}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="a b.safetensors"', "a b.safetensors"),
        ("attachment; filename=plain.pt", "plain.pt"),
        ('attachment; filename="q\\"uote.pt"', 'q"uote.pt'),
        ("attachment; filename*=UTF-8''%E6%A8%A1%E5%9E%8B.safetensors", "模型.safetensors"),
        ("attachment; filename=\"ascii.pt\"; filename*=UTF-8''%2E%2E%2Fevil.pt", "../evil.pt"),
        ("attachment", None),
        (None, None),
    ],
)
def test_filename_from_disposition(header: str | None, expected: str | None) -> None:
    assert filename_from_disposition(header) == expected


async def test_content_disposition_traversal_is_sanitized(
    fake: FakeCivitaiDownloads, manager: DownloadManager, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    fake.disposition[file.id] = 'attachment; filename="../../../../evil.safetensors"'
    view = await manager.download(vid)
    assert view.status == "done", view.error
    assert Path(view.path or "") == tmp_path / "models" / "loras" / "evil.safetensors"
    assert [p for p in files_under(tmp_path) if "evil" in p] == ["models/loras/evil.safetensors"]

    other = fake.primary_file(version_id(fake, 4207))
    fake.disposition[other.id] = "attachment; filename*=UTF-8''..%2F..%2F..%2Fevil2.safetensors"
    second = await manager.download(version_id(fake, 4207))
    assert Path(second.path or "") == tmp_path / "models" / "loras" / "evil2.safetensors"


async def test_another_file_with_the_name_is_never_overwritten(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    (folder / file.name).write_bytes(b"somebody else's model")
    stem, ext = file.name.rsplit(".", 1)

    async with make_manager(db, fake, tmp_path, on_name_clash="refuse") as m:
        refused = await m.download(vid)
    assert refused.status == "failed" and "already exists" in (refused.error or "")
    assert (folder / file.name).read_bytes() == b"somebody else's model"

    async with make_manager(db, fake, tmp_path) as m:
        view = await m.download(vid)
    assert view.status == "done", view.error
    assert Path(view.path or "") == folder / f"{stem}-2.{ext}"
    assert (folder / file.name).read_bytes() == b"somebody else's model"


async def test_the_same_file_already_there_is_not_fetched_again(
    fake: FakeCivitaiDownloads, manager: DownloadManager, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    (folder / file.name).write_bytes(fake.content(file.id))
    view = await manager.download(vid)
    assert view.status == "done", view.error
    assert Path(view.path or "") == folder / file.name
    assert files_under(folder) == [file.name]


# --- choosing the file and the folder -----------------------------------------------------------


async def test_type_option_picks_the_vae_into_the_vae_folder(
    fake: FakeCivitaiDownloads, manager: DownloadManager, tmp_path: Path
) -> None:
    vid = version_id(fake, 4201)
    vae = next(f for f in fake.catalogue.version(vid)[1].files if f.type == "VAE")  # type: ignore[index]
    view = await manager.download(vid, file_type="VAE")
    assert view.status == "done", view.error
    assert view.file_id == vae.id and view.model_type == "vae"
    assert Path(view.path or "").parent == tmp_path / "models" / "vae"
    assert fake.calls_to("download")[-1].param("fileId") == str(vae.id)

    with pytest.raises(BadInput, match=r"no file with format 'GGUF'.*SafeTensor"):
        await manager.enqueue(vid, format="GGUF")


async def test_folders_can_point_at_an_a1111_install(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    webui = tmp_path / "stable-diffusion-webui"
    folders = {"lora": str(webui / "models" / "Lora"), "checkpoint": "sd"}
    async with make_manager(db, fake, tmp_path, folders=folders) as m:
        assert m.folders["lora"] == webui / "models" / "Lora"
        assert m.folders["checkpoint"] == tmp_path / "models" / "sd"
        assert m.folders["vae"] == tmp_path / "models" / "vae"  # kinds left out: defaults
        view = await m.download(version_id(fake, 4202))
    assert Path(view.path or "").parent == webui / "models" / "Lora"


def test_categories_and_folders(tmp_path: Path) -> None:
    assert category_of("Checkpoint") == "checkpoint"
    assert category_of("LoCon") == category_of("LORA") == category_of("DoRA") == "lora"
    assert category_of("TextualInversion") == "embedding"
    assert category_of("Checkpoint", "VAE") == "vae"
    assert category_of("Wildcards") == "other"
    assert category_of(None) == "other"
    folders = resolve_folders(tmp_path, {"bogus": "x", "vae": "/abs/vae"})
    assert "bogus" not in folders and folders["vae"] == Path("/abs/vae")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("130072", DownloadRef(130072)),
        (130072, DownloadRef(130072)),
        ("https://civitai.com/api/download/models/130072", DownloadRef(130072)),
        (
            "https://civitai.com/api/download/models/130072?type=VAE&format=SafeTensor&token=x",
            DownloadRef(130072, None, {"type": "VAE", "format": "SafeTensor"}),
        ),
        (
            "https://civitai.com/models/4201/photon?modelVersionId=130072",
            DownloadRef(130072, 4201),
        ),
        ("civitai.red/models/4201/photon", DownloadRef(None, 4201)),
        ("urn:air:sd1:checkpoint:civitai:4201@130072", DownloadRef(130072, 4201)),
    ],
)
def test_parse_ref(text: Any, expected: DownloadRef) -> None:
    assert parse_ref(text) == expected


def test_parse_ref_rejects_nonsense() -> None:
    with pytest.raises(BadInput, match="not a Civitai model version"):
        parse_ref("https://example.com/whatever")


async def test_a_model_page_means_its_newest_version(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    view = await manager.download(f"{fake.base_url}/models/4204/flux-detailer")
    assert view.version_id == version_id(fake, 4204, 0) and view.status == "done"


# --- pause, resume, cancel, progress ----------------------------------------------------------


async def test_pause_resume_and_cancel(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4201)
    file = fake.primary_file(vid)
    fake.set_content(file.id, size=2_000_000)
    fake.storage_bps = 4_000_000  # half a second for the whole file
    manager.transfer.chunk_size = 64 * 1024
    started = await manager.enqueue(vid)
    await wait_for(lambda: (manager.snapshot(started.id) or started).bytes_done > 0)

    paused = await manager.pause(started.id)
    assert paused.status == "paused"
    part = part_path(paused.path or "")
    assert 0 < part.stat().st_size < 2_000_000
    assert paused.bytes_done == part.stat().st_size
    row = await db.run_read(repos.get_download_task, started.id)
    assert row.owner is None and row.speed is None

    fake.storage_bps = None
    resumed = await manager.wait((await manager.resume(started.id)).id)
    assert resumed.status == "done", resumed.error
    assert Path(resumed.path or "").read_bytes() == fake.content(file.id)
    assert fake.storage_hits[-1].range == f"bytes={paused.bytes_done}-"

    other = version_id(fake, 4204, 1)
    fake.set_content(fake.primary_file(other).id, size=2_000_000)
    fake.storage_bps = 4_000_000
    second = await manager.enqueue(other)
    await wait_for(lambda: (manager.snapshot(second.id) or second).bytes_done > 0)
    cancelled = await manager.cancel(second.id)
    assert cancelled.status == "cancelled"
    assert files_under(tmp_path / "models") == [f"checkpoints/{file.name}"]
    with pytest.raises(BadInput, match="cancelled"):
        await manager.resume(second.id)


async def test_progress_is_stored_and_reported(
    fake: FakeCivitaiDownloads, manager: DownloadManager, db: Database
) -> None:
    vid = version_id(fake, 4201)
    fake.set_content(fake.primary_file(vid).id, size=3_000_000)
    fake.storage_bps = 6_000_000  # half a second
    manager.transfer.chunk_size = 64 * 1024
    seen: list[DownloadRecord] = []
    rows: list[Any] = []

    async def on_progress(view: DownloadRecord) -> None:  # async listeners work too
        seen.append(view)
        if view.status == "running" and view.bytes_done:
            rows.append(await db.run_read(repos.get_download_task, view.id))

    manager.add_listener(on_progress)
    view = await manager.download(vid)
    await asyncio.sleep(0.05)
    assert view.status == "done"
    running = [v for v in seen if v.status == "running" and v.speed]
    assert running, seen
    assert all(v.eta_s is not None and v.bytes_total == 3_000_000 for v in running)
    assert 1_000_000 < max(v.speed or 0 for v in running) < 20_000_000
    assert any(r.bytes_done > 0 and r.speed for r in rows)  # the row moves too
    assert "%" in running[0].describe() and "/s" in running[0].describe()
    assert seen[-1].status == "done"
    # listeners get snapshots of the one record type, not the live record
    assert len({v.bytes_done for v in running}) > 1
    assert all(v is not w for v, w in itertools.pairwise(seen))


async def test_pause_and_cancel_from_another_process(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4201)
    fake.set_content(fake.primary_file(vid).id, size=2_000_000)
    fake.storage_bps = 3_000_000
    a = make_manager(db, fake, tmp_path, chunk_size=64 * 1024)
    b = make_manager(db, fake, tmp_path)
    try:
        task = await a.enqueue(vid)
        await wait_for(lambda: (a.snapshot(task.id) or task).bytes_done > 0)
        assert (await b.pause(task.id)).status == "paused"  # through the database
        stopped = await a.wait(task.id)
        assert stopped.status == "paused" and stopped.path
        assert part_path(stopped.path).exists()

        fake.storage_bps = None
        done = await b.wait((await b.resume(task.id)).id)  # b takes over from the .part
        assert done.status == "done" and done.sha256 == done.expected_sha256
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_download_whose_process_died_is_taken_over(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    content = fake.content(file.id)
    async with make_manager(db, fake, tmp_path) as m:
        queued = await m.enqueue(vid, start=False)
    target = tmp_path / "models" / "loras" / file.name
    target.parent.mkdir(parents=True)
    part_path(target).write_bytes(content[:50_000])
    await db.run_write(
        repos.update_download_task,
        queued.id,
        status="running",
        owner="dead-host:1:abc",
        path=str(target),
        bytes_done=50_000,
        updated_at=time.time() - 3600,
    )
    async with make_manager(db, fake, tmp_path) as m:
        assert await m.resume_interrupted() == [queued.id]
        view = await m.wait(queued.id)
    assert view.status == "done", view.error
    assert fake.storage_hits[-1].range == "bytes=50000-"
    assert target.read_bytes() == content


async def test_closing_leaves_downloads_queued_to_resume(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    vid = version_id(fake, 4201)
    fake.set_content(fake.primary_file(vid).id, size=2_000_000)
    fake.storage_bps = 3_000_000
    m = make_manager(db, fake, tmp_path, chunk_size=64 * 1024)
    task = await m.enqueue(vid)
    await wait_for(lambda: (m.snapshot(task.id) or task).bytes_done > 0)
    await m.aclose()
    row = await db.run_read(repos.get_download_task, task.id)
    assert row.status == "queued" and row.bytes_done > 0

    fake.storage_bps = None
    async with make_manager(db, fake, tmp_path) as again:
        assert await again.resume_interrupted() == [task.id]
        assert (await again.wait(task.id)).status == "done"


async def test_concurrent_downloads(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    ids = [version_id(fake, m) for m in (4201, 4202, 4203, 4204, 4207)]
    async with make_manager(db, fake, tmp_path, concurrency=2) as m:
        views = await asyncio.gather(*(m.download(v) for v in ids))
        listed = await m.tasks(statuses=["done"])
    assert [v.status for v in views] == ["done"] * 5
    assert len({v.path for v in views}) == 5 and len(listed) == 5


# --- the registry: scan and enrich --------------------------------------------------------------


async def test_scan_hashes_caches_and_enriches_by_hash(
    fake: FakeCivitaiDownloads, db: Database, tmp_path: Path
) -> None:
    folders = resolve_folders(tmp_path / "models")
    lora = fake.primary_file(version_id(fake, 4202))
    (folders["lora"] / "sub").mkdir(parents=True)
    known = folders["lora"] / "sub" / "renamed.safetensors"
    known.write_bytes(fake.content(lora.id))
    folders["checkpoint"].mkdir(parents=True)
    mine = folders["checkpoint"] / "my-merge.ckpt"
    mine.write_bytes(b"a checkpoint Civitai has never seen")
    (folders["checkpoint"] / "half.safetensors.part").write_bytes(b"x")
    (folders["checkpoint"] / "notes.txt").write_text("not a model")

    client = CivitaiClient(base_url=fake.base_url)
    try:
        first = await scan_models(db, folders, client=client, base_url=fake.base_url)
        assert (first.files, first.hashed, first.cached, first.new_models) == (2, 2, 0, 2)
        assert (first.enriched, first.unmatched, first.missing) == (1, 1, 0)
        assert len(fake.calls_to("by-hash-bulk")) == 1

        rows = {r.path: r for r in await db.run_read(repos.list_models)}
        enriched = rows[str(known)]
        assert enriched.sha256 == sha(fake.content(lora.id))
        assert (enriched.name, enriched.type, enriched.base_model, enriched.source) == (
            "Anime Lines",
            "lora",
            "SDXL 1.0",
            "civitai",
        )
        assert (enriched.civitai_model_id, enriched.civitai_version_id) == (
            4202,
            version_id(fake, 4202),
        )
        assert enriched.cover_image_url
        local = rows[str(mine)]
        assert (local.name, local.type, local.source, local.civitai_version_id) == (
            "my-merge",
            "checkpoint",
            "local",
            None,
        )

        # again: every hash from the cache, and Civitai is not asked again
        second = await scan_models(db, folders, client=client, base_url=fake.base_url)
        assert (second.hashed, second.cached, second.new_models, second.enriched) == (0, 2, 0, 0)
        assert len(fake.calls_to("by-hash-bulk")) == 1

        # a changed file is hashed again; a deleted one goes missing
        mine.write_bytes(b"a different checkpoint now")
        os.utime(mine, ns=(1, 1))
        known.unlink()
        third = await scan_models(db, folders, client=None)
        assert (third.files, third.hashed, third.new_models, third.missing) == (1, 1, 1, 2)
        statuses = {r.sha256: r.status for r in await db.run_read(repos.list_models)}
        assert statuses[enriched.sha256] == "missing"
        assert statuses[local.sha256] == "missing"
        assert {p for p in (r.path for r in await db.run_read(repos.all_model_files))} == {
            str(mine)
        }
    finally:
        await client.aclose()


async def test_a_scanned_file_is_not_downloaded_again(
    fake: FakeCivitaiDownloads, manager: DownloadManager, tmp_path: Path
) -> None:
    vid = version_id(fake, 4207)
    file = fake.primary_file(vid)
    elsewhere = manager.folders["lora"] / "portrait.safetensors"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(fake.content(file.id))
    report = await manager.scan()
    assert report.enriched == 1
    view = await manager.download(vid)
    assert view.status == "done" and view.path == str(elsewhere)
    assert fake.download_hits == 0 and fake.storage_hits == []


# --- the CLI ------------------------------------------------------------------------------------


def _cli_args(add: Any, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(list(argv))


async def test_cli_download_and_scan(
    fake: FakeCivitaiDownloads,
    db: Database,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(
        tmp_path,
        db_url,
        database={"auto_migrate": False},
        civitai={"base_url": fake.base_url, "api_key": KEY, "models_dir": str(tmp_path / "m")},
    )
    vid = version_id(fake, 4202)
    args = _cli_args(add_arguments, f"{fake.base_url}/models/4202?modelVersionId={vid}")
    assert await run_cli(args, config, db, **FAST) == 0
    out = capsys.readouterr()
    path = tmp_path / "m" / "loras" / fake.primary_file(vid).name
    assert str(path) in out.out and path.is_file()
    assert "Anime Lines" in out.err  # the progress bar's label

    args = _cli_args(add_arguments, str(version_id(fake, 4201)), "--type", "VAE", "--no-progress")
    assert await run_cli(args, config, db, **FAST) == 0
    assert "/m/vae/" in capsys.readouterr().out

    fake.require_auth.add(version_id(fake, 4203))
    anonymous = config.model_copy(
        update={"civitai": config.civitai.model_copy(update={"api_key": ""})}
    )
    args = _cli_args(add_arguments, str(version_id(fake, 4203)), "--no-progress")
    assert await run_cli(args, anonymous, db, **FAST) == 1
    assert "set civitai.api_key" in capsys.readouterr().err

    args = _cli_args(add_arguments, str(version_id(fake, 4201)), "--format", "GGUF")
    assert await run_cli(args, config, db, **FAST) == 1
    assert "no file with format 'GGUF'" in capsys.readouterr().err

    (tmp_path / "m" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "m" / "checkpoints" / "local.safetensors").write_bytes(b"mine")
    assert await run_scan_cli(_cli_args(add_scan_arguments), config, db) == 0
    out = capsys.readouterr().out
    assert "Anime" in out and "local" in out
    assert "3 files (1 hashed, 2 from the cache); 1 new;" in out


# --- safety: Civitai's scans, sizes, links --------------------------------------------------------


async def test_a_file_civitais_scans_did_not_pass_is_refused_unless_an_admin_overrides(
    fake: FakeCivitaiDownloads,
    manager: DownloadManager,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vid = version_id(fake, 4201)
    file = fake.primary_file(vid)
    cases = [
        ("Danger", "Success", 'pickle scan says "Danger" (Dangerous import detected'),
        ("Success", "Danger", 'virus scan says "Danger"'),
        ("Success", "Pending", 'virus scan says "Pending"'),
        (None, "Success", "pickle scan has no result"),
        ("Success", None, "virus scan has no result"),
    ]
    for pickle, virus, said in cases:
        file.pickle_scan, file.virus_scan = pickle, virus
        file.pickle_message = DANGER_IMPORTS if pickle == "Danger" else "No Pickle imports"
        with pytest.raises(UnsafeModelFile, match=re.escape(said)) as refused:
            await manager.enqueue(vid)
        assert "--allow-unsafe" in str(refused.value) and file.name in str(refused.value)
    assert fake.download_hits == 0 and fake.storage_hits == []
    assert await manager.tasks() == [] and not (tmp_path / "models").exists()

    file.pickle_scan, file.virus_scan, file.pickle_message = "Danger", "Success", DANGER_IMPORTS
    with caplog.at_level(logging.WARNING, logger="adapters.civitai.download"):
        view = await manager.download(vid, allow_unsafe=True, by="admin test:root")
    assert view.status == "done", view.error
    warned = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "--allow-unsafe" in r.getMessage()
    ]
    assert len(warned) == 1
    assert "admin test:root" in warned[0].getMessage() and "Danger" in warned[0].getMessage()
    assert file.name in warned[0].getMessage()


async def test_a_safetensor_file_is_preferred_over_a_pickle(
    fake: FakeCivitaiDownloads, manager: DownloadManager
) -> None:
    vid = version_id(fake, 4201)
    pickle = fake.primary_file(vid)
    pickle.format, pickle.name = "PickleTensor", pickle.name.replace(".safetensors", ".ckpt")
    safe = FakeFile(990_001, "photon_safe.safetensors", "Model", 100.0, file_hashes(990_001))
    fake.catalogue.version(vid)[1].files.append(safe)  # type: ignore[index]
    fake.set_content(safe.id, size=50_000)
    view = await manager.download(vid)
    assert view.status == "done", view.error
    assert view.file_id == safe.id and Path(view.path or "").name == safe.name
    assert {h.file_id for h in fake.storage_hits} == {safe.id}


def test_select_file_prefers_safetensors_then_the_primary() -> None:
    def file(fid: int, type_: str, fmt: str, primary: bool = False) -> dict[str, Any]:
        return {
            "id": fid,
            "name": f"f{fid}",
            "type": type_,
            "primary": primary,
            "metadata": {"format": fmt},
        }

    version = ModelVersion.model_validate(
        {
            "id": 1,
            "files": [
                file(1, "Model", "PickleTensor", primary=True),
                file(2, "VAE", "SafeTensor"),
                file(3, "Model", "SafeTensor"),
                file(4, "Model", "SafeTensor"),
            ],
        }
    )
    assert select_file(version, {}).id == 3  # type: ignore[union-attr]
    assert select_file(version, {"type": "VAE"}).id == 2  # type: ignore[union-attr]
    version.files[3].primary, version.files[0].primary = True, False
    assert select_file(version, {}).id == 4  # type: ignore[union-attr]
    assert select_file(version, {"format": "PickleTensor"}).id == 1  # type: ignore[union-attr]
    only_pickle = ModelVersion.model_validate(
        {"id": 2, "files": [file(5, "Model", "PickleTensor", True), file(6, "VAE", "SafeTensor")]}
    )
    assert select_file(only_pickle, {}).id == 5  # type: ignore[union-attr]  # not the VAE


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the chunks written to .part files from now on."""
    written: list[int] = []
    write = _PartFile.write_sync

    def counting(self: Any, chunk: bytes) -> None:
        written.append(len(chunk))
        write(self, chunk)

    monkeypatch.setattr(_PartFile, "write_sync", counting)
    return written


async def test_a_host_streaming_more_than_listed_is_stopped_early(
    fake: FakeCivitaiDownloads,
    manager: DownloadManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written = count_writes(monkeypatch)
    manager.transfer.chunk_size = 64 * 1024
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    fake.set_content(file.id, data=b"x" * 220)  # Civitai lists 220 bytes (sizeKB 0.21)
    fake.oversize[file.id] = (64 * 1024 * 1024, False)  # storage streams 64 MiB, chunked
    view = await manager.download(vid)
    assert view.status == "failed"
    assert "sent more than the 215 bytes Civitai lists" in (view.error or "")
    assert sum(written) <= 220 + 1024  # never more than the listed size and its tolerance
    assert fake.storage_hits[-1].sent < 16 * 1024 * 1024  # the stream was dropped early
    assert files_under(tmp_path / "models") == []  # the .part is deleted: those bytes are junk

    # a Content-Length over the listed size is refused before a byte is read
    fake.oversize[file.id] = (64 * 1024 * 1024, True)
    again = await manager.download(vid)
    assert again.status == "failed" and "which Civitai lists as 215 bytes" in (again.error or "")
    assert sum(written) <= 220 + 1024 and files_under(tmp_path / "models") == []


async def test_the_maximum_size_applies_with_no_listed_size_nor_length(
    fake: FakeCivitaiDownloads,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written = count_writes(monkeypatch)
    manager = make_manager(db, fake, tmp_path, max_bytes=1_000_000, chunk_size=64 * 1024)
    try:
        vid = version_id(fake, 4202)
        file = fake.primary_file(vid)
        file.size_kb = None  # type: ignore[assignment]  # Civitai lists no size
        fake.oversize[file.id] = (64 * 1024 * 1024, False)
        view = await manager.download(vid)
        assert view.status == "failed" and "civitai.max_download_gb" in (view.error or "")
        assert sum(written) <= 1_000_000
        assert fake.storage_hits[-1].sent < 16 * 1024 * 1024

        big = version_id(fake, 4207)
        fake.set_content(fake.primary_file(big).id, size=2_000_000)
        hits = fake.download_hits
        with pytest.raises(TooBig, match=r"over the 1\.0 MB limit"):
            await manager.enqueue(big)
        assert fake.download_hits == hits  # refused before asking for the file
    finally:
        await manager.aclose()


async def test_no_download_starts_without_the_disk_space(
    fake: FakeCivitaiDownloads,
    manager: DownloadManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=50 * 1024 * 1024))
    vid = version_id(fake, 4202)
    with pytest.raises(TooBig, match="not enough free disk space"):
        await manager.enqueue(vid)
    assert fake.download_hits == 0 and not (tmp_path / "models").exists()


async def test_a_part_file_that_is_a_link_is_refused_not_written_through(
    fake: FakeCivitaiDownloads, manager: DownloadManager, tmp_path: Path
) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    vid = version_id(fake, 4201)
    file = fake.primary_file(vid)
    fake.set_content(file.id, size=2_000_000)
    fake.storage_bps = 4_000_000
    manager.transfer.chunk_size = 64 * 1024
    started = await manager.enqueue(vid)
    await wait_for(lambda: (manager.snapshot(started.id) or started).bytes_done > 0)
    paused = await manager.pause(started.id)
    part = part_path(paused.path or "")
    part.unlink()
    part.symlink_to(outside)  # someone swaps the .part for a link to a file elsewhere
    fake.storage_bps = None
    resumed = await manager.wait((await manager.resume(started.id)).id)
    assert resumed.status == "failed"
    assert "refusing to write through a symbolic link" in (resumed.error or "")
    assert outside.read_bytes() == b"keep me" and part.is_symlink()

    # a dangling link where a new download's .part goes: not created through it either
    other = version_id(fake, 4202)
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "created-through-a-link"
    part_path(folder / fake.primary_file(other).name).symlink_to(target)
    view = await manager.download(other)
    assert view.status == "failed" and "symbolic link" in (view.error or "")
    assert not target.exists()


async def test_cli_allow_unsafe_overrides_the_scans(
    fake: FakeCivitaiDownloads,
    db: Database,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(
        tmp_path,
        db_url,
        database={"auto_migrate": False},
        civitai={"base_url": fake.base_url, "api_key": KEY, "models_dir": str(tmp_path / "m")},
    )
    vid = version_id(fake, 4202)
    file = fake.primary_file(vid)
    file.virus_scan, file.virus_message = "Danger", "Win.Trojan.Agent-1234"
    args = _cli_args(add_arguments, str(vid), "--no-progress")
    assert await run_cli(args, config, db, **FAST) == 1
    assert 'virus scan says "Danger" (Win.Trojan.Agent-1234)' in capsys.readouterr().err
    assert fake.download_hits == 0
    with caplog.at_level(logging.WARNING, logger="adapters.civitai.download"):
        args = _cli_args(add_arguments, str(vid), "--no-progress", "--allow-unsafe")
        assert await run_cli(args, config, db, **FAST) == 0
    assert str(tmp_path / "m" / "loras" / file.name) in capsys.readouterr().out
    [warned] = [r.getMessage() for r in caplog.records if "--allow-unsafe" in r.getMessage()]
    assert "on the command line" in warned and file.name in warned


def test_stored_failures_are_said_in_any_language_and_old_text_as_it_is() -> None:
    from adapters.civitai.download.errors import DownloadDamaged, failure, stored
    from adapters.civitai.text import say_error

    exc = failure(DownloadDamaged, "dl_damaged", name="Photon v2", problems="SHA256 ab… x")
    kept = stored(exc)
    assert say_error(kept, "zh") == "Photon v2 的下载已损坏（SHA256 ab… x），已删除，请重试"
    assert (
        say_error(kept, "en")
        == str(exc)
        == ("the download of Photon v2 is damaged (SHA256 ab… x); it was deleted: try again")
    )
    old = "the download of Photon v2 is damaged (size); it was deleted: try again"
    assert say_error(old, "zh") == old  # stored before failures had kinds
    unknown = '{"key": "cv.err.gone", "kw": {}, "en": "an English line"}'
    assert say_error(unknown, "zh") == "an English line"  # a kind this version does not know


def test_every_download_failure_has_both_languages_with_the_same_values() -> None:
    import string

    from adapters.civitai.download.errors import CivitaiError, failure
    from adapters.civitai.text import DOWNLOAD_ERRORS

    def names(text: str) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f}

    for key, entry in DOWNLOAD_ERRORS.items():
        assert set(entry) == {"en", "zh"} and names(entry["en"]) == names(entry["zh"]), key
        values = {n: f"<{n}>" for n in names(entry["en"]) - {"status"}}
        exc = failure(CivitaiError, key.removeprefix("cv.err."), status=418, **values)
        assert "{" not in str(exc) and all(v in str(exc) for v in values.values()), key
