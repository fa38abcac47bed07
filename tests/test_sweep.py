"""The store's sweep: files no row refers to go, referenced and fresh ones stay."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from PIL import Image
from sqlalchemy import update

from bot.housekeeping import sweep_store
from storage.files import TEMP_PREFIX, FileStore
from storage.models import Job
from tests.conftest import REPLY, user
from tests.test_console import sdhost, write_config
from tests.test_core import P

HOUR = 3600.0


def _age(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def _plant(store: FileStore, data: bytes, kind: str, ext: str, age: float) -> Path:
    return _age(store.put(data, kind=kind, ext=ext).path, age)


def _png(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "PNG")
    return out.getvalue()


async def test_sweep_removes_orphans_and_stale_temp_files_only(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    store = app.files
    await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    await app.jobs.submit(
        user(), "img2img", [P(width=64, height=64)], REPLY, init_image=_png("red")
    )
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 2)
    # Everything the jobs stored is an hour old now: only the rows keep it.
    kept = [p for p in store.root.rglob("*") if p.is_file() and p.parent.parent != store.root]
    kept = [_age(p, HOUR) for p in kept if p.parent.parent.name in ("images", "thumbs", "inputs")]
    assert {p.parent.parent.name for p in kept} == {"images", "thumbs", "inputs"}

    orphan = _plant(store, b"a picture of a quarantined job", "images", "png", HOUR)
    orphan_thumb = _age(store.put_thumbnail(_sha(orphan), b"its thumbnail"), HOUR)
    orphan_input = _plant(store, b"an input whose job never came", "inputs", "png", HOUR)
    stale_tmp = orphan.with_name(f"{TEMP_PREFIX}{'0' * 64}.png.abc123")
    stale_tmp.write_bytes(b"cut short by a kill")
    _age(stale_tmp, HOUR)
    fresh = _plant(store, b"stored a moment ago", "images", "png", 5)
    fresh_tmp = orphan.with_name(f"{TEMP_PREFIX}{'1' * 64}.png.def456")
    fresh_tmp.write_bytes(b"being written")
    # A job running for half an hour: what it stored during its run has no row yet.
    await app.scheduler.stop()
    queued = await app.jobs.submit(user(), "txt2img", [P(width=64, height=64)], REPLY)
    async with app.db.session(write=True) as s:
        await s.execute(
            update(Job)
            .where(Job.id == queued.job_ids[0])
            .values(status="running", lease_owner="h:1:x", started_at=time.time() - HOUR / 2)
        )
    in_flight = _plant(store, b"made by the running job", "images", "png", HOUR / 6)

    removed = await sweep_store(app.db, store, grace_s=60)
    assert set(removed) == {orphan, orphan_thumb, orphan_input, stale_tmp}
    for path in [*kept, fresh, fresh_tmp, in_flight]:
        assert path.exists(), path
    for path in removed:
        assert not path.exists(), path

    # Once that job is no longer running, its picture without a row goes too.
    async with app.db.session(write=True) as s:
        await s.execute(update(Job).where(Job.id == queued.job_ids[0]).values(status="failed"))
    assert await sweep_store(app.db, store, grace_s=60) == [in_flight]
    # A picture an earlier run stored, stored again by the next run, is new again.
    earlier = _plant(store, b"stored by an earlier run", "images", "png", HOUR)
    assert store.put(b"stored by an earlier run", kind="images", ext="png").path == earlier
    assert await sweep_store(app.db, store, grace_s=60) == [] and earlier.exists()


def _sha(path: Path) -> str:
    return path.name.split(".", 1)[0]


def test_store_sweep_cli_prints_what_it_removed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    made = sdhost("--config", str(cfg), "chat", "--user", "ann", stdin="/imagine x --size 64x64\n")
    assert made.returncode == 0, made.stderr
    store = FileStore(tmp_path / "data")
    orphan = _plant(store, b"nobody's picture", "images", "png", 30)
    out = sdhost("--config", str(cfg), "store", "sweep", "--grace", "10")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"removed {orphan}",
        f"1 file(s) no row refers to removed from {store.root}",
    ]
    assert not orphan.exists()
    assert len(list((store.root / "images").rglob("*.png"))) == 1  # the job's picture stays
