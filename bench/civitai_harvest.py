"""The bulk image harvester against the loopback Civitai fake (not part of CI).

    python bench/civitai_harvest.py [--images 2000] [--latency 0.05] [--bandwidth 8]
                                    [--concurrency 32] [--rate 0] [--page-size 200]
                                    [--tight-page-size 10] [--file-mb 300]
                                    [--file-bandwidth 50]

The fake runs in a process of its own, adds ``--latency`` seconds to every request (API
pages and image downloads alike) and caps its image CDN at ``--bandwidth`` MB/s for all
connections together. The limit it sets on a harvest of N images is

    N / max(walk, bytes / bandwidth)

where ``walk`` is the time to follow the cursor pages alone (they can only be fetched one
after another: at least pages x latency) and ``bytes / bandwidth`` the time every byte
needs to pass the cap. Two runs:

* **bandwidth**: pages of ``--page-size`` (200): the walk is short, the cap is the
  limit. This is the target run: at least 0.8 of the limit.
* **pages~bytes**: pages of ``--tight-page-size`` (10), so that walking the cursor
  takes about as long as the bytes do. Only overlapping page fetches with downloads gets
  near the limit here (one after the other would give about 0.5). It is the harder case,
  and also limited by CPU on a small machine (the fake and the harvester are both Python).

Then one model file (``--file-mb``) is downloaded by the download manager, SHA256 computed
on the way, from the fake's storage origin: once capped at ``--file-bandwidth`` MB/s (the
ratio to that cap is the figure) and once uncapped (what this machine manages: loopback,
the Python fake, httpx, hashing and the disk). Plain SHA256 over memory is printed beside
it, to show whether hashing is what limits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.download.manager import DownloadManager
from adapters.civitai.harvest import Harvester
from storage.db import Database
from tests.fakes.civitai import FakeCivitai, FakeCivitaiDownloads

BULK_VERSION = 52991  # the version of the fake's "Bulk Gallery" (extra_images)
MODEL_VERSION = 52013  # a checkpoint of the fake's catalogue, for the download run


def _serve(conn: Connection, options: dict[str, Any]) -> None:
    """The fake in a process of its own, so its CPU time is not the harvester's."""
    file_size = options.pop("file_size", None)

    async def serve() -> None:
        kind = FakeCivitaiDownloads if file_size else FakeCivitai
        async with kind(**options) as fake:
            if isinstance(fake, FakeCivitaiDownloads):
                fake.set_content(fake.primary_file(MODEL_VERSION).id, size=file_size)
            conn.send(fake.base_url)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, conn.recv)  # until told to stop
            conn.send(len(fake.calls_to("images")))

    asyncio.run(serve())


@asynccontextmanager
async def fake_process(**options: Any) -> AsyncIterator[tuple[str, list[int]]]:
    """``(base_url, pages)``; ``pages`` gets the number of /images calls at the end."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(theirs, options), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    pages: list[int] = []
    try:
        base_url = await loop.run_in_executor(None, ours.recv)
        yield base_url, pages
        ours.send("stop")
        pages.append(await loop.run_in_executor(None, ours.recv))
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


async def scenario(
    name: str,
    *,
    images: int,
    latency: float,
    bandwidth_mb: float | None,
    page_size: int,
    concurrency: int,
    rate: float | None,
) -> list[str]:
    bps = bandwidth_mb * 1_000_000 if bandwidth_mb else None
    filters = {"model_version_id": BULK_VERSION}
    async with fake_process(
        latency_s=latency, extra_images=images, image_cdn=True, bandwidth_bps=bps
    ) as (base_url, calls):
        async with CivitaiClient(base_url=base_url) as client:
            started = time.perf_counter()
            async for _ in client.iter_images(max_items=images, limit=page_size, **filters):
                pass
            walk = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as out:
                harvester = Harvester(
                    client,
                    out,
                    max_items=images,
                    concurrency=concurrency,
                    rate=rate,
                    page_size=page_size,
                    filters=filters,
                    progress=False,
                )
                started = time.perf_counter()
                result = await harvester.run()
                wall = time.perf_counter() - started
    assert result.downloaded == images and not result.failed, result.summary()
    pages = calls[0] // 2  # the walk, then the harvest
    transfer = result.bytes / bps if bps else 0.0
    floor = max(walk, transfer)
    bound = "bandwidth" if transfer >= walk else "pages"
    ips = images / wall
    limit = images / floor
    return [
        name,
        str(images),
        f"{pages} x {page_size}",
        f"{walk:.2f}",
        f"{bandwidth_mb:g}" if bandwidth_mb else "none",
        f"{result.bytes / 1e6:.1f}",
        f"{transfer:.2f}",
        str(concurrency),
        f"{wall:.2f}",
        f"{ips:.0f}",
        f"{limit:.0f}",
        bound,
        f"{ips / limit:.2f}",
    ]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added per request")
    ap.add_argument("--bandwidth", type=float, default=8.0, help="image CDN cap, MB/s")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.0, help="image requests/s (0: no limit)")
    ap.add_argument("--page-size", type=int, default=200)
    ap.add_argument("--tight-page-size", type=int, default=10, help="0 skips that run")
    ap.add_argument("--file-mb", type=int, default=300, help="model download size; 0 skips")
    ap.add_argument("--file-bandwidth", type=float, default=50.0, help="storage cap, MB/s")
    args = ap.parse_args()
    common = {
        "images": args.images,
        "latency": args.latency,
        "bandwidth_mb": args.bandwidth,
        "concurrency": args.concurrency,
        "rate": args.rate or None,
    }
    rows = [await scenario("bandwidth", page_size=args.page_size, **common)]
    if args.tight_page_size:
        rows.append(await scenario("pages~bytes", page_size=args.tight_page_size, **common))
    table = Table(
        title=f"civitai images harvest: {args.latency * 1000:g} ms per request, "
        f"{args.bandwidth:g} MB/s image CDN"
    )
    columns = (
        "run",
        "images",
        "pages",
        "walk s",
        "cap MB/s",
        "MB",
        "bytes s",
        "workers",
        "wall s",
        "img/s",
        "limit/s",
        "bound by",
        "ratio",
    )
    for column in columns:
        left = column in ("run", "pages", "bound by")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(132, Console().width))
    console.print(table)
    if args.file_mb:
        await download_runs(console, args.file_mb, args.file_bandwidth)


async def download_once(size: int, bandwidth_mb: float | None) -> float:
    """Seconds to download and verify one file of ``size`` bytes."""
    bps = bandwidth_mb * 1_000_000 if bandwidth_mb else None
    async with fake_process(file_size=size, storage_bps=bps) as (base_url, _):
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite+aiosqlite:///{tmp}/bench.db")
            await db.create_all()
            manager = DownloadManager(db, models_dir=Path(tmp) / "models", base_url=base_url)
            try:
                started = time.perf_counter()
                view = await manager.download(MODEL_VERSION)
                wall = time.perf_counter() - started
            finally:
                await manager.aclose()
                await db.dispose()
    assert view.status == "done" and view.sha256 == view.expected_sha256, view
    return wall


async def download_runs(console: Console, file_mb: int, bandwidth_mb: float) -> None:
    size = file_mb * 1_000_000
    block = os.urandom(1 << 20)
    started = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(256):
        digest.update(block)
    sha_mb_s = 256 * (1 << 20) / 1e6 / (time.perf_counter() - started)
    table = Table(title=f"civitai model download: {file_mb} MB, SHA256 in the stream")
    for column in ("run", "cap MB/s", "wall s", "MB/s", "ratio to cap", "sha256 alone MB/s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, cap in (("capped", bandwidth_mb), ("uncapped", None)):
        wall = await download_once(size, cap)
        rate = size / 1e6 / wall
        ratio = f"{rate / cap:.2f}" if cap else "-"
        table.add_row(
            name,
            f"{cap:g}" if cap else "none",
            f"{wall:.2f}",
            f"{rate:.0f}",
            ratio,
            f"{sha_mb_s:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
