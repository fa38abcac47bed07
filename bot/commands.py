"""The commands every chat platform shares: text in, a reply out.

Adapters turn platform events into an ``Incoming`` (who, what they typed, where to answer,
any picture they attached or replied to, the language their app is set to) and render the
``Reply``. Nothing here knows a platform; nothing a person can trigger escapes as a
traceback. Replies are in the person's language (``bot.i18n``): the one they chose with
/lang, else their app's, else English.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from bot import i18n
from bot.chat import ReplyTo, UserRef
from bot.config import Config
from bot.errors import BadInput, Forbidden, LimitReached, NotFound, UserError
from bot.fetch import fetch_image
from bot.grammar import (
    format_flags,
    help_flags,
    parse_batch,
    parse_command,
    parse_generation,
    split_source,
)
from bot.i18n import t, tn
from bot.ids import parse_id
from bot.imaging import InputImage, load_input_image
from bot.infotext import parse_infotext
from bot.jobs import SETTING_KEYS, JobService, JobView, Receipt
from bot.localfile import is_regular_file, read_local_picture
from bot.params import GenerationParams
from bot.ratelimit import SlidingWindow
from bot.results import UPSCALE_FACTOR, Results
from bot.routing import UPSCALE_MAX_FACTOR, UPSCALE_MIN_FACTOR
from bot.status import JobStatus
from bot.text import clip, shown_char, unusable_char

log = logging.getLogger(__name__)

# Capabilities.lists that /models shows, in this order ("models.list.<kind>" names them).
LIST_KINDS = ("workflows", "loras", "samplers", "schedulers", "vaes", "upscalers")
# How much of each list /models shows: names, characters (the rest is "and N more");
# /models PROVIDER shows more, still within a chat message.
_LIST_NAMES, _LIST_CHARS = 8, 160
_DETAIL_NAMES, _DETAIL_CHARS = 200, 1500
_NAME_CHARS = 48  # one name at most


def _summary(names: Sequence[str], most: int, chars: int) -> tuple[str, int]:
    """As many of ``names`` (each clipped) as fit ``most`` names and ``chars`` characters,
    joined; and how many were left out."""
    shown: list[str] = []
    used = 0
    for name in names[:most]:
        piece = clip(name, _NAME_CHARS)
        if shown and used + 2 + len(piece) > chars:
            break
        shown.append(piece)
        used += len(piece) + (2 if len(shown) > 1 else 0)
    return ", ".join(shown), len(names) - len(shown)


@dataclass(slots=True)
class Incoming:
    user: UserRef
    text: str
    reply_to: ReplyTo
    image: bytes | None = None  # a picture attached to, or replied to by, the message
    # The other pictures, in order, when the message brings several (a reply to an album,
    # Discord's image2..image4): img2img passes them all to models that take several.
    more_images: tuple[bytes, ...] = ()
    # more_images are optional (the rest of an album replied to): the model takes what it
    # can, with a note, instead of refusing the lot.
    fit_more: bool = False
    notes: tuple[str, ...] = ()  # said in the receipt (e.g. an album not known any more)
    # One of the bot's own pictures the message replies to, as (job id, picture index):
    # what /upscale acts on when no job is named.
    replied_picture: tuple[int, int] | None = None
    message_key: str | None = None  # platform message id: the same message never runs twice
    # Only the console (the operator's own terminal) may read files from this machine by
    # path, and only there are the paths of stored files shown.
    allow_local_paths: bool = False
    is_admin: bool = False
    nsfw_ok: bool = False  # the chat may see NSFW lookups (the console, NSFW channels)
    lang: str | None = None  # the platform's language code for the person, e.g. "zh-hans"
    # Called once a command that starts a job is accepted, before the job is queued (see
    # ``JobService.submit``): the adapter opens the job's status message and returns what to
    # change on ``reply_to`` (``ReplyTo`` field names: its status message). A refusal never
    # calls it, so it is answered directly.
    on_accept: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # The adapter's own /start and /help texts, written for its platform: catalogue keys
    # ``chat.welcome.<texts>`` and ``chat.help.<texts>``. None: the general help.
    texts: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reply_to, ReplyTo):  # a stored (JSON) form
            self.reply_to = ReplyTo.from_json(self.reply_to)


def job_address(msg: Incoming) -> ReplyTo:
    """Where a job's results go, with the chat's NSFW policy at the time it was asked for
    (``nsfw_ok``): providers that filter at the source follow it (see ``ResolvedRequest``)."""
    return msg.reply_to.with_(nsfw_ok=bool(msg.nsfw_ok))


@dataclass(slots=True, frozen=True)
class Picture:
    """A picture shown with a reply (a Civitai example, a model's cover): not a generated
    result, so it is not stored, charged or delivered through the outbox."""

    data: bytes  # a JPEG, already checked and sized for a chat (bot.imaging.make_preview)
    caption: str = ""


# Buttons carry their command: Telegram allows 64 bytes of callback data, Discord 100
# characters of custom id, less what the adapters put in front.
ACTION_MAX_BYTES = 56
# The most input pictures one /img2img reads (FLUX.2 takes 8; the router refuses more than
# the chosen model takes, before anything is charged).
MAX_INPUT_PICTURES = 10


@dataclass(slots=True, frozen=True)
class Action:
    """A button under a reply. Pressing it runs ``command`` as if the person who pressed it
    had typed it: it needs no state kept anywhere, works after restarts, and grants nothing
    the presser could not do by typing."""

    label: str
    command: str  # e.g. "/civitai use 90013"

    def __post_init__(self) -> None:
        if not self.command.startswith("/") or len(self.command.encode()) > ACTION_MAX_BYTES:
            raise ValueError(
                f"an action's command must be a /command of at most "
                f"{ACTION_MAX_BYTES} bytes: {self.command!r}"
            )


@dataclass(slots=True)
class Reply:
    text: str
    receipt: Receipt | None = None
    error: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    lang: str = i18n.DEFAULT_LANG  # the language ``text`` is in, for the adapter's additions
    pictures: list[Picture] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


# (command, catalog key of its usage); the description is "help.<command>".
_HELP = [
    ("imagine", "usage.imagine"),
    ("img2img", "usage.img2img"),
    ("batch", "usage.batch"),
    ("upscale", "usage.upscale"),
    ("credits", "usage.credits"),
    ("jobs", "usage.jobs"),
    ("job", "usage.job"),
    ("cancel", "usage.cancel"),
    ("retry", "usage.retry"),
    ("models", "usage.models"),
    ("lang", "usage.lang"),
    ("settings", "usage.settings"),
    ("help", "usage.help"),
]
_ADMIN_HELP = [
    ("grant", "usage.grant"),
    ("ban", "usage.ban"),
    ("unban", "usage.unban"),
    ("stats", "usage.stats"),
]
ADMIN_COMMANDS = tuple(name for name, _ in _ADMIN_HELP)


def help_entries(lang: str = i18n.DEFAULT_LANG, *, admin: bool = False) -> list[tuple[str, str]]:
    """(usage, what it does) for every command, in ``lang``; admin commands if ``admin``."""
    entries = _HELP + (_ADMIN_HELP if admin else [])
    return [(t(lang, usage), t(lang, f"help.{name}")) for name, usage in entries]


COMMANDS_HELP = help_entries()

ALIASES = {
    "draw": "imagine",
    "txt2img": "imagine",
    "i2i": "img2img",
    "balance": "credits",
    "status": "job",
    "language": "lang",
}

# Commands that answer on a status message of their own, edited as their job runs.
_STATUS_COMMANDS = frozenset({"imagine", "img2img", "batch", "retry", "upscale"})

_MAX_GRANT = 1_000_000_000

# What people may call a setting after /settings (the flag names work too).
_SETTING_NAMES = {
    "model": "model",
    "aspect": "aspect",
    "ar": "aspect",
    "negative": "negative",
    "no": "negative",
}

# The person a command is being handled for and their /settings defaults, read together
# with their language at the start of ``handle``, so generation commands need no extra read.
_DEFAULTS: ContextVar[tuple[UserRef, dict[str, str]] | None] = ContextVar(
    "sdhost_defaults", default=None
)


class Commands:
    def __init__(self, config: Config, jobs: JobService) -> None:
        self.config = config
        self.jobs = jobs
        # Commands that live outside the core (``/civitai``): name -> an object with
        # ``async run(msg, rest, lang) -> Reply``, added by the composition root. Optional:
        # ``wants_status(rest) -> bool`` (see ``wants_status``), ``help_entries(lang) ->
        # [(usage, what, admin_only)]`` for /help, ``async start()`` and ``async aclose()``.
        self.extensions: dict[str, Any] = {}
        # Extensions' ``costs_operator(rest) -> bool`` says which of their commands count
        # against this per-person limit (free for the person, not for the operator).
        self.free_commands = SlidingWindow(config.limits.free_commands_per_minute, 60.0)

    async def busy(self, reply_to: ReplyTo) -> bool:
        """Whether an extension still works for this chat (a download it started)."""
        for extension in self.extensions.values():
            busy = getattr(extension, "busy", None)
            if busy is not None and await busy(reply_to):
                return True
        return False

    def wants_status(self, text: str) -> bool:
        """Whether the command reports on a status message of its own (it starts a job, or a
        download): the adapter posts one first and puts its id in ``reply_to``; the reply
        becomes its first text and later states are edited into it."""
        cmd = parse_command(text)
        name = ALIASES.get(cmd.name, cmd.name)
        if name in _STATUS_COMMANDS:
            return True
        wants = getattr(self.extensions.get(name), "wants_status", None)
        return bool(wants(cmd.rest)) if wants is not None else False

    async def handle(self, msg: Incoming) -> Reply:
        lang = i18n.DEFAULT_LANG
        token = None
        try:
            standing = await self.jobs.standing(msg.user)
            lang = i18n.pick(standing.lang, msg.lang, msg.user.locale)
            if standing.banned and not msg.is_admin:
                # before any work, for every command, button and extension alike (/help
                # too: nothing it lists is open to them); admins are the operator's choice
                # in the config and may still /unban
                raise Forbidden.of("error.banned")
            token = _DEFAULTS.set((msg.user, standing.settings))
            bad = unusable_char(msg.text)
            if bad is not None:  # on any platform, before any command sees it
                raise BadInput.of("error.unusable_text", char=shown_char(bad))
            return await self._dispatch(msg, lang)
        except UserError as exc:
            return Reply(exc.render(lang), error=True, lang=lang)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("command failed (ref %s): %r", ref, msg.text[:200])
            return Reply(t(lang, "error.internal", ref=ref), error=True, lang=lang)
        finally:
            if token is not None:
                _DEFAULTS.reset(token)

    async def _dispatch(self, msg: Incoming, lang: str) -> Reply:
        cmd = parse_command(msg.text)
        name = ALIASES.get(cmd.name, cmd.name)
        if not name:
            raise BadInput.of("error.not_a_command")
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None and name in self.extensions:
            extension = self.extensions[name]
            costs = getattr(extension, "costs_operator", None)
            if costs is not None and not msg.is_admin and costs(cmd.rest):
                wait = self.free_commands.take(msg.user.key)
                if wait:
                    raise LimitReached.of(
                        "error.free_limit",
                        limit=self.free_commands.limit,
                        seconds=max(1, math.ceil(wait)),
                    )
            handler = extension.run
        if handler is None:
            raise BadInput.of("error.unknown_command", name=cmd.name)
        return await handler(msg, cmd.rest, lang)

    # --- generation -------------------------------------------------------------------------

    async def cmd_imagine(self, msg: Incoming, rest: str, lang: str) -> Reply:
        params = parse_generation(rest)
        [params], notes = await self._with_defaults(msg, "txt2img", [params])
        receipt = await self.jobs.submit(
            msg.user,
            "txt2img",
            [params],
            job_address(msg),
            idem_key=msg.message_key,
            notes=notes,
            on_accept=msg.on_accept,
        )
        return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)

    async def cmd_batch(self, msg: Incoming, rest: str, lang: str) -> Reply:
        tasks, notes = await self._with_defaults(msg, "batch", parse_batch(rest))
        receipt = await self.jobs.submit(
            msg.user,
            "batch",
            tasks,
            job_address(msg),
            idem_key=msg.message_key,
            notes=notes,
            on_accept=msg.on_accept,
        )
        return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)

    async def cmd_img2img(self, msg: Incoming, rest: str, lang: str) -> Reply:
        text = rest
        sources: list[bytes] = []
        if msg.image is not None:
            sources = [msg.image, *msg.more_images]
        else:
            # one or more leading paths or URLs: /img2img a.png b.png PROMPT
            while len(sources) < MAX_INPUT_PICTURES:
                source, after = split_source(text)
                if source is None and msg.allow_local_paths:
                    # On the console a bare file name counts too when such a file exists
                    # (photo.bmp): better "unsupported format" than "give a picture".
                    first, _, tail = text.strip().partition(" ")
                    if bool(first) and await asyncio.to_thread(is_regular_file, first):
                        source, after = first, tail
                if source is None:
                    break
                sources.append(await self._load_source(source, msg.allow_local_paths))
                text = after
            if not sources:
                raise BadInput.of("error.img2img_needs_picture")
        images = [
            await asyncio.to_thread(
                load_input_image,
                data,
                max_bytes=self.config.images.max_input_bytes,
                max_pixels=self.config.images.max_input_pixels,
            )
            for data in sources
        ]
        image = images[0]
        params = parse_generation(text, allow_empty_prompt=True)
        params, notes = _merge_embedded(params, image)
        if not params.prompt:
            raise BadInput.of("error.img2img_empty_prompt")
        [params], used = await self._with_defaults(msg, "img2img", [params])
        notes += used + list(msg.notes)
        receipt = await self.jobs.submit(
            msg.user,
            "img2img",
            [params],
            job_address(msg),
            init_image=image.data,
            init_size=(image.width, image.height),
            more_images=[im.data for im in images[1:]],
            fit_more=msg.fit_more,
            idem_key=msg.message_key,
            notes=notes,
            on_accept=msg.on_accept,
        )
        return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)

    async def cmd_upscale(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """/upscale in reply to one of the bot's pictures, or /upscale JOB [PICTURE]; the
        Upscale button's job (``Results.upscale``), ×2 unless ``--scale``."""
        factor, words = _upscale_args(rest)
        if words:
            if len(words) > 2:
                raise BadInput.of("error.upscale_needs_picture")
            job_id = _job_id(words[0], "upscale")
            number = parse_id(words[1]) if len(words) > 1 else 1
            if number is None or number > 1_000_000_000:
                raise BadInput.of("error.upscale_needs_picture")
            idx = number - 1
        elif msg.replied_picture is not None:
            job_id, idx = msg.replied_picture
        else:
            raise BadInput.of("error.upscale_needs_picture")
        receipt = await Results(self.jobs).upscale(
            msg.user,
            job_id,
            idx,
            job_address(msg),
            idem_key=msg.message_key,
            on_accept=msg.on_accept,
            factor=factor,
        )
        return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)

    async def _with_defaults(
        self, msg: Incoming, kind: str, tasks: Sequence[GenerationParams]
    ) -> tuple[list[GenerationParams], list[str]]:
        """The tasks with the person's /settings defaults filled in where the text gave no
        such flag, and the receipt note saying which were used (none: no note)."""
        got = _DEFAULTS.get()
        if got is not None and got[0] == msg.user:
            defaults = got[1]
        else:  # called other than through ``handle``
            defaults = await self.jobs.settings(msg.user)
        chat_model = self._chat_model(msg.reply_to)
        if chat_model and "model" not in defaults:
            defaults = {**defaults, "model": chat_model}
        if not defaults:
            return list(tasks), []
        model = defaults.get("model")
        if model and not self._default_model_fits(model, kind):
            # e.g. a txt2img-only model for img2img: the usual routing, not a refusal
            defaults = {k: v for k, v in defaults.items() if k != "model"}
        out: list[GenerationParams] = []
        used: dict[str, str] = {}
        for params in tasks:
            # img2img keeps the input picture's shape: no default aspect there
            params, applied = apply_defaults(params, defaults, size=kind != "img2img")
            out.append(params)
            used.update(applied)
        return out, [_defaults_note(used)] if used else []

    def _chat_model(self, reply_to: ReplyTo) -> str | None:
        """The model the operator set for this chat (or Discord channel or server)."""
        models = self.config.providers.chat_models
        platform = reply_to.platform
        for value in (reply_to.chat, reply_to.community):
            if value is not None and f"{platform}:{value}" in models:
                return models[f"{platform}:{value}"]
        return None

    def _default_model_fits(self, model: str, kind: str) -> bool:
        try:
            self.jobs.router.resolve(
                _model_params(model, GenerationParams(prompt="x")),
                kind,
                (512, 512) if kind == "img2img" else None,
            )
        except BadInput:
            return False
        return True

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
        return await asyncio.to_thread(read_local_picture, source, cfg.max_input_bytes)

    # --- jobs -------------------------------------------------------------------------------

    async def cmd_cancel(self, msg: Incoming, rest: str, lang: str) -> Reply:
        job_id = _job_id(rest, "cancel")
        said = await self.jobs.cancel(None if msg.is_admin else msg.user, job_id)
        return Reply(i18n.render(said, lang), lang=lang)

    async def cmd_retry(self, msg: Incoming, rest: str, lang: str) -> Reply:
        job_id = _job_id(rest, "retry")
        receipt = await self.jobs.retry(msg.user, job_id, job_address(msg), on_accept=msg.on_accept)
        return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)

    async def cmd_job(self, msg: Incoming, rest: str, lang: str) -> Reply:
        view = await self.jobs.job(msg.user, _job_id(rest, "job"))
        return Reply(format_job(view, lang, paths=msg.allow_local_paths), lang=lang)

    async def cmd_jobs(self, msg: Incoming, rest: str, lang: str) -> Reply:
        views = await self.jobs.jobs(msg.user, limit=10)
        if not views:
            return Reply(t(lang, "jobs.none"), lang=lang)
        return Reply("\n".join(format_job_line(v, lang) for v in views), lang=lang)

    async def cmd_credits(self, msg: Incoming, rest: str, lang: str) -> Reply:
        balance = await self.jobs.balance(msg.user)
        prices = self.config.credits.prices
        text = t(
            lang,
            "credits",
            balance=balance,
            txt2img=prices["txt2img"],
            img2img=prices["img2img"],
            batch=prices["batch"],
        )
        return Reply(text, lang=lang)

    async def cmd_models(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """Every provider with its models and the names its requests may pick (LoRAs,
        samplers, ...: ``Capabilities.lists``), those summarized; ``/models PROVIDER``
        shows one provider with its lists in full (as far as a message allows)."""
        lines = []
        router = self.jobs.router
        wanted = rest.strip().lower()
        providers = list(router.providers.items())
        if wanted:
            providers = [(n, p) for n, p in providers if n.lower() == wanted]
            if not providers:
                known = ", ".join(sorted(router.providers)) or "-"
                raise BadInput.of("models.unknown", name=clip(rest.strip(), 40), known=known)
        for name, provider in providers:
            caps = provider.capabilities()
            kinds = "/".join(sorted(caps.kinds))
            default = t(lang, "models.default") if name == self.config.providers.default else ""
            lines.append(
                t(
                    lang,
                    "models.provider",
                    name=name,
                    default=default,
                    description=caps.description or kinds,
                    txt2img=router.price("txt2img", name),
                    img2img=router.price("img2img", name),
                    max_images=caps.max_images,
                    max_size=caps.max_size,
                )
            )
            for mi in caps.models:
                mark = " *" if mi.name == caps.default_model else ""
                lines.append(f"  {name}:{mi.name}{mark} — {mi.description}")
            summarized = False
            for kind in LIST_KINDS:
                names = [n for n in caps.lists.get(kind, ()) if n]
                if not names:
                    continue
                limit = (_DETAIL_NAMES, _DETAIL_CHARS) if wanted else (_LIST_NAMES, _LIST_CHARS)
                shown, more = _summary(names, *limit)
                if more:
                    shown += ", " + t(lang, "models.more", n=more)
                    summarized = True
                lines.append(
                    t(
                        lang,
                        "models.list",
                        kind=t(lang, f"models.list.{kind}"),
                        count=len(names),
                        names=shown,
                    )
                )
            if summarized and not wanted:
                lines.append("  " + t(lang, "models.detail", name=name))
        return Reply("\n".join(lines) or t(lang, "models.none"), lang=lang)

    async def cmd_start(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """A short welcome where the adapter has one (``Incoming.texts``), else /help."""
        if msg.texts is None:
            return await self.cmd_help(msg, rest, lang)
        balance = await self.jobs.balance(msg.user)
        return Reply(t(lang, f"chat.welcome.{msg.texts}", balance=balance), lang=lang)

    async def cmd_help(self, msg: Incoming, rest: str, lang: str) -> Reply:
        balance = await self.jobs.balance(msg.user)
        extra = [e for ext in self.extensions.values() for e in _extension_help(ext, lang)]
        if msg.texts is not None:  # written for the adapter's platform
            lines = [t(lang, f"chat.help.{msg.texts}")]
            lines += [f"  /{usage} — {what}" for usage, what, admin in extra if not admin]
        else:
            lines = [t(lang, "help.intro")]
            lines += [f"  /{usage} — {what}" for usage, what in help_entries(lang)]
            lines += [f"  /{usage} — {what}" for usage, what, admin in extra if not admin]
            lines.append(help_flags(lang))
            lines.append(t(lang, "help.a1111"))
        if msg.is_admin:
            lines.append(t(lang, "help.admin"))
            lines += [
                f"  /{usage} — {what}"
                for usage, what in help_entries(lang, admin=True)[len(_HELP) :]
            ]
            lines += [f"  /{usage} — {what}" for usage, what, admin in extra if admin]
        lines.append(t(lang, "help.balance", balance=balance))
        return Reply("\n".join(lines), lang=lang)

    async def cmd_lang(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """/lang shows the language; /lang en|zh chooses one; /lang auto follows the app."""
        arg = rest.strip()
        if not arg:
            stored = await self.jobs.user_lang(msg.user)
            if stored is not None:
                source = "lang.source.set"
            elif i18n.normalize(msg.lang) or i18n.normalize(msg.user.locale):
                source = "lang.source.auto"
            else:
                source = "lang.source.default"
            text = t(
                lang,
                "lang.current",
                name=t(lang, f"lang.name.{lang}"),
                source=t(lang, source),
            )
            return Reply(text, lang=lang)
        if arg.lower() == "auto":
            await self.jobs.set_lang(msg.user, None)
            new = i18n.pick(msg.lang, msg.user.locale)
            return Reply(t(new, "lang.auto", name=t(new, f"lang.name.{new}")), lang=new)
        chosen = i18n.parse_lang(arg)
        if chosen is None:
            raise BadInput.of("error.lang_unknown", code=arg[:20])
        await self.jobs.set_lang(msg.user, chosen)
        return Reply(t(chosen, "lang.set"), lang=chosen)

    # --- personal defaults ------------------------------------------------------------------

    async def cmd_settings(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """/settings shows the person's defaults; /settings KEY VALUE sets one, KEY off
        clears it, /settings clear clears them all."""
        parts = rest.split(maxsplit=1)
        if not parts:
            return Reply(format_settings(await self.jobs.settings(msg.user), lang), lang=lang)
        word = parts[0].lower()
        value = parts[1].strip() if len(parts) > 1 else ""
        if word == "clear" and not value:
            await self.jobs.clear_settings(msg.user)
            return Reply(t(lang, "settings.cleared"), lang=lang)
        key = _SETTING_NAMES.get(word.removeprefix("--"))
        if key is None:
            shown = parts[0] if len(parts[0]) <= 20 else parts[0][:19] + "…"
            raise BadInput.of("error.settings_key", setting=shown)
        if not value:
            raise BadInput.of("error.settings_value", setting=key)
        name = t(lang, f"settings.name.{key}")
        if value.lower() == "off":
            await self.jobs.set_setting(msg.user, key, None)
            return Reply(t(lang, "settings.unset", name=name), lang=lang)
        stored = await self.jobs.set_setting(msg.user, key, value)
        return Reply(t(lang, "settings.set", name=name, value=stored[key]), lang=lang)

    # --- admin ------------------------------------------------------------------------------

    async def cmd_grant(self, msg: Incoming, rest: str, lang: str) -> Reply:
        """/grant TARGET N [note]: give (or with a negative N take back) credits."""
        _admin_only(msg, "grant")
        parts = rest.split(maxsplit=2)
        amount = _int(parts[1]) if len(parts) >= 2 else None
        if amount is None or abs(amount) > _MAX_GRANT:
            raise BadInput.of("error.grant_usage")
        target = await self._target(msg, parts[0], "grant")
        note = parts[2].strip() if len(parts) > 2 else ""
        balance = await self.jobs.grant(
            target,
            amount,
            note=(note or f"by {msg.user.key}")[:256],
            key=_grant_key(msg.message_key),
        )
        key = "admin.took" if amount < 0 else "admin.granted"
        text = t(lang, key, amount=abs(amount), user=_shown(target), balance=balance)
        return Reply(text, lang=lang)

    async def cmd_ban(self, msg: Incoming, rest: str, lang: str) -> Reply:
        _admin_only(msg, "ban")
        target = await self._target(msg, rest, "ban")
        await self.jobs.set_banned(target, True)
        return Reply(t(lang, "admin.banned", user=_shown(target)), lang=lang)

    async def cmd_unban(self, msg: Incoming, rest: str, lang: str) -> Reply:
        _admin_only(msg, "unban")
        target = await self._target(msg, rest, "unban")
        await self.jobs.set_banned(target, False)
        return Reply(t(lang, "admin.unbanned", user=_shown(target)), lang=lang)

    async def cmd_stats(self, msg: Incoming, rest: str, lang: str) -> Reply:
        _admin_only(msg, "stats")
        s = await self.jobs.stats()
        counts: list[tuple[str, int]] = [(st, s.jobs_by_status.get(st, 0)) for st in _STATUS_ORDER]
        counts += sorted((st, n) for st, n in s.jobs_by_status.items() if st not in _STATUS_ORDER)
        listed = t(lang, "list.sep").join(
            t(lang, "count.status", n=n, status=i18n.term("status", st)) for st, n in counts if n
        )
        total = sum(s.jobs_by_status.values())
        detail = t(lang, "stats.jobs_detail", list=listed) if listed else ""
        lines = [
            t(lang, "stats.queue", queued=s.queued, running=s.running),
            t(lang, "stats.jobs", total=total, detail=detail),
            t(lang, "stats.credits", spent=s.spent, charged=s.charged, refunded=s.refunded),
            t(lang, "stats.people", people=s.people),
        ]
        for provider, unit, amount in s.provider_spend:
            lines.append(
                t(lang, "stats.provider_spend", provider=provider, amount=f"{amount:g}", unit=unit)
            )
        lines += await self._account_lines(lang)
        return Reply("\n".join(lines), lang=lang)

    async def _account_lines(self, lang: str) -> list[str]:
        """Each provider's own word on the operator's account (a balance), asked at once
        with a short timeout; a provider that fails or is slow is left out."""
        providers = list(self.jobs.router.providers.items())

        async def ask(provider: Any) -> str | None:
            try:
                async with asyncio.timeout(5.0):
                    return await provider.account_status()
            except Exception:  # optional and best effort: /stats must answer regardless
                return None

        answers = await asyncio.gather(*(ask(p) for _, p in providers))
        return [
            t(lang, "stats.account", provider=name, status=answer)
            for (name, _), answer in zip(providers, answers, strict=True)
            if answer
        ]

    async def _target(self, msg: Incoming, text: str, cmd: str) -> UserRef:
        """The person an admin command is about: ``@name``, an id, or ``platform:id``."""
        target = text.strip()
        if not target or len(target) > 200 or any(c.isspace() for c in target):
            raise BadInput.of("error.target_usage", cmd=cmd)
        found = await self.jobs.find_user(msg.user.platform, target)
        if found is not None:
            return found
        if target.startswith("@"):
            raise NotFound.of("error.unknown_person", target=target)
        where, sep, pid = target.partition(":")
        if sep and where and pid:
            return UserRef(where, pid)  # someone new: an admin may act before they arrive
        if not sep and target.isdigit():
            return UserRef(msg.user.platform, target)
        raise NotFound.of("error.unknown_person", target=target)


_STATUS_ORDER = tuple(JobStatus)


def _extension_help(extension: Any, lang: str) -> list[tuple[str, str, bool]]:
    entries = getattr(extension, "help_entries", None)
    return list(entries(lang)) if entries is not None else []


def _admin_only(msg: Incoming, cmd: str) -> None:
    if not msg.is_admin:
        raise Forbidden.of("error.admin_only", cmd=cmd)


def _int(text: str) -> int | None:
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or not body.isascii() or len(body) > 12:
        return None
    return int(text)


def _grant_key(message_key: str | None) -> str | None:
    """The ledger key that makes one admin message grant once (it fits the column)."""
    if message_key is None:
        return None
    if len(message_key) > 100:
        message_key = hashlib.sha256(message_key.encode()).hexdigest()
    return f"grant:{message_key}"


def _shown(ref: UserRef) -> str:
    """A person as admin replies name them: their @name when they have one."""
    return ref.name if ref.name.startswith("@") else ref.key


# --- formatting -----------------------------------------------------------------------------


def format_receipt(r: Receipt, lang: str = i18n.DEFAULT_LANG) -> str:
    if r.duplicate:
        return format_again(r, lang)
    head = ""
    if r.kind == "batch":
        ids = r.job_ids
        span = f"#{ids[0]}–#{ids[-1]}" if len(ids) > 1 else f"#{ids[0]}"
        first = min(j.position for j in r.jobs) if r.jobs else 0
        text = head + t(
            lang,
            "receipt.batch",
            batch_id=r.batch_id,
            tasks=tn(lang, "n.tasks", len(ids)),
            span=span,
            position=first,
            cost=r.cost,
            balance=r.balance,
        )
    else:
        j = r.jobs[0]
        text = head + t(
            lang,
            "receipt.job",
            id=j.id,
            position=j.position,
            provider=j.provider,
            model=j.model,
            width=j.width,
            height=j.height,
            count=f" ×{j.n}" if j.n > 1 else "",
            seed=j.seed,
            cost=r.cost,
            balance=r.balance,
        )
    for note in r.notes:
        text += "\n" + i18n.render(note, lang)
    return text


def format_again(r: Receipt, lang: str = i18n.DEFAULT_LANG) -> str:
    """The same message again (a platform delivered it twice): what it asked for, as it
    stands now, not as it stood when it was queued."""
    if r.kind == "batch":
        ids = r.job_ids
        span = f"#{ids[0]}–#{ids[-1]}" if len(ids) > 1 else f"#{ids[0]}"
        counts: dict[str, int] = {}
        for j in r.jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        states = t(lang, "list.sep").join(
            t(lang, "count.status", n=n, status=i18n.term("status", status))
            for status, n in counts.items()
        )
        return t(lang, "receipt.again_batch", batch_id=r.batch_id, span=span, states=states)
    j = r.jobs[0]
    text = t(lang, "receipt.again_job", id=j.id, status=i18n.term("status", j.status))
    if j.status == JobStatus.QUEUED and j.position:
        text += " · " + t(lang, "status.position", position=j.position)
    return text


def format_job_line(v: JobView, lang: str = i18n.DEFAULT_LANG) -> str:
    prompt = str(v.params.get("prompt", ""))
    if len(prompt) > 40:
        prompt = prompt[:39] + "…"
    return t(
        lang,
        "job.line",
        id=v.id,
        status=i18n.term("status", v.status),
        extra=f" {v.progress}%" if v.status == JobStatus.RUNNING else "",
        kind=i18n.term("kind", v.kind),
        prompt=repr(prompt),
        cost=v.cost,
    )


def format_job(v: JobView, lang: str = i18n.DEFAULT_LANG, *, paths: bool = False) -> str:
    """A job in detail. ``paths``: with where its pictures are stored on this machine, for
    the operator's own terminal only (a chat never learns the server's file layout)."""
    params = GenerationParams.from_dict(v.params)
    head = t(
        lang,
        "job.head",
        id=v.id,
        status=i18n.term("status", v.status),
        progress=v.progress,
        stage=i18n.term("stage", v.stage),
        kind=i18n.term("kind", v.kind),
        provider=v.provider,
        model=v.model,
    )
    lines = [head, f"  {format_flags(params)}"]
    lines.append("  " + t(lang, "job.cost", cost=v.cost, attempts=v.attempts))
    if v.error:
        failure = i18n.term("failure", v.failure) if v.failure else i18n.Message("job.note")
        lines.append("  " + t(lang, "job.error", failure=failure, error=v.error))
    if v.batch_counts:
        counts = t(lang, "list.sep").join(
            t(lang, "count.status", n=n, status=i18n.term("status", s))
            for s, n in sorted(v.batch_counts.items())
        )
        lines.append("  " + t(lang, "job.batch", batch_id=v.batch_id, counts=counts))
    for im in v.images:
        lines.append(
            "  "
            + t(
                lang,
                "job.image" if paths else "job.image_here",
                number=im["idx"] + 1,
                width=im["width"],
                height=im["height"],
                seed=im["seed"],
                **({"path": im["path"]} if paths else {}),
            )
        )
    for reason, delta in v.ledger:
        reason_text = i18n.term("reason", reason)
        lines.append("  " + t(lang, "job.ledger", reason=reason_text, delta=f"{delta:+d}"))
    if v.finished_at and v.started_at:
        lines.append("  " + t(lang, "job.took", seconds=v.finished_at - v.started_at))
    elif v.status == JobStatus.QUEUED:
        waited = time.time() - v.created_at
        lines.append("  " + t(lang, "job.waiting", seconds=waited, position=v.position))
    return "\n".join(lines)


def _where(job_id: int, payload: dict[str, Any], lang: str) -> str:
    batch = payload.get("batch_id")
    if batch is not None:
        task = int(payload.get("batch_index") or 0) + 1
        return t(lang, "outcome.where_batch", job_id=job_id, batch_id=batch, task=task)
    return t(lang, "outcome.where", job_id=job_id)


def format_outcome(
    kind: str, job_id: int, payload: dict[str, Any], lang: str = i18n.DEFAULT_LANG
) -> str:
    """What a delivered ``finished``, ``failed`` or ``cancelled`` event says (the payload
    ``finish_job`` writes), the same on every platform."""
    p = payload
    where = _where(job_id, p, lang)
    if kind == "finished":
        refund = t(lang, "outcome.refund_part", refunded=p["refunded"]) if p.get("refunded") else ""
        return t(
            lang,
            "outcome.finished",
            where=where,
            images=tn(lang, "n.images", p["images"]),
            elapsed=p["elapsed"],
            refund=refund,
            balance=p["balance"],
        )
    if kind == "cancelled":
        return t(
            lang, "outcome.cancelled", where=where, refunded=p["refunded"], balance=p["balance"]
        )
    if kind == "failed":
        if p.get("refunded"):
            refund = t(lang, "outcome.refunded", refunded=p["refunded"])
        else:
            refund = t(lang, "outcome.not_refunded")
        failure = p.get("failure")
        return t(
            lang,
            "outcome.failed",
            where=where,
            failure=i18n.term("failure", failure) if failure else str(failure),
            message=p.get("message"),
            refund=refund,
            balance=p["balance"],
        )
    raise ValueError(f"no outcome text for a {kind!r} event")


def progress_bar(percent: int, width: int = 10) -> str:
    """``▰▰▰▱▱▱▱▱▱▱ 30%``: full segments only for progress actually made."""
    filled = max(0, min(width, int(percent) * width // 100))
    return "▰" * filled + "▱" * (width - filled) + f" {percent}%"


def format_status(view: JobView, lang: str = i18n.DEFAULT_LANG) -> str:
    """A few lines on a job in progress: where it stands, a progress bar, what it makes."""
    where = _where(view.id, {"batch_id": view.batch_id, "batch_index": view.batch_index}, lang)
    params = view.params
    width, height = params.get("width"), params.get("height")
    size = f"{width}x{height}" if width and height else "?"
    n = int(params.get("n", 1) or 1)
    if n > 1:
        size += f" ×{n}"
    lines = [
        t(
            lang,
            "status.head",
            where=where,
            status=i18n.term("status", view.status),
            stage=i18n.term("stage", view.stage),
        ),
        progress_bar(view.progress),
        t(
            lang,
            "status.details",
            route=f"{view.provider}:{view.model}" if view.model else view.provider,
            size=size,
            seed=params.get("seed"),
            cost=view.cost,
        ),
    ]
    if view.status == JobStatus.QUEUED and view.position:
        lines.append(t(lang, "status.position", position=view.position))
    return "\n".join(lines)


def format_batch_status(
    batch_id: int, counts: dict[str, int], size: int, lang: str = i18n.DEFAULT_LANG
) -> str:
    """``batch #3: 4/10 done · 2 running · 4 queued · 0 failed`` (and cancelled, if any)."""
    text = t(
        lang,
        "batch.status",
        batch_id=batch_id,
        done=counts.get(JobStatus.SUCCEEDED, 0),
        size=size,
        running=counts.get(JobStatus.RUNNING, 0),
        queued=counts.get(JobStatus.QUEUED, 0),
        failed=counts.get(JobStatus.FAILED, 0) + counts.get(JobStatus.QUARANTINED, 0),
    )
    if counts.get(JobStatus.CANCELLED):
        text += t(lang, "batch.cancelled", cancelled=counts[JobStatus.CANCELLED])
    return text


def format_image_info(view: JobView, image: dict[str, Any], lang: str = i18n.DEFAULT_LANG) -> str:
    """How one picture was made: prompt, negative, its seed, size, settings, model, cost."""
    params = GenerationParams.from_dict(view.params)
    seed = image.get("seed")
    if seed is None:
        seed = params.seed
    lines = [t(lang, "info.prompt", prompt=params.prompt)]
    if params.negative:
        lines.append(t(lang, "info.negative", negative=params.negative))
    parts = [t(lang, "info.seed_size", seed=seed, width=image["width"], height=image["height"])]
    if params.steps is not None:
        parts.append(t(lang, "info.steps", steps=params.steps))
    if params.cfg is not None:
        parts.append(t(lang, "info.cfg", cfg=f"{params.cfg:g}"))
    if params.sampler:
        parts.append(t(lang, "info.sampler", sampler=params.sampler))
    if params.strength is not None and view.kind == "img2img":
        parts.append(t(lang, "info.strength", strength=f"{params.strength:g}"))
    lines.append(" · ".join(parts))
    lines.append(t(lang, "info.model", model=view.model or "—", provider=view.provider))
    lines.append(
        t(
            lang,
            "info.job",
            job_id=view.id,
            number=int(image["idx"]) + 1,
            count=params.n,
            cost=view.cost,
        )
    )
    return "\n".join(lines)


def format_settings(settings: Mapping[str, str], lang: str = i18n.DEFAULT_LANG) -> str:
    """What /settings shows: the person's defaults (or that there are none) and how to
    change them."""
    lines = [t(lang, "settings.head") if settings else t(lang, "settings.none")]
    for key in SETTING_KEYS:
        if settings.get(key):
            name = t(lang, f"settings.name.{key}")
            lines.append(t(lang, "settings.line", name=name, value=settings[key]))
    lines.append(t(lang, "settings.how"))
    return "\n".join(lines)


def _model_params(model: str, params: GenerationParams) -> GenerationParams:
    """``params`` routed to a stored default model: ``provider:model``, or a provider."""
    if ":" in model:
        return params.with_(model=model)
    return params.with_(provider=model)


def apply_defaults(
    params: GenerationParams, defaults: Mapping[str, str], *, size: bool = True
) -> tuple[GenerationParams, dict[str, str]]:
    """Fill in a person's /settings defaults for what the command did not say.

    The model applies when neither --model nor --provider was given; the aspect when
    neither --ar nor --size was (and only with ``size``: img2img follows its picture); the
    negative prompt when --no was not given. Returns the params and the defaults used.
    """
    used: dict[str, str] = {}
    model = defaults.get("model")
    if model and params.model is None and params.provider is None:
        params = _model_params(model, params)
        used["model"] = model
    aspect = defaults.get("aspect")
    sized = params.aspect is not None or params.width is not None or params.height is not None
    if size and aspect and not sized:
        params = params.with_(aspect=aspect)
        used["aspect"] = aspect
    negative = defaults.get("negative")
    if negative and not params.negative:
        params = params.with_(negative=negative)
        used["negative"] = negative
    return params, used


class _Joined(i18n.Message):
    """Messages joined with the list separator of the language they are said in."""

    parts: tuple[i18n.Message, ...]

    def __new__(cls, parts: Sequence[i18n.Message]) -> _Joined:
        obj = str.__new__(cls, t(i18n.DEFAULT_LANG, "list.sep").join(parts))
        obj.key, obj.kw, obj.parts = "list.sep", {}, tuple(parts)
        return obj

    def render(self, lang: str) -> str:
        return t(lang, "list.sep").join(p.render(lang) for p in self.parts)

    def __reduce__(self) -> Any:
        return (_Joined, (self.parts,))


def _defaults_note(used: Mapping[str, str]) -> i18n.Message:
    """``your defaults: model demo:mono, aspect 16:9`` (in the person's language)."""
    items = []
    for key in SETTING_KEYS:
        if key in used:
            value = used[key]
            if key == "negative":
                value = repr(value if len(value) <= 40 else value[:39] + "…")
            items.append(i18n.Message(f"note.default.{key}", value=value))
    return i18n.Message("note.defaults", items=_Joined(items))


def _job_id(rest: str, cmd: str) -> int:
    """The job a command names: ASCII digits within the id range. Anything else that looks
    like a number (too big, ``²``, ``٣``) names no job; anything else is a usage error."""
    job_id = parse_id(rest)
    if job_id is not None:
        return job_id
    token = rest.strip().removeprefix("#")
    if not token or not token.isnumeric():
        raise BadInput.of("error.job_number", cmd=cmd)
    shown = token if len(token) <= 24 else token[:23] + "…"
    raise NotFound.of("error.no_job_of_yours", job_id=shown)


def _upscale_args(rest: str) -> tuple[float, list[str]]:
    """/upscale's ``--scale F`` (also ``--scale=F``, ``2x``, ``x2``) and the other words.
    The range is checked by the router with the size (``bot.routing.upscale_size``); here
    only that it is a number."""
    factor = UPSCALE_FACTOR
    words: list[str] = []
    tokens = rest.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if name.lower() in ("--scale", "--upscale"):
            if not eq:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            number = value.lower().removesuffix("x").removeprefix("x").removeprefix("×")
            try:
                factor = float(number) if number.isascii() else math.nan
            except ValueError:
                factor = math.nan
            if not math.isfinite(factor):
                raise BadInput.of(
                    "error.upscale_factor",
                    low=f"{UPSCALE_MIN_FACTOR:g}",
                    high=f"{UPSCALE_MAX_FACTOR:g}",
                )
        elif token.startswith("--"):
            raise BadInput.of("error.upscale_needs_picture")
        else:
            words.append(token)
        i += 1
    return factor, words


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
    notes.append(i18n.Message("note.embedded", prompt=repr(short), seed=embedded.seed))
    changes: dict[str, Any] = {}
    if not params.prompt:
        changes["prompt"] = embedded.prompt
        if not params.negative and embedded.negative:
            changes["negative"] = embedded.negative
    return params.with_(**changes), notes
