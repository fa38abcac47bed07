"""The cost of the picture store per picture: the local folder against an S3 bucket.

    python bench/store.py [--pictures 200] [--size 1.5]

What a finished picture costs the scheduler (``_encode_and_store``: put the PNG, check for
its thumbnail, put the thumbnail) and what a delivery costs (get the PNG), in ms per picture,
p50 and p99, for the local store (with its fsyncs) and for S3 against a SeaweedFS started
here on loopback (tests/seaweed.py; ``SDHOST_TEST_S3_URL``/``_ACCESS_KEY``/``_SECRET_KEY``
to use another server). Pictures are random bytes of ``--size`` MB (incompressible, like a
PNG). A second put of each (the write-once 412 for S3) is timed too. Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.files import FileStore, PictureStore
from storage.s3 import S3Store
from tests.seaweed import S3Server, Seaweed


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(name: str, store: PictureStore, pictures: list[bytes], thumb: bytes) -> None:
    store_ms, again_ms, get_ms = [], [], []
    shas = []
    for data in pictures:

        def finished(data: bytes = data) -> None:  # what _encode_and_store does
            stored = store.put(data)
            shas.append(stored.sha256)
            if not store.exists(stored.sha256, kind="thumbs", ext="webp"):
                store.put_thumbnail(stored.sha256, thumb)

        store_ms.append(timed(finished))
    for data in pictures:
        again_ms.append(timed(lambda data=data: store.put(data)))
    for sha in shas:
        get_ms.append(timed(lambda sha=sha: store.get(sha)))
    for label, values in (
        ("store (put+exists+thumb)", store_ms),
        ("put again (write-once)", again_ms),
        ("get", get_ms),
    ):
        print(
            f"{name:6} {label:26} p50 {statistics.median(values):7.2f} ms"
            f"   p99 {pct(values, 0.99):7.2f} ms   mean {statistics.fmean(values):7.2f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pictures", type=int, default=200)
    parser.add_argument("--size", type=float, default=1.5, help="MB per picture")
    args = parser.parse_args()
    pictures = [os.urandom(int(args.size * 1024 * 1024)) for _ in range(args.pictures)]
    thumb = os.urandom(20_000)
    print(f"{args.pictures} pictures of {args.size} MB, thumbnails of 20 kB")
    with tempfile.TemporaryDirectory() as folder:
        run("local", FileStore(Path(folder) / "store"), pictures, thumb)
        seaweed: Seaweed | None = None
        url = os.environ.get("SDHOST_TEST_S3_URL")
        if url:
            server = S3Server(
                url,
                os.environ.get("SDHOST_TEST_S3_ACCESS_KEY", ""),
                os.environ.get("SDHOST_TEST_S3_SECRET_KEY", ""),
            )
        else:
            seaweed = Seaweed(Path(folder) / "seaweed")
            seaweed.start()
            server = S3Server(seaweed.url, seaweed.access_key, seaweed.secret_key)
        try:
            bucket = server.new_bucket()
            store = S3Store(
                bucket=bucket,
                endpoint_url=server.url,
                access_key=server.access_key,
                secret_key=server.secret_key,
            )
            run("s3", store, pictures, thumb)
        finally:
            if seaweed is not None:
                seaweed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
