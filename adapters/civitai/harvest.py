"""Bulk image harvester (``sdhost civitai images [filters] --max N --out DIR``).

It lists images with :meth:`CivitaiClient.iter_images` (cursor pages, with the client's loop
defence) and downloads them from the image CDN:

* **Overlap.** One producer follows the cursor pages into a bounded queue while N download
  workers empty it, so the next page is fetched while the current one downloads. Image
  requests share a request-rate limit (aiolimiter); a 429 with ``Retry-After`` pauses every
  worker, not only the one that got it.
* **Size.** Civitai image URLs carry a params segment (``.../<uuid>/original=true/<name>``);
  it is replaced by ``original=true`` or ``width=N`` (:func:`sized_url`).
* **Files.** Each image becomes ``<id>.<ext>`` (extension from the ``Content-Type``), with
  ``<id>.json`` (the API item exactly as sent) and/or ``<id>.txt`` (A1111 parameters text)
  beside it, and one line in ``manifest.jsonl`` (id, file, bytes, sha256, url, size).
* **Nothing half-written.** Bytes stream to ``<id>.part`` and are renamed into place
  atomically; metadata is written (also through ``.part`` + rename) only once the image is in
  place, and the manifest line is appended last. Those steps run with no ``await`` between
  them, so a cancellation (Ctrl-C) lands either before or after all of them. Stale ``.part``
  files of a killed run are removed at the next start.
* **Resume.** An image whose manifest entry matches a file on disk of the recorded size (and
  was fetched at the same ``--size``) is skipped; only its missing metadata files are written.
* **Errors.** A failed image is retried with exponential backoff and jitter (429, 5xx,
  timeouts, dropped connections, short bodies, a web page instead of an image); a 4xx is
  final. After the retries it is recorded as failed and the run goes on. A listing that fails
  after the client's own retries ends the listing, not the run.

The API key never goes to the image CDN (a separate HTTP client without it). The command
line is in adapters/civitai/cli.py.

Why this file is near 660 lines: the producer, the workers, the shared pause on a 429 and
the manifest are one concurrency design whose invariants (nothing half-written, resume by
the manifest) are checked together; the results and options are small types it alone uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
from aiolimiter import AsyncLimiter
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import CivitaiError
from adapters.civitai.api.nsfw import browsing_level
from adapters.civitai.api.transport import IMAGES_MAX_LIMIT, ORIGINAL, USER_AGENT, sized_url
from adapters.civitai.api.types import Image
from adapters.http import backoff_s, declared_length, retry_after_s
from bot.errors import BadInput
from bot.ids import is_digits
from bot.localfile import UnsafeFile, create_new, open_existing

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
META_KINDS = ("json", "txt")
DEFAULT_RATE = 10.0  # image requests per second from the CLI; Civitai documents no limit
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
_EXT_BY_TYPE = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "audio/mpeg": "mp3",
}
_PART = re.compile(r"^\d+(\.(json|txt))?\.part$")
IMAGE_TYPES = ("image", "video", "audio")

Size = str | int  # "original" or a width in pixels


# --- URLs and options ---------------------------------------------------------------------------


def size_label(size: Size) -> str:
    """How ``size`` is written in a URL and in the manifest: ``original`` or ``width=N``."""
    return ORIGINAL if size == ORIGINAL else f"width={int(size)}"


def parse_size(value: str | int) -> Size:
    """``original`` or a width in pixels (1..10000)."""
    text = str(value).strip().lower()
    if text == ORIGINAL:
        return ORIGINAL
    if is_digits(text) and 1 <= int(text) <= 10_000:
        return int(text)
    raise BadInput(f"--size takes original or a width in pixels (e.g. 512), not {value!r}")


def parse_meta(value: str | Iterable[str]) -> frozenset[str]:
    """``json``, ``txt``, ``json,txt``, or ``none``."""
    words = value.split(",") if isinstance(value, str) else list(value)
    kinds = {w.strip().lower() for w in words if w.strip()}
    if kinds == {"none"}:
        return frozenset()
    unknown = kinds - set(META_KINDS)
    if unknown:
        raise BadInput(
            f"--meta takes json, txt, json,txt or none, not {', '.join(sorted(unknown))!r}"
        )
    return frozenset(kinds)


# --- results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Failed:
    """An image that could not be fetched (after ``attempts`` tries)."""

    id: int | None
    url: str | None
    error: str
    attempts: int = 0


@dataclass(slots=True)
class HarvestResult:
    listed: int = 0
    downloaded: int = 0
    skipped: int = 0
    failed: list[Failed] = field(default_factory=list)
    bytes: int = 0
    elapsed_s: float = 0.0
    listing_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.listing_error is None

    @property
    def done(self) -> int:
        return self.downloaded + self.skipped + len(self.failed)

    @property
    def images_per_s(self) -> float:
        return self.downloaded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, out_dir: Path | str | None = None) -> str:
        """One line: what was listed, fetched, skipped and failed, and how fast."""
        where = f" into {out_dir}" if out_dir is not None else ""
        line = (
            f"{self.listed} listed: {self.downloaded} downloaded ({_mb(self.bytes)}), "
            f"{self.skipped} already there, {len(self.failed)} failed{where} "
            f"in {self.elapsed_s:.1f} s ({self.images_per_s:.1f} images/s)"
        )
        if self.listing_error:
            line += f"; the listing stopped early: {self.listing_error}"
        return line


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


# --- the manifest and files on disk ---------------------------------------------------------------


class Manifest:
    """``manifest.jsonl``: one JSON object per fetched image, appended as each completes.
    A later line for the same id wins; an unreadable line (a killed run) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[int, dict[str, Any]] = {}
        self._needs_newline = False
        self._file: IO[str] | None = None

    def load(self) -> None:
        self.entries.clear()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        self._needs_newline = bool(raw) and not raw.endswith(b"\n")
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                self.entries[entry["id"]] = entry

    def open(self) -> None:
        """Keep the file open for appending until :meth:`close` (else one open a line)."""
        if self._file is None:
            self._file = self._open_append()

    def _open_append(self) -> IO[str]:
        """The manifest for appending, never through a symbolic link."""
        try:
            fd = create_new(self.path)
        except FileExistsError:
            fd = open_existing(self.path)
        return os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, entry: dict[str, Any]) -> None:
        """Add one complete line (flushed, so a killed process leaves whole lines)."""
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        if self._needs_newline:  # the last line of a killed run was cut short
            line = "\n" + line
            self._needs_newline = False
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            with self._open_append() as f:
                f.write(line)
        self.entries[entry["id"]] = entry


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    try:
        with _open_part(part) as f:
            f.write(text.encode("utf-8"))
        os.replace(part, path)  # replaces a link at ``path`` itself, never its target
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _open_part(path: Path) -> IO[bytes]:
    """A fresh ``.part`` (exclusive create, no link followed): a stale regular one is
    removed first; a symbolic link there is refused (:class:`UnsafeFile`)."""
    try:
        return os.fdopen(create_new(path), "wb")
    except FileExistsError:
        path.unlink()  # a regular file (create_new refused a link); the link is not followed
        return os.fdopen(create_new(path), "wb")


def _meta_text(image: Image, kind: str) -> str:
    if kind == "json":
        return json.dumps(image.raw, ensure_ascii=False, indent=2) + "\n"
    return image.parameters_text() + "\n"


def _ext(content_type: str, url: str) -> str:
    ext = _EXT_BY_TYPE.get(content_type)
    if ext:
        return ext
    suffix = Path(urlsplit(url).path).suffix.lstrip(".").lower()
    return suffix if suffix.isalnum() and len(suffix) <= 5 else "bin"


# --- download errors ------------------------------------------------------------------------------


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Final(Exception):
    pass


class _GaveUp(Exception):
    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(slots=True)
class _Fetched:
    part: Path
    size: int
    sha256: str
    content_type: str


# --- the harvester --------------------------------------------------------------------------------


class Harvester:
    """Harvest the images matching ``filters`` (keyword arguments of
    :meth:`CivitaiClient.images`: ``model_id``, ``model_version_id``, ``username``,
    ``sort``, ``period``, ``nsfw``, ``base_models``...) into ``out_dir``.

    ``max_items`` caps the images listed (already-present ones count: a rerun with the same
    ``max_items`` downloads nothing new). ``concurrency`` downloads run at once, at most
    ``rate`` image requests per second (``None``: no limit). ``size`` is ``"original"`` or a
    width; ``meta`` the metadata files to write (``json``, ``txt``). ``progress`` shows a rich
    progress bar (``None``: only when ``console`` is a terminal). ``http`` is the client for
    image bytes (default: a new one, without the API key).
    """

    def __init__(
        self,
        client: CivitaiClient,
        out_dir: str | Path,
        *,
        max_items: int | None = None,
        concurrency: int = 8,
        size: Size = ORIGINAL,
        meta: str | Iterable[str] = META_KINDS,
        rate: float | None = None,
        filters: Mapping[str, Any] | None = None,
        page_size: int | None = None,
        retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 15.0,
        max_retry_after: float = 120.0,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
        progress: bool | None = None,
        console: Console | None = None,
    ) -> None:
        if max_items is not None and max_items < 1:
            raise BadInput(f"--max takes a positive number, not {max_items}")
        if not 1 <= concurrency <= 256:
            raise BadInput(f"--concurrency takes 1 to 256, not {concurrency}")
        if rate is not None and rate <= 0:
            raise BadInput(f"--rate takes a positive number of requests per second, not {rate}")
        if retries < 0:
            raise BadInput(f"--retries takes 0 or more, not {retries}")
        self.client = client
        self.out_dir = Path(out_dir)
        self.max_items = max_items
        self.concurrency = concurrency
        self.size = parse_size(size)
        self.meta = parse_meta(meta)
        self.rate = rate
        self.filters = dict(filters or {})
        if "page" in self.filters or "cursor" in self.filters:
            raise BadInput("the harvester follows cursors itself; it takes no page or cursor")
        browsing_level(self.filters.get("nsfw"))  # a bad NSFW policy fails here, not mid-run
        limit = page_size or self.filters.pop("limit", None) or IMAGES_MAX_LIMIT
        self.page_size = max(1, min(IMAGES_MAX_LIMIT, limit, max_items or IMAGES_MAX_LIMIT))
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.timeout = timeout
        self.manifest = Manifest(self.out_dir / MANIFEST)
        self.result = HarvestResult()
        self.console = console or Console(stderr=True)
        self.show_progress = self.console.is_terminal if progress is None else progress
        self._http = http
        self._limiter = _limiter(rate)
        self._pause_until = 0.0
        self._progress: Progress | None = None
        self._task: Any = None
        self._started = 0.0

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> HarvestResult:
        """Harvest; returns the counts. Cancelling it leaves only complete files behind."""
        self.result = HarvestResult()
        self._started = time.monotonic()
        _prepare(self.out_dir)
        self.manifest.load()
        queue: asyncio.Queue[Image | None] = asyncio.Queue(
            maxsize=max(2 * self.concurrency, self.page_size)
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                # One small client per worker unless one is given: httpcore's pool gets slow
                # (quadratic) with many connections and waiting requests in one client.
                tls = httpx.create_ssl_context() if self._http is None else None
                clients = [
                    self._http
                    if self._http is not None
                    else await stack.enter_async_context(self._new_http(tls))
                    for _ in range(self.concurrency)
                ]
                self.manifest.open()
                stack.callback(self.manifest.close)
                stack.enter_context(self._progress_bar())
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._produce(queue))
                        for http in clients:
                            tg.create_task(self._work(queue, http))
                except ExceptionGroup as group:  # a bug, not an image failure: one error
                    raise group.exceptions[0] from None
        finally:
            self.result.elapsed_s = time.monotonic() - self._started
        return self.result

    def _new_http(self, tls: ssl.SSLContext | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,video/*,*/*;q=0.5"},
        )

    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator[None]:
        if not self.show_progress:
            yield
            return
        progress = Progress(
            TextColumn("[bold]civitai images"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._progress = progress
        self._task = progress.add_task("harvest", total=self.max_items, info="")
        with progress:
            try:
                yield
            finally:
                self._tick(advance=0)
                self._progress = None

    def _tick(self, *, advance: int = 1) -> None:
        if self._progress is None:
            return
        r = self.result
        elapsed = max(1e-9, time.monotonic() - self._started)
        info = (
            f"{r.downloaded} new, {r.skipped} kept, {len(r.failed)} failed, "
            f"{_mb(r.bytes)}, {r.downloaded / elapsed:.1f}/s"
        )
        self._progress.update(self._task, advance=advance, info=info)

    async def _produce(self, queue: asyncio.Queue[Image | None]) -> None:
        try:
            async for image in self.client.iter_images(
                max_items=self.max_items, limit=self.page_size, **self.filters
            ):
                self.result.listed += 1
                await queue.put(image)
        except CivitaiError as exc:
            self.result.listing_error = str(exc)
            log.warning("civitai harvest: the listing stopped: %r", str(exc))
        if self._progress is not None:
            self._progress.update(self._task, total=self.result.listed)
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[Image | None], http: httpx.AsyncClient) -> None:
        while True:
            image = await queue.get()
            if image is None:
                return
            try:
                await self._one(image, http)
            except _GaveUp as exc:
                self._fail(image, str(exc), exc.attempts)
            except Exception as exc:  # never let one image end the run
                log.debug("civitai harvest: image %s failed", image.id, exc_info=True)
                self._fail(image, f"{type(exc).__name__}: {exc}", 1)
            self._tick()

    def _fail(self, image: Image, error: str, attempts: int) -> None:
        self.result.failed.append(Failed(image.id, image.url, error, attempts))
        log.info("civitai harvest: image %s failed: %r", image.id, error)

    async def _one(self, image: Image, http: httpx.AsyncClient) -> None:
        if image.id is None or not image.url:
            raise _GaveUp("the API sent no id or url for it", 0)
        if self._have(image):
            self._write_meta(image, only_missing=True)
            self.result.skipped += 1
            return
        url = sized_url(image.url, self.size)
        fetched = await self._download(http, url, image.id)
        texts = {kind: _meta_text(image, kind) for kind in sorted(self.meta)}
        entry = {
            "id": image.id,
            "file": f"{image.id}.{_ext(fetched.content_type, url)}",
            "bytes": fetched.size,
            "sha256": fetched.sha256,
            "url": url,
            "size": size_label(self.size),
            "content_type": fetched.content_type,
            "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        # From here on no await: a cancellation lands before the rename or after the manifest.
        self._commit(fetched.part, entry, texts)
        self.result.downloaded += 1
        self.result.bytes += fetched.size

    def _have(self, image: Image) -> bool:
        assert image.id is not None
        entry = self.manifest.entries.get(image.id)
        if entry is None or entry.get("size") != size_label(self.size):
            return False
        name = entry.get("file")
        if not isinstance(name, str) or Path(name).name != name or name.endswith(".part"):
            return False
        path = self.out_dir / name
        try:
            return path.is_file() and path.stat().st_size == entry.get("bytes")
        except OSError:
            return False

    def _write_meta(self, image: Image, *, only_missing: bool = False) -> None:
        for kind in sorted(self.meta):
            path = self.out_dir / f"{image.id}.{kind}"
            if only_missing and path.is_file():
                continue
            _write_atomic(path, _meta_text(image, kind))

    def _commit(self, part: Path, entry: dict[str, Any], texts: Mapping[str, str]) -> None:
        """Image into place, then its metadata, then its manifest line."""
        name = entry["file"]
        try:
            os.replace(part, self.out_dir / name)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        old = self.manifest.entries.get(entry["id"], {}).get("file")
        if isinstance(old, str) and old != name and Path(old).name == old:
            (self.out_dir / old).unlink(missing_ok=True)  # the same image at another size
        for kind, text in texts.items():
            _write_atomic(self.out_dir / f"{entry['id']}.{kind}", text)
        self.manifest.append(entry)

    # --- one download with retries ----------------------------------------------------------------

    async def _download(self, http: httpx.AsyncClient, url: str, image_id: int) -> _Fetched:
        part = self.out_dir / f"{image_id}.part"
        attempt = 0
        while True:
            attempt += 1
            await self._wait_turn()
            try:
                return await self._fetch(http, url, part)
            except _Final as exc:
                raise _GaveUp(str(exc), attempt) from None
            except _Retry as exc:
                if attempt > self.retries:
                    tries = f"{attempt} attempts" if attempt > 1 else "1 attempt"
                    raise _GaveUp(f"{exc} ({tries})", attempt) from None
                if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                    raise _GaveUp(f"{exc}; asked to wait {exc.retry_after:g} s", attempt) from None
                wait = backoff_s(
                    attempt, exc.retry_after, base=self.backoff_base, cap=self.backoff_max
                )
                if exc.retry_after is not None:  # the CDN asked everyone to slow down
                    loop = asyncio.get_running_loop()
                    self._pause_until = max(self._pause_until, loop.time() + wait)
                log.debug("civitai harvest: %r: %r; retry in %.2f s", url, str(exc), wait)
                await asyncio.sleep(wait)

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._pause_until - loop.time()) > 0:
            await asyncio.sleep(delay)
        if self._limiter is not None:
            await self._limiter.acquire()

    async def _fetch(self, http: httpx.AsyncClient, url: str, part: Path) -> _Fetched:
        """GET ``url`` into ``part``; raises :class:`_Retry` or :class:`_Final`. ``part``
        exists afterwards only when this returns."""
        try:
            async with http.stream("GET", url) as response:
                status = response.status_code
                if status != 200:
                    retry_after = retry_after_s(response) if status in (429, 503) else None
                    if status in RETRY_STATUSES:
                        raise _Retry(f"HTTP {status}", retry_after)
                    raise _Final(f"HTTP {status}")
                content_type = response.headers.get("content-type", "").split(";")[0]
                content_type = content_type.strip().lower()
                if content_type.startswith("text/") or content_type.endswith("json"):
                    # a Cloudflare page or an error body where the picture should be
                    raise _Retry(f"got {content_type} instead of an image")
                expected = declared_length(response)
                digest = hashlib.sha256()
                size = 0
                try:
                    f = _open_part(part)
                except UnsafeFile as exc:
                    raise _Final(f"{exc.strerror}: {part}") from None
                try:
                    async for chunk in response.aiter_bytes(65_536):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                finally:
                    f.close()
            if expected is not None and size != expected:
                raise _Retry(f"got {size} of {expected} bytes")
            if size == 0:
                raise _Retry("got an empty body")
            return _Fetched(part, size, digest.hexdigest(), content_type)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, httpx.TimeoutException):
                raise _Retry("timed out") from None
            if isinstance(exc, httpx.TransportError):
                raise _Retry(f"connection failed ({type(exc).__name__})") from None
            raise


def _limiter(rate: float | None) -> AsyncLimiter | None:
    if not rate:
        return None
    if rate >= 1:
        return AsyncLimiter(rate, 1.0)
    return AsyncLimiter(1, 1.0 / rate)  # one request every 1/rate seconds


def _prepare(out_dir: Path) -> None:
    """Create ``out_dir`` and remove the ``.part`` files a killed run left there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        if _PART.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)


async def harvest(client: CivitaiClient, out_dir: str | Path, **options: Any) -> HarvestResult:
    """Shorthand for ``Harvester(client, out_dir, **options).run()``."""
    return await Harvester(client, out_dir, **options).run()


__all__ = [
    "MANIFEST",
    "ORIGINAL",
    "Failed",
    "HarvestResult",
    "Harvester",
    "Manifest",
    "harvest",
    "parse_meta",
    "parse_size",
    "size_label",
    "sized_url",
]
