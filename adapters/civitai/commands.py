"""``/civitai ...`` in every chat: look up models and images, and start a job from an image.

    /civitai models QUERY [--type LORA] [--base "SDXL 1.0"] [--sort "Most Downloaded"]
    /civitai model ID
    /civitai images [--model ID] [--version ID] [--user NAME] [--sort S] [--period P] [--nsfw]
    /civitai image ID [--post P]  the picture and its generation parameters (``--post``: its
                               post, where Civitai does not return the image by its id)
    /civitai use ID [--post P] start a txt2img job with that image's settings (charged)
    /civitai hash HASH         which model a file hash (AutoV2 or SHA256) belongs to

Admins also download model files into the model folders (``downloads.DownloadManager``):

    /civitai download VERSION_ID|URL [--type VAE] [--format SafeTensor] [--fp fp16]
                               [--allow-unsafe: despite Civitai's pickle/virus scans]
    /civitai downloads         the recent downloads
    /civitai pause ID | resume ID | cancel ID

A download answers on a status message of its own, edited as the bytes arrive (paced by the
chat adapter like job progress), and a new message says when it is done or failed. Where
to show it is stored with the task, so a download that resumes after a restart goes on
editing the same message.

Lookups come with pictures (covers, examples: fetched at a chat-sized width, checked and
re-encoded, left out when they cannot be had in time) and buttons (``bot.commands.Action``:
"Use these settings", a result's details), which run a /civitai command as the person who
presses them.

What a chat may see follows its NSFW policy (``Incoming.nsfw_ok``): a chat that is not
allowed NSFW only ever gets PG results, whatever ``--nsfw`` says.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence
from typing import Any, Protocol

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import CivitaiError
from adapters.civitai.api.meta import meta_resources, with_lora_tags
from adapters.civitai.api.nsfw import browsing_level
from adapters.civitai.api.types import Image, Model
from adapters.civitai.download.manager import DownloadManager
from adapters.civitai.download.record import DownloadRecord, format_bytes, format_duration
from adapters.civitai.resolve import Resolved, resolve_resources
from adapters.civitai.text import TEXT, say_error
from bot import i18n
from bot.chat import ReplyTo
from bot.commands import Action, Incoming, Picture, Reply, format_receipt
from bot.errors import BadInput, Forbidden
from bot.i18n import t
from bot.ids import parse_id
from bot.imaging import make_preview
from bot.jobs import JobService
from bot.status import DOWNLOAD_ACTIVE, DOWNLOAD_UNDER_WAY, DownloadStatus
from bot.text import clean, clip

log = logging.getLogger(__name__)

TOP = 5
USAGE = (
    "use /civitai models QUERY [--type T] [--base B] [--sort S], /civitai model ID, "
    "/civitai images [--model ID] [--user NAME], /civitai image ID, /civitai use ID, "
    "or /civitai hash HASH"
)
FLAGS = {"type", "base", "sort", "period", "model", "version", "user", "nsfw", "post"}
FLAGS |= {"format", "fp", "size"}  # which file /civitai download takes
FLAGS |= {"allow-unsafe"}  # /civitai download despite Civitai's scans (admins; logged)
SWITCHES = {"nsfw", "allow-unsafe"}  # flags without a value
ADMIN_ONLY = ("download", "downloads", "pause", "resume", "cancel")
# Lookups: free for the person, an API call and up to TOP picture fetches for the operator;
# counted against [limits] free_commands_per_minute (``use`` is charged in credits instead).
LOOKUPS = ("models", "model", "images", "image", "hash")
PREVIEW_DECODES = 2  # pictures decoded at once, across every lookup in this process
# Subcommands that answer on a status message of their own (a job, or a download).
WITH_STATUS = ("use", "download", "resume")
LISTED = 10  # downloads shown by /civitai downloads
PICTURE_WIDTH = 800  # /civitai image: one picture
COVER_WIDTH = 450  # lists: a picture per result
EXAMPLES = 3  # example pictures of /civitai model
PICTURE_WAIT_S = 8.0  # pictures not fetched by then are left out; the text goes anyway
BAR = 10  # cells of the progress bar

i18n.register(TEXT)


class Notifier(Protocol):
    """Where download states go: the chat adapter of ``reply_to.platform``."""

    async def show_status(self, reply_to: ReplyTo, text: str, *, final: bool = False) -> None: ...

    async def announce(self, reply_to: ReplyTo, text: str) -> None: ...

    async def models_changed(self) -> None: ...


def _split(rest: str) -> tuple[list[str], dict[str, str]]:
    """Words and ``--flag value`` pairs (``--nsfw`` takes no value)."""
    try:
        tokens = shlex.split(rest)
    except ValueError as exc:
        raise BadInput(f"/civitai: {exc} (close the quote)") from None
    words: list[str] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            name = tok[2:].lower()
            if name not in FLAGS:
                raise BadInput(f"/civitai does not know --{name}; {USAGE}")
            if name in SWITCHES:
                flags[name] = "yes"
            else:
                if i + 1 >= len(tokens):
                    raise BadInput(f"--{name} needs a value")
                flags[name] = tokens[i + 1]
                i += 1
        else:
            words.append(tok)
        i += 1
    return words, flags


def _number(value: str | None, what: str) -> int:
    number = parse_id(value) if value is not None else None
    if number is None:
        raise BadInput(f"{what} needs a number, e.g. /civitai {what} 12345")
    return number


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class CivitaiCommands:
    def __init__(
        self,
        client: CivitaiClient,
        jobs: JobService,
        downloads: DownloadManager | None = None,
        notifier: Notifier | None = None,
        db: Any = None,
    ) -> None:
        self.client = client
        self.jobs = jobs
        self.db = db  # the model registry, to find an image's checkpoint and LoRAs here
        self.downloads = downloads
        self._refreshed: set[int] = set()  # downloads whose new file was announced
        self.notifier = notifier
        # per download: the status message last shown (its reply_to), and the last final
        # state said there, so each message gets each ending once
        self._shown: dict[int, ReplyTo] = {}
        self._ended: dict[int, str] = {}
        self.picture_wait_s = PICTURE_WAIT_S
        self._decodes = asyncio.Semaphore(PREVIEW_DECODES)

    # --- lifecycle (called by the App) ------------------------------------------------------

    async def start(self, *, resume: bool = True) -> None:
        """Listen to the downloads; with ``resume`` (a long-lived process), go on with those
        a stop or a crash interrupted."""
        if self.downloads is None:
            return
        self.downloads.add_listener(self._on_download)
        if resume:
            ids = await self.downloads.resume_interrupted()
            if ids:
                log.info("civitai: resuming downloads %s", ", ".join(f"#{i}" for i in ids))

    async def aclose(self) -> None:
        if self.downloads is not None:
            # nothing more is shown: the downloads stop as "queued" and go on next start
            self.downloads.remove_listener(self._on_download)
            await self.downloads.aclose(stop_as=DownloadStatus.QUEUED)
        await self.client.aclose()

    def costs_operator(self, rest: str) -> bool:
        """Whether the command is a lookup (see ``LOOKUPS``), for the core's rate limit."""
        first = rest.strip().split(maxsplit=1)
        return bool(first) and first[0].lower() in LOOKUPS

    def wants_status(self, rest: str) -> bool:
        first = rest.strip().split(maxsplit=1)
        return bool(first) and first[0].lower() in WITH_STATUS

    def help_entries(self, lang: str) -> list[tuple[str, str, bool]]:
        entries = [(t(lang, "cv.usage.lookup"), t(lang, "cv.help.lookup"), False)]
        if self.downloads is not None:
            entries += [
                (t(lang, "cv.usage.download"), t(lang, "cv.help.download"), True),
                (t(lang, "cv.usage.downloads"), t(lang, "cv.help.downloads"), True),
            ]
        return entries

    async def busy(self, reply_to: ReplyTo) -> bool:
        """Whether a download that shows its progress at ``reply_to``'s chat is unfinished
        (the console waits for them before it exits)."""
        if self.downloads is None:
            return False
        where = (reply_to.platform, reply_to.chat)
        for view in await self.downloads.tasks(statuses=DOWNLOAD_UNDER_WAY, limit=200):
            target = ReplyTo.from_json(view.notify)
            if (target.platform, target.chat) == where:
                return True
        return False

    # --- commands ---------------------------------------------------------------------------

    async def run(self, msg: Incoming, rest: str, lang: str) -> Reply:
        words, flags = _split(rest)
        if not words:
            raise BadInput(USAGE)
        sub, args = words[0].lower(), words[1:]
        if sub in ADMIN_ONLY:
            if not msg.is_admin:
                raise Forbidden.of("error.admin_only", cmd=f"/civitai {sub}")
            return Reply(await self._manage(sub, args, flags, msg, lang), lang=lang)
        # a chat not allowed NSFW only ever sees PG, whatever was asked
        level = browsing_level(bool(msg.nsfw_ok and "nsfw" in flags))
        if sub == "models":
            return await self._models(" ".join(args), flags, level, lang)
        if sub == "model":
            model_id = _number(args[0] if args else None, "model")
            return await self._model(model_id, level, lang, admin=msg.is_admin)
        if sub == "images":
            return await self._images(flags, level, lang)
        post = _number(flags["post"], "post") if flags.get("post") else None
        if sub == "image":
            image = await self._image(_number(args[0] if args else None, "image"), level, post)
            return await self._show_image(image, lang)
        if sub == "use":
            image = await self._image(_number(args[0] if args else None, "use"), level, post)
            params = image.params()
            if not params.prompt:
                raise BadInput(f"Civitai image {image.id} has no prompt to reuse")
            resolved = await resolve_resources(self.db, meta_resources(image.meta), self.client)
            prompt = with_lora_tags(
                params.prompt,
                [r.resource for r in resolved],
                dict(enumerate(r.name for r in resolved)),
            )
            checkpoint = next((r for r in resolved if r.resource.kind == "checkpoint"), None)
            model = checkpoint.name if checkpoint and self._offered(checkpoint.name) else None
            receipt = await self.jobs.submit(
                msg.user,
                "txt2img",
                [params.with_(prompt=prompt, model=model, provider=None)],
                msg.reply_to,
                idem_key=msg.message_key,
                notes=(f"settings of Civitai image {image.id}", *_resource_notes(resolved)),
                on_accept=msg.on_accept,
            )
            return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)
        if sub == "hash":
            if not args:
                raise BadInput("/civitai hash needs a file hash (AutoV2 or SHA256)")
            version = await self.client.version_by_hash(args[0])
            model = version.model.name if version.model else "?"
            kind = version.model.type if version.model else "?"
            return Reply(
                f"{args[0]} is {model} ({kind}), version {version.name} "
                f"(#{version.id}, model #{version.model_id}, {version.base_model or '?'})",
                lang=lang,
            )
        raise BadInput(f"unknown /civitai {sub}; {USAGE}")

    async def _manage(
        self, sub: str, args: list[str], flags: dict[str, str], msg: Incoming, lang: str
    ) -> str:
        manager = self.downloads
        if manager is None:
            raise BadInput.of("cv.dl.off")
        if sub == "downloads":
            views = await manager.tasks(limit=LISTED)
            if not views:
                return t(lang, "cv.dl.none")
            return "\n".join(download_text(v, lang, short=True) for v in views)
        if sub in WITH_STATUS and msg.on_accept is not None and (args or sub != "download"):
            # accepted: the chat opens the status message its progress is shown on
            msg.reply_to = msg.reply_to.with_(**(await msg.on_accept()))
        # the status edits and the end message are said in the language of this answer
        # (the person's /lang choice, else their app's), not only in the app's
        notify = msg.reply_to.with_(lang=lang).to_json()
        if sub == "download":
            if not args:
                raise BadInput(
                    "/civitai download needs a model version id or a civitai.com link, e.g. "
                    "/civitai download 130072"
                )
            view = await manager.enqueue(
                " ".join(args),
                file_type=flags.get("type"),
                format=flags.get("format"),
                fp=flags.get("fp"),
                size=flags.get("size"),
                notify=notify,
                allow_unsafe="allow-unsafe" in flags,
                by=f"admin {msg.user.key} ({clean(msg.user.name, multiline=False)[:40]}) in chat",
            )
        else:
            task_id = _number(args[0] if args else None, sub)
            if sub == "resume":
                view = await manager.resume(task_id, notify=notify)
            elif sub == "pause":
                view = await manager.pause(task_id)
            else:
                view = await manager.cancel(task_id)
        if sub in WITH_STATUS and view.status not in DOWNLOAD_ACTIVE:
            self._ended[view.id] = view.status  # said by this reply: not again by a notice
        return download_text(view, lang)

    async def _on_download(self, view: DownloadRecord) -> None:
        """Every progress step and state change of a download: shown on its status message,
        and its end said once more in a new message (an edit makes no notification)."""
        target = None if view.notify is None else ReplyTo.from_json(view.notify)
        notifier = self.notifier
        if notifier is None:
            return
        if view.status == DownloadStatus.DONE and view.id not in self._refreshed:
            self._refreshed.add(view.id)  # a new file: the GPU instances look again
            await notifier.models_changed()
        before = self._shown.get(view.id)
        if before is not None and before != target and view.status in DOWNLOAD_UNDER_WAY:
            # someone asked again: the progress goes on the newer message
            lang = before.lang or i18n.DEFAULT_LANG
            name = _name(view)
            await notifier.show_status(
                before, t(lang, "cv.dl.moved", id=view.id, name=name), final=True
            )
            self._ended.pop(view.id, None)
        if target is None:
            self._shown.pop(view.id, None)
            return
        self._shown[view.id] = target
        lang = target.lang or i18n.DEFAULT_LANG
        final = view.status not in DOWNLOAD_UNDER_WAY
        if not final:
            self._ended.pop(view.id, None)
            await notifier.show_status(target, download_text(view, lang))
            return
        if self._ended.get(view.id) == view.status:
            return
        self._ended[view.id] = view.status
        self._shown.pop(view.id, None)
        await notifier.show_status(target, download_text(view, lang), final=True)
        if view.status in (DownloadStatus.DONE, DownloadStatus.FAILED):
            await notifier.announce(target, download_text(view, lang, short=True))

    async def _models(self, query: str, flags: dict[str, str], level: int, lang: str) -> Reply:
        page = await self.client.search_models(
            query or None,
            types=[flags["type"]] if "type" in flags else None,
            base_models=[flags["base"]] if "base" in flags else None,
            sort=flags.get("sort"),
            period=flags.get("period"),
            nsfw=level,
            limit=TOP,
        )
        items = page.items[:TOP]
        if not items:
            text = f"no Civitai models match {query!r}" if query else "no Civitai models match"
            return Reply(text, lang=lang)
        described = [(m, _model_line(m)) for m in items]
        text = "\n".join(f"{line}\n  {self._page('models', m.id)}" for m, line in described)
        return Reply(
            text,
            lang=lang,
            pictures=await self._pictures(
                [(_cover(m), line) for m, line in described], COVER_WIDTH
            ),
            actions=[Action(_label(f"#{m.id} {m.name}"), f"/civitai model {m.id}") for m in items],
        )

    async def _model(self, model_id: int, level: int, lang: str, *, admin: bool) -> Reply:
        model = await self.client.model(model_id, nsfw=level)
        lines = [_model_line(model), self._page("models", model.id)]
        for version in model.model_versions[:3]:
            lines.append(f"  version {version.name} (#{version.id}, {version.base_model or '?'})")
            if version.trained_words:
                lines.append(f"    trigger words: {', '.join(version.trained_words[:10])}")
            for f in version.files[:3]:
                size = f.size_bytes
                mb = f"{size / 1024 / 1024:.0f} MB" if size else "? MB"
                lines.append(f"    file {f.name} · {f.type or '?'} · {mb}")
        latest = model.latest_version
        examples = [
            (im, f"{model.name} · {version.name} · {_prompt(im, 200)}".rstrip(" ·"))
            for version in model.model_versions
            for im in version.images
            if (im.level or 1) & level and im.url
        ][:EXAMPLES]
        actions = [Action(t(lang, "cv.act.images"), f"/civitai images --model {model.id}")]
        if admin and latest is not None and latest.files and self.downloads is not None:
            name = _label(latest.name or str(latest.id), 24)
            actions.append(
                Action(t(lang, "cv.act.download", name=name), f"/civitai download {latest.id}")
            )
        return Reply(
            "\n".join(lines),
            lang=lang,
            pictures=await self._pictures(examples, COVER_WIDTH),
            actions=actions,
        )

    async def _images(self, flags: dict[str, str], level: int, lang: str) -> Reply:
        page = await self.client.images(
            model_id=parse_id(flags.get("model", "")),
            model_version_id=parse_id(flags.get("version", "")),
            username=flags.get("user"),
            sort=flags.get("sort"),
            period=flags.get("period"),
            nsfw=level,
            limit=TOP,
        )
        items = page.items[:TOP]
        if not items:
            return Reply("no Civitai images match", lang=lang)
        lines = [f"#{im.id} {_prompt(im, 100)} · {self._page('images', im.id)}" for im in items]
        lines.append(t(lang, "cv.images_hint"))
        shown = [(im, f"#{im.id} · {_prompt(im, 300)}") for im in items]
        return Reply(
            "\n".join(lines),
            lang=lang,
            pictures=await self._pictures(shown, COVER_WIDTH),
            actions=[  # only what /civitai use can draw: an image with a prompt
                Action(t(lang, "cv.act.use_id", id=im.id), f"/civitai use {im.id}")
                for im in items
                if im.id is not None and im.params().prompt
            ],
        )

    async def _show_image(self, image: Image, lang: str) -> Reply:
        text = image.parameters_text()
        head = f"Civitai image #{image.id} · {self._page('images', image.id)}"
        usable = bool(image.params().prompt)  # /civitai use needs a prompt to draw
        tail = t(lang, "cv.use_hint", id=image.id) if usable else ""
        return Reply(
            "\n".join(p for p in (head, text, tail) if p),
            lang=lang,
            pictures=await self._pictures([(image, head)], PICTURE_WIDTH),
            actions=[Action(t(lang, "cv.act.use"), f"/civitai use {image.id}")] if usable else [],
        )

    def _offered(self, name: str | None) -> bool:
        """Whether a configured provider offers a model of this name (else the job keeps the
        provider's default model: a checkpoint is only carried where it can be drawn with)."""
        if not name:
            return False
        providers = getattr(getattr(self.jobs, "router", None), "providers", {}) or {}
        return any(m.name == name for p in providers.values() for m in p.capabilities().models)

    async def _image(self, image_id: int, level: int, post_id: int | None = None) -> Image:
        return await self.client.image(image_id, nsfw=level, post_id=post_id)

    def _page(self, kind: str, item_id: int | None) -> str:
        """The item's page on the Civitai site (the API's host serves both)."""
        return f"{self.client.base_url}/{kind}/{item_id}"

    async def _pictures(
        self, wanted: Sequence[tuple[Image | None, str]], width: int
    ) -> list[Picture]:
        """The pictures that could be fetched and checked within ``picture_wait_s``, in
        order; audio items and the rest are left out (the text has their links)."""

        async def one(image: Image | None, caption: str) -> Picture | None:
            if image is None or not image.url or image.type not in (None, "image", "video"):
                return None
            try:
                data = await self.client.picture(
                    image.url, width=width, still=image.type == "video"
                )
                preview = await self._preview(data, width)
            except (CivitaiError, BadInput) as exc:
                log.info("civitai: no picture for %r: %r", image.url, str(exc))
                return None
            return Picture(preview, caption)

        tasks = [asyncio.ensure_future(one(image, caption)) for image, caption in wanted]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=self.picture_wait_s)
        for task in pending:
            task.cancel()
        if pending:
            log.info("civitai: %d pictures not fetched in time; sent without", len(pending))
        return [p for task in tasks if task in done and (p := task.result()) is not None]

    async def _preview(self, data: bytes, width: int) -> bytes:
        """``make_preview`` in a thread, at most ``PREVIEW_DECODES`` at once. A decode that
        outlives its lookup (``picture_wait_s``) keeps its place until its thread ends: a
        thread cannot be stopped, and its memory is in use until then."""
        async with self._decodes:
            work = asyncio.ensure_future(asyncio.to_thread(make_preview, data, max_side=width))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])
                raise


def _resource_notes(resolved: list[Resolved]) -> list[str]:
    """Receipt lines: the image's checkpoint (name, hash, whether this host has it) and LoRAs."""
    notes = []
    for r in resolved:
        res = r.resource
        if not (r.name or res.hash):
            continue
        what = "checkpoint" if res.kind == "checkpoint" else "LoRA"
        weight = f" ×{res.weight:g}" if res.kind == "lora" and res.weight is not None else ""
        hash_ = f" [{res.hash.lower()}]" if res.hash else ""
        here = " (here)" if r.local is not None else ""
        notes.append(f"{what}: {r.name or '?'}{weight}{hash_}{here}")
    return notes


def _model_line(m: Model) -> str:
    version = m.latest_version
    base = version.base_model if version and version.base_model else "?"
    creator = m.creator.username if m.creator and m.creator.username else "?"
    downloads = _count(m.stats.download_count if m.stats else None)
    return f"#{m.id} {m.name} · {m.type or '?'} · {base} · by {creator} · {downloads} downloads"


def _cover(m: Model) -> Image | None:
    version = m.latest_version
    return next((im for im in version.images if im.url), None) if version else None


def _prompt(image: Image, limit: int) -> str:
    prompt = " ".join(image.params().prompt.split())
    if not prompt:
        return "(no prompt)"
    return clip(prompt, limit)


def _label(text: str, limit: int = 32) -> str:
    """A button's label: Telegram and Discord show about this much."""
    text = " ".join(text.split())
    return clip(text, limit)


def _name(view: DownloadRecord) -> str:
    return view.model_name or view.file_name or f"model version {view.version_id}"


def _bar(fraction: float | None) -> str:
    full = min(BAR, int((fraction or 0) * BAR + 1e-9))
    return "▰" * full + "▱" * (BAR - full)


def download_text(view: DownloadRecord, lang: str, *, short: bool = False) -> str:
    """A download as a chat shows it: a headline, then (unless ``short``) a progress bar with
    bytes, speed and time left, or where the file is, or what went wrong, and what to do."""
    known = (*DOWNLOAD_ACTIVE, DownloadStatus.DONE, DownloadStatus.CANCELLED)
    status = view.status if view.status in known else DownloadStatus.FAILED
    head = t(lang, f"cv.dl.{status}", id=view.id, name=_name(view))
    done = format_bytes(view.bytes_done)
    amount = done
    if view.bytes_total:
        amount = t(lang, "cv.dl.of", done=done, total=format_bytes(view.bytes_total))
    pct = f"{100 * view.fraction:.0f}%" if view.fraction is not None else None
    if status == DownloadStatus.DONE:
        head += f" · {done}"
    elif status == DownloadStatus.FAILED and view.error:
        head += f": {say_error(view.error, lang)}"
    has_bytes = status in DOWNLOAD_ACTIVE and bool(view.bytes_done or view.bytes_total)
    if short:
        return head + (" · " + " · ".join(p for p in (pct, amount) if p) if has_bytes else "")
    lines = [head]
    if has_bytes:
        progress = f"{_bar(view.fraction)} {pct} · {amount}" if pct else amount
        if status == DownloadStatus.RUNNING and view.speed:
            eta = format_duration(view.eta_s) if view.eta_s is not None else "?"
            progress += " · " + t(lang, "cv.dl.speed", speed=format_bytes(view.speed), eta=eta)
        lines.append(progress)
    if status in DOWNLOAD_UNDER_WAY:
        lines.append(t(lang, "cv.dl.hint_running", id=view.id))
    elif status in (DownloadStatus.PAUSED, DownloadStatus.FAILED):
        lines.append(t(lang, "cv.dl.hint_resume", id=view.id, done=done))
    elif status == DownloadStatus.DONE:
        lines += [view.path] if view.path else []
        if view.sha256:
            key = "cv.dl.sha_checked" if view.sha256 == view.expected_sha256 else "cv.dl.sha"
            lines.append(t(lang, key, sha=view.sha256))
    return "\n".join(lines)


def build(
    config: Any,
    jobs: JobService,
    *,
    db: Any = None,
    notifier: Notifier | None = None,
) -> CivitaiCommands:
    """The /civitai commands; with ``db``, model downloads too (their progress told to
    ``notifier``)."""
    cfg = config.civitai
    client = CivitaiClient(
        cfg.api_key or None,
        base_url=cfg.base_url,
        timeout=cfg.timeout_s,
        image_hosts=cfg.image_hosts,
    )
    downloads = DownloadManager.from_config(db, config) if db is not None else None
    return CivitaiCommands(client, jobs, downloads, notifier, db=db)
