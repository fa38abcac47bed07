"""The commands every chat platform shares: text in, a reply out.

Adapters turn platform events into an ``Incoming`` (who, what they typed, where to answer,
any picture they attached or replied to) and render the ``Reply``. Nothing here knows a
platform; nothing a person can trigger escapes as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.chat import UserRef
from bot.config import Config
from bot.errors import BadInput, UserError
from bot.fetch import fetch_image
from bot.grammar import (
    HELP_FLAGS,
    format_flags,
    parse_batch,
    parse_command,
    parse_generation,
    split_source,
)
from bot.imaging import InputImage, load_input_image
from bot.infotext import parse_infotext
from bot.jobs import JobService, JobView, Receipt
from bot.params import GenerationParams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Incoming:
    user: UserRef
    text: str
    reply_to: dict[str, Any]
    image: bytes | None = None  # a picture attached to, or replied to by, the message
    message_key: str | None = None  # platform message id: the same message never runs twice
    allow_local_paths: bool = False  # only the console may read files from this machine
    is_admin: bool = False


@dataclass(slots=True)
class Reply:
    text: str
    receipt: Receipt | None = None
    error: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


COMMANDS_HELP = [
    ("imagine PROMPT [flags]", "make pictures from a prompt (also /draw)"),
    ("img2img PATH_OR_URL PROMPT [--strength 0..1]", "redraw a picture (or reply to one)"),
    ("batch PROMPT | PROMPT | …", "up to 10 prompts at once (one per line, or PROMPT --n K)"),
    ("credits", "your balance"),
    ("jobs", "your recent jobs"),
    ("job ID", "one job in detail"),
    ("cancel ID", "cancel a job (queued jobs are refunded)"),
    ("retry ID", "run a failed or cancelled job again (charged again)"),
    ("models", "providers, models and prices"),
    ("help", "this text"),
]

ALIASES = {
    "draw": "imagine",
    "txt2img": "imagine",
    "i2i": "img2img",
    "balance": "credits",
    "start": "help",
    "status": "job",
}


class Commands:
    def __init__(self, config: Config, jobs: JobService) -> None:
        self.config = config
        self.jobs = jobs

    async def handle(self, msg: Incoming) -> Reply:
        try:
            return await self._dispatch(msg)
        except UserError as exc:
            return Reply(str(exc), error=True)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("command failed (ref %s): %r", ref, msg.text[:200])
            return Reply(
                f"something went wrong on our side (ref {ref}); /jobs and /credits show "
                "what happened to your request",
                error=True,
            )

    async def _dispatch(self, msg: Incoming) -> Reply:
        cmd = parse_command(msg.text)
        name = ALIASES.get(cmd.name, cmd.name)
        if not name:
            raise BadInput(
                "commands start with /, for example /imagine a lighthouse at dusk; /help lists them"
            )
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            raise BadInput(f"unknown command /{cmd.name}; /help lists the commands")
        return await handler(msg, cmd.rest)

    # --- generation -------------------------------------------------------------------------

    async def cmd_imagine(self, msg: Incoming, rest: str) -> Reply:
        params = parse_generation(rest)
        receipt = await self.jobs.submit(
            msg.user, "txt2img", [params], msg.reply_to, idem_key=msg.message_key
        )
        return Reply(format_receipt(receipt), receipt=receipt)

    async def cmd_batch(self, msg: Incoming, rest: str) -> Reply:
        tasks = parse_batch(rest)
        receipt = await self.jobs.submit(
            msg.user, "batch", tasks, msg.reply_to, idem_key=msg.message_key
        )
        return Reply(format_receipt(receipt), receipt=receipt)

    async def cmd_img2img(self, msg: Incoming, rest: str) -> Reply:
        data = msg.image
        text = rest
        if data is None:
            source, text = split_source(rest)
            if source is None and msg.allow_local_paths:
                # On the console a bare file name counts too when such a file exists
                # (photo.bmp): better "unsupported format" than "give a picture".
                first, _, after = rest.strip().partition(" ")
                if first and await asyncio.to_thread(Path(first).expanduser().is_file):
                    source, text = first, after
            if source is None:
                raise BadInput(
                    "img2img needs a picture: reply to one with /img2img PROMPT, or give a path "
                    "or URL first, e.g. /img2img https://example.com/cat.png a watercolor cat"
                )
            data = await self._load_source(source, msg.allow_local_paths)
        image = await asyncio.to_thread(
            load_input_image,
            data,
            max_bytes=self.config.images.max_input_bytes,
            max_pixels=self.config.images.max_input_pixels,
        )
        params = parse_generation(text, allow_empty_prompt=True)
        params, notes = _merge_embedded(params, image)
        if not params.prompt:
            raise BadInput(
                "the prompt is empty: say what the picture should become, "
                "e.g. /img2img URL a watercolor painting"
            )
        receipt = await self.jobs.submit(
            msg.user,
            "img2img",
            [params],
            msg.reply_to,
            init_image=image.data,
            init_size=(image.width, image.height),
            idem_key=msg.message_key,
            notes=notes,
        )
        return Reply(format_receipt(receipt), receipt=receipt)

    async def _load_source(self, source: str, allow_local: bool) -> bytes:
        cfg = self.config.images
        if source.startswith(("http://", "https://")):
            return await fetch_image(
                source,
                max_bytes=cfg.max_input_bytes,
                timeout=cfg.fetch_timeout_s,
                allow_private=cfg.allow_private_urls,
            )
        if not allow_local:
            raise BadInput("give the picture as an http(s) URL, or reply to a picture")
        path = Path(source).expanduser()
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError:
            raise BadInput(f"no such file: {source}") from None
        if size > cfg.max_input_bytes:
            mb = cfg.max_input_bytes / 1024 / 1024
            raise BadInput(f"the image is {size / 1024 / 1024:.1f} MB; the limit is {mb:.0f} MB")
        return await asyncio.to_thread(path.read_bytes)

    # --- jobs -------------------------------------------------------------------------------

    async def cmd_cancel(self, msg: Incoming, rest: str) -> Reply:
        job_id = _job_id(rest, "cancel")
        return Reply(await self.jobs.cancel(None if msg.is_admin else msg.user, job_id))

    async def cmd_retry(self, msg: Incoming, rest: str) -> Reply:
        job_id = _job_id(rest, "retry")
        receipt = await self.jobs.retry(msg.user, job_id, msg.reply_to)
        return Reply(format_receipt(receipt), receipt=receipt)

    async def cmd_job(self, msg: Incoming, rest: str) -> Reply:
        view = await self.jobs.job(msg.user, _job_id(rest, "job"))
        return Reply(format_job(view))

    async def cmd_jobs(self, msg: Incoming, rest: str) -> Reply:
        views = await self.jobs.jobs(msg.user, limit=10)
        if not views:
            return Reply("no jobs yet; try /imagine a lighthouse at dusk")
        return Reply("\n".join(format_job_line(v) for v in views))

    async def cmd_credits(self, msg: Incoming, rest: str) -> Reply:
        balance = await self.jobs.balance(msg.user)
        prices = self.config.credits.prices
        return Reply(
            f"you have {balance} credits · txt2img {prices['txt2img']} per picture, "
            f"img2img {prices['img2img']} per picture, batch {prices['batch']} per task"
        )

    async def cmd_models(self, msg: Incoming, rest: str) -> Reply:
        lines = []
        router = self.jobs.router
        for name, provider in router.providers.items():
            caps = provider.capabilities()
            kinds = "/".join(sorted(caps.kinds))
            default = " (default)" if name == self.config.providers.default else ""
            lines.append(
                f"{name}{default}: {caps.description or kinds} · txt2img "
                f"{router.price('txt2img', name)}, img2img {router.price('img2img', name)} "
                f"credits per picture · up to {caps.max_images} per job, {caps.max_size}px"
            )
            for mi in caps.models:
                mark = " *" if mi.name == caps.default_model else ""
                lines.append(f"  {name}:{mi.name}{mark} — {mi.description}")
        return Reply("\n".join(lines) or "no providers are configured")

    async def cmd_help(self, msg: Incoming, rest: str) -> Reply:
        balance = await self.jobs.balance(msg.user)
        lines = ["sdhost makes pictures from prompts. Commands:"]
        lines += [f"  /{usage} — {what}" for usage, what in COMMANDS_HELP]
        lines.append(HELP_FLAGS)
        lines.append("You can also paste an A1111/Civitai parameter block after /imagine.")
        lines.append(f"You have {balance} credits.")
        return Reply("\n".join(lines))


# --- formatting -----------------------------------------------------------------------------


def format_receipt(r: Receipt) -> str:
    head = "already queued (same message): " if r.duplicate else ""
    if r.kind == "batch":
        ids = r.job_ids
        span = f"#{ids[0]}–#{ids[-1]}" if len(ids) > 1 else f"#{ids[0]}"
        first = min(j.position for j in r.jobs) if r.jobs else 0
        text = (
            f"{head}batch #{r.batch_id}: {len(ids)} task{'s' if len(ids) != 1 else ''} queued "
            f"(jobs {span}) · next in queue at "
            f"position {first} · cost {r.cost} · balance {r.balance}"
        )
    else:
        j = r.jobs[0]
        count = f" ×{j.n}" if j.n > 1 else ""
        text = (
            f"{head}job #{j.id} queued · position {j.position} · {j.provider}:{j.model} "
            f"{j.width}x{j.height}{count} · seed {j.seed} · cost {r.cost} · balance {r.balance}"
        )
    for note in r.notes:
        text += f"\n{note}"
    return text


def format_job_line(v: JobView) -> str:
    prompt = str(v.params.get("prompt", ""))
    if len(prompt) > 40:
        prompt = prompt[:39] + "…"
    extra = f" {v.progress}%" if v.status == "running" else ""
    return f"#{v.id} {v.status}{extra} · {v.kind} · {prompt!r} · cost {v.cost}"


def format_job(v: JobView) -> str:
    params = GenerationParams.from_dict(v.params)
    lines = [
        f"job #{v.id}: {v.status} ({v.progress}%, {v.stage}) · {v.kind} on {v.provider}:{v.model}",
        f"  {format_flags(params)}",
        f"  cost {v.cost} · attempts {v.attempts}",
    ]
    if v.error:
        lines.append(f"  {v.failure or 'note'}: {v.error}")
    if v.batch_counts:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(v.batch_counts.items()))
        lines.append(f"  batch #{v.batch_id}: {counts}")
    for im in v.images:
        lines.append(
            f"  image {im['idx'] + 1}: {im['path']} ({im['width']}x{im['height']}, "
            f"seed {im['seed']})"
        )
    for reason, delta in v.ledger:
        lines.append(f"  ledger: {reason} {delta:+d}")
    if v.finished_at and v.started_at:
        lines.append(f"  took {v.finished_at - v.started_at:.1f}s")
    elif v.status == "queued":
        lines.append(
            f"  waiting for {time.time() - v.created_at:.0f}s · position {v.position} in the queue"
        )
    return "\n".join(lines)


def _job_id(rest: str, cmd: str) -> int:
    token = rest.strip().lstrip("#")
    if not token.isdigit():
        raise BadInput(f"/{cmd} needs a job number, e.g. /{cmd} 12 (see /jobs)")
    return int(token)


def _merge_embedded(
    params: GenerationParams, image: InputImage
) -> tuple[GenerationParams, list[str]]:
    """Use the generation parameters a picture carries where the person gave none."""
    notes: list[str] = []
    if not image.parameters:
        return params, notes
    embedded = parse_infotext(image.parameters)
    if embedded is None:
        return params, notes
    short = embedded.prompt if len(embedded.prompt) <= 60 else embedded.prompt[:59] + "…"
    notes.append(f"the picture carries its parameters: {short!r}, seed {embedded.seed}")
    changes: dict[str, Any] = {}
    if not params.prompt:
        changes["prompt"] = embedded.prompt
        if not params.negative and embedded.negative:
            changes["negative"] = embedded.negative
    return params.with_(**changes), notes
