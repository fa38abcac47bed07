"""The AUTOMATIC1111 "parameters" text (infotext), read and written.

Pictures we deliver carry their generation parameters in this format so that A1111, Civitai
and friends show them, and people paste such blocks back at us. Writing follows A1111 so the
other tools read our output; reading follows A1111's own parser but is stricter about what
counts as the key line, because a prompt that merely contains ``word: word`` must stay a
prompt. Reading never raises: odd values simply come back as ``None`` (the grammar decides
what is acceptable).
"""

from __future__ import annotations

import json
import math
import re

from bot.params import GenerationParams

NEGATIVE_PREFIX = "Negative prompt:"

# A1111's own key/value pattern (modules/infotext_utils.py), so we split lines exactly as it does.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_KEY_START = re.compile(r"\s*\w[\w \-/]+:")
_RE_SIZE = re.compile(r"([0-9]{1,9})\s*x\s*([0-9]{1,9})")
_RE_INT = re.compile(r"-?[0-9]{1,20}")
_RE_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")

# A1111 writes these for a hires-fix second pass ("Hires upscale: 2, Hires steps: 10,
# Hires upscaler: Latent", or "Hires resize: WxH"); any of them means the pass was on.
HIRES_KEYS: tuple[str, ...] = ("Hires upscale", "Hires upscaler", "Hires steps", "Hires resize")
# What we write for ``GenerationParams.hires``: the request carries no factor, and A1111's
# default one is 2. A caller that knows the factor used passes "Hires upscale" in ``extra``.
HIRES_DEFAULT_UPSCALE = "2"

# Keys only A1111-style tools write; one of them must be present for a line to be the key line.
KNOWN_KEYS = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model",
        "Model hash",
        "VAE",
        "VAE hash",
        "Denoising strength",
        "Lora hashes",
        *HIRES_KEYS,
    }
)

# A1111's extra-network tags in a prompt (modules/extra_networks.py): <lora:NAME:W>.
_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def quote(value: str) -> str:
    """Quote a value the way A1111's ``quote()`` does, plus the cases it gets wrong.

    A1111 only quotes values with ``,`` ``:`` or a newline; a value that starts with ``"`` or
    has surrounding blanks would then not read back as itself, so those are quoted too.
    """
    if any(c in value for c in ",:\n") or value.startswith('"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except ValueError:
            return value
        if isinstance(loaded, str):
            return loaded
    return value


def format_number(x: float) -> str:
    """The shortest text that reads back as exactly ``x`` ("7" rather than "7.0")."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def prompt_loras(prompt: str) -> list[tuple[str, float]]:
    """The LoRAs a prompt's ``<lora:NAME:W>`` tags ask for, as A1111 reads them.

    ``<lora:NAME>`` is weight 1; the weight is the first positional argument after the name
    or a named ``te=W`` (A1111's text-encoder multiplier; a second positional or ``unet=``
    is the UNet's, not reported). A weight A1111 could not read counts as 1. Names are
    what A1111 looks up (an alias or file name without extension); ``<lyco:...>`` and
    other networks are not LoRAs here. Pure: for providers checking the names exist.
    """
    out: list[tuple[str, float]] = []
    for kind, args in _RE_EXTRA_NET.findall(prompt):
        if kind != "lora":
            continue
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in args.split(":"):
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        if not positional or not positional[0]:
            continue
        raw = named.get("te", positional[1] if len(positional) > 1 else "1")
        weight = _float(raw)
        out.append((positional[0], 1.0 if weight is None else weight))
    return out


def lora_tag(name: str, weight: float) -> str:
    """``<lora:NAME:W>`` as A1111 writes it into a prompt."""
    return f"<lora:{name}:{format_number(weight)}>"


def format_infotext(
    params: GenerationParams,
    *,
    width: int,
    height: int,
    seed: int,
    model: str | None,
    extra: dict[str, str] | None = None,
) -> str:
    """Write what was actually generated (resolved size, seed and model), in A1111's layout.

    LoRAs asked for with ``--lora`` are written into the prompt as ``<lora:NAME:W>`` tags,
    as A1111's own prompt carries them, so the picture asks for them again when pasted back.
    A hires fix is written as "Hires upscale" (``HIRES_DEFAULT_UPSCALE``). ``extra`` keys
    replace ours of the same name (a provider that knows the factor it used).
    """
    pairs: list[tuple[str, object]] = [
        ("Steps", params.steps),
        ("Sampler", params.sampler),
        ("Schedule type", params.scheduler),
        ("CFG scale", None if params.cfg is None else format_number(params.cfg)),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", model),
        ("VAE", params.vae),
        ("Denoising strength", None if params.strength is None else format_number(params.strength)),
        ("Hires upscale", HIRES_DEFAULT_UPSCALE if params.hires else None),
    ]
    extra = dict(extra or {})
    pairs = [(k, extra.pop(k) if k in extra else v) for k, v in pairs]
    pairs += list(extra.items())
    key_line = ", ".join(f"{k}: {quote(str(v))}" for k, v in pairs if v is not None and v != "")
    prompt = " ".join([params.prompt, *(lora_tag(n, w) for n, w in params.loras)]).strip()
    lines = [prompt]
    if params.negative:
        lines.append(f"{NEGATIVE_PREFIX} {params.negative}")
    lines.append(key_line)
    # A1111 strips the whole text too, so an empty prompt leaves no blank first line.
    return "\n".join(lines).strip()


def parse_key_line(line: str) -> dict[str, str] | None:
    """The key/value pairs of an A1111 key line, or ``None`` when the line is prompt text.

    A1111 accepts any line with three ``key: value`` pairs; we also want the short key lines
    we write ourselves (``Seed: 1, Size: 512x512``) and must not take ``style: anime, mood:
    dark, light: soft`` for one, so at least one key has to be a well-known A1111 key.
    """
    s = line.strip()
    if not s or s.startswith(NEGATIVE_PREFIX) or not _RE_KEY_START.match(s):
        return None
    pairs: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(s):
        pairs[key.strip()] = unquote(value.strip())
    if not pairs or not KNOWN_KEYS.intersection(pairs):
        return None
    return pairs


def _int(value: str | None) -> int | None:
    if value is None or not _RE_INT.fullmatch(value.strip()):
        return None
    return int(value.strip())


def _float(value: str | None) -> float | None:
    if value is None or not _RE_FLOAT.fullmatch(value.strip()):
        return None
    x = float(value.strip())
    return x if math.isfinite(x) else None


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip() or None


def parse_infotext_full(text: str) -> tuple[GenerationParams, dict[str, str]] | None:
    """Read an infotext block; also return every key/value so callers can show or keep extras.

    ``None`` when the text has neither a key line nor a ``Negative prompt:`` line: then it is
    just a prompt, and treating it as parameters would silently drop nothing but mislead.
    """
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return None
    *lines, last = text.split("\n")
    kv = parse_key_line(last)
    if kv is None:
        lines.append(last)
        kv = {}
        has_key_line = False
    else:
        has_key_line = True

    prompt = ""
    negative = ""
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        # A1111's accumulation rule: blank lines before the first text are dropped.
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    if not has_key_line and not in_negative:
        return None

    width = height = None
    size = _RE_SIZE.fullmatch(kv.get("Size", "").strip())
    if size:
        width, height = int(size.group(1)), int(size.group(2))
    seed = _int(kv.get("Seed"))
    params = GenerationParams(
        prompt=prompt,
        negative=negative,
        width=width,
        height=height,
        seed=None if seed is None or seed < 0 else seed,
        steps=_int(kv.get("Steps")),
        cfg=_float(kv.get("CFG scale")),
        sampler=_text(kv.get("Sampler")),
        model=_text(kv.get("Model")) or _text(kv.get("Model hash")),
        strength=_float(kv.get("Denoising strength")),
        vae=_text(kv.get("VAE")),
        scheduler=_text(kv.get("Schedule type")),
        hires=any(_text(kv.get(k)) for k in HIRES_KEYS),
    )
    return params, kv


def parse_infotext(text: str) -> GenerationParams | None:
    """The parameters an infotext carries, or ``None`` when the text is not one."""
    parsed = parse_infotext_full(text)
    return None if parsed is None else parsed[0]
