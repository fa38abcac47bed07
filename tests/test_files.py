from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import files
from storage.files import FileStore, StoredFile


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_lays_out_by_hash(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = b"\x89PNG fake image bytes"
    stored = store.put(data)
    digest = sha(data)
    assert stored == StoredFile(
        sha256=digest, path=tmp_path / "images" / digest[:2] / f"{digest}.png", size=len(data)
    )
    assert stored.path.read_bytes() == data
    assert store.get(digest) == data
    assert store.exists(digest)


def test_kinds_and_extensions_have_their_own_places(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = b"same bytes"
    digest = sha(data)
    img = store.put(data, ext="jpg")
    inp = store.put(data, kind="inputs")
    thumb = store.put_thumbnail(digest, b"webp thumb")
    assert img.path == tmp_path / "images" / digest[:2] / f"{digest}.jpg"
    assert inp.path == tmp_path / "inputs" / digest[:2] / f"{digest}.png"
    assert thumb == tmp_path / "thumbs" / digest[:2] / f"{digest}.webp"
    assert store.get(digest, kind="thumbs", ext="webp") == b"webp thumb"
    assert not store.exists(digest)  # images/.../<sha>.png was never written
    assert store.exists(digest, ext="jpg")


def test_put_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = store.put(b"abc")
    os.utime(first.path, ns=(1_000_000_000, 1_000_000_000))
    inode = first.path.stat().st_ino
    second = store.put(b"abc")
    assert second == first
    stat = first.path.stat()
    # Not rewritten (same inode, no temp file), but its time is refreshed: stored again
    # just now, it is not an orphan for the store's sweep until a row names it.
    assert stat.st_mtime_ns > 1_000_000_000
    assert stat.st_ino == inode
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]


def test_put_repairs_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = b"the full content"
    path = store.path_for(sha(data))
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:5])  # a half-written file from some older, non-atomic writer
    store.put(data)
    assert path.read_bytes() == data


def test_crash_mid_write_leaves_no_file_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    data = b"x" * 1000

    def boom(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put(data)
    path = store.path_for(sha(data))
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # the temp file was removed as well
    monkeypatch.undo()
    assert store.put(data).path.read_bytes() == data


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.get("0" * 64)
    assert not store.exists("0" * 64, kind="inputs")


@pytest.mark.parametrize(
    ("digest", "kind", "ext"),
    [
        ("../../etc/passwd", "images", "png"),
        ("A" * 64, "images", "png"),  # upper case would create a second name for one file
        ("0" * 63, "images", "png"),
        ("0" * 64, "secrets", "png"),
        ("0" * 64, "images", "png/../x"),
        ("0" * 64, "images", ""),
    ],
)
def test_path_for_rejects_anything_that_could_escape(
    tmp_path: Path, digest: str, kind: str, ext: str
) -> None:
    with pytest.raises(ValueError):
        FileStore(tmp_path).path_for(digest, kind=kind, ext=ext)


def test_thumbnail_is_replaced_when_regenerated_with_different_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    digest = sha(b"image")
    store.put_thumbnail(digest, b"old")
    store.put_thumbnail(digest, b"newer thumb")
    assert store.get(digest, kind="thumbs", ext="webp") == b"newer thumb"


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=300), max_size=6))
def test_round_trip_any_bytes(tmp_path: Path, blobs: list[bytes]) -> None:
    store = FileStore(tmp_path)
    for blob in blobs:
        stored = store.put(blob, kind="inputs")
        assert stored.sha256 == sha(blob)
        assert store.get(stored.sha256, kind="inputs") == blob
        assert stored.size == len(blob)
