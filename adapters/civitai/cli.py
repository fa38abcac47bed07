"""The command lines of the Civitai capability: ``sdhost civitai download`` and ``sdhost
models scan``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from adapters.civitai.api.errors import (
    CivitaiError,
)
from bot.errors import BadInput
from bot.status import DownloadStatus
from bot.text import clean
from storage import repos
from storage.db import Database

if TYPE_CHECKING:
    from bot.config import Config

from adapters.civitai.download.manager import DownloadManager
from adapters.civitai.download.record import DownloadRecord, format_bytes, format_duration

log = logging.getLogger(__name__)


# --- the CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``sdhost civitai download VERSION_ID|URL [--type] [--format] [--fp] [--size]``."""
    parser.add_argument(
        "ref",
        metavar="VERSION_ID|URL",
        help="a model version id, a civitai.com/models/... page (its newest version unless "
        "the link names one) or a download link",
    )
    parser.add_argument(
        "--type",
        dest="file_type",
        metavar="TYPE",
        help="which file of the version: Model, VAE, Pruned Model, Config, Training Data, "
        "... (default: the primary file)",
    )
    parser.add_argument("--format", metavar="FORMAT", help="SafeTensor, PickleTensor, GGUF, ...")
    parser.add_argument("--fp", metavar="FP", help="fp16, bf16, fp32, fp8, ...")
    parser.add_argument("--size", choices=("full", "pruned"), help="full or pruned weights")
    parser.add_argument("--file-id", type=int, metavar="ID", help="one file, by its Civitai id")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, just the result"
    )
    parser.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="take a file even though Civitai's pickle or virus scan did not pass it "
        "(pickle files can run code when loaded; logged as a warning)",
    )


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """``sdhost models scan [--no-enrich] [--rehash] [--refresh]``."""
    parser.add_argument(
        "--no-enrich", action="store_true", help="do not look the files up on Civitai"
    )
    parser.add_argument(
        "--rehash", action="store_true", help="hash every file again (ignore the cache)"
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask Civitai again about files it did not know last time",
    )


async def run_cli(args: argparse.Namespace, config: Config, db: Database, **overrides: Any) -> int:
    """Download one file with a progress bar. 0 when the file is in place, 1 when it failed.
    Ctrl-C pauses it: the same command later resumes from where it stopped. ``db`` is the
    app's database (migrated by the app), left open."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    manager = DownloadManager.from_config(db, config, **overrides)
    view: DownloadRecord | None = None
    try:
        try:
            view = await manager.enqueue(
                args.ref,
                file_type=getattr(args, "file_type", None),
                format=getattr(args, "format", None),
                fp=getattr(args, "fp", None),
                size=getattr(args, "size", None),
                file_id=getattr(args, "file_id", None),
                allow_unsafe=bool(getattr(args, "allow_unsafe", False)),
                by=f"{_login_name()} on the command line",
            )
            if view.status != DownloadStatus.DONE:
                view = await _follow(manager, view, err, not getattr(args, "no_progress", False))
        except (CivitaiError, BadInput) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            if view is not None:
                await manager.pause(view.id)
                done = format_bytes((await manager.get(view.id)).bytes_done)
                err.print(
                    f"download #{view.id} paused at {done}; run the same command again to resume",
                    markup=False,
                )
            raise
        if view.status == DownloadStatus.DONE:
            print(f"{view.path}\t{format_bytes(view.bytes_done)}\tsha256 {view.sha256}")
            return 0
        if view.status == DownloadStatus.RUNNING:  # running in another process
            print(f"download #{view.id} is running in another process", file=sys.stderr)
            return 1
        print(f"error: {view.error or view.status}", file=sys.stderr)
        return 1
    finally:
        await manager.aclose(stop_as=DownloadStatus.PAUSED)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "someone"


async def _follow(
    manager: DownloadManager, view: DownloadRecord, console: Any, show: bool
) -> DownloadRecord:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
    )

    waiter = asyncio.ensure_future(manager.wait(view.id))
    if not show:
        return await waiter
    # The label is a model's name and the note a server's words: shown as text, never read
    # as rich markup ("[bold red]" in a name stays those characters).
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[speed]}", markup=False),
        TextColumn("{task.fields[eta]}", markup=False),
        TextColumn("{task.fields[note]}", markup=False),
    )
    label = (view.model_name or view.file_name or f"version {view.version_id}")[:40]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(
            label, total=view.bytes_total, completed=view.bytes_done, speed="", eta="", note=""
        )
        try:
            while not waiter.done():
                await asyncio.wait([waiter], timeout=0.25)
                live = manager.snapshot(view.id)
                if live is None:
                    continue
                bar.update(
                    task,
                    total=live.bytes_total,
                    completed=live.bytes_done,
                    speed=f"{format_bytes(live.speed)}/s" if live.speed else "",
                    eta=f"ETA {format_duration(live.eta_s)}" if live.eta_s is not None else "",
                    note=(live.error or "")[:60],
                )
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        final = waiter.result()
        bar.update(task, total=final.bytes_total, completed=final.bytes_done, note=final.status)
    return final


async def run_scan_cli(
    args: argparse.Namespace, config: Config, db: Database, **overrides: Any
) -> int:
    """Scan the model folders and show the registry. ``db``: as for :func:`run_cli`."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console(highlight=False)
    manager = DownloadManager.from_config(db, config, **overrides)
    try:
        report = await manager.scan(
            enrich=not getattr(args, "no_enrich", False),
            rehash=getattr(args, "rehash", False),
            refresh=getattr(args, "refresh", False),
        )
        rows = await db.run_read(repos.list_models)
        table = Table(title="models")
        for column in ("name", "type", "base model", "size", "civitai", "status", "path"):
            table.add_column(column, overflow="fold")
        for row in rows:
            ids = (
                f"{row.civitai_model_id}@{row.civitai_version_id}" if row.civitai_version_id else ""
            )
            cells = (  # names and paths come from files and Civitai: text, not markup
                row.name,
                row.type,
                row.base_model or "",
                format_bytes(row.size_bytes),
                ids,
                row.status,
                row.path or "",
            )
            table.add_row(*(Text(clean(str(c), multiline=False)) for c in cells))
        out.print(table)
        print(
            f"{report.files} files ({report.hashed} hashed, {report.cached} from the cache); "
            f"{report.new_models} new; {report.enriched} found on Civitai, "
            f"{report.unmatched} unknown there; {report.missing} missing",
            flush=True,
        )
        for problem in report.errors:
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    finally:
        await manager.aclose()
