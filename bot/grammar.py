r"""The one command grammar the console, Telegram and Discord share.

People type commands on phones (which turn ``--`` into ``—`` and straight quotes into curly
ones), paste Civitai blocks, and copy commands we showed them back at us. Every adapter must
read all of that identically, and the only thing parsing may ever raise is a ``BadInput``
whose one line says how to fix the text.

How text is split:

* Words are separated by whitespace. A word that *starts* with a quote (``"`` ``'`` ``“``
  ``‘`` ``„`` ``«`` ``”``) opens a quoted group that ends at the first matching closing quote
  followed by whitespace or the end of the text. Quotes elsewhere (``cat's``) are ordinary
  characters, and a quote that never closes is kept literally, so quoting can never fail.
* A word starting with ``--`` and a letter is a flag (``--seed 3`` or ``--seed=3``); unknown
  ones are an error. ``—`` and ``–`` work like ``--`` only for flag names we know (or nearly
  know, to point out typos), so prose dashes such as ``—sleeping`` stay in the prompt.
* Quoted groups in the prompt keep their quotes (``a sign saying "OPEN"`` is meaningful to
  the model) and protect what they contain; a quoted flag value loses its quotes.
* Escaping: a backslash in front of a word that would otherwise be a flag or open a quote
  keeps that word literally and is itself dropped (``\--ar`` puts ``--ar`` in the prompt;
  ``\\--ar`` puts ``\--ar``). Backslashes anywhere else, such as A1111's ``\(``, are left
  alone. ``format_flags`` applies exactly these escapes, which is why its output always
  parses back to the same parameters (for prompts on a single line with single spaces,
  i.e. what ``parse_generation`` itself produces outside pasted A1111 blocks).

Flags and their values:

* Every flag takes one value (the next word or group, or ``=value``) and may be given once;
  a flag given twice is an error. Two exceptions: ``--no`` takes every word up to the next
  flag and may repeat (the negatives are joined), and ``--lora`` may repeat (one LoRA each).
* ``--lora NAME[:WEIGHT]``: the text after the *last* colon is the weight, a number -4..4
  (default 1). A name that itself has a colon needs the weight written out
  (``--lora "style:v2:1"``); ``--lora style:v2`` is an error rather than a guess, because
  ``v2`` is not a number. Names with spaces are quoted (``--lora "film grain:0.7"``). The
  same name twice, or a name also typed in the prompt as ``<lora:NAME:W>``, is an error
  (A1111 would apply it twice); LoRA tags typed in the prompt stay in the prompt, where
  A1111 reads them, and ``prompt_loras`` lists them.
* ``--hires`` takes no value: alone it turns the hires fix on, and only the ``=`` form
  gives it one (``--hires=on|off|true|false|yes|no|1|0``; ``=off`` turns off what a pasted
  block turned on). ``--hires sharp`` is the flag followed by the prompt word ``sharp``.
"""

from __future__ import annotations

import bisect
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bot.errors import BadInput
from bot.infotext import (
    HIRES_KEYS,
    NEGATIVE_PREFIX,
    format_number,
    parse_infotext_full,
    prompt_loras,
)
from bot.params import MAX_BATCH_TASKS, MAX_IMAGES_PER_JOB, GenerationParams

FLAGS: tuple[str, ...] = (
    "ar",
    "size",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "no",
    "n",
    "model",
    "provider",
    "strength",
    "vae",
    "scheduler",
    "hires",
    "workflow",
)
# Flags that may be given more than once, one value each time (``FLAGS`` are given once,
# except ``--no``, whose repeats are joined).
REPEATABLE_FLAGS: tuple[str, ...] = ("lora",)
ALIASES: dict[str, str] = {"aspect": "ar", "count": "n"}
_NAMES: dict[str, str] = {**{f: f for f in FLAGS + REPEATABLE_FLAGS}, **ALIASES}
_FLAG_LIST = " ".join(f"--{f}" for f in FLAGS + REPEATABLE_FLAGS)

MAX_SEED = 4_294_967_295
EMPTY_PROMPT = "the prompt is empty: type what you want to see, e.g. /imagine a lighthouse at dusk"

HELP_FLAGS = "\n".join(
    [
        "Flags go anywhere after the prompt, as --flag value or --flag=value (— works for --):",
        "  --ar W:H         aspect ratio from 1:4 to 4:1, e.g. --ar 16:9",
        "  --size WxH       exact size, 64..2048 a side, instead of --ar, e.g. --size 1024x768",
        "  --seed N         0..4294967295, or -1 for random",
        "  --steps N        1..150",
        "  --cfg X          0..30",
        '  --sampler NAME   quote names with spaces: --sampler "DPM++ 2M Karras"',
        "  --no TEXT        what to leave out, up to the next flag: --no blurry, text",
        f"  --n K            1..{MAX_IMAGES_PER_JOB} pictures (also --count)",
        "  --model NAME     see /models",
        "  --provider NAME  see /models",
        "  --strength X     0..1, how much img2img may change the picture",
        "  --lora NAME[:W]  a LoRA at weight W, -4..4 (default 1); repeat for more;",
        "                   <lora:NAME:W> in the prompt works too (your own GPUs)",
        "  --vae NAME       the VAE, e.g. --vae sdxl_vae.safetensors (your own GPUs)",
        "  --scheduler NAME noise schedule, e.g. --scheduler karras (your own GPUs)",
        "  --hires          hires fix: a second pass that enlarges and sharpens; takes",
        "                   no value (--hires=off turns off a pasted block's)",
        "  --workflow NAME  a ComfyUI workflow, see /models (your own GPUs)",
        "Quote a value with spaces (\"...\" or '...').",
        "Put \\ before a prompt word that starts with -- to keep it in the prompt.",
    ]
)

# The same in Simplified Chinese (flag names and values stay as they are typed).
HELP_FLAGS_ZH = "\n".join(
    [
        "参数可以写在提示词后面的任意位置，格式是 --参数 值 或 --参数=值（— 也能当 -- 用）：",
        "  --ar W:H         宽高比，1:4 到 4:1，例如 --ar 16:9",
        "  --size WxH       精确尺寸，每边 64..2048，代替 --ar，例如 --size 1024x768",
        "  --seed N         种子，0..4294967295，-1 表示随机",
        "  --steps N        步数，1..150",
        "  --cfg X          CFG，0..30",
        '  --sampler NAME   采样器，名字里有空格要加引号：--sampler "DPM++ 2M Karras"',
        "  --no TEXT        反向提示词（不想要的内容），直到下一个参数为止：--no blurry, text",
        f"  --n K            生成 1..{MAX_IMAGES_PER_JOB} 张图（也可以写 --count）",
        "  --model NAME     模型，见 /models",
        "  --provider NAME  服务商，见 /models",
        "  --strength X     0..1，图生图时允许改动原图的程度",
        "  --lora NAME[:W]  LoRA，权重 W 为 -4..4（默认 1）；可重复写多个；",
        "                   提示词里写 <lora:NAME:W> 也可以（自有 GPU）",
        "  --vae NAME       VAE，例如 --vae sdxl_vae.safetensors（自有 GPU）",
        "  --scheduler NAME 噪声调度，例如 --scheduler karras（自有 GPU）",
        "  --hires          高清修复：再放大并细化一遍；不带值",
        "                   （--hires=off 可关闭粘贴参数里开启的高清修复）",
        "  --workflow NAME  ComfyUI 工作流，见 /models（自有 GPU）",
        "带空格的值要加引号（\"...\" 或 '...'）。",
        "提示词里以 -- 开头的词，前面加上 \\ 就会留在提示词里。",
    ]
)


def help_flags(lang: str = "en") -> str:
    """The flag help in ``lang`` ("en" or "zh"); English for anything else."""
    return HELP_FLAGS_ZH if lang == "zh" else HELP_FLAGS


OPENERS: dict[str, str] = {
    '"': '"',
    "'": "'",
    "“": "”",
    "‘": "’",
    "„": "“",
    "«": "»",
    "”": "”",
}
_CLOSERS = frozenset(OPENERS.values())

_FLAG_RE = re.compile(r"(--|—|–)([^\W\d_][\w-]*)(?:=(.*))?", re.S)
_EQ_HEAD_RE = re.compile(r"(?:--|—|–)[^\W\d_][\w-]*=")
_DASH_FLAG_START = re.compile(r"--[^\W\d_]")
_STEPS_LINE = re.compile(r"\s*Steps:\s*[0-9]+(?:[\s,]|$)")
_PIPE = re.compile(r"(?<!\S)\|(?!\S)")
_URL = re.compile(r"https?://\S", re.I)
_WIN_PATH = re.compile(r"[A-Za-z]:[\\/]")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_PATH_PREFIXES = ("/", "./", "~/", "../", ".\\", "..\\")


@dataclass(frozen=True)
class Command:
    name: str
    rest: str
    mention: str | None


_COMMAND_RE = re.compile(r"/([^\s@]*)(?:@(\S*))?")


def parse_command(text: str) -> Command:
    """Split ``/name@Bot rest``; the rest keeps its newlines for batches and pasted blocks."""
    s = text.lstrip()
    m = _COMMAND_RE.match(s)
    if m is None:
        return Command("", text.strip(), None)
    return Command(m.group(1).lower(), s[m.end() :].strip(), m.group(2) or None)


# --- words ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tok:
    raw: str  # exactly as typed
    quoted: str | None = None  # the text inside the quotes, when the word opened a closed group
    head: str = ""  # "--flag=" when the quotes belong to a flag's =value


def _flag_of(word: str) -> tuple[str, str | None] | None:
    """``(name, =value or None)`` when the word is a flag, else ``None``.

    A ``--`` word is always meant as a flag, so a malformed one is an error rather than
    silently becoming prompt text; a dash word is only a flag when it (nearly) names one.
    """
    if word.startswith("--"):
        if not _DASH_FLAG_START.match(word):
            return None
        m = _FLAG_RE.fullmatch(word)
        if m is None:
            shown = word if len(word) <= 30 else word[:29] + "…"
            raise BadInput(
                f"cannot read {shown!r}: put a space or = between a flag and its value, "
                "e.g. --seed 42"
            )
        return m.group(2).lower(), m.group(3)
    if word[:1] in ("—", "–"):
        m = _FLAG_RE.fullmatch(word)
        if m is None:
            return None
        name = m.group(2).lower()
        if name in _NAMES or difflib.get_close_matches(name, list(_NAMES), n=1, cutoff=0.8):
            return name, m.group(3)
    return None


def _special(word: str) -> bool:
    """Would this word, typed bare, be anything but a literal word (a flag or a quote)?"""
    if not word:
        return False
    if word[0] in OPENERS:
        return True
    try:
        return _flag_of(word) is not None
    except BadInput:
        return True


def _decode(raw: str) -> str:
    if raw.startswith("\\") and _special(raw.lstrip("\\")):
        return raw[1:]
    return raw


def _escape(word: str) -> str:
    return "\\" + word if _special(word.lstrip("\\")) else word


class _Scanner:
    """Cuts text into words and quoted groups, in linear-ish time for hostile input."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Per closing character: the positions where it is followed by whitespace or the end.
        self._closing: dict[str, list[int]] = {}
        last = len(text) - 1
        for k, c in enumerate(text):
            if c in _CLOSERS and (k == last or text[k + 1].isspace()):
                self._closing.setdefault(c, []).append(k)

    def skip_space(self, i: int) -> int:
        n = len(self.text)
        while i < n and self.text[i].isspace():
            i += 1
        return i

    def word_end(self, i: int) -> int:
        n = len(self.text)
        while i < n and not self.text[i].isspace():
            i += 1
        return i

    def group_end(self, q: int) -> int | None:
        """Index of the quote closing the one at ``q``, or ``None`` when it never closes."""
        closer = OPENERS.get(self.text[q]) if q < len(self.text) else None
        if closer is None:
            return None
        spots = self._closing.get(closer, [])
        k = bisect.bisect_right(spots, q)
        return spots[k] if k < len(spots) else None

    def token_at(self, i: int) -> tuple[_Tok, int]:
        text = self.text
        q, head = i, ""
        m = _EQ_HEAD_RE.match(text, i)
        if m is not None and _special(text[i : m.end() - 1]):
            q, head = m.end(), text[i : m.end()]
        j = self.group_end(q)
        if j is not None:
            return _Tok(text[i : j + 1], text[q + 1 : j], head), j + 1
        end = self.word_end(i)
        return _Tok(text[i:end]), end


def _tokens(text: str) -> list[_Tok]:
    sc = _Scanner(text)
    out: list[_Tok] = []
    i = sc.skip_space(0)
    while i < len(text):
        tok, i = sc.token_at(i)
        out.append(tok)
        i = sc.skip_space(i)
    return out


def _tok_flag(tok: _Tok) -> tuple[str, str | None] | None:
    if tok.head:
        found = _flag_of(tok.head[:-1])
        return None if found is None else (found[0], tok.quoted)
    if tok.quoted is not None:
        return None
    return _flag_of(tok.raw)


def _tok_text(tok: _Tok) -> str:
    """A word's contribution to prompt text: quoted groups as typed, escapes removed."""
    return tok.raw if tok.quoted is not None else _decode(tok.raw)


# --- values -----------------------------------------------------------------------------------


def _shown(value: str) -> str:
    return value if len(value) <= 30 else value[:29] + "…"


def _bad(message: str, value: str) -> BadInput:
    return BadInput(f"{message} (got {_shown(value)!r})" if value else message)


_AR_RE = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")
_SIZE_RE = re.compile(r"([0-9]{1,6})\s*[xX*×]\s*([0-9]{1,6})")
_UINT_RE = re.compile(r"[0-9]{1,12}")
_NUM_RE = re.compile(r"[0-9]{1,12}(?:[.,][0-9]*)?|[.,][0-9]+")


def _ar(value: str) -> str:
    msg = "--ar needs W:H between 1:4 and 4:1, for example --ar 16:9"
    m = _AR_RE.fullmatch(value)
    if m is None:
        raise _bad(msg, value)
    w, h = int(m.group(1)), int(m.group(2))
    if w < 1 or h < 1 or w > 4 * h or h > 4 * w:
        raise _bad(msg, value)
    return f"{w}:{h}"


def _size(value: str) -> tuple[int, int]:
    m = _SIZE_RE.fullmatch(value)
    if m is None or not all(64 <= int(g) <= 2048 for g in m.groups()):
        raise _bad("--size needs WxH with each side 64..2048, for example --size 1024x768", value)
    return int(m.group(1)), int(m.group(2))


def _seed(value: str) -> int | None:
    if value == "-1":
        return None
    if not _UINT_RE.fullmatch(value) or int(value) > MAX_SEED:
        raise _bad(
            f"--seed needs a whole number 0..{MAX_SEED} (or -1 for random), e.g. --seed 42", value
        )
    return int(value)


def _steps(value: str) -> int:
    if not _UINT_RE.fullmatch(value) or not 1 <= int(value) <= 150:
        raise _bad("--steps needs a whole number 1..150, for example --steps 30", value)
    return int(value)


def _number(value: str, lo: float, hi: float, message: str) -> float:
    """Decimal numbers as people type them, including the comma phones in many locales use."""
    if not _NUM_RE.fullmatch(value):
        raise _bad(message, value)
    x = float(value.replace(",", "."))
    if not (math.isfinite(x) and lo <= x <= hi):
        raise _bad(message, value)
    return x


def _cfg(value: str) -> float:
    return _number(value, 0, 30, "--cfg needs a number 0..30, for example --cfg 7.5")


def _strength(value: str) -> float:
    return _number(value, 0, 1, "--strength needs a number 0..1, for example --strength 0.6")


LORA_WEIGHT_MAX = 4.0
_WEIGHT_RE = re.compile(r"[-+]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)")
_LORA_MSG = (
    "--lora needs NAME or NAME:WEIGHT, for example --lora film_grain:0.8 "
    "(a name with a colon needs its weight: NAME:1)"
)
_LORA_WEIGHT_MSG = "--lora needs a weight -4..4 after the colon, for example --lora film_grain:0.8"


def _lora(value: str) -> tuple[str, float]:
    """``NAME[:WEIGHT]``: the text after the last colon is the weight (see the docstring)."""
    name, colon, tail = value.rpartition(":")
    if not colon:
        name, weight = value.strip(), 1.0
    else:
        name, tail = name.strip(), tail.strip()
        if not _WEIGHT_RE.fullmatch(tail):
            raise _bad(_LORA_MSG, value)
        weight = float(tail.replace(",", "."))
        if not (math.isfinite(weight) and -LORA_WEIGHT_MAX <= weight <= LORA_WEIGHT_MAX):
            raise _bad(_LORA_WEIGHT_MSG, value)
    if not name:
        raise _bad(_LORA_MSG, value)
    return name, weight + 0.0  # -0.0 -> 0.0


_ON = frozenset({"on", "true", "yes", "1"})
_OFF = frozenset({"off", "false", "no", "0"})


def _hires(value: str) -> bool:
    """``--hires`` alone is on; only ``--hires=VALUE`` gives it a value."""
    word = value.strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise _bad("--hires takes no value (--hires), or --hires=on / --hires=off", value)


def _name(flag: str, example: str) -> Callable[[str], str]:
    def read(value: str) -> str:
        if not value:
            raise BadInput(f"--{flag} needs a name, for example --{flag} {example}")
        return value

    return read


def _n_reader(max_n: int | None) -> Callable[[str], int]:
    def read(value: str) -> int:
        count = int(value) if _UINT_RE.fullmatch(value) else 0
        if count >= 1 and (max_n is None or count <= max_n):
            return count
        if max_n == 1:
            raise BadInput(
                "--n can only be 1 when a batch has several prompts; "
                "for variations of one prompt use /batch PROMPT --n K"
            )
        if max_n is None:
            raise _bad("--n needs a whole number 1 or more, for example --n 4", value)
        raise _bad(f"--n needs a number 1..{max_n}, for example --n 2", value)

    return read


# field name in GenerationParams (or "size" for width+height) -> reader
_READERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ar": ("aspect", _ar),
    "size": ("size", _size),
    "seed": ("seed", _seed),
    "steps": ("steps", _steps),
    "cfg": ("cfg", _cfg),
    "sampler": ("sampler", _name("sampler", '"DPM++ 2M Karras"')),
    "model": ("model", _name("model", "sdxl (see /models)")),
    "provider": ("provider", _name("provider", "local (see /models)")),
    "strength": ("strength", _strength),
    "lora": ("loras", _lora),
    "vae": ("vae", _name("vae", "sdxl_vae.safetensors")),
    "scheduler": ("scheduler", _name("scheduler", "karras")),
    "workflow": ("workflow", _name("workflow", "txt2img (see /models)")),
    "hires": ("hires", _hires),
}

# A1111 key -> our flag, for checking values in a pasted block with the same rules.
# Besides these (``_block_values``): any hires key (``HIRES_KEYS``: "Hires upscale: 2",
# "Hires upscaler: Latent", ...) turns ``--hires`` on; "Model hash" stands for the model
# when the block names no "Model" (self-hosted providers find checkpoints by hash); and
# "Lora hashes" is not read, because a block's LoRAs are the <lora:NAME:W> tags in its
# prompt, which stay there.
_BLOCK_KEYS: dict[str, str] = {
    "Steps": "steps",
    "Sampler": "sampler",
    "Schedule type": "scheduler",
    "CFG scale": "cfg",
    "Seed": "seed",
    "Size": "size",
    "Model": "model",
    "VAE": "vae",
    "Denoising strength": "strength",
}


# --- generation -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Parsed:
    words: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # present = typed explicitly
    negatives: list[str] = field(default_factory=list)
    loras: list[tuple[str, float]] = field(default_factory=list)


def _unknown(name: str) -> BadInput:
    guess = difflib.get_close_matches(name, list(_NAMES), n=1, cutoff=0.6)
    hint = f" — did you mean --{guess[0]}?" if guess else "."
    return BadInput(f"unknown flag --{_shown(name)}{hint} Flags: {_FLAG_LIST}")


def _parse_words(text: str, *, max_n: int | None) -> _Parsed:
    toks = _tokens(text)
    out = _Parsed()
    seen: set[str] = set()
    n_reader = _n_reader(max_n)
    i = 0
    while i < len(toks):
        tok = toks[i]
        i += 1
        found = _tok_flag(tok)
        if found is None:
            out.words.append(_tok_text(tok))
            continue
        typed, eq_value = found
        flag = _NAMES.get(typed)
        if flag is None:
            raise _unknown(typed)
        if flag == "no":
            # (text to join, inner text when the piece is a quoted group)
            pieces: list[tuple[str, str | None]] = []
            if tok.head:
                pieces.append((tok.raw[len(tok.head) :], tok.quoted))
            elif eq_value:
                pieces.append((eq_value, None))
            while i < len(toks) and _tok_flag(toks[i]) is None:
                pieces.append((_tok_text(toks[i]), toks[i].quoted))
                i += 1
            if len(pieces) == 1 and pieces[0][1] is not None:
                negative = pieces[0][1].strip()
            else:
                negative = " ".join(p[0] for p in pieces).strip()
            if not negative:
                raise BadInput("--no needs what to leave out, for example --no blurry, text")
            out.negatives.append(negative)
            continue
        if flag == "hires" and eq_value is None:
            # value-less: the next word, whatever it is, stays where it was
            if flag in seen:
                raise BadInput("--hires is given twice; keep one")
            seen.add(flag)
            out.values["hires"] = True
            continue
        if flag in seen and flag not in REPEATABLE_FLAGS:
            other = [a for a, f in ALIASES.items() if f == flag]
            also = f" (--{other[0]} is the same flag)" if other else ""
            raise BadInput(f"--{flag} is given twice{also}; keep one")
        seen.add(flag)
        if eq_value is None and i < len(toks) and _tok_flag(toks[i]) is None:
            nxt = toks[i]
            i += 1
            eq_value = nxt.quoted if nxt.quoted is not None else _decode(nxt.raw)
        value = (eq_value or "").strip()
        if flag == "n":
            out.values["n"] = n_reader(value)
        elif flag == "lora":
            out.loras.append(_lora(value))
        else:
            key, reader = _READERS[flag]
            out.values[key] = reader(value)
    if "aspect" in out.values and "size" in out.values:
        raise BadInput("use either --ar or --size, not both")
    return out


def _split_block(text: str) -> tuple[str, str] | None:
    """Cut a pasted A1111/Civitai block from the flags typed after it.

    A block needs at least two lines: a ``Negative prompt:`` line or a later ``Steps: N``
    line. Flags count only from that marker line on, because A1111 prompts themselves are
    taken verbatim.
    """
    if "\n" not in text:
        return None
    lines = text.split("\n")
    starts: list[int] = []
    pos = 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    marker = None
    for idx in range(len(lines) - 1, 0, -1):
        if _STEPS_LINE.match(lines[idx]):
            marker = starts[idx]
            break
    if marker is None:
        for idx, line in enumerate(lines):
            if line.lstrip().startswith(NEGATIVE_PREFIX):
                marker = starts[idx]
                break
    if marker is None:
        return None
    for m in re.finditer(r"\S+", text[marker:]):
        if _special(m.group()) and m.group()[0] not in OPENERS:
            cut = marker + m.start()
            return text[:cut], text[cut:]
    return text, ""


def read_flag(flag: str, value: str, *, max_n: int = MAX_IMAGES_PER_JOB) -> Any:
    """One flag's value read with that flag's own rules, for forms whose fields stand for
    flags (a chat command's option, a field of a form): ``read_flag("n", "2") == 2``.

    Returns the value as ``GenerationParams`` holds it (``ar``: the aspect, ``size``: (w, h),
    ``seed``: ``None`` for -1, ``no``: the negative), except ``lora``: one ``(name, weight)``
    (a form with several LoRAs reads each); ``hires`` with no value is on. Raises the
    flag's ``BadInput``.
    """
    name = _NAMES.get(flag.lower())
    if name is None:
        raise _unknown(flag)
    value = value.strip()
    if name == "n":
        return _n_reader(max_n)(value)
    if name == "no":
        if not value:
            raise BadInput("--no needs what to leave out, for example --no blurry, text")
        return value
    if name == "hires" and not value:
        return True  # the flag typed alone
    return _READERS[name][1](value)


def _block_values(kv: dict[str, str], explicit: dict[str, Any]) -> dict[str, Any]:
    """The block's values, checked with the flags' own rules, except those typed explicitly."""
    out: dict[str, Any] = {}
    sized = "aspect" in explicit or "size" in explicit
    for a1111_key, flag in _BLOCK_KEYS.items():
        raw = kv.get(a1111_key, "").strip()
        key, reader = _READERS[flag]
        if not raw or key in explicit or (key == "size" and sized):
            continue
        try:
            out[key] = reader(raw)
        except BadInput as err:
            raise BadInput(
                f"the pasted parameters have {a1111_key}: {_shown(raw)}, but {err.message}; "
                f"type --{flag} after the block to override it"
            ) from None
    if "hires" not in explicit and any(kv.get(k, "").strip() for k in HIRES_KEYS):
        out["hires"] = True
    model_hash = kv.get("Model hash", "").strip()
    if model_hash and "model" not in explicit and "model" not in out:
        out["model"] = model_hash
    return out


def _check_loras(loras: list[tuple[str, float]], prompt: str) -> None:
    """Each LoRA once: A1111 would apply a name given twice twice."""
    in_prompt = {name for name, _ in prompt_loras(prompt)}
    seen: set[str] = set()
    for name, _ in loras:
        if name in seen:
            raise BadInput(f"--lora {_shown(name)} is given twice; keep one")
        if name in in_prompt:
            raise BadInput(
                f"the LoRA {_shown(name)} is both in the prompt (<lora:{_shown(name)}:…>) "
                "and in --lora; keep one"
            )
        seen.add(name)


def _parse(text: str, *, max_n: int | None, allow_empty_prompt: bool) -> GenerationParams:
    text = text.replace("\r\n", "\n")
    prompt = negative = ""
    values: dict[str, Any] = {}
    block = _split_block(text)
    parsed_block = parse_infotext_full(block[0]) if block is not None else None
    if block is not None and parsed_block is not None:
        parsed = _parse_words(block[1], max_n=max_n)
        embedded, kv = parsed_block
        prompt, negative = embedded.prompt, embedded.negative
        values.update(_block_values(kv, parsed.values))
        if parsed.words:
            prompt = (prompt + " " + " ".join(parsed.words)).strip()
    else:
        parsed = _parse_words(text, max_n=max_n)
        prompt = " ".join(parsed.words)
    values.update(parsed.values)
    if parsed.loras:
        _check_loras(parsed.loras, prompt)
        values["loras"] = tuple(parsed.loras)
    if parsed.negatives:
        negative = ", ".join(parsed.negatives)
    if not prompt and not allow_empty_prompt:
        raise BadInput(EMPTY_PROMPT)
    size = values.pop("size", None)
    if size is not None:
        values["width"], values["height"] = size
    return GenerationParams(prompt=prompt, negative=negative, **values)


def parse_generation(
    text: str, *, max_n: int = MAX_IMAGES_PER_JOB, allow_empty_prompt: bool = False
) -> GenerationParams:
    """Read a prompt with flags, or a pasted A1111 block with flags typed after it.

    ``allow_empty_prompt`` is for img2img, where the picture may bring its own prompt.
    """
    return _parse(text, max_n=max_n, allow_empty_prompt=allow_empty_prompt)


def _batch_example(max_tasks: int) -> str:
    return (
        "a batch needs prompts: one per line, separated by |, or one PROMPT --n K, "
        f"up to {max_tasks} — e.g. /batch a red fox | a blue whale"
    )


def parse_batch(text: str, *, max_tasks: int = MAX_BATCH_TASKS) -> list[GenerationParams]:
    """Several tasks in one message, each making one picture so they queue independently.

    Lines and `` | `` both separate prompts (a ``|`` with text glued to it, as in A1111's
    ``[cat|dog]``, does not). A pasted A1111 block is one prompt, however many lines it has.
    A single prompt with ``--n K`` becomes K tasks; consecutive seeds keep them reproducible
    and distinct (wrapping past the largest seed).
    """
    text = text.replace("\r\n", "\n")
    if _split_block(text) is not None:
        segments = [text.strip()] if text.strip() else []
    else:
        segments = [
            part.strip() for line in text.split("\n") for part in _PIPE.split(line) if part.strip()
        ]
    if not segments:
        raise BadInput(_batch_example(max_tasks))
    if len(segments) > max_tasks:
        raise BadInput(f"a batch holds at most {max_tasks} tasks; you gave {len(segments)}")
    if len(segments) == 1:
        params = _parse(segments[0], max_n=None, allow_empty_prompt=False)
        if params.n > max_tasks:
            raise BadInput(f"a batch holds at most {max_tasks} tasks; you gave {params.n}")
        return [
            params.with_(
                n=1, seed=None if params.seed is None else (params.seed + i) % (MAX_SEED + 1)
            )
            for i in range(params.n)
        ]
    tasks: list[GenerationParams] = []
    for number, segment in enumerate(segments, start=1):
        try:
            tasks.append(_parse(segment, max_n=1, allow_empty_prompt=False))
        except BadInput as err:
            raise BadInput(f"task {number}: {err.message}") from None
    return tasks


def split_source(text: str) -> tuple[str | None, str]:
    """Take the picture (URL or path) off the front of ``/img2img SOURCE PROMPT``.

    Only things that clearly are a URL or a path count, so a prompt that merely starts with
    a word is never mistaken for a file. A quoted first word allows paths with spaces.
    """
    sc = _Scanner(text)
    i = sc.skip_space(0)
    if i >= len(text):
        return None, text
    tok, end = sc.token_at(i)
    candidate = tok.quoted if tok.quoted is not None and not tok.head else tok.raw
    lower = candidate.lower()
    if (
        _URL.match(candidate)
        or candidate.startswith(_PATH_PREFIXES)
        or _WIN_PATH.match(candidate)
        or lower.endswith(_IMAGE_EXTS)
    ):
        return candidate, text[end:].strip()
    return None, text


# --- writing ----------------------------------------------------------------------------------


def _encode_text(text: str, *, whole_group_is_value: bool = False) -> str:
    """Escape free text (a prompt or a negative) so the grammar reads it back unchanged.

    Quoted groups that close inside the text stay as typed; every other word that would be
    read as a flag or as an opening quote gets a backslash. For ``--no`` a value that is one
    quoted group would lose its quotes, so its first word is escaped instead.
    """
    sc = _Scanner(text)
    out: list[str] = []
    i = sc.skip_space(0)
    out.append(text[:i])
    first = True
    while i < len(text):
        tok, end = sc.token_at(i)
        closed_group = tok.quoted is not None and not tok.head
        if closed_group and whole_group_is_value and first and sc.skip_space(end) >= len(text):
            closed_group = False
        if closed_group:
            out.append(tok.raw)
        else:
            end = sc.word_end(i)
            out.append(_escape(text[i:end]))
        first = False
        i = sc.skip_space(end)
        out.append(text[end:i])
    return "".join(out)


def _encode_value(value: str) -> str:
    """A flag value as one word: bare when that reads back as itself, otherwise quoted."""
    if (
        value
        and not any(c.isspace() for c in value)
        and not _special(value)
        and _decode(value) == value
    ):
        return value
    for opener, closer in OPENERS.items():
        # The group would end early at a closing quote followed by whitespace.
        ends_early = any(
            value[k] == closer and value[k + 1].isspace() for k in range(len(value) - 1)
        )
        if value and not ends_early:
            return f"{opener}{value}{closer}"
    return f'"{value}"'  # cannot be written so it reads back; best effort for display


def format_flags(params: GenerationParams) -> str:
    """The command text that asks for ``params`` again (shown by /job, easy to copy and edit).

    Only fields that differ from the defaults are written. When both a size and an aspect
    are set (parameters the core has already resolved), the size wins: it is what was used.
    """
    parts: list[str] = []
    if params.prompt:
        parts.append(_encode_text(params.prompt))
    if params.width is not None and params.height is not None:
        parts.append(f"--size {params.width}x{params.height}")
    elif params.aspect:
        parts.append(f"--ar {_encode_value(params.aspect)}")
    if params.seed is not None:
        parts.append(f"--seed {params.seed}")
    if params.steps is not None:
        parts.append(f"--steps {params.steps}")
    if params.cfg is not None:
        parts.append(f"--cfg {_plain_number(params.cfg)}")
    if params.sampler:
        parts.append(f"--sampler {_encode_value(params.sampler)}")
    if params.n != 1:
        parts.append(f"--n {params.n}")
    if params.model:
        parts.append(f"--model {_encode_value(params.model)}")
    if params.provider:
        parts.append(f"--provider {_encode_value(params.provider)}")
    if params.strength is not None:
        parts.append(f"--strength {_plain_number(params.strength)}")
    for name, weight in params.loras:
        parts.append(f"--lora {_encode_value(format_lora(name, weight))}")
    if params.vae:
        parts.append(f"--vae {_encode_value(params.vae)}")
    if params.scheduler:
        parts.append(f"--scheduler {_encode_value(params.scheduler)}")
    if params.hires:
        parts.append("--hires")
    if params.workflow:
        parts.append(f"--workflow {_encode_value(params.workflow)}")
    if params.negative:
        parts.append(f"--no {_encode_text(params.negative, whole_group_is_value=True)}")
    return " ".join(parts)


def format_lora(name: str, weight: float) -> str:
    """One ``--lora`` value: ``NAME`` at weight 1 unless the name has a colon, else
    ``NAME:WEIGHT`` (so the last colon is always the weight's)."""
    if weight == 1 and ":" not in name:
        return name
    return f"{name}:{_plain_number(weight)}"


def _plain_number(x: float) -> str:
    """Like ``format_number`` but never in exponent form, which the flags do not accept."""
    text = format_number(x + 0.0)  # + 0.0 turns -0.0 into 0.0, which reads back as equal
    if "e" in text.lower():
        text = format(Decimal(repr(x)), "f")
    return text
