"""Model downloads from Civitai, and the local model registry.

:class:`DownloadManager` downloads model files (seed 002's DownloadTask), after §4 and §6 of
``../shared/api/civitai.md``:

* **Pause, resume, cancel** (:meth:`DownloadManager.pause` ...) work on this process's
  downloads, and on another process's through the database: its next progress write sees
  the new status and stops.
* **State.** Every task is a ``download_tasks`` row (bytes, speed, ETA, status, error,
  SHA256); a running row is leased to its process by ``owner`` and ``updated_at``, so a
  download whose process died is taken over by :meth:`DownloadManager.resume_interrupted`
  or by running the same download again.
* **Clear refusals.** Login required, downloads disabled, Early Access (with its deadline),
  archived, the 24-hour download quota: one line each, saying what to do.

On completion the model registry (``models``: SHA256, name, type, base model, size, source,
Civitai ids, cover image, path, status) is updated. :func:`scan_models` (``sdhost models
scan``) hashes the files in the model folders, with a cache by size and mtime
(``model_files``), and looks the unknown ones up on Civitai by hash in bulk.

How one file is fetched (two hops, Range resume, the caps, the scans, placing it) is
:class:`~adapters.civitai.download.transfer.Transfer`; this module keeps the queue, the
leases, pause and resume, and the task rows (through ``storage.repos``). The command lines
are in ``adapters/civitai/cli.py``.

Why this file is near 700 lines: pause, resume and cancel work across processes through
the task rows and their leases, and every way a run ends (stopped, failed, done, taken
over) writes the row under the same lease rules; split further, those rules would be
read in two places. What could leave has: the transfer, the choice of file (refs.py), the
registry writes (registry.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import (
    CivitaiError,
)
from adapters.civitai.api.transport import DEFAULT_BASE_URL, USER_AGENT
from adapters.civitai.api.types import ModelFile, ModelVersion
from adapters.civitai.download.errors import (
    DownloadDamaged,
    _StopRequested,
    stored,
)
from adapters.civitai.download.folders import (
    DEFAULT_MAX_BYTES,
    category_of,
    models_root,
    resolve_folders,
)
from adapters.civitai.download.naming import (
    part_path,
    sanitize_filename,
)
from adapters.civitai.download.record import DownloadRecord
from adapters.civitai.download.refs import (
    DownloadRef,
    choose_file,
    parse_ref,
    version_label,
)
from adapters.civitai.download.registry import (
    ScanReport,
    _cover_image,
    record_done,
    scan_models,
)
from adapters.civitai.download.transfer import Transfer, _Run
from bot.errors import BadInput, NotFound
from bot.status import DOWNLOAD_ACTIVE, DownloadStatus
from storage import repos
from storage.db import Database

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)


# --- live state -----------------------------------------------------------------------------------


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
        self.db = db
        self.models_dir = Path(models_dir)
        self.folders = resolve_folders(self.models_dir, folders)
        self.base_url = base_url.rstrip("/")
        self.stale_after = stale_after
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._api_key = (api_key or "").strip() or None
        self.transfer = Transfer(
            self,
            folders=self.folders,
            base_url=self.base_url,
            api_key=self._api_key,
            user_agent=user_agent,
            timeout=timeout,
            concurrency=concurrency,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            chunk_size=chunk_size,
            progress_interval=progress_interval,
            on_name_clash=on_name_clash,
            hash_mismatch=hash_mismatch,
            max_bytes=max_bytes,
        )
        self._own_client = client is None
        self.client = client or CivitaiClient(
            self._api_key, base_url=self.base_url, timeout=timeout, http=self.transfer.api_http
        )
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._runs: dict[int, _Run] = {}
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
        return self.transfer.folder_for(kind)

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
        version, file = await choose_file(
            self.client,
            parsed,
            options,
            allow_unsafe=allow_unsafe,
            by=by,
            max_bytes=self.transfer.max_bytes,
        )
        version_id = version.id
        assert version_id is not None
        name = version_label(version)
        listed = file.size_bytes
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
            await self.transfer.check_disk(self.folder_for(kind), listed, name)
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
        await self.transfer.aclose()

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
            await self._failed(run, exc, discard=isinstance(exc, DownloadDamaged))
        except Exception as exc:
            log.exception("download #%d failed", run.task_id)
            await self._failed(run, f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            if run.sink is not None:
                await asyncio.to_thread(run.sink.close_sync)
            if run.state is not None and run.state.path:
                self.transfer.release(run.state.path)
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

    async def _failed(
        self, run: _Run, failed: BaseException | str, *, discard: bool = False
    ) -> None:
        log.warning("download #%d failed: %r", run.task_id, str(failed))
        message = failed if isinstance(failed, str) else stored(failed)
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

    async def progress(self, run: _Run, *, force: bool = False) -> None:
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

    async def _download(self, run: _Run) -> None:
        got = await self.transfer.fetch(run)
        state = run.state
        assert state is not None
        await record_done(self.db, state, got.path, got.sha256, got.size, self.owner, self.base_url)
        log.info("download #%d: %r saved as %r", state.id, state.label, str(got.path))

    # --- hooks the transfer calls ------------------------------------------------------------

    async def path_chosen(self, state: DownloadRecord) -> None:
        await self.db.run_write(
            repos.update_download_task,
            state.id,
            if_owner=self.owner,
            path=state.path,
            file_name=state.file_name,
        )

    async def busy_paths(self) -> dict[str, int]:
        return await self.db.run_read(repos.active_download_paths)

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
            "model_name": version_label(version)[:256],
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
