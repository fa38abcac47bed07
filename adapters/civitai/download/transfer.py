"""A model file's transfer from Civitai, after §4 and §6 of ``../shared/api/civitai.md``. The
manager (manager.py) keeps the queue, the leases, pause and resume; a transfer reports to it
through :class:`Hooks`.

* **Two hops, one key.** ``GET /api/download/models/{versionId}`` goes to the API host with
  the key in ``Authorization`` and *without* following redirects; the 307's ``Location`` (a
  signed R2/B2 URL) is fetched by a separate HTTP client that never has the key, so the key
  only ever reaches the API host (storage answers 400 to an ``Authorization`` header).
* **Checked before it is a file.** Bytes stream to ``<name>.part`` with their SHA256
  computed on the way (in a worker thread, overlapping the next read); the size and the
  hashes Civitai lists (SHA256, else AutoV2, else ``sizeKB``) are checked, then the file is
  moved into place atomically and never over another file (a hard link, which fails if the
  name is taken, then the ``.part`` is removed).
* **Safe to load.** A file is refused unless Civitai's pickle and virus scans both say
  "Success" (``allow_unsafe``, logged, overrides); a SafeTensor file is preferred. A stream
  stops as soon as it passes the listed size or the ``Content-Length``, nothing goes over
  ``max_bytes``, a download needs the free disk space first, and a ``.part`` is never
  opened through a symbolic link (``bot.localfile.create_new``/``open_existing``).
* **Resume.** Every attempt asks the API for a fresh signed URL and sends
  ``Range: bytes=<have>-``: a 206 continues, a 200 (range ignored) starts again from zero,
  a 416 means the ``.part`` is already whole (or does not fit: start again). Dropped
  connections, timeouts, 5xx and rate limits are retried with backoff and jitter; a
  download that keeps making progress is never given up.
* **Where files go.** A folder per kind of model (``civitai.folders``: checkpoint, lora, vae,
  embedding, controlnet, upscaler, other), relative to ``civitai.models_dir`` or absolute,
  so they can be an A1111 or ComfyUI install's own. The name comes from
  ``Content-Disposition``, sanitized (no directories, no traversal, no reserved names); a
  different file already there gets a ``-2`` suffix, or the download is refused
  (``civitai.on_name_clash``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from adapters.civitai.download.errors import (
    DownloadDamaged,
    DownloadError,
    NameClash,
    TooBig,
    _AlreadyThere,
    _Transient,
    failure,
)
from adapters.civitai.download.folders import (
    DISK_MARGIN,
    SIZE_TOLERANCE,
)
from adapters.civitai.download.link import signed_url
from adapters.civitai.download.naming import (
    _suffixed,
    filename_from_disposition,
    part_path,
    sanitize_filename,
)
from adapters.civitai.download.partfile import _PartFile, _sha256_of
from adapters.civitai.download.record import DownloadRecord, format_bytes
from adapters.civitai.text import LANGS, said
from adapters.http import backoff_s, declared_length, retry_after_s
from bot.text import clip

log = logging.getLogger(__name__)


class _Meter:
    """Speed over the last few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, done: int) -> float | None:
        samples = self._samples
        samples.append((t, done))
        while len(samples) > 2 and t - samples[1][0] >= self.window_s:
            samples.popleft()
        t0, d0 = samples[0]
        if t - t0 < 0.2 or done < d0:
            return None
        return (done - d0) / (t - t0)

    def reset(self) -> None:
        self._samples.clear()


@dataclass
class _Run:
    task_id: int
    task: asyncio.Task[None] | None = None
    state: DownloadRecord | None = None
    sink: _PartFile | None = None
    stop_as: str | None = None  # paused | cancelled | queued, when we were told to stop
    finishing: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _content_range(header: str | None) -> tuple[int, int, int | None] | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", header or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _range_total(header: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(?:\*|\d+-\d+)/(\d+)\s*", header or "")
    return int(m.group(1)) if m else None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return clip(text, limit)


class Hooks(Protocol):
    """What a transfer tells its manager (which owns the task rows and their leases)."""

    async def progress(self, run: _Run, *, force: bool = False) -> None:
        """Store the progress; raises to stop the transfer when the task was paused or
        cancelled elsewhere."""

    async def path_chosen(self, state: DownloadRecord) -> None:
        """Store the path the file will have."""

    async def busy_paths(self) -> dict[str, int]:
        """Paths other downloads are writing: ``{path: task id}``."""


@dataclass(frozen=True, slots=True)
class Fetched:
    path: Path
    sha256: str
    size: int


class Transfer:
    """One file from Civitai onto disk: the signed link (two hops, one key), Range resume,
    the size caps and the disk check, the streamed SHA256, the verdict and the atomic
    placing. It knows nothing of queues or leases: it reports through :class:`Hooks`."""

    def __init__(
        self,
        hooks: Hooks,
        *,
        folders: dict[str, Path],
        base_url: str,
        api_key: str | None,
        user_agent: str,
        timeout: float,
        concurrency: int,
        max_attempts: int,
        backoff_base: float,
        backoff_max: float,
        max_retry_after: float,
        chunk_size: int,
        progress_interval: float,
        on_name_clash: str,
        hash_mismatch: str,
        max_bytes: int,
    ) -> None:
        if on_name_clash not in ("suffix", "refuse"):
            raise ValueError("on_name_clash is 'suffix' or 'refuse'")
        if hash_mismatch not in ("fail", "keep"):
            raise ValueError("hash_mismatch is 'fail' or 'keep'")
        self.hooks = hooks
        self.folders = folders
        self.base_url = base_url
        self._api_key = api_key
        self._user_agent = user_agent
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.on_name_clash = on_name_clash
        self.hash_mismatch = hash_mismatch
        self.max_bytes = max(1, int(max_bytes))
        http_timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        # The API hop: the key goes here, and redirects are NOT followed.
        self.api_http = httpx.AsyncClient(timeout=http_timeout, follow_redirects=False)
        self._api = self.api_http
        # The storage hop: a client that never has the key (nor the API's cookies).
        self._storage = httpx.AsyncClient(
            timeout=http_timeout,
            follow_redirects=True,
            max_redirects=5,
            limits=httpx.Limits(max_connections=max(4, 2 * concurrency)),
        )
        self._claimed_paths: set[str] = set()

    def folder_for(self, kind: str | None) -> Path:
        return self.folders.get(kind or "other") or self.folders["other"]

    def release(self, path: str) -> None:
        """``path`` is no longer being written by this process."""
        self._claimed_paths.discard(path)

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._storage.aclose()

    async def fetch(self, run: _Run) -> Fetched:
        """Download ``run``'s file into place: retried with backoff while it makes progress,
        each attempt with a fresh signed link and a Range from what the ``.part`` holds;
        verified, then placed. What it fetched (or found already there)."""
        state = run.state
        assert state is not None
        if state.path:
            run.sink = _PartFile(part_path(state.path))
            await asyncio.to_thread(run.sink.open_sync)
            state.bytes_done = run.sink.size
        failures = 0
        meter = _Meter()
        while True:
            before = run.sink.size if run.sink is not None else 0
            state.attempts += 1
            try:
                await self._attempt(run, meter)
                break
            except _AlreadyThere as there:  # the file is already there: nothing downloaded
                run.finishing = True
                size = (await asyncio.to_thread(there.path.stat)).st_size
                return Fetched(there.path, state.expected_sha256 or "", size)
            except _Transient as exc:
                progressed = (run.sink.size if run.sink is not None else 0) > before
                failures = 1 if progressed else failures + 1
                if failures >= self.max_attempts:
                    raise failure(
                        DownloadError,
                        "dl_gave_up",
                        name=state.label,
                        reason=str(exc),
                        tries=failures,
                    ) from None
                if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                    raise failure(
                        DownloadError, "dl_later", name=state.label, reason=str(exc)
                    ) from None
                wait = backoff_s(
                    failures, exc.retry_after, base=self.backoff_base, cap=self.backoff_max
                )
                log.info("download #%d: %r; retrying in %.1fs", state.id, str(exc), wait)
                meter.reset()
                state.speed = state.eta_s = None
                state.error = f"{exc}; retrying"
                await self.hooks.progress(run, force=True)
                await asyncio.sleep(wait)
        state.error = None
        return await self._finish(run)

    async def _attempt(self, run: _Run, meter: _Meter) -> None:
        state = run.state
        assert state is not None
        url = await signed_url(self._api, self.base_url, self._api_key, self._user_agent, state)
        have = run.sink.size if run.sink is not None else 0
        headers = {
            "User-Agent": self._user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            async with self._storage.stream("GET", url, headers=headers) as response:
                await self._receive(run, response, have, meter)
        except httpx.TimeoutException as exc:
            raise _Transient(f"the file host stopped sending ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"the connection to the file host broke ({exc})") from None

    async def _receive(self, run: _Run, response: httpx.Response, have: int, meter: _Meter) -> None:
        state = run.state
        assert state is not None
        status = response.status_code
        if status == 416:
            total = _range_total(response.headers.get("content-range"))
            if run.sink is not None and total is not None and run.sink.size == total:
                state.bytes_total = total
                return  # the .part already holds the whole file
            if run.sink is not None:
                await asyncio.to_thread(run.sink.reset_sync)
            state.bytes_done = 0
            raise _Transient("the partial file does not fit the file on Civitai; starting over")
        if status in (401, 403):
            raise _Transient(f"the file host refused the signed link (HTTP {status})")
        if status == 400:
            body = (await response.aread())[:300].decode("utf-8", "replace")
            raise DownloadError(
                f"the file host rejected the download request (HTTP 400: {_one_line(body)})"
            )
        if status == 429 or status >= 500 or status == 404:
            raise _Transient(f"the file host answered HTTP {status}", retry_after_s(response))
        if status not in (200, 206):
            raise DownloadError(f"the file host answered HTTP {status}")
        ctype = response.headers.get("content-type", "").lower()
        if "text/html" in ctype and not (state.file_name or "").lower().endswith(".html"):
            raise _Transient("the file host sent a web page instead of the file")
        if status == 206:
            span = _content_range(response.headers.get("content-range"))
            if span is None or span[0] != have:
                if run.sink is not None:
                    await asyncio.to_thread(run.sink.reset_sync)
                state.bytes_done = 0
                raise _Transient("the file host sent another part of the file than asked")
            total = span[2]
        else:
            if have and run.sink is not None:
                log.info("download #%d: the file host ignored the range; from zero", state.id)
                await asyncio.to_thread(run.sink.reset_sync)
                state.bytes_done = 0
                meter.reset()
            total = declared_length(response)
        limit, limit_is = self._byte_limit(state, total)
        if run.sink is None:
            path = await self._choose_path(
                state, response.headers.get("content-disposition"), total
            )
            state.path = str(path)
            state.file_name = path.name
            await self.hooks.path_chosen(state)
            run.sink = _PartFile(part_path(path))
            await asyncio.to_thread(run.sink.open_sync)
            if run.sink.size:  # a stray .part of that name: not ours to continue
                await asyncio.to_thread(run.sink.reset_sync)
        if total is not None:
            state.bytes_total = total
        sink = run.sink
        await self._check_space(state, sink, total)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        last = loop.time()
        meter.add(last, sink.size)
        # Pieces as they arrive, written in chunks of about chunk_size; whatever arrived
        # before a broken connection is still written (the next attempt starts after it).
        pieces: list[bytes] = []
        buffered = 0
        start = sink.size
        received = 0
        try:
            async for piece in response.aiter_bytes():
                if start + received + len(piece) > limit:
                    # a host sending more than it (or Civitai) said: stop now, not at the end
                    raise failure(
                        DownloadDamaged,
                        "dl_sent_too_much",
                        limit=limit_is,
                        name=state.label,
                        bytes=start + received,
                    )
                pieces.append(piece)
                buffered += len(piece)
                received += len(piece)
                if buffered >= self.chunk_size:
                    chunk = b"".join(pieces)
                    pieces.clear()
                    buffered = 0
                    if pending is not None:
                        await pending
                    # write + hash on a worker thread while the next chunk arrives
                    pending = loop.run_in_executor(None, sink.write_sync, chunk)
                now = loop.time()
                if now - last >= self.progress_interval:
                    last = now
                    state.bytes_done = start + received  # received; on disk a moment later
                    self._measure(state, meter, now)
                    await self.hooks.progress(run)
        finally:
            if pending is not None:
                await pending
            if pieces:
                await asyncio.to_thread(sink.write_sync, b"".join(pieces))
            state.bytes_done = sink.size
        if total is not None and sink.size != total:
            raise _Transient("the connection ended before the whole file arrived")

    def _byte_limit(self, state: DownloadRecord, total: int | None) -> tuple[int, str]:
        """The most bytes this file may have, and what that limit is (for a message):
        Civitai's listed size (with the rounding tolerance), the host's declared size and
        ``max_bytes``, whichever is least. A declared size over the others is refused before
        any byte is read."""
        limit = self.max_bytes
        what = f"{format_bytes(limit)} limit (civitai.max_download_gb)"
        size_kb = state.meta.get("size_kb")
        if isinstance(size_kb, int | float) and size_kb >= 0:
            listed = int(size_kb * 1024) + SIZE_TOLERANCE
            if listed < limit:
                limit, what = listed, f"{size_kb * 1024:.0f} bytes Civitai lists"
            if total is not None and total > listed:
                raise failure(
                    DownloadDamaged,
                    "dl_offer_mismatch",
                    size=format_bytes(total),
                    bytes=total,
                    name=state.label,
                    listed=f"{size_kb * 1024:.0f}",
                )
        if total is not None:
            if total > self.max_bytes:
                raise failure(
                    TooBig,
                    "dl_offer_too_big",
                    size=format_bytes(total),
                    name=state.label,
                    limit=format_bytes(self.max_bytes),
                )
            if total < limit:
                limit, what = total, f"{total} bytes it announced"
        return limit, what

    async def _check_space(self, state: DownloadRecord, sink: _PartFile, total: int | None) -> None:
        """Refuse to go on when the folder's disk has not room for the rest of the file
        and :data:`DISK_MARGIN` besides."""
        size_kb = state.meta.get("size_kb")
        expected = total
        if expected is None and isinstance(size_kb, int | float):
            expected = int(size_kb * 1024)
        if expected is not None:  # unknown: the stream is capped at max_bytes instead
            await self.check_disk(sink.path.parent, expected - sink.size, state.label)

    async def check_disk(self, folder: Path, size: int, what: str) -> None:
        needed = max(0, size) + DISK_MARGIN
        where = folder
        while not where.exists() and where.parent != where:
            where = where.parent  # the folder is made later: its disk is its parent's
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, where)).free
        except OSError:
            return
        if free < needed:
            raise failure(
                TooBig,
                "dl_no_space",
                name=what,
                folder=folder,
                needed=format_bytes(needed),
                margin=format_bytes(DISK_MARGIN),
                free=format_bytes(free),
            )

    def _measure(self, state: DownloadRecord, meter: _Meter, now: float) -> None:
        state.speed = meter.add(now, state.bytes_done)
        if state.speed and state.bytes_total:
            state.eta_s = max(0.0, (state.bytes_total - state.bytes_done) / state.speed)
        else:
            state.eta_s = None

    async def _choose_path(
        self, state: DownloadRecord, disposition: str | None, total: int | None
    ) -> Path:
        """Where the file goes: its kind's folder, the sanitized Content-Disposition name
        (else Civitai's file name), with a suffix if a different file has that name."""
        folder = self.folder_for(state.model_type)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        fallback = state.file_name or f"civitai-{state.version_id}.bin"
        name = sanitize_filename(filename_from_disposition(disposition), fallback)
        active = await self.hooks.busy_paths()
        base = folder / name
        candidate = base
        for n in range(2, 10_000):
            key = str(candidate)
            owner = active.get(key)
            busy = (owner is not None and owner != state.id) or key in self._claimed_paths
            exists = candidate.exists()
            if not busy and not exists and not part_path(candidate).exists():
                break
            if exists and not busy and await self._same_file(state, candidate, total):
                raise _AlreadyThere(candidate)
            if self.on_name_clash == "refuse":
                raise failure(NameClash, "dl_name_clash", path=candidate, name=state.label)
            candidate = folder / _suffixed(name, n)
        else:  # pragma: no cover
            raise NameClash(f"no free name for {name} in {folder}")
        if candidate.resolve().parent != folder.resolve():  # belt and braces
            raise DownloadError(f"refusing to write outside {folder}: {candidate}")
        self._claimed_paths.add(str(candidate))
        return candidate

    async def _same_file(self, state: DownloadRecord, path: Path, total: int | None) -> bool:
        if not state.expected_sha256:
            return False
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if total is not None and size != total:
            return False
        return await asyncio.to_thread(_sha256_of, path) == state.expected_sha256

    def _verify(self, state: DownloadRecord, sink: _PartFile, lang: str = "en") -> list[str]:
        problems = []
        actual = sink.hexdigest()
        if state.bytes_total is not None and sink.size != state.bytes_total:
            problems.append(f"{sink.size} bytes instead of {state.bytes_total}")
        expected = state.expected_sha256
        autov2 = str(state.meta.get("autov2") or "").lower()
        size_kb = state.meta.get("size_kb")
        if expected:
            if actual != expected.lower():
                problems.append(
                    said(lang, "cv.dl.bad_sha", actual=actual[:12], expected=expected[:12])
                )
        elif autov2:
            if actual[:10] != autov2:
                problems.append(said(lang, "cv.dl.bad_autov2", actual=actual[:10], expected=autov2))
        elif isinstance(size_kb, int | float) and abs(sink.size - size_kb * 1024) > 1024:
            problems.append(
                said(lang, "cv.dl.bad_size", size=sink.size, listed=f"{size_kb * 1024:.0f}")
            )
        return problems

    async def _finish(self, run: _Run) -> Fetched:
        state, sink = run.state, run.sink
        assert state is not None and sink is not None
        run.finishing = True
        await asyncio.to_thread(sink.finish_sync)
        problems = self._verify(state, sink)
        if problems:
            hash_only = all("SHA256" in p or "AutoV2" in p for p in problems)
            if self.hash_mismatch == "keep" and hash_only:
                log.warning(
                    "download #%d: %s does not match Civitai (%s); kept (hash_mismatch=keep)",
                    state.id,
                    state.label,
                    "; ".join(problems),
                )
            else:
                said_in = {lang: self._verify(state, sink, lang) for lang in LANGS}
                await asyncio.to_thread(sink.discard_sync)
                raise failure(
                    DownloadDamaged,
                    "dl_damaged",
                    name=state.label,
                    problems={
                        lang: ("；" if lang == "zh" else "; ").join(said_in[lang]) for lang in LANGS
                    },
                )
        target = Path(state.path or "")
        final = await asyncio.to_thread(self._place, sink.path, target, sink.hexdigest())
        return Fetched(final, sink.hexdigest(), sink.size)

    def _place(self, part: Path, target: Path, sha: str) -> Path:
        """Move ``part`` to ``target`` atomically without replacing any file: a hard link
        (which fails if the name exists), then the ``.part`` is removed."""
        candidate = target
        for n in range(2, 10_000):
            try:
                os.link(part, candidate)
            except FileExistsError:
                if candidate.stat().st_size == part.stat().st_size and _sha256_of(candidate) == sha:
                    part.unlink()
                    return candidate  # the very same file appeared meanwhile
                if self.on_name_clash == "refuse":
                    raise failure(NameClash, "dl_appeared", path=candidate) from None
                candidate = target.with_name(_suffixed(target.name, n))
                continue
            except OSError:
                # no hard links here (some network or FAT file systems): check, then rename
                if candidate.exists():
                    candidate = target.with_name(_suffixed(target.name, n))
                    continue
                os.replace(part, candidate)
                return candidate
            part.unlink()
            return candidate
        raise NameClash(f"no free name for {target}")  # pragma: no cover
