"""The Civitai commands as a person runs them: ``sdhost`` subprocesses against the fake, with
Ctrl-C (SIGINT) where the README promises that nothing is lost or left half-written."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.civitai import FakeCivitaiDownloads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def civitai() -> AsyncIterator[FakeCivitaiDownloads]:
    async with FakeCivitaiDownloads(file_size=1_500_000) as fake:
        yield fake


def config(tmp_path: Path, fake: FakeCivitaiDownloads) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n'
        f'[civitai]\nbase_url = "{fake.base_url}"\n'
        "[providers.demo]\nlatency_s = 0.05\n",
        encoding="utf-8",
    )
    return path


async def start(cfg: Path, *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1", "COLUMNS": "120"}
    env.pop("SDHOST_DATABASE__URL", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "--config",
        str(cfg),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )


async def sdhost(cfg: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await start(cfg, *args, stdin=stdin is not None)
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), 90
    )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def interrupt_when(proc: asyncio.subprocess.Process, ready: object) -> tuple[int, str]:
    """Ctrl-C the process once ``ready()`` holds; its exit code and standard error."""
    async with asyncio.timeout(30):
        while not ready():  # type: ignore[operator]
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_chat_looks_up_and_downloads(civitai: FakeCivitaiDownloads, tmp_path: Path) -> None:
    cfg = config(tmp_path, civitai)
    code, out, err = await sdhost(
        cfg,
        "chat",
        "--user",
        "ann",
        stdin="/civitai image 90013\n/civitai download 52013\n/civitai downloads\n",
    )
    assert code == 0, err
    assert "Seed: 730091" in out
    assert "action: 🎨 Use these settings: /civitai use 90013" in out
    assert "status: ✅ #1 Photon Realism" in out and "matches Civitai" in out
    assert "Traceback" not in out + err
    [path] = (tmp_path / "data" / "models" / "checkpoints").iterdir()
    assert sha(path.read_bytes()) == sha(civitai.content(civitai.primary_file(52013).id))


async def test_a_download_interrupted_by_ctrl_c_resumes_on_the_next_run(
    civitai: FakeCivitaiDownloads, tmp_path: Path
) -> None:
    cfg = config(tmp_path, civitai)
    civitai.storage_bps = 500_000
    proc = await start(cfg, "civitai", "download", "52021", "--no-progress")
    models = tmp_path / "data" / "models"

    def part_has_bytes() -> bool:
        return any(p.stat().st_size > 0 for p in models.rglob("*.part"))

    code, err = await interrupt_when(proc, part_has_bytes)
    assert code == 130 and "paused at" in err and "run the same command again" in err, err
    assert "queued jobs" not in err  # that is the bot's line, not a download's
    [part] = models.rglob("*.part")
    have = part.stat().st_size
    assert not [p for p in models.rglob("*") if p.is_file() and p.suffix != ".part"]

    civitai.storage_bps = None
    code, out, err = await sdhost(cfg, "civitai", "download", "52021", "--no-progress")
    assert code == 0, err
    [path] = [p for p in models.rglob("*") if p.is_file()]
    assert sha(path.read_bytes()) == sha(civitai.content(civitai.primary_file(52021).id))
    assert str(path) in out and f"sha256 {sha(path.read_bytes())}" in out
    assert civitai.storage_hits[-1].range == f"bytes={have}-"

    code, out, err = await sdhost(cfg, "models", "scan")
    assert code == 0, err
    assert "Anime Lines" in out and "4202@52021" in out


async def test_the_harvester_stops_cleanly_and_resumes(
    civitai: FakeCivitaiDownloads, tmp_path: Path
) -> None:
    cfg = config(tmp_path, civitai)
    out_dir = tmp_path / "harvest"
    args = ("civitai", "images", "--max", "30", "--out", str(out_dir), "--nsfw")
    civitai.bandwidth_bps = 60_000  # a few pictures a second
    proc = await start(cfg, *args, "--concurrency", "2")

    def some_done() -> bool:
        return len(list(out_dir.glob("*.json"))) >= 3

    code, err = await interrupt_when(proc, some_done)
    assert code == 130 and "run the same command again to resume" in err, err
    assert not list(out_dir.glob("*.part"))  # nothing half-written
    kept = {p.name for p in out_dir.iterdir()}

    civitai.bandwidth_bps = None
    code, out, err = await sdhost(cfg, *args)
    assert code == 0, err
    assert f"{len(kept & {p.name for p in out_dir.glob('*.json')})} already there" in out, out
    pictures = [p for p in out_dir.iterdir() if p.suffix in (".jpeg", ".png", ".webp")]
    assert len(pictures) == 30 and kept <= {p.name for p in out_dir.iterdir()}
    for picture in pictures:
        image_id = int(picture.stem)
        assert picture.read_bytes() == civitai.image_bytes(image_id)
        meta = json.loads((out_dir / f"{image_id}.json").read_text(encoding="utf-8"))
        assert meta["id"] == image_id and (out_dir / f"{image_id}.txt").exists()
    manifest = (out_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted({json.loads(line)["id"] for line in manifest}) == sorted(
        int(p.stem) for p in pictures
    )


async def test_download_failures_are_said_in_the_chats_language_and_kept_for_any(
    civitai: FakeCivitaiDownloads, tmp_path: Path
) -> None:
    """A refused unsafe file and a damaged download, told to a chat that chose Chinese, come
    out in Chinese with their values; the task keeps the kind and values, so a later process
    (an English console) says the very same stored failure in English."""
    cfg = config(tmp_path, civitai)
    unsafe = civitai.primary_file(52021)
    unsafe.pickle_scan, unsafe.pickle_message = "Danger", "bad imports"
    civitai.corrupt_next()
    code, out, err = await sdhost(
        cfg,
        "chat",
        "--user",
        "ann",
        stdin="/lang zh\n/civitai download 52021\n/civitai download 52013\n/civitai downloads\n",
    )
    assert code == 0, err
    assert "Traceback" not in out + err
    assert f"拒绝下载 Anime Lines v1 的 {unsafe.name}：" in out, out
    assert "Civitai pickle 扫描结果为“Danger”（bad imports）" in out, out
    assert "--allow-unsafe 下载" in out and "says" not in out, out
    assert "refusing to download" not in out, out
    assert "下载已损坏（SHA256 为 " in out and "，而 Civitai 的是 " in out, out
    assert "已删除，请重试" in out and "instead of" not in out, out
    assert "is damaged" not in out, out
    assert civitai.download_hits == 1  # the unsafe file was never fetched

    code, out, err = await sdhost(
        cfg, "chat", "--user", "ann", stdin="/lang en\n/civitai downloads\n"
    )
    assert code == 0, err
    assert "#1 Photon Realism" in out and "download failed: the download of" in out, out
    assert "is damaged (SHA256 " in out and "instead of Civitai's" in out, out
    assert "it was deleted: try again" in out, out
    assert "损坏" not in out and '{"key"' not in out, out
