"""Model downloads from Civitai, and the local model registry.

:class:`DownloadManager` downloads model files (seed 002's DownloadTask), after §4 and §6 of
``../shared/api/civitai.md``:

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
* **Pause, resume, cancel** (:meth:`DownloadManager.pause` ...) work on this process's
  downloads, and on another process's through the database: its next progress write sees
  the new status and stops.
* **State.** Every task is a ``download_tasks`` row (bytes, speed, ETA, status, error,
  SHA256); a running row is leased to its process by ``owner`` and ``updated_at``, so a
  download whose process died is taken over by :meth:`DownloadManager.resume_interrupted`
  or by running the same download again.
* **Clear refusals.** Login required, downloads disabled, Early Access (with its deadline),
  archived, the 24-hour download quota: one line each, saying what to do.
* **Where files go.** A folder per kind of model (``civitai.folders``: checkpoint, lora, vae,
  embedding, controlnet, upscaler, other), relative to ``civitai.models_dir`` or absolute,
  so they can be an A1111 or ComfyUI install's own. The name comes from
  ``Content-Disposition``, sanitized (no directories, no traversal, no reserved names); a
  different file already there gets a ``-2`` suffix, or the download is refused
  (``civitai.on_name_clash``).

On completion the model registry (``models``: SHA256, name, type, base model, size, source,
Civitai ids, cover image, path, status) is updated. :func:`scan_models` (``sdhost models
scan``) hashes the files in the model folders, with a cache by size and mtime
(``model_files``), and looks the unknown ones up on Civitai by hash in bulk.

CLI: :func:`add_arguments` / :func:`run_cli` (``sdhost civitai download``) and
:func:`add_scan_arguments` / :func:`run_scan_cli` (``sdhost models scan``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import (
    CivitaiBadRequest,
    CivitaiBadResponse,
    CivitaiChallenge,
    CivitaiError,
    CivitaiForbidden,
    CivitaiNotFound,
    CivitaiRateLimited,
    CivitaiUnavailable,
    error_message,
)
from adapters.civitai.api.transport import DEFAULT_BASE_URL, USER_AGENT
from adapters.civitai.api.types import ModelFile, ModelVersion
from adapters.http import backoff_s, retry_after_s
from bot.errors import BadInput, NotFound
from bot.status import DOWNLOAD_ACTIVE, DownloadStatus
from bot.text import clean
from storage import repos
from storage.db import Database

if TYPE_CHECKING:
    from bot.config import Config

from adapters.civitai.download.errors import (
    CivitaiArchived,
    CivitaiDownloadsDisabled,
    CivitaiEarlyAccess,
    CivitaiLoginRequired,
    CivitaiQuotaExceeded,
    DownloadDamaged,
    DownloadError,
    NameClash,
    TooBig,
    UnsafeModelFile,
    _AlreadyThere,
    _StopRequested,
    _Transient,
)
from adapters.civitai.download.folders import (
    DEFAULT_MAX_BYTES,
    DISK_MARGIN,
    SIZE_TOLERANCE,
    category_of,
    models_root,
    resolve_folders,
)
from adapters.civitai.download.naming import (
    _suffixed,
    filename_from_disposition,
    part_path,
    sanitize_filename,
)
from adapters.civitai.download.partfile import _PartFile, _sha256_of
from adapters.civitai.download.record import DownloadRecord, format_bytes
from adapters.civitai.download.refs import (
    _OPTION_KEYS,
    DownloadRef,
    parse_ref,
    scan_problems,
    select_file,
)
from adapters.civitai.download.registry import ScanReport, _cover_image, _source_url, scan_models

log = logging.getLogger(__name__)


# --- live state -----------------------------------------------------------------------------------


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


Listener = Callable[[DownloadRecord], Any]


# --- the manager --------------------------------------------------------------------------------


class DownloadManager:
    """Downloads model files from Civitai into the model folders; see the module docstring.

    One per process. ``await enqueue(...)`` starts a download and returns at once;
    ``await wait(id)`` (or ``download(...)``) waits for the end. Listeners added with
    :meth:`add_listener` get a :class:`DownloadRecord` on every progress step (about every
    ``progress_interval`` seconds) and state change. :meth:`aclose` stops what is running,
    leaving it queued (or paused) to resume later.
    """

    def __init__(
        self,
        db: Database,
        *,
        models_dir: str | Path,
        folders: Mapping[str, str] | None = None,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        concurrency: int = 2,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        timeout: float = 60.0,
        chunk_size: int = 1 << 20,
        progress_interval: float = 0.5,
        stale_after: float = 120.0,
        on_name_clash: str = "suffix",
        hash_mismatch: str = "fail",
        client: CivitaiClient | None = None,
        user_agent: str = USER_AGENT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if on_name_clash not in ("suffix", "refuse"):
            raise ValueError("on_name_clash is 'suffix' or 'refuse'")
        if hash_mismatch not in ("fail", "keep"):
            raise ValueError("hash_mismatch is 'fail' or 'keep'")
        self.db = db
        self.models_dir = Path(models_dir)
        self.folders = resolve_folders(self.models_dir, folders)
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.stale_after = stale_after
        self.on_name_clash = on_name_clash
        self.hash_mismatch = hash_mismatch
        self.max_bytes = max(1, int(max_bytes))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._api_key = (api_key or "").strip() or None
        self._user_agent = user_agent
        http_timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        # The API hop: the key goes here, and redirects are NOT followed.
        self._api = httpx.AsyncClient(timeout=http_timeout, follow_redirects=False)
        # The storage hop: a client that never has the key (nor the API's cookies).
        self._storage = httpx.AsyncClient(
            timeout=http_timeout,
            follow_redirects=True,
            max_redirects=5,
            limits=httpx.Limits(max_connections=max(4, 2 * concurrency)),
        )
        self._own_client = client is None
        self.client = client or CivitaiClient(
            self._api_key, base_url=self.base_url, timeout=timeout, http=self._api
        )
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._runs: dict[int, _Run] = {}
        self._claimed_paths: set[str] = set()
        self._listeners: list[Listener] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._closed = False

    @classmethod
    def from_config(cls, db: Database, config: Config, **overrides: Any) -> DownloadManager:
        cfg = config.civitai
        kwargs: dict[str, Any] = {
            "models_dir": models_root(config),
            "folders": cfg.folders,
            "api_key": cfg.api_key or None,
            "base_url": cfg.base_url,
            "concurrency": cfg.download_concurrency,
            "max_attempts": cfg.download_attempts,
            "timeout": max(cfg.timeout_s, 30.0),
            "on_name_clash": cfg.on_name_clash,
            "hash_mismatch": cfg.hash_mismatch,
            "max_bytes": int(cfg.max_download_gb * 1024**3),
        }
        kwargs.update(overrides)
        return cls(db, **kwargs)

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"DownloadManager(base_url={self.base_url!r}, api_key={key!r})"

    def folder_for(self, kind: str | None) -> Path:
        return self.folders.get(kind or "other") or self.folders["other"]

    # --- listeners -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """``listener(view)`` on every progress step and state change (sync or async)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _notify(self, view: DownloadRecord) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(view)
            except Exception:
                log.exception("download listener failed")
                continue
            if inspect.isawaitable(result):
                future = asyncio.ensure_future(result)
                self._background.add(future)
                future.add_done_callback(self._listener_done)

    def _listener_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("download listener failed: %r", future.exception())

    # --- public API ------------------------------------------------------------------------

    async def enqueue(
        self,
        ref: str | int | DownloadRef,
        *,
        file_type: str | None = None,
        format: str | None = None,
        fp: str | None = None,
        size: str | None = None,
        file_id: int | None = None,
        start: bool = True,
        notify: Mapping[str, Any] | None = None,
        allow_unsafe: bool = False,
        by: str | None = None,
    ) -> DownloadRecord:
        """Look the version up, pick the file and start downloading it (unless ``start`` is
        false). An unfinished task for the same file is resumed instead of starting another;
        a file already downloaded (or found by a scan, by its SHA256) is not fetched again.
        ``notify`` (a chat's ``reply_to``) rides along in the task's views, for listeners
        that show progress in a chat. A file that Civitai's pickle and virus scans do not
        both pass is refused (:class:`UnsafeModelFile`) unless ``allow_unsafe`` (an admin's
        override, logged at WARNING with ``by``: who asked). Raises
        :class:`CivitaiError`/:class:`BadInput` for what cannot be downloaded."""
        self._check_open()
        parsed = ref if isinstance(ref, DownloadRef) else parse_ref(ref)
        options: dict[str, Any] = dict(parsed.options)
        given = {"type": file_type, "format": format, "fp": fp, "size": size}
        options.update({k: v for k, v in given.items() if v})
        if file_id is not None:
            options["fileId"] = str(file_id)
        version_id = parsed.version_id
        if version_id is None:
            assert parsed.model_id is not None
            model = await self.client.model(parsed.model_id, fresh=True)
            if model.mode == "Archived":
                raise CivitaiArchived(
                    f"Civitai archived {model.name or f'model {parsed.model_id}'}: its files "
                    "are no longer available for download"
                )
            latest = model.latest_version
            if latest is None or latest.id is None:
                raise CivitaiNotFound(f"Civitai model {parsed.model_id} has no published version")
            version_id = latest.id
        # never from the lookup cache: the scan verdicts must be Civitai's latest
        version = await self.client.model_version(version_id, fresh=True)
        name = _version_label(version)
        mode = version.model.mode if version.model else None
        if mode == "Archived":
            raise CivitaiArchived(
                f"Civitai archived {name}: its files are no longer available for download"
            )
        file = select_file(version, options)
        if file is None:
            raise CivitaiNotFound(f"Civitai lists no files for {name}")
        unsafe = scan_problems(file)
        if unsafe and not allow_unsafe:
            raise UnsafeModelFile(
                f"refusing to download {file.name or 'the file'} of {name}: "
                f"{'; '.join(unsafe)}. A model file that fails Civitai's scans can run code "
                "when it is loaded; an admin can still take it with --allow-unsafe"
            )
        if unsafe:
            log.warning(
                "civitai: %s downloads %s (file %s of %s, version %d) despite its scans "
                "(--allow-unsafe): %s",
                by or "someone",
                file.name,
                file.id,
                name,
                version_id,
                "; ".join(unsafe),
            )
            options["allow_unsafe"] = by or True
        listed = file.size_bytes
        if listed is not None and listed > self.max_bytes:
            raise TooBig(
                f"{file.name or 'the file'} of {name} is {format_bytes(listed)}, over the "
                f"{format_bytes(self.max_bytes)} limit (civitai.max_download_gb)"
            )
        model_type = version.model.type if version.model else None
        kind = category_of(model_type, file.type)
        expected = (file.hash("SHA256") or "").lower() or None
        now = time.time()

        reuse = await self.db.run_read(repos.download_tasks_for_version, version_id, file.id)
        for row in reuse:
            if row.status in DOWNLOAD_ACTIVE or row.status == DownloadStatus.FAILED:
                if notify is not None:
                    await self.set_notify(row.id, notify)
                if start:
                    if row.status in (DownloadStatus.PAUSED, DownloadStatus.FAILED):
                        return await self.resume(row.id)
                    self._start(row.id)
                return await self.get(row.id)
            if row.status == DownloadStatus.DONE and row.path and Path(row.path).is_file():
                return DownloadRecord.from_row(row)
        if expected:
            known = await self.db.run_read(repos.get_model, expected)
            if known is not None and known.path and known.status == "ready":
                with contextlib.suppress(OSError):
                    if Path(known.path).stat().st_size == known.size_bytes:
                        return await self._record_present(version, file, kind, known, options)

        if listed is not None:  # a new download: is there room for it?
            await self._check_disk(self.folder_for(kind), listed, name)
        cover = _cover_image(version)
        if notify is not None:
            options["notify"] = dict(notify)
        options["meta"] = {
            "model_name": version.model.name if version.model else None,
            "version_name": version.name,
            "civitai_type": model_type,
            "file_type": file.type,
            "base_model": version.base_model,
            "cover_image_url": cover,
            "size_kb": file.size_kb,
            "autov2": file.hash("AutoV2"),
        }
        values = {
            "version_id": version_id,
            "model_id": version.model_id,
            "file_id": file.id,
            "model_name": name[:256],
            "model_type": kind,
            "file_name": sanitize_filename(file.name, f"civitai-{version_id}.bin"),
            "path": None,
            "options": options,
            "bytes_total": file.size_bytes,
            "expected_sha256": expected,
            "status": DownloadStatus.QUEUED,
            "created_at": now,
            "updated_at": now,
        }
        task_id = await self.db.run_write(repos.insert_download_task, values)
        if start:
            self._start(task_id)
        return await self.get(task_id)

    async def download(self, ref: str | int | DownloadRef, **kwargs: Any) -> DownloadRecord:
        """:meth:`enqueue` and :meth:`wait`: the task as it ended (check ``status``)."""
        view = await self.enqueue(ref, **kwargs)
        return await self.wait(view.id)

    async def wait(self, task_id: int) -> DownloadRecord:
        """Until this process's run of the task ends; the task as it is then."""
        run = self._runs.get(task_id)
        if run is not None:
            await run.done.wait()
        return await self.get(task_id)

    async def get(self, task_id: int) -> DownloadRecord:
        row = await self.db.run_read(repos.get_download_task, task_id)
        if row is None:
            raise NotFound(f"there is no download #{task_id}")
        return self._live_view(row)

    def snapshot(self, task_id: int) -> DownloadRecord | None:
        """The live state of a download running here (no database read), else ``None``."""
        run = self._runs.get(task_id)
        return run.state.snapshot() if run is not None and run.state is not None else None

    async def tasks(
        self, *, statuses: Iterable[str] | None = None, limit: int = 50
    ) -> list[DownloadRecord]:
        rows = await self.db.run_read(
            repos.list_download_tasks, statuses=list(statuses or []) or None, limit=limit
        )
        return [self._live_view(r) for r in rows]

    async def pause(self, task_id: int) -> DownloadRecord:
        """Stop a download, keeping its ``.part`` file; :meth:`resume` goes on from there."""
        return await self._stop(task_id, DownloadStatus.PAUSED)

    async def cancel(self, task_id: int) -> DownloadRecord:
        """Stop a download for good and delete its ``.part`` file."""
        return await self._stop(task_id, DownloadStatus.CANCELLED)

    async def resume(
        self, task_id: int, *, notify: Mapping[str, Any] | None = None
    ) -> DownloadRecord:
        """Go on with a paused or failed download (from its ``.part`` file); ``notify`` as
        for :meth:`enqueue`, replacing the one the task had."""
        self._check_open()
        if notify is not None:
            await self.set_notify(task_id, notify)
        view = await self.get(task_id)
        if view.status == DownloadStatus.CANCELLED:
            raise BadInput(f"download #{task_id} was cancelled; start it again instead")
        if view.status == DownloadStatus.DONE:
            return view
        if view.status in (DownloadStatus.PAUSED, DownloadStatus.FAILED):
            await self.db.run_write(
                repos.update_download_task,
                task_id,
                if_status=(DownloadStatus.PAUSED, DownloadStatus.FAILED),
                status=DownloadStatus.QUEUED,
                error=None,
                updated_at=time.time(),
            )
        self._start(task_id)
        return await self.get(task_id)

    async def set_notify(self, task_id: int, target: Mapping[str, Any] | None) -> None:
        """Show this task's progress on ``target`` from now on (``None``: nowhere)."""
        row = await self.db.run_read(repos.get_download_task, task_id)
        if row is None:
            raise NotFound(f"there is no download #{task_id}")
        options = dict(row.options or {})
        options["notify"] = dict(target) if target is not None else None
        await self.db.run_write(repos.update_download_task, task_id, options=options)
        run = self._runs.get(task_id)
        if run is not None and run.state is not None:
            run.state.options["notify"] = options["notify"]

    async def resume_interrupted(self) -> list[int]:
        """Start the queued downloads, and the running ones whose process went quiet for
        ``stale_after`` seconds (it died); their ids. Call once at start-up."""
        ids = await self.db.run_read(repos.interrupted_download_ids, time.time() - self.stale_after)
        for task_id in ids:
            self._start(task_id)
        return ids

    async def scan(
        self, *, enrich: bool = True, rehash: bool = False, refresh: bool = False
    ) -> ScanReport:
        """:func:`scan_models` over this manager's folders, with its Civitai client."""
        return await scan_models(
            self.db,
            self.folders,
            client=self.client if enrich else None,
            rehash=rehash,
            refresh=refresh,
            base_url=self.base_url,
        )

    async def aclose(self, *, stop_as: str = DownloadStatus.QUEUED) -> None:
        """Stop every running download (``queued``: resumed by the next
        :meth:`resume_interrupted`; or ``paused``) and close the HTTP clients."""
        self._closed = True
        runs = list(self._runs.values())
        for run in runs:
            if run.stop_as is None and not run.finishing:
                run.stop_as = stop_as
                if run.task is not None:
                    run.task.cancel()
        for run in runs:
            await run.done.wait()
        for future in list(self._background):
            future.cancel()
        if self._own_client:
            await self.client.aclose()
        await self._api.aclose()
        await self._storage.aclose()

    async def __aenter__(self) -> DownloadManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- running ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the download manager is closed")

    def _live_view(self, row: Any) -> DownloadRecord:
        live = self.snapshot(row.id)
        return live if live is not None else DownloadRecord.from_row(row)

    def _start(self, task_id: int) -> None:
        self._check_open()
        run = self._runs.get(task_id)
        if run is not None and not run.done.is_set():
            return
        run = _Run(task_id)
        self._runs[task_id] = run
        run.task = asyncio.create_task(self._run(run), name=f"civitai-download-{task_id}")

    async def _stop(self, task_id: int, status: str) -> DownloadRecord:
        run = self._runs.get(task_id)
        if run is not None and not run.done.is_set():
            if not run.finishing and run.stop_as is None:
                run.stop_as = status
                if run.task is not None:
                    run.task.cancel()
            await run.done.wait()
            return await self.get(task_id)
        view = await self.get(task_id)
        now = time.time()
        if status == DownloadStatus.PAUSED:
            # queued here, or running in another process (which stops at its next write)
            await self.db.run_write(
                repos.update_download_task,
                task_id,
                if_status=(DownloadStatus.QUEUED, DownloadStatus.RUNNING),
                status=DownloadStatus.PAUSED,
                speed=None,
                eta_s=None,
                updated_at=now,
            )
        else:
            changed = await self.db.run_write(
                repos.update_download_task,
                task_id,
                if_status=(
                    DownloadStatus.QUEUED,
                    DownloadStatus.RUNNING,
                    DownloadStatus.PAUSED,
                    DownloadStatus.FAILED,
                ),
                status=DownloadStatus.CANCELLED,
                speed=None,
                eta_s=None,
                finished_at=now,
                updated_at=now,
            )
            if changed and view.status != DownloadStatus.RUNNING and view.path:
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(part_path(view.path).unlink)
        return await self.get(task_id)

    async def _run(self, run: _Run) -> None:
        try:
            async with self._slots:
                now = time.time()
                row = await self.db.run_write(
                    repos.claim_download_task,
                    run.task_id,
                    self.owner,
                    now,
                    now - self.stale_after,
                )
                if row is None:
                    return  # paused, finished, or running in a live process
                run.state = DownloadRecord.from_row(row)
                self._notify(run.state.snapshot())
                await self._download(run)
        except asyncio.CancelledError:
            if run.stop_as is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._stopped(run, run.stop_as, ours=True)
        except _StopRequested as stop:
            await self._stopped(run, stop.status, ours=False)
        except (CivitaiError, BadInput) as exc:
            await self._failed(run, str(exc), discard=isinstance(exc, DownloadDamaged))
        except Exception as exc:
            log.exception("download #%d failed", run.task_id)
            await self._failed(run, f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            if run.sink is not None:
                await asyncio.to_thread(run.sink.close_sync)
            if run.state is not None and run.state.path:
                self._claimed_paths.discard(run.state.path)
            if self._runs.get(run.task_id) is run:
                del self._runs[run.task_id]
            run.done.set()
            with contextlib.suppress(Exception):
                self._notify(await self.get(run.task_id))

    async def _stopped(self, run: _Run, status: str, *, ours: bool) -> None:
        """Record a pause/cancel/requeue (``ours``), or go along with one made elsewhere."""
        state = run.state
        if status == DownloadStatus.CANCELLED:
            if run.sink is not None:
                await asyncio.to_thread(run.sink.discard_sync)
            elif state is not None and state.path:
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(part_path(state.path).unlink)
        if not ours:
            return
        now = time.time()
        values: dict[str, Any] = {
            "status": status,
            "speed": None,
            "eta_s": None,
            "owner": None,
            "updated_at": now,
        }
        if state is not None:
            values["bytes_done"] = 0 if status == DownloadStatus.CANCELLED else state.bytes_done
            values["attempts"] = state.attempts
        if status == DownloadStatus.CANCELLED:
            values["finished_at"] = now
        done = await self.db.run_write(
            repos.update_download_task,
            run.task_id,
            if_owner=self.owner,
            if_status=(DownloadStatus.RUNNING,),
            **values,
        )
        if not done:  # never claimed: it was still waiting for a slot
            await self.db.run_write(
                repos.update_download_task,
                run.task_id,
                if_status=(DownloadStatus.QUEUED,),
                **values,
            )

    async def _failed(self, run: _Run, message: str, *, discard: bool = False) -> None:
        log.warning("download #%d failed: %r", run.task_id, message)
        if discard and run.sink is not None:
            await asyncio.to_thread(run.sink.discard_sync)
        now = time.time()
        values: dict[str, Any] = {
            "status": DownloadStatus.FAILED,
            "error": message,
            "speed": None,
            "eta_s": None,
            "owner": None,
            "finished_at": now,
            "updated_at": now,
        }
        if run.state is not None:
            values["attempts"] = run.state.attempts
            values["bytes_done"] = 0 if discard else run.state.bytes_done
        changed = await self.db.run_write(
            repos.update_download_task,
            run.task_id,
            if_owner=self.owner,
            if_status=(DownloadStatus.RUNNING,),
            **values,
        )
        if not changed:
            await self.db.run_write(
                repos.update_download_task,
                run.task_id,
                if_status=(DownloadStatus.QUEUED,),
                **values,
            )

    async def _download(self, run: _Run) -> None:
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
            except _AlreadyThere as there:
                await self._complete_existing(run, there.path)
                return
            except _Transient as exc:
                progressed = (run.sink.size if run.sink is not None else 0) > before
                failures = 1 if progressed else failures + 1
                if failures >= self.max_attempts:
                    raise DownloadError(
                        f"could not download {state.label}: {exc} "
                        f"({failures} tries in a row got nowhere; resume it later)"
                    ) from None
                if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                    raise DownloadError(
                        f"could not download {state.label}: {exc}; try again later"
                    ) from None
                wait = backoff_s(
                    failures, exc.retry_after, base=self.backoff_base, cap=self.backoff_max
                )
                log.info("download #%d: %r; retrying in %.1fs", state.id, str(exc), wait)
                meter.reset()
                state.speed = state.eta_s = None
                state.error = f"{exc}; retrying"
                await self._write_progress(run, force=True)
                await asyncio.sleep(wait)
        state.error = None
        await self._finish(run)

    # --- one attempt -----------------------------------------------------------------------

    async def _signed_url(self, state: DownloadRecord) -> str:
        """A fresh signed storage URL from ``/api/download/models/{id}`` (not followed)."""
        url = f"{self.base_url}/api/download/models/{state.version_id}"
        if state.file_id is not None:
            params: dict[str, Any] = {"fileId": state.file_id}
        else:
            params = {k: state.options[k] for k in _OPTION_KEYS if state.options.get(k)}
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            response = await self._api.get(url, params=params, headers=headers)
        except httpx.TimeoutException:
            raise _Transient("Civitai did not answer in time") from None
        except httpx.UnsupportedProtocol:
            raise DownloadError(
                f"civitai.base_url {self.base_url!r} is not an http(s) address"
            ) from None
        except httpx.TransportError as exc:
            raise _Transient(f"Civitai could not be reached ({type(exc).__name__})") from None
        if response.status_code in (301, 302, 303, 307, 308):
            location = response.headers.get("location")
            if not location:
                raise CivitaiBadResponse("Civitai redirected the download to nowhere")
            target = urllib.parse.urljoin(str(response.url), location)
            where = urllib.parse.urlsplit(target)
            if where.path.startswith("/login"):
                raise self._login_required(state)
            if where.scheme not in ("http", "https"):
                raise CivitaiBadResponse(f"Civitai redirected the download to {where.scheme}:")
            return target
        error = self._api_error(response, state)
        if error.retryable:
            raise _Transient(str(error), error.retry_after)
        raise error

    def _login_required(self, state: DownloadRecord) -> CivitaiError:
        if self._api_key:
            return CivitaiLoginRequired(
                f"Civitai requires a login to download {state.label} and did not accept "
                "civitai.api_key: check the key (Civitai > Account settings > API keys)",
                status=401,
            )
        return CivitaiLoginRequired(
            f"Civitai requires a login to download {state.label}: set civitai.api_key "
            "(or SDHOST_CIVITAI__API_KEY) to a key from Civitai > Account settings > API keys",
            status=401,
        )

    def _api_error(self, response: httpx.Response, state: DownloadRecord) -> CivitaiError:
        status = response.status_code
        raw = response.content
        ctype = response.headers.get("content-type", "")
        retry_after = retry_after_s(response) if status in (429, 503) else None
        what = state.label
        if raw and ("html" in ctype.lower() or raw[:64].lstrip().lower().startswith(b"<")):
            message = (
                f"Civitai answered the download of {what} with a web page (HTTP {status}), "
                "probably a Cloudflare check or an outage; try again later"
            )
            if status == 429 or status >= 500:
                return CivitaiUnavailable(
                    message, status=status, retry_after=retry_after, retryable=True
                )
            return CivitaiChallenge(message, status=status)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw[:300].decode("utf-8", "replace")
        detail = error_message(body) or ""
        text = detail.lower()
        if 200 <= status < 300:
            return CivitaiBadResponse(
                f"Civitai answered the download of {what} without sending it elsewhere "
                f"(HTTP {status}); expected a redirect to the file",
                status=status,
            )
        if status == 400:
            return CivitaiBadRequest(
                f"Civitai rejected the download of {what}: {detail or 'bad request'}",
                status=status,
            )
        if status == 401:
            if "disabled downloads" in text:
                return CivitaiDownloadsDisabled(
                    f"the creator of {what} has disabled downloads on Civitai", status=status
                )
            return self._login_required(state)
        if status == 403:
            if isinstance(body, dict) and str(body.get("error", "")).lower() == "early access":
                deadline = body.get("deadline")
                until = f" until {deadline}" if deadline else ""
                return CivitaiEarlyAccess(
                    f"{what} is in Early Access on Civitai{until}: only people who bought "
                    "access (with Buzz, on civitai.com, as the owner of civitai.api_key) can "
                    "download it before then",
                    deadline=deadline if isinstance(deadline, str) else None,
                    status=status,
                )
            return CivitaiForbidden(
                f"Civitai refused the download of {what}: {detail or 'forbidden'}", status=status
            )
        if status == 404:
            asked = ", ".join(
                f"{k}={state.options[k]}" for k in _OPTION_KEYS if state.options.get(k)
            )
            which = f" matching {asked}" if asked else ""
            return CivitaiNotFound(
                f"Civitai has no downloadable file{which} for {what}", status=status
            )
        if status == 410:
            return CivitaiArchived(
                f"Civitai archived {what}: it is no longer available for download", status=status
            )
        if status == 429:
            if "unusual amount of downloading" in text or "come back later" in text:
                return CivitaiQuotaExceeded(
                    "Civitai's 24-hour download quota for this account (or address) is used "
                    "up: try again tomorrow, or contact support@civitai.com",
                    status=status,
                )
            wait = f" (retry in {retry_after:g}s)" if retry_after else ""
            return CivitaiRateLimited(
                f"Civitai is rate limiting downloads{wait}",
                status=status,
                retry_after=retry_after,
                retryable=True,
            )
        if status >= 500 or status == 408:
            return CivitaiUnavailable(
                f"Civitai is unavailable (HTTP {status})",
                status=status,
                retry_after=retry_after,
                retryable=True,
            )
        return CivitaiError(
            f"Civitai could not start the download of {what} (HTTP {status}"
            f"{': ' + detail if detail else ''})",
            status=status,
        )

    async def _attempt(self, run: _Run, meter: _Meter) -> None:
        state = run.state
        assert state is not None
        url = await self._signed_url(state)
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
            length = response.headers.get("content-length", "")
            total = int(length) if length.isdigit() else None
        limit, limit_is = self._byte_limit(state, total)
        if run.sink is None:
            path = await self._choose_path(
                state, response.headers.get("content-disposition"), total
            )
            state.path = str(path)
            state.file_name = path.name
            await self.db.run_write(
                repos.update_download_task,
                state.id,
                if_owner=self.owner,
                path=state.path,
                file_name=state.file_name,
            )
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
                    raise DownloadDamaged(
                        f"the file host sent more than the {limit_is} for {state.label}; "
                        f"stopped after {start + received} bytes and deleted what came"
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
                    await self._write_progress(run)
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
                raise DownloadDamaged(
                    f"the file host offers {format_bytes(total)} ({total} bytes) for "
                    f"{state.label}, which Civitai lists as {size_kb * 1024:.0f} bytes: "
                    "refused before downloading"
                )
        if total is not None:
            if total > self.max_bytes:
                raise TooBig(
                    f"the file host offers {format_bytes(total)} for {state.label}, over the "
                    f"{format_bytes(self.max_bytes)} limit (civitai.max_download_gb)"
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
            await self._check_disk(sink.path.parent, expected - sink.size, state.label)

    async def _check_disk(self, folder: Path, size: int, what: str) -> None:
        needed = max(0, size) + DISK_MARGIN
        where = folder
        while not where.exists() and where.parent != where:
            where = where.parent  # the folder is made later: its disk is its parent's
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, where)).free
        except OSError:
            return
        if free < needed:
            raise TooBig(
                f"not enough free disk space for {what} in {folder}: it needs "
                f"{format_bytes(needed)} (with {format_bytes(DISK_MARGIN)} to spare), "
                f"{format_bytes(free)} is free"
            )

    def _measure(self, state: DownloadRecord, meter: _Meter, now: float) -> None:
        state.speed = meter.add(now, state.bytes_done)
        if state.speed and state.bytes_total:
            state.eta_s = max(0.0, (state.bytes_total - state.bytes_done) / state.speed)
        else:
            state.eta_s = None

    async def _write_progress(self, run: _Run, *, force: bool = False) -> None:
        """Store the progress (it is also the lease's heartbeat) and tell the listeners. A
        refused write means another process paused or cancelled the task: stop."""
        state = run.state
        assert state is not None
        state.updated_at = time.time()
        ok = await self.db.run_write(
            repos.update_download_task,
            state.id,
            if_owner=self.owner,
            if_status=(DownloadStatus.RUNNING,),
            bytes_done=state.bytes_done,
            bytes_total=state.bytes_total,
            speed=state.speed,
            eta_s=state.eta_s,
            error=state.error,
            attempts=state.attempts,
            updated_at=state.updated_at,
        )
        if not ok:
            row = await self.db.run_read(repos.get_download_task, state.id)
            raise _StopRequested(row.status if row is not None else DownloadStatus.CANCELLED)
        self._notify(state.snapshot())

    async def _choose_path(
        self, state: DownloadRecord, disposition: str | None, total: int | None
    ) -> Path:
        """Where the file goes: its kind's folder, the sanitized Content-Disposition name
        (else Civitai's file name), with a suffix if a different file has that name."""
        folder = self.folder_for(state.model_type)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        fallback = state.file_name or f"civitai-{state.version_id}.bin"
        name = sanitize_filename(filename_from_disposition(disposition), fallback)
        active = await self.db.run_read(repos.active_download_paths)
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
                raise NameClash(
                    f"{candidate} already exists and is not {state.label}; move it away, or "
                    'set civitai.on_name_clash = "suffix"'
                )
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

    # --- the end ---------------------------------------------------------------------------

    def _verify(self, state: DownloadRecord, sink: _PartFile) -> list[str]:
        problems = []
        actual = sink.hexdigest()
        if state.bytes_total is not None and sink.size != state.bytes_total:
            problems.append(f"{sink.size} bytes instead of {state.bytes_total}")
        expected = state.expected_sha256
        autov2 = str(state.meta.get("autov2") or "").lower()
        size_kb = state.meta.get("size_kb")
        if expected:
            if actual != expected.lower():
                problems.append(f"SHA256 {actual[:12]}… instead of Civitai's {expected[:12]}…")
        elif autov2:
            if actual[:10] != autov2:
                problems.append(f"AutoV2 {actual[:10]} instead of Civitai's {autov2}")
        elif isinstance(size_kb, int | float) and abs(sink.size - size_kb * 1024) > 1024:
            problems.append(f"{sink.size} bytes where Civitai lists {size_kb * 1024:.0f}")
        return problems

    async def _finish(self, run: _Run) -> None:
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
                await asyncio.to_thread(sink.discard_sync)
                raise DownloadDamaged(
                    f"the download of {state.label} is damaged ({'; '.join(problems)}); "
                    "it was deleted: try again"
                )
        target = Path(state.path or "")
        final = await asyncio.to_thread(self._place, sink.path, target, sink.hexdigest())
        await self._complete(run, final, sink.hexdigest(), sink.size)

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
                    raise NameClash(
                        f"{candidate} appeared while downloading; move it away and resume"
                    ) from None
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

    async def _complete(self, run: _Run, final: Path, sha: str, size: int) -> None:
        state = run.state
        assert state is not None
        now = time.time()
        mtime_ns = (await asyncio.to_thread(final.stat)).st_mtime_ns
        state.path, state.file_name = str(final), final.name
        state.sha256, state.bytes_done, state.bytes_total = sha, size, size
        state.status, state.finished_at = DownloadStatus.DONE, now
        state.speed = state.eta_s = None
        task_values = {
            "status": DownloadStatus.DONE,
            "path": state.path,
            "file_name": state.file_name,
            "sha256": sha,
            "bytes_done": size,
            "bytes_total": size,
            "speed": None,
            "eta_s": None,
            "error": None,
            "owner": None,
            "attempts": state.attempts,
            "finished_at": now,
            "updated_at": now,
        }
        model_row = self._model_row(state, sha, size, final, now)
        file_row = {
            "path": str(final),
            "sha256": sha,
            "size_bytes": size,
            "mtime_ns": mtime_ns,
            "hashed_at": now,
        }
        owner = self.owner

        def write(conn: Any) -> None:
            repos.update_download_task(
                conn, state.id, if_owner=owner, if_status=(DownloadStatus.RUNNING,), **task_values
            )
            repos.upsert_model(conn, model_row)
            repos.upsert_model_files(conn, [file_row])

        await self.db.run_write(write)
        log.info("download #%d: %r saved as %r", state.id, state.label, str(final))

    async def _complete_existing(self, run: _Run, path: Path) -> None:
        """The file is already there under the chosen name: done, nothing downloaded."""
        state = run.state
        assert state is not None
        run.finishing = True
        size = (await asyncio.to_thread(path.stat)).st_size
        await self._complete(run, path, state.expected_sha256 or "", size)

    def _model_row(
        self, state: DownloadRecord, sha: str, size: int, path: Path, now: float
    ) -> dict[str, Any]:
        meta = state.meta
        model_id = state.model_id
        return {
            "sha256": sha,
            "name": clean(meta.get("model_name") or state.model_name or path.stem, multiline=False)[
                :256
            ],
            "type": state.model_type or "other",
            "base_model": (meta.get("base_model") or None),
            "size_bytes": size,
            "source": "civitai",
            "source_url": _source_url(self.base_url, model_id, state.version_id),
            "civitai_model_id": model_id,
            "civitai_version_id": state.version_id,
            "version_name": meta.get("version_name"),
            "cover_image_url": meta.get("cover_image_url"),
            "path": str(path),
            "status": "ready",
            "enriched_at": now,
            "created_at": now,
            "updated_at": now,
        }

    async def _record_present(
        self,
        version: ModelVersion,
        file: ModelFile,
        kind: str,
        known: Any,
        options: dict[str, Any],
    ) -> DownloadRecord:
        """A done task for a file the registry already has (found by a scan, or downloaded
        for another task): nothing is fetched."""
        now = time.time()
        values = {
            "version_id": version.id,
            "model_id": version.model_id,
            "file_id": file.id,
            "model_name": _version_label(version)[:256],
            "model_type": kind,
            "file_name": Path(known.path).name,
            "path": known.path,
            "options": options,
            "bytes_total": known.size_bytes,
            "bytes_done": known.size_bytes,
            "expected_sha256": known.sha256,
            "sha256": known.sha256,
            "status": DownloadStatus.DONE,
            "created_at": now,
            "updated_at": now,
            "started_at": now,
            "finished_at": now,
        }
        task_id = await self.db.run_write(repos.insert_download_task, values)
        return await self.get(task_id)


def _version_label(version: ModelVersion) -> str:
    model = version.model.name if version.model and version.model.name else None
    if model and version.name:
        return f"{model} {version.name}"
    return model or version.name or f"model version {version.id}"


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
    return text if len(text) <= limit else text[: limit - 1] + "…"
