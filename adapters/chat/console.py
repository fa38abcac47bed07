"""The terminal chat: the same commands as Telegram and Discord, one line per event.

Interactive on a terminal; when standard input is a pipe or a file it reads one command per
line, prints one tagged line per event (``receipt:``, ``progress:``, ``preview:``, ``image:``,
``done:``, ``failed:``, ``cancelled:``, ``error:``, ``info:``) so scripts can follow along,
and exits once input has ended and every job it knows about has finished and been reported.

A console serves the one person at its terminal (``audiences``): consoles of several people
on one database each print only their own person's progress and results, whichever
process ran the job.

A job's live preview (a self-hosted GPU's picture as it develops) is written, small, to a
file of that person's own under ``data.dir/previews/console/``, at most once every
``[images] preview_interval_s``, with a ``preview:`` line saying where; the file goes when
the job's outcome is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from adapters.chat.status import preview_digest, shrink_preview
from bot.chat import ChatAdapter, Delivery, Progress, ReplyTo, UserRef, audience_of
from bot.commands import Incoming, format_outcome
from bot.host import ChatHost, RunningHost
from bot.i18n import DEFAULT_LANG, render, term
from bot.status import JOB_TERMINAL
from bot.text import clean

log = logging.getLogger(__name__)


class ConsoleAdapter(ChatAdapter):
    platform = "console"

    def __init__(
        self,
        app: ChatHost,
        user: UserRef,
        *,
        out: TextIO | None = None,
        progress_every_s: float = 0.0,
    ) -> None:
        self.app = app
        self.user = user
        self.out = out or sys.stdout
        # A person at a terminal gets every stage but at most one percentage line per job
        # this often; a script reading the output (0) gets every event.
        self.progress_every_s = progress_every_s
        self._last_progress: dict[int, tuple[int, str, float]] = {}
        self._last_status: dict[str, tuple[str, float]] = {}  # headline -> (body, when)
        self._status_said: str | None = None  # the last status text printed
        self.lang = DEFAULT_LANG  # the language of the last reply: results follow it
        # live previews: job -> (digest of the picture written, when); 0 s: none
        self.preview_interval_s = float(app.config.images.preview_interval_s)
        self._previews: dict[int, tuple[bytes, float]] = {}

    def emit(self, tag: str, text: str) -> None:
        # The last line of defence for the operator's terminal: whatever the text holds,
        # no escape sequence, bidi override or stray line break gets through.
        first, *rest = clean(text).splitlines() or [""]
        lines = [f"{tag}: {first}", *(f"  {line}" for line in rest)]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    @property
    def reply_to(self) -> ReplyTo:
        return ReplyTo(platform=self.platform, chat=self.user.id, person=self.user.id)

    def audiences(self) -> frozenset[str] | None:
        """Only the person at this terminal: another console's people wait for theirs."""
        audience = audience_of(self.reply_to)
        return frozenset({audience} if audience else ())

    async def deliver(self, d: Delivery) -> None:
        p = d.payload
        if d.kind == "image":
            self.emit(
                "image",
                f"{_where(d.job_id, p)} {p['index'] + 1}/{p['count']} {p['path']} "
                f"{p['width']}x{p['height']} seed {p['seed']}",
            )
        else:
            kind = d.kind if d.kind in ("finished", "cancelled") else "failed"
            tag = "done" if kind == "finished" else kind
            self.emit(tag, format_outcome(kind, d.job_id, p, self.lang))
        if d.kind != "image":
            self._last_progress.pop(d.job_id, None)
            self._end_preview(d.job_id)

    async def progress(self, update: Progress) -> None:
        if update.stage in JOB_TERMINAL:
            return  # the outbox event says it, with the details
        if update.preview is not None:
            await self._preview(update.job_id, update.preview)
        t = time.monotonic()
        last = self._last_progress.get(update.job_id)
        if last is not None:
            percent, stage, when = last
            if (percent, stage) == (update.percent, update.stage):
                return
            if stage == update.stage and t - when < self.progress_every_s:
                return
        self._last_progress[update.job_id] = (update.percent, update.stage, t)
        stage = render(term("stage", update.stage), self.lang)
        self.emit("progress", f"job #{update.job_id} {update.percent}% {stage}")

    def preview_path(self, job_id: int) -> Path:
        """Where this person's preview of a job goes: a folder of their own (named by their
        id, made safe, and a digest of it, so no two people share one)."""
        who = self.user.key
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.user.id)[:40].lstrip(".") or "_"
        tag = hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        folder = Path(self.app.config.data.dir) / "previews" / "console" / f"{safe}-{tag}"
        return folder / f"job-{job_id}.jpg"

    async def _preview(self, job_id: int, data: bytes) -> None:
        """Write the job's newest preview and say where, at most once per interval; the
        same picture again is not written again."""
        if self.preview_interval_s <= 0:
            return
        now = time.monotonic()
        last = self._previews.get(job_id)
        if last is not None and now - last[1] < self.preview_interval_s:
            return
        digest = preview_digest(data)
        if last is not None and last[0] == digest:
            return
        picture = await asyncio.to_thread(shrink_preview, data)
        if picture is None:
            return  # not a picture (logged at debug): progress goes on
        path = self.preview_path(job_id)
        try:
            await asyncio.to_thread(_write, path, picture)
        except OSError as exc:
            log.debug("console: a preview could not be written: %s", exc)
            return
        self._previews[job_id] = (digest, now)
        self.emit("preview", f"job #{job_id} {path}")

    def _end_preview(self, job_id: int) -> None:
        if self._previews.pop(job_id, None) is not None:
            with contextlib.suppress(OSError):
                self.preview_path(job_id).unlink(missing_ok=True)

    async def show_status(self, reply_to: ReplyTo, text: str, *, final: bool = False) -> None:
        """One ``status:`` line per change worth a line: a new headline (a download that
        started, paused, ended) or, in between, at most one every ``progress_every_s`` (a
        script reading the output gets one per tenth of the way)."""
        head, _, rest = text.partition("\n")
        t = time.monotonic()
        last = self._last_status.get(head)
        if not final and last is not None:
            said, when = last
            if said == rest or t - when < self.progress_every_s:
                return
            if not self.progress_every_s and _tenth(said) == _tenth(rest):
                return
        self._last_status[head] = (rest, t)
        if final:
            self._last_status.pop(head, None)
        self._status_said = text
        self.emit("status", text)

    async def handle_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        reply = await self.app.commands.handle(
            Incoming(
                user=self.user,
                text=line,
                reply_to=self.reply_to,
                allow_local_paths=True,
                is_admin=True,  # the operator's own terminal: `sdhost credits` is theirs too
                nsfw_ok=True,
            )
        )
        self.lang = reply.lang
        if not reply.error and reply.text == self._status_said:
            return  # what it started printed this state already, as a status line
        tag = "error" if reply.error else "receipt" if reply.receipt else "info"
        self.emit(tag, reply.text)
        for action in reply.actions:  # a button elsewhere; here, the command to type
            self.emit("action", f"{action.label}: {action.command}")

    async def wait_until_done(self, poll: float = 0.1) -> None:
        while not (
            await self.app.jobs.is_idle(self.user)
            and await self.app.deliverer.idle()
            and not await self.app.commands.busy(self.reply_to)
        ):
            await asyncio.sleep(poll)


def robust_stdio() -> None:
    """Standard input that is not UTF-8 must not end the chat: its bytes arrive as lone
    surrogates (``surrogateescape``, whatever PYTHONIOENCODING says), which the core
    refuses with a clear line; and printing never fails on a character the terminal's
    encoding lacks."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):  # not a text stream of its own: leave it
                reconfigure(errors=errors)


async def run_console(app: RunningHost, user: UserRef, *, interactive: bool) -> int:
    robust_stdio()
    adapter = ConsoleAdapter(app, user, progress_every_s=2.0 if interactive else 0.0)
    app.add_adapter(adapter)
    await app.start()
    try:
        if interactive:
            balance = await app.jobs.balance(user)
            demo = (
                " (demo provider: procedural pictures, not an AI model)"
                if "demo" in app.providers
                else ""
            )
            adapter.emit(
                "info",
                f"sdhost console — you are {user.key} with {balance} credits{demo}.\n"
                "Type /help for commands, /imagine PROMPT to start. Ctrl-D quits.",
            )
        while True:
            line = await asyncio.to_thread(_read_line, interactive)
            if line is None:
                break
            await adapter.handle_line(line)
        if interactive and not await app.jobs.is_idle(user):
            adapter.emit(
                "info", "waiting for your jobs to finish (Ctrl-C leaves them queued for next time)"
            )
        await adapter.wait_until_done()
    finally:
        await app.stop()
    return 0


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a viewer never opens half a picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _tenth(text: str) -> int | None:
    """Which tenth of the way a status text's percentage is in."""
    m = re.search(r"(\d+)%", text)
    return int(m.group(1)) // 10 if m else None


def _where(job_id: int, payload: dict[str, Any]) -> str:
    batch = payload.get("batch_id")
    if batch is not None:
        return f"job #{job_id} (batch #{batch} task {int(payload.get('batch_index') or 0) + 1})"
    return f"job #{job_id}"
