"""Pictures in S3-compatible storage (issue 18), against a real SeaweedFS (tests/seaweed.py):
the store itself (write-once with its 412, capped and checked reads, the sweep), a job through
the whole bot whose picture lives only in the bucket, the store stopped mid-run and started
again, a hostile S3 server, and no S3 secret in the logs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from bot.app import open_store
from bot.config import S3StoreConfig
from bot.params import GenerationParams
from bot.redact import RedactingFilter, Redactor
from bot.results import Results
from bot.scheduler import STORAGE_WAIT
from storage import repos
from storage.files import StorageError, StorageUnavailable, key_for
from storage.models import Job, LedgerEntry
from storage.s3 import S3Store
from tests.conftest import REPLY, user
from tests.fakes.telegram import FakeTelegram
from tests.seaweed import S3Server, Seaweed, free_ports, own_seaweed, s3_server
from tests.test_telegram import ANN, Env

__all__ = ["own_seaweed", "s3_server"]  # the fixtures, imported to be found

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def store_on(server: S3Server, bucket: str, **kw: Any) -> S3Store:
    return S3Store(
        bucket=bucket,
        endpoint_url=server.url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **kw,
    )


def keys_in(server: S3Server, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def put_statuses(store: S3Store) -> list[int]:
    """The HTTP status of every PutObject the store's client makes from now on."""
    seen: list[int] = []

    def hook(http_response: Any, **_: Any) -> None:
        seen.append(http_response.status_code)

    store.client.meta.events.register("after-call.s3.PutObject", hook)
    return seen


# --- the store ----------------------------------------------------------------------------


def test_round_trip_of_every_kind_with_the_local_stores_keys(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    image, upload = png((200, 10, 10)), png((10, 200, 10))
    stored = store.put(image)
    given = store.put(upload, kind="inputs")
    store.put_thumbnail(stored.sha256, b"RIFF-a-thumbnail")
    assert stored.sha256 == hashlib.sha256(image).hexdigest() and stored.path is None
    assert stored.size == len(image)
    assert keys_in(s3_server, bucket) == sorted(
        [
            f"images/{stored.sha256[:2]}/{stored.sha256}.png",
            f"inputs/{given.sha256[:2]}/{given.sha256}.png",
            f"thumbs/{stored.sha256[:2]}/{stored.sha256}.webp",
        ]
    )
    assert store.get(stored.sha256) == image
    assert store.get(given.sha256, kind="inputs") == upload
    assert store.get(stored.sha256, kind="thumbs", ext="webp") == b"RIFF-a-thumbnail"
    assert store.exists(stored.sha256) and store.exists(given.sha256, kind="inputs")
    assert store.exists(stored.sha256, kind="thumbs", ext="webp")
    assert not store.exists(given.sha256)  # an input is not an image
    with pytest.raises(FileNotFoundError):
        store.get(given.sha256)
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")
    head = s3_server.client().head_object(Bucket=bucket, Key=key_for(stored.sha256))
    assert head["ContentType"] == "image/png"
    assert store.locate(stored.sha256) == f"s3://{bucket}/{key_for(stored.sha256)}"
    cdn = store_on(s3_server, bucket, public_base_url="https://cdn.example/p/")
    assert cdn.locate(stored.sha256) == f"https://cdn.example/p/{key_for(stored.sha256)}"


def test_a_second_put_is_a_412_and_counts_as_stored(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    statuses = put_statuses(store)
    data = png((1, 2, 3))
    first = store.put(data)
    second = store.put(data)  # no exception: "already there" is success
    store.put_thumbnail(first.sha256, b"thumb one")
    store.put_thumbnail(first.sha256, b"thumb two")  # write-once: the first stays
    assert statuses == [200, 412, 200, 412]
    assert first == second
    assert store.get(first.sha256) == data
    assert store.get(first.sha256, kind="thumbs", ext="webp") == b"thumb one"


def test_a_412_refreshes_a_picture_for_the_sweep(s3_server: S3Server) -> None:
    """Stored again (an input used by a new job), an old object is new in the sweep's eyes,
    as the local store sets a file's time."""
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    data = png((9, 9, 9))
    sha = store.put(data, kind="inputs").sha256
    time.sleep(1.1)  # S3 times are in whole seconds
    between = time.time()
    store.put(data, kind="inputs")
    assert store.sweep(set(), keep_since=between) == []
    assert store.exists(sha, kind="inputs")


def test_sweep_deletes_unreferenced_old_objects_page_by_page(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    kept = store.put(png((1, 1, 1)))
    store.put_thumbnail(kept.sha256, b"kept's thumbnail")
    gone = store.put(png((2, 2, 2)))
    store.put_thumbnail(gone.sha256, b"gone's thumbnail")
    gone_input = store.put(png((3, 3, 3)), kind="inputs")
    many = [store.put(png((4, 4, i))).sha256 for i in range(7)]
    s3_server.client().put_object(Bucket=bucket, Key="images/zz/not-ours.txt", Body=b"x")
    # a small page size proves the listing follows continuation tokens
    paginate = store.client.get_paginator("list_objects_v2").paginate

    def small_pages(**kw: Any) -> Any:
        return paginate(**kw, PaginationConfig={"PageSize": 3})

    store.client.get_paginator = lambda name: type("P", (), {"paginate": staticmethod(small_pages)})

    # nothing is older than a moment ago: nothing goes
    assert store.sweep(set(), keep_since=time.time() - 60) == []
    removed = store.sweep({kept.sha256}, keep_since=time.time() + 60)
    assert sorted(removed) == sorted(
        [
            key_for(gone.sha256),
            key_for(gone.sha256, kind="thumbs", ext="webp"),
            key_for(gone_input.sha256, kind="inputs"),
            *(key_for(sha) for sha in many),
        ]
    )
    assert keys_in(s3_server, bucket) == sorted(
        [
            key_for(kept.sha256),
            key_for(kept.sha256, kind="thumbs", ext="webp"),
            "images/zz/not-ours.txt",
        ]
    )


def test_a_store_that_cannot_be_reached_is_unavailable_quickly() -> None:
    (port,) = free_ports(1)  # nothing listens there
    store = S3Store(
        bucket="sdhost",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        connect_timeout_s=1,
        max_attempts=2,
    )
    started = time.monotonic()
    for call in (
        lambda: store.put(b"x"),
        lambda: store.get(hashlib.sha256(b"x").hexdigest()),
        lambda: store.exists(hashlib.sha256(b"x").hexdigest()),
        lambda: store.sweep(set(), keep_since=0),
    ):
        with pytest.raises(StorageUnavailable, match="the picture store failed while"):
            call()
    assert time.monotonic() - started < 20


def test_wrong_credentials_are_unavailable_not_missing(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    good = store_on(s3_server, bucket)
    sha = good.put(b"secret picture").sha256
    bad = S3Store(bucket=bucket, endpoint_url=s3_server.url, access_key="nobody", secret_key="x")
    with pytest.raises(StorageUnavailable, match="403"):
        bad.get(sha)
    with pytest.raises(StorageUnavailable):
        bad.put(b"intruder")
    missing = store_on(s3_server, "no-such-bucket-here")
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        missing.put(b"anything")


# --- a hostile S3 server --------------------------------------------------------------------


class Hostile:
    """A raw HTTP server answering every request the way ``mode`` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.sent = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Hostile:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if self.mode == "huge":  # claims 10 GB
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
                    writer.write(b"\0" * 65536)
                    await writer.drain()
                    await asyncio.sleep(30)
                elif self.mode == "endless":  # no length, bytes for ever
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    chunk = b"\0" * 65536
                    while True:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.sent += len(chunk)
                        await writer.drain()
                elif self.mode == "garbage":  # a well-formed answer, not the file asked for
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngarbage")
                else:  # "500"
                    body = b"<Error><Code>InternalError</Code></Error>"
                    writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def hostile_store(url: str, **kw: Any) -> S3Store:
    return S3Store(
        bucket="sdhost",
        endpoint_url=url,
        access_key="a",
        secret_key="b",
        read_timeout_s=5,
        max_attempts=2,
        **kw,
    )


async def test_a_server_claiming_a_huge_object_is_not_read() -> None:
    sha = hashlib.sha256(b"anything").hexdigest()
    async with Hostile("huge") as server:
        store = hostile_store(server.url)
        started = time.monotonic()
        with pytest.raises(StorageError, match="10000000000 bytes, more than any picture"):
            await asyncio.to_thread(store.get, sha)
        assert time.monotonic() - started < 5


async def test_an_endless_answer_is_cut_at_the_cap() -> None:
    sha = hashlib.sha256(b"anything").hexdigest()
    async with Hostile("endless") as server:
        store = hostile_store(server.url, max_bytes=200_000)
        with pytest.raises(StorageError, match="more than 200000 bytes"):
            await asyncio.to_thread(store.get, sha)
        await asyncio.sleep(0.2)
        assert server.sent < 20_000_000  # stopped reading long before anything large


async def test_garbage_in_place_of_a_picture_is_refused() -> None:
    sha = hashlib.sha256(b"the real picture").hexdigest()
    async with Hostile("garbage") as server:
        with pytest.raises(StorageError, match="not that file"):
            await asyncio.to_thread(hostile_store(server.url).get, sha)


async def test_5xx_is_retried_then_unavailable() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    async with Hostile("500") as server:
        store = hostile_store(server.url)
        with pytest.raises(StorageUnavailable, match="500 InternalError"):
            await asyncio.to_thread(store.get, sha)
        assert server.requests == 2  # botocore's retry, then the error
        with pytest.raises(StorageUnavailable, match="while writing"):
            await asyncio.to_thread(store.put, b"x")


# --- the whole bot ----------------------------------------------------------------------------


def s3_section(server: S3Server, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "store": "s3",
        "s3": {
            "endpoint_url": server.url,
            "bucket": bucket,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            **extra,
        },
    }


def pictures_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".png", ".webp") and p.is_file()]


class S3Env(Env):
    """The Telegram test bench with the pictures in a bucket."""

    s3: dict[str, Any]

    def config(self, **telegram: Any) -> Any:
        config = super().config(**telegram)
        config.data.store = "s3"
        config.data.s3 = S3StoreConfig(**self.s3)
        return config


@pytest.fixture
async def tg_env(tmp_path: Path, db_url: str) -> AsyncIterator[S3Env]:
    async with FakeTelegram() as tg:
        env = S3Env(tg, tmp_path, db_url)
        try:
            yield env
        finally:
            await env.stop()


async def test_a_job_through_telegram_lives_only_in_the_bucket(
    tg_env: S3Env, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    tg_env.s3 = s3_section(s3_server, bucket)["s3"]
    await tg_env.start()
    assert tg_env.app is not None and isinstance(tg_env.app.files, S3Store)
    tg_env.tg.inject_message(ANN, ANN, "/imagine a lighthouse --seed 5")
    [photo] = await tg_env.until(lambda: tg_env.photos(ANN))
    [image] = await tg_env.app.db.run_read(repos.images_for_job, 1)
    keys = keys_in(s3_server, bucket)
    assert keys == [key_for(image.sha256), key_for(image.sha256, kind="thumbs", ext="webp")]
    in_bucket = s3_server.client().get_object(Bucket=bucket, Key=key_for(image.sha256))
    picture = in_bucket["Body"].read()
    assert hashlib.sha256(picture).hexdigest() == image.sha256
    # Telegram got the picture from the bucket (as a photo: Telegram's own re-encoding aside,
    # the fake keeps what was uploaded)
    assert photo.photo_bytes == picture
    # the Original button reads it from the bucket too
    tg_env.tg.inject_callback_query(ANN, ANN, photo.message_id, "o:1:0")
    docs = await tg_env.until(lambda: [m for m in tg_env.sent(ANN) if m.document_bytes])
    assert docs[0].document_bytes == picture
    # and /job shows where it is; nothing of it on this machine's disk
    assert pictures_under(tmp_path) == []
    view = await tg_env.app.jobs.job(None, 1)
    assert view.images[0]["path"] == f"s3://{bucket}/{key_for(image.sha256)}"


async def test_img2img_inputs_and_results_go_through_the_bucket(
    app_factory: Callable[..., Any], s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    app = await app_factory(data=s3_section(s3_server, bucket))
    given = png((30, 60, 90), (512, 512))
    receipt = await app.jobs.submit(
        user(),
        "img2img",
        [GenerationParams(prompt="a boat", strength=0.5)],
        REPLY,
        init_image=given,
    )
    adapter = app.adapters["test"]
    await adapter.wait_for(lambda: adapter.of_kind("finished"))
    [event] = adapter.of_kind("image")
    sha = event.payload["sha256"]
    assert key_for(hashlib.sha256(given).hexdigest(), kind="inputs") in keys_in(s3_server, bucket)
    # the Original (Results) and a Vary read from the bucket
    results = Results(app.jobs)
    picture = await results.picture(receipt.jobs[0].id, 0)
    assert hashlib.sha256(await results.picture_bytes(picture)).hexdigest() == sha
    await results.vary(user(), receipt.jobs[0].id, 0, REPLY)
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 2)
    assert len([k for k in keys_in(s3_server, bucket) if k.startswith("images/")]) == 2
    assert pictures_under(tmp_path) == []


async def test_the_store_stopped_mid_run_then_back_loses_and_double_charges_nothing(
    app_factory: Callable[..., Any], own_seaweed: Seaweed, tmp_path: Path
) -> None:
    server = S3Server(own_seaweed.url, own_seaweed.access_key, own_seaweed.secret_key)
    bucket = server.new_bucket()
    app = await app_factory(
        data=s3_section(server, bucket, connect_timeout_s=1, read_timeout_s=3, max_attempts=2),
        queue={"retry_backoff_s": 0.3, "max_attempts": 2},
    )
    adapter = app.adapters["test"]
    first = await app.jobs.submit(user(), "txt2img", [GenerationParams(prompt="one")], REPLY)
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 1)

    own_seaweed.stop()
    second = await app.jobs.submit(user(), "txt2img", [GenerationParams(prompt="two", n=2)], REPLY)
    job_id = second.jobs[0].id

    async def job_row() -> Any:
        return await app.db.run_read(lambda c: c.execute(select(Job).where(Job.id == job_id)).one())

    # it meets the closed store again and again: back in the queue each time, never an
    # attempt, never quarantined (max_attempts is 2)
    seen_waits = 0
    async with asyncio.timeout(40):
        while seen_waits < 3:
            row = await job_row()
            assert row.status in ("queued", "running"), row.error
            assert row.attempts <= 1
            if row.status == "queued" and (row.error or "").startswith(STORAGE_WAIT):
                seen_waits += 1
                await asyncio.sleep(0.4)
            await asyncio.sleep(0.05)
    assert "the picture store failed while" in row.error
    assert len(adapter.of_kind("finished")) == 1 and len(adapter.of_kind("image")) == 1

    own_seaweed.start()  # same ports, same data
    await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 2, timeout=40)
    row = await job_row()
    assert row.status == "succeeded"
    pictures = [d for d in adapter.of_kind("image") if d.job_id == job_id]
    assert sorted(d.payload["index"] for d in pictures) == [0, 1]
    for d in pictures:
        assert key_for(d.payload["sha256"]) in keys_in(server, bucket)
    # the first job's picture survived the restart; each job was charged once
    assert len([k for k in keys_in(server, bucket) if k.startswith("images/")]) == 3

    def charges(conn: Any) -> list[tuple[int, int]]:
        rows = conn.execute(select(LedgerEntry.job_id, LedgerEntry.delta)).all()
        return sorted((r.job_id, r.delta) for r in rows if r.job_id is not None)

    assert await app.db.run_read(charges) == [(first.jobs[0].id, -1), (job_id, -2)]
    assert await app.jobs.balance(user()) == 20 - 3
    assert pictures_under(tmp_path) == []


async def test_no_s3_secret_reaches_the_log(
    tmp_path: Path, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys come from the environment (SDHOST_DATA__S3__*), count as secrets, and
    botocore's DEBUG output (which carries the access key in every signed request) is
    redacted like the rest of the log."""
    from bot.config import load_config

    bucket = s3_server.new_bucket()
    path = tmp_path / "config.toml"
    path.write_text(f'[data]\nstore = "s3"\n[data.s3]\nbucket = "{bucket}"\n')
    config = load_config(
        path,
        environ={
            "SDHOST_DATA__S3__ENDPOINT_URL": s3_server.url,
            "SDHOST_DATA__S3__ACCESS_KEY": s3_server.access_key,
            "SDHOST_DATA__S3__SECRET_KEY": s3_server.secret_key,
        },
    )
    assert {s3_server.access_key, s3_server.secret_key} <= config.secrets()
    store = open_store(config)
    root = logging.getLogger()
    handler = logging.StreamHandler(buffer := io.StringIO())
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        sha = store.put(b"a picture").sha256
        store.get(sha)
        raw = buffer.getvalue()
        assert s3_server.access_key in raw  # botocore does log it: redaction has work to do
        buffer.seek(0)
        buffer.truncate()
        # what ``bot.redact.install`` puts on the root logger's handlers when the bot starts
        handler.addFilter(RedactingFilter(Redactor(config.secrets())))
        store.put(b"another picture")
        logging.getLogger("sdhost.test").debug("config: %s", config.data.s3)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out = buffer.getvalue()
    assert "PutObject" in out or "put_object" in out.lower()
    assert s3_server.access_key not in out and s3_server.secret_key not in out


async def test_a_delivery_waits_for_an_unreachable_store_and_drops_a_gone_picture(
    tg_env: S3Env, s3_server: S3Server
) -> None:
    from bot.chat import DeliveryGone, DeliveryRetry

    bucket = s3_server.new_bucket()
    tg_env.s3 = s3_section(s3_server, bucket)["s3"]
    adapter = await tg_env.start()
    assert tg_env.app is not None
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(DeliveryGone, match="gone from the store"):
        await adapter.delivered_picture({"sha256": missing})
    (port,) = free_ports(1)
    working = tg_env.app.jobs.files
    tg_env.app.jobs.files = S3Store(
        bucket=bucket,
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        connect_timeout_s=1,
        max_attempts=1,
    )
    with pytest.raises(DeliveryRetry, match="the picture store failed while reading") as caught:
        await adapter.delivered_picture({"sha256": missing})
    assert caught.value.retry_after > 0
    tg_env.app.jobs.files = working


async def test_an_img2img_asked_while_the_store_is_down_is_refused_uncharged(
    app_factory: Callable[..., Any], s3_server: S3Server
) -> None:
    from bot.errors import UserError

    (port,) = free_ports(1)  # nothing listens: the store is down
    app = await app_factory(
        data=s3_section(
            s3_server, "sdhost", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1
        )
    )
    before = await app.jobs.balance(user())
    with pytest.raises(UserError, match="picture store is unavailable right now"):
        await app.jobs.submit(
            user(),
            "img2img",
            [GenerationParams(prompt="a boat", strength=0.5)],
            REPLY,
            init_image=png((1, 2, 3), (512, 512)),
        )
    assert await app.jobs.balance(user()) == before
    assert await app.db.run_read(lambda c: c.execute(select(Job.id)).all()) == []
