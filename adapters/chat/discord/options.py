"""What the slash command options and the boxes' fields accept, checked before any answer.

A mistake is said only to the person who made it (an ephemeral reply), so everything that
can be checked without waiting is checked here, before the command is acknowledged: the
options and fields (with the grammar's own rules, ``bot.grammar.read_flag``), the prompt
with the flags typed into it (``parse_generation``, ``parse_batch``), and the uploads'
type and size as Discord reports them. The errors name the option or field the person
filled in (``count``, the Remix box's Strength field), not the console flag (``--n``).

The length limits: Discord takes at most 6000 characters in one command's options; the
largest prompt a provider takes is LiblibAI's 2000 (the router refuses a prompt too long
for the chosen model, e.g. DashScope's 800), so the prompt may have 2000 and the negative
prompt 1000. A box's text input holds at most 4000 characters.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import discord

from adapters.chat.discord.files import _is_picture
from bot.chat_texts import COMMAND_NAMES_ZH
from bot.errors import BadInput, UserError
from bot.grammar import EMPTY_PROMPT, parse_batch, parse_command, parse_generation, read_flag
from bot.i18n import Message
from bot.params import MAX_IMAGES_PER_JOB, GenerationParams
from bot.routing import Router
from bot.text import shown_char, unusable_char

PROMPT_MAX = 2000
NEGATIVE_MAX = 1000
BATCH_MAX = 4000  # Discord's most for one text input
STRENGTH_MAX = 5  # "0.625"
SETTING_NEGATIVE_MAX = 500  # bot.jobs.MAX_DEFAULT_NEGATIVE
NAME_MAX = 200  # a sampler, scheduler or VAE name
LORAS_MAX = 1000  # the lora option: several NAME:WEIGHT

# option name -> (grammar flag, GenerationParams field)
_OPTIONS: dict[str, tuple[str, str]] = {
    "negative": ("no", "negative"),
    "aspect": ("ar", "aspect"),
    "seed": ("seed", "seed"),
    "steps": ("steps", "steps"),
    "cfg": ("cfg", "cfg"),
    "count": ("n", "n"),
    "model": ("model", "model"),
    "provider": ("provider", "provider"),
    "strength": ("strength", "strength"),
    "sampler": ("sampler", "sampler"),
    "scheduler": ("scheduler", "scheduler"),
    "vae": ("vae", "vae"),
}
# The lora option holds one LoRA or several, comma-separated ("film_grain:0.8, detail");
# a comma between two digits is a decimal comma (a weight typed 0,8), not a separator.
_LORA_SEPARATOR = re.compile(r"(?<![0-9]),|,(?![0-9])")
# options whose mistakes have a text of their own (the rest: "dc.opt.bad")
_OWN_TEXT = frozenset({"aspect", "seed", "steps", "cfg", "count", "strength"})


class _OptionName(Message):
    """An option's name as the person's client shows it: Chinese clients show the Chinese
    name (``bot.chat_texts.COMMAND_NAMES_ZH``), so both are said there."""

    name: str

    def __new__(cls, name: str) -> _OptionName:
        obj = str.__new__(cls, name)
        obj.key, obj.kw, obj.name = "", {}, name
        return obj

    def render(self, lang: str) -> str:
        shown = COMMAND_NAMES_ZH.get(self.name, self.name)
        return f"{shown}（{self.name}）" if lang == "zh" and shown != self.name else self.name

    def __reduce__(self) -> Any:
        return (_OptionName, (self.name,))


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 30 else text[:29] + "…"


def split_loras(value: str) -> list[str]:
    """The lora option's items as typed (blank ones dropped)."""
    return [part.strip() for part in _LORA_SEPARATOR.split(value) if part.strip()]


def _read_loras(value: str) -> tuple[tuple[str, float], ...]:
    loras: list[tuple[str, float]] = []
    for item in split_loras(value):
        try:
            lora: tuple[str, float] = read_flag("lora", item)
        except BadInput as err:
            raise BadInput.of("dc.opt.bad", option=_OptionName("lora"), error=err.message) from None
        if any(lora[0] == name for name, _ in loras):
            raise BadInput.of("dc.opt.lora_twice", name=_shown(lora[0]))
        loras.append(lora)
    return tuple(loras)


def read_options(values: dict[str, Any]) -> GenerationParams:
    """The options given (``None``: not given) as parameters; a bad one is refused by name.

    ``lora`` is a list (``split_loras``); ``hires`` a yes/no (no: not asked for)."""
    fields: dict[str, Any] = {}
    for option, value in values.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if option == "lora":
            fields["loras"] = _read_loras(str(value))
            continue
        if option == "hires":
            fields["hires"] = bool(value)
            continue
        flag, field = _OPTIONS[option]
        text = format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)
        try:
            fields[field] = read_flag(flag, text)
        except BadInput as err:
            if option in _OWN_TEXT:
                raise BadInput.of(
                    f"dc.opt.{option}", value=_shown(value), max=MAX_IMAGES_PER_JOB
                ) from None
            raise BadInput.of("dc.opt.bad", option=_OptionName(option), error=err.message) from None
    return GenerationParams(**fields)


def check_text(text: str, *, empty: UserError) -> None:
    """The command text as the core will read it: its flags, and a prompt that is there."""
    bad = unusable_char(text)
    if bad is not None:
        raise BadInput.of("error.unusable_text", char=shown_char(bad))
    cmd = parse_command(text)
    try:
        if cmd.name == "batch":
            if not cmd.rest.strip():
                raise empty
            parse_batch(cmd.rest)
        elif cmd.name == "img2img":
            # the picture may bring its own prompt (a pasted block): only a blank one is empty
            if not cmd.rest.strip():
                raise empty
            parse_generation(cmd.rest, allow_empty_prompt=True)
        else:
            parse_generation(cmd.rest)
    except BadInput as err:
        if err.message == EMPTY_PROMPT:
            raise empty from None
        raise


def check_model(router: Router, text: str) -> None:
    """A model named in the options or the prompt must exist and fit the request: the
    router's own check, before anything is shown (for text-to-image; the rest of routing
    depends on the person's /settings and is the core's)."""
    cmd = parse_command(text)
    batch = cmd.name == "batch"
    tasks = parse_batch(cmd.rest) if batch else [parse_generation(cmd.rest)]
    for params in tasks:
        if params.model:
            router.resolve(params, "batch" if batch else "txt2img")


def check_uploads(uploads: dict[str, discord.Attachment | None], max_bytes: int) -> None:
    """Pictures, not too big, as Discord describes them (nothing is downloaded here)."""
    for option, attachment in uploads.items():
        if attachment is None:
            continue
        if not _is_picture(attachment):
            kind = attachment.content_type or attachment.filename.rpartition(".")[2] or "?"
            raise BadInput.of("dc.opt.not_picture", option=_OptionName(option), kind=_shown(kind))
        if attachment.size > max_bytes:
            raise BadInput.of(
                "dc.opt.too_big",
                option=_OptionName(option),
                mb=attachment.size / 1024 / 1024,
                limit=max_bytes / 1024 / 1024,
            )


def read_strength_field(value: str, field: str) -> float | None:
    """The Remix box's Strength field: blank is the default, else a number 0..1."""
    if not value.strip():
        return None
    try:
        strength: float = read_flag("strength", value)
    except BadInput:
        raise BadInput.of("dc.remix.strength_bad", field=field, value=_shown(value)) from None
    return strength
