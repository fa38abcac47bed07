"""The command lines of the Civitai capability: ``sdhost civitai download``, ``sdhost models
scan`` and ``sdhost civitai images`` (the bulk image harvest).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.civitai.api.client import IMAGE_SORTS, PERIODS, CivitaiClient
from adapters.civitai.api.errors import (
    CivitaiError,
)
from adapters.civitai.api.nsfw import browsing_level
from adapters.civitai.api.transport import ORIGINAL
from adapters.civitai.download.manager import DownloadManager
from adapters.civitai.download.record import DownloadRecord, format_bytes, format_duration
from adapters.civitai.harvest import DEFAULT_RATE, IMAGE_TYPES, Harvester, parse_meta, parse_size
from adapters.civitai.text import say_error
from bot.errors import BadInput
from bot.ids import is_digits
from bot.status import DownloadStatus
from bot.text import clean
from storage import repos
from storage.db import Database

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[A-Za-z0-9_]+$")


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
        print(f"error: {say_error(view.error, 'en') or view.status}", file=sys.stderr)
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
                    note=say_error(live.error, "en")[:60],
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


# --- sdhost civitai images ------------------------------------------------------------------------


def add_harvest_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``sdhost civitai images``. Values are checked by
    :func:`run_harvest_cli` (one-line errors), so most are read as text here."""
    g = parser.add_argument_group("what to fetch")
    g.add_argument("--model", metavar="ID", help="images of this model id")
    g.add_argument("--version", metavar="ID", help="images of this model version id")
    g.add_argument("--user", metavar="NAME", help="images posted by this username")
    g.add_argument("--post", metavar="ID", help="images of this post id")
    g.add_argument("--sort", metavar="SORT", help="; ".join(IMAGE_SORTS))
    g.add_argument("--period", metavar="PERIOD", help=", ".join(PERIODS))
    g.add_argument(
        "--nsfw",
        nargs="?",
        const="all",
        metavar="LEVEL",
        help="NSFW levels: None, Soft, Mature, X (old names), PG, PG13, R, XXX, sfw, all, or a "
        "browsing-level bitmask; bare --nsfw means all (default: PG only)",
    )
    g.add_argument(
        "--base",
        action="append",
        metavar="MODEL",
        help='base model, e.g. "SDXL 1.0" (repeat or comma-separate)',
    )
    g.add_argument("--tag", action="append", metavar="ID", help="tag id (repeat or comma-separate)")
    g.add_argument("--type", metavar="TYPE", help="image, video or audio")
    g.add_argument("--requiring-meta", action="store_true", help="only images with generation data")
    h = parser.add_argument_group("how")
    h.add_argument("--max", metavar="N", help="at most N images (required)")
    h.add_argument("--out", metavar="DIR", help="folder to write into (required)")
    h.add_argument("--concurrency", metavar="N", default="8", help="downloads at once (8)")
    h.add_argument(
        "--size", default=ORIGINAL, metavar="original|WIDTH", help="original file or a width"
    )
    h.add_argument(
        "--meta",
        default="json,txt",
        metavar="json,txt",
        help="metadata files beside each (or none)",
    )
    h.add_argument(
        "--rate",
        default=str(DEFAULT_RATE),
        metavar="R",
        help=f"at most R requests per second ({DEFAULT_RATE:g}; 0 = no limit)",
    )
    h.add_argument("--retries", default="4", metavar="N", help="retries of a failed image (4)")


def _int_flag(value: Any, flag: str, *, lo: int = 1, hi: int | None = None) -> int:
    text = str(value).strip().lstrip("#")
    if not is_digits(text) or int(text) < lo or (hi is not None and int(text) > hi):
        span = f"{lo} to {hi}" if hi is not None else f"a whole number from {lo}"
        raise BadInput(f"{flag} takes {span}, not {value!r}")
    return int(text)


def _choice_flag(value: str, options: Iterable[str], flag: str) -> str:
    for option in options:
        if option.lower().replace(" ", "") == value.lower().replace(" ", ""):
            return option
    raise BadInput(f"{flag} takes one of {', '.join(options)}; not {value!r}")


def _listed_flags(values: Iterable[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def harvest_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :class:`Harvester` (``out_dir`` included) from the parsed
    flags; a bad value raises :class:`BadInput` with a one-line message."""

    def get(name: str) -> Any:
        return getattr(args, name, None)

    if get("max") is None:
        raise BadInput("--max N is required: how many images at most")
    if not get("out"):
        raise BadInput("--out DIR is required: the folder to write the images into")
    filters: dict[str, Any] = {}
    if get("model") is not None:
        filters["model_id"] = _int_flag(get("model"), "--model")
    if get("version") is not None:
        filters["model_version_id"] = _int_flag(get("version"), "--version")
    if get("post") is not None:
        filters["post_id"] = _int_flag(get("post"), "--post")
    if get("user") is not None:
        if not _USERNAME.match(get("user")):
            user = get("user")
            raise BadInput(f"--user takes a Civitai username (letters, digits, _), not {user!r}")
        filters["username"] = get("user")
    if get("sort") is not None:
        filters["sort"] = _choice_flag(get("sort"), IMAGE_SORTS, "--sort")
    if get("period") is not None:
        filters["period"] = _choice_flag(get("period"), PERIODS, "--period")
    if get("nsfw") is not None:
        try:
            browsing_level(get("nsfw"))
        except ValueError as exc:
            raise BadInput(f"--nsfw: {exc}") from None
        filters["nsfw"] = get("nsfw")
    if get("base"):
        filters["base_models"] = _listed_flags(get("base"))
    if get("tag"):
        filters["tags"] = [_int_flag(t, "--tag") for t in _listed_flags(get("tag"))]
    if get("type") is not None:
        filters["type"] = _choice_flag(get("type"), IMAGE_TYPES, "--type")
    if get("requiring_meta"):
        filters["requiring_meta"] = True
    rate_text = str(get("rate") if get("rate") is not None else DEFAULT_RATE).strip()
    try:
        rate = float(rate_text)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise BadInput(f"--rate takes requests per second (0 = no limit), not {rate_text!r}")
    return {
        "out_dir": Path(get("out")).expanduser(),
        "max_items": _int_flag(get("max"), "--max"),
        "concurrency": _int_flag(get("concurrency") or 8, "--concurrency", hi=256),
        "size": parse_size(get("size") or ORIGINAL),
        "meta": parse_meta(get("meta") if get("meta") is not None else "json,txt"),
        "rate": rate or None,
        "retries": _int_flag(
            get("retries") if get("retries") is not None else 4, "--retries", lo=0
        ),
        "filters": filters,
    }


async def run_harvest_cli(args: argparse.Namespace, config: Config) -> int:
    """``sdhost civitai images ...``: 0 when every listed image is there, 1 when some failed
    (listed at the end) or the listing stopped early. Bad flags raise :class:`BadInput`."""
    options = harvest_options(args)
    out_dir = options.pop("out_dir")
    cfg = config.civitai
    rate = options["rate"]
    client = CivitaiClient(
        cfg.api_key or None,
        base_url=cfg.base_url,
        timeout=cfg.timeout_s,
        requests_per_second=max(1.0, rate) if rate else None,
    )
    async with client:
        harvester = Harvester(client, out_dir, timeout=cfg.timeout_s, **options)
        try:
            result = await harvester.run()
        except asyncio.CancelledError:
            r = harvester.result
            print(
                f"interrupted: {r.downloaded} downloaded, {r.skipped} already there; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            raise
    print(f"civitai images: {result.summary(out_dir)}")
    for failed in result.failed[:10]:
        print(f"  failed: image {failed.id} ({failed.url}): {failed.error}", file=sys.stderr)
    if len(result.failed) > 10:
        print(f"  ... and {len(result.failed) - 10} more", file=sys.stderr)
    return 0 if result.ok else 1
