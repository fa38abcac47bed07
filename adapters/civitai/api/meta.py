"""An image's generation ``meta`` mapped to the core's GenerationParams, the resources
(checkpoint, LoRAs) it names, and the AUTOMATIC1111 ``parameters`` text.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.grammar import MAX_SEED
from bot.infotext import HIRES_KEYS, NEGATIVE_PREFIX, format_number, quote
from bot.params import GenerationParams

log = logging.getLogger(__name__)


_HASH = re.compile(r"^[0-9A-Fa-f]{8,64}$")

_META_KEYS = frozenset(
    {"prompt", "negativePrompt", "seed", "steps", "sampler", "cfgScale", "Size", "Model"}
)


def flat_meta(meta: Any) -> dict[str, Any] | None:
    """Image ``meta`` in its flat shape. The API sends either the generation parameters
    themselves or, on its legacy path, ``{"id": <imageId>, "meta": {...} | null}``."""
    if not isinstance(meta, Mapping):
        return None
    inner = meta.get("meta")
    if (inner is None or isinstance(inner, Mapping)) and "meta" in meta:
        if not _META_KEYS.intersection(meta):
            return flat_meta(inner) if inner is not None else None
    return dict(meta)


# --- generation parameters from image meta --------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")
_HANDLED_META = frozenset(
    {
        "prompt",
        "negativePrompt",
        "negative_prompt",
        "Negative prompt",
        "seed",
        "Seed",
        "steps",
        "Steps",
        "cfgScale",
        "cfg_scale",
        "CFG scale",
        "sampler",
        "Sampler",
        "sampler_name",
        "Size",
        "size",
        "width",
        "height",
        "Model",
        "model",
        "Model hash",
        "clipSkip",
        "Clip skip",
    }
)
_A1111_KEY = re.compile(r"^[A-Z][\w \-/]{0,40}$")


def _first(meta: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = meta.get(key)
        if value is not None and value != "":
            return value
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,20}(\.0+)?\s*", value):
        return int(float(value)) if "." in value else int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None


# Words uploads write where a value is missing (issue 16): not values.
_JUNK_WORDS = frozenset({"", "undefined", "null", "none", "nan", "n/a", "unknown", "-"})


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        text = value.strip()
        return None if text.lower() in _JUNK_WORDS else text
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value) if math.isfinite(value) else None
    return None


def _model_name(value: Any) -> str | None:
    """``meta.Model``: a name, or (as real uploads send it) an object such as
    ``{"meina_belly_7": "3mix"}`` whose key is the name."""
    if isinstance(value, Mapping):
        names = [k for k in (_as_text(key) for key in value) if k]
        return ", ".join(names) or None
    return _as_text(value)


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def _size(meta: Mapping[str, Any]) -> tuple[int | None, int | None]:
    size = _first(meta, "Size", "size")
    if isinstance(size, str):
        m = _SIZE.match(size)
        if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
            return int(m.group(1)), int(m.group(2))
    w, h = _as_int(meta.get("width")), _as_int(meta.get("height"))
    return (w, h) if w and h and w > 0 and h > 0 else (None, None)


def generation_params(
    meta: Any, *, width: int | None = None, height: int | None = None
) -> GenerationParams:
    """The generation parameters in an image's ``meta`` (flat or nested): prompt, negative
    prompt, seed, steps, CFG, sampler, size, model, and whether a hires fix made it.
    ``width``/``height`` are used when ``meta`` has no size (pass the picture's own). Odd
    values become ``None``."""
    m = flat_meta(meta) or {}
    meta_w, meta_h = _size(m)
    seed = _as_int(_first(m, "seed", "Seed"))
    steps = _as_int(_first(m, "steps", "Steps"))
    return GenerationParams(
        prompt=_as_text(m.get("prompt")) or "",
        negative=_as_text(_first(m, "negativePrompt", "negative_prompt", "Negative prompt")) or "",
        seed=seed if seed is not None and 0 <= seed <= MAX_SEED else None,  # else random
        steps=steps if steps is not None and 0 < steps <= 150 else None,  # what --steps takes
        cfg=_positive(_as_float(_first(m, "cfgScale", "cfg_scale", "CFG scale"))),
        sampler=_as_text(_first(m, "sampler", "Sampler", "sampler_name")),
        width=meta_w if meta_w and meta_h else width,
        height=meta_h if meta_w and meta_h else height,
        model=_model_name(_first(m, "Model", "model")),
        # made with a hires fix: asked again with --hires, as a pasted block would be
        hires=any(_as_text(m.get(k)) for k in (*HIRES_KEYS, "hrUpscale", "hires_upscale")),
    )


@dataclass(frozen=True, slots=True)
class Resource:
    """A checkpoint or LoRA an image was made with, as its meta names it: ``name`` (the
    A1111 name, e.g. a file stem), ``weight``, ``hash`` (a short hash as sent, upper-case:
    AutoV2 for checkpoints, often AutoV3 for LoRAs), ``version_id`` (Civitai's)."""

    kind: str  # "checkpoint" | "lora"
    name: str | None = None
    weight: float | None = None
    hash: str | None = None
    version_id: int | None = None


_LORA_KINDS = frozenset({"lora", "locon", "lycoris", "dora"})
_AIR_VERSION = re.compile(r"^urn:air:[^:]+:([^:]+):civitai:\d+@(\d+)$")
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>", re.I)


def _hash_text(value: Any) -> str | None:
    text = _as_text(value)
    return text.upper() if text and _HASH.match(text) else None


def meta_resources(meta: Any) -> list[Resource]:
    """The checkpoint (first, when known) and LoRAs an image's ``meta`` names, merged from
    ``Model``/``hashes.model``/``Model hash``, ``hashes["lora:NAME"]``, ``resources``,
    ``civitaiResources``, ``additionalResources`` and ``fluxMode`` (an AIR of the
    checkpoint). A LoRA is one entry however many places name it."""
    m = flat_meta(meta) or {}
    raw_hashes = m.get("hashes")
    hashes: Mapping[Any, Any] = raw_hashes if isinstance(raw_hashes, Mapping) else {}
    ckpt: dict[str, Any] = {
        "name": _model_name(_first(m, "Model", "model")),
        "hash": _hash_text(m.get("Model hash")) or _hash_text(hashes.get("model")),
        "version_id": None,
    }
    loras: dict[str, dict[str, Any]] = {}  # by lower-case name, or "#<version id>"

    def lora(name: str | None, version_id: int | None) -> dict[str, Any]:
        if name:
            by_id = loras.pop(f"#{version_id}", None) if version_id else None
            entry = loras.setdefault(name.lower(), by_id or {"name": name})
            entry["name"] = entry.get("name") or name
        else:
            found = next((e for e in loras.values() if e.get("version_id") == version_id), None)
            entry = found or loras.setdefault(f"#{version_id}", {"name": None})
        if version_id and not entry.get("version_id"):
            entry["version_id"] = version_id
        return entry

    for key, value in hashes.items():
        if isinstance(key, str) and key.lower().startswith("lora:") and _as_text(key[5:]):
            lora(_as_text(key[5:]), None).setdefault("hash", _hash_text(value))
    for item in m.get("resources") or []:
        if not isinstance(item, Mapping):
            continue
        kind = (_as_text(item.get("type")) or "").lower()
        if kind in _LORA_KINDS and _as_text(item.get("name")):
            e = lora(_as_text(item.get("name")), None)
            e.setdefault("weight", _as_float(item.get("weight")))
            e["hash"] = e.get("hash") or _hash_text(item.get("hash"))
        elif kind in ("model", "checkpoint"):
            ckpt["hash"] = ckpt["hash"] or _hash_text(item.get("hash"))
    for item in m.get("civitaiResources") or []:
        if not isinstance(item, Mapping):
            continue
        kind = (_as_text(item.get("type")) or "").lower()
        version_id = _as_int(item.get("modelVersionId"))
        if kind in _LORA_KINDS and version_id:
            lora(None, version_id).setdefault("weight", _as_float(item.get("weight")))
        elif kind == "checkpoint" and version_id:
            ckpt["version_id"] = ckpt["version_id"] or version_id
    for item in m.get("additionalResources") or []:
        if not isinstance(item, Mapping):
            continue
        kind = (_as_text(item.get("type")) or "").lower()
        name = _as_text(item.get("name"))
        air = _AIR_VERSION.match(name or "")
        if air:
            name, version_id = None, int(air.group(2))
        else:
            version_id = None
        if kind in _LORA_KINDS and (name or version_id):
            e = lora(name, version_id)
            if e.get("weight") is None:
                e["weight"] = _as_float(_first(item, "strength", "weight"))
    flux = _AIR_VERSION.match(_as_text(m.get("fluxMode")) or "")
    if flux and flux.group(1) == "checkpoint":
        ckpt["version_id"] = ckpt["version_id"] or int(flux.group(2))
    for tag in _LORA_TAG.finditer(_as_text(m.get("prompt")) or ""):
        e = lora(tag.group(1).strip(), None)
        weight = _as_float((tag.group(2) or "").split(":")[0])
        e["weight"] = weight if weight is not None else e.get("weight")
    out = []
    if any(ckpt.values()):
        out.append(Resource("checkpoint", **ckpt))
    for e in loras.values():
        weight = e.get("weight")
        out.append(
            Resource(
                "lora",
                name=e.get("name"),
                weight=weight if weight is not None and math.isfinite(weight) else None,
                hash=e.get("hash"),
                version_id=e.get("version_id"),
            )
        )
    return out


def lora_tag(resource: Resource, name: str | None = None) -> str | None:
    """``<lora:NAME:W>`` for a LoRA (``name`` overrides its own, e.g. a local file name)."""
    name = name or resource.name
    if not name:
        return None
    weight = 1.0 if resource.weight is None else resource.weight
    return f"<lora:{name}:{format_number(weight)}>"


def with_lora_tags(
    prompt: str, resources: Sequence[Resource], names: Mapping[int, str | None] | None = None
) -> str:
    """``prompt`` with a ``<lora:NAME:W>`` tag for each LoRA it does not name already;
    ``names`` maps a resource's index to a better name (a local file's), which also renames
    the prompt's own tag for it."""
    names = names or {}
    present = {tag.group(1).strip().lower() for tag in _LORA_TAG.finditer(prompt)}
    tags = []
    for i, r in enumerate(resources):
        if r.kind != "lora":
            continue
        better = names.get(i)
        if r.name and r.name.lower() in present:
            if better and better != r.name:
                pattern = re.compile(rf"<lora:\s*{re.escape(r.name)}\s*(?=[:>])", re.I)
                prompt = pattern.sub(f"<lora:{better}".replace("\\", "\\\\"), prompt)
            continue
        tag = lora_tag(r, better)
        if tag:
            tags.append(tag)
    return ", ".join(p for p in (prompt.strip(), *tags) if p)


def _is_date_key(key: str) -> bool:
    return "date" in key.lower() or key.lower().endswith(" at")


def _extra_value(key: str, value: Any) -> Any:
    """An extra A1111 key's value, or ``None`` when it is not one (junk words, NaN, a
    negative number, a date that does not parse)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return None
        return format_number(value) if isinstance(value, float) else value
    text = _as_text(value)
    if text is None or re.fullmatch(r"[-+]?(nan|inf|infinity)", text, re.I):
        return None
    number = _as_float(text)
    if number is not None and number < 0:
        return None
    if _is_date_key(key):
        try:
            dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    return text


def parameters_text(meta: Any, *, width: int | None = None, height: int | None = None) -> str:
    """An A1111-style ``parameters`` text from an image's ``meta`` (flat or nested): the
    prompt, ``Negative prompt: ...``, then ``Steps, Sampler, CFG scale, Seed, Size, Model
    hash, Model, Clip skip`` and any other A1111 keys meta carries (``Hires upscale``...)."""
    m = flat_meta(meta) or {}
    p = generation_params(m, width=width, height=height)
    resources = meta_resources(m)
    checkpoint = next((r for r in resources if r.kind == "checkpoint"), None)
    lora_hashes = ", ".join(
        f"{r.name}: {r.hash.lower()}" for r in resources if r.kind == "lora" and r.name and r.hash
    )
    clip_skip = _as_int(_first(m, "clipSkip", "Clip skip"))
    pairs: list[tuple[str, Any]] = [
        ("Steps", p.steps),
        ("Sampler", p.sampler),
        ("CFG scale", None if p.cfg is None else format_number(p.cfg)),
        ("Seed", p.seed),
        ("Size", f"{p.width}x{p.height}" if p.width and p.height else None),
        ("Model hash", checkpoint.hash.lower() if checkpoint and checkpoint.hash else None),
        ("Model", p.model),
        ("Clip skip", clip_skip if clip_skip is not None and clip_skip > 0 else None),
        ("Lora hashes", lora_hashes or _as_text(m.get("Lora hashes"))),
        ("Flux mode", _as_text(m.get("fluxMode"))),
    ]
    for key in sorted(m):
        if key in _HANDLED_META or key == "Lora hashes" or not _A1111_KEY.match(key):
            continue
        pairs.append((key, _extra_value(key, m[key])))
    key_line = ", ".join(f"{k}: {quote(str(v))}" for k, v in pairs if v is not None and v != "")
    lines = [with_lora_tags(p.prompt, resources)]
    if p.negative:
        lines.append(f"{NEGATIVE_PREFIX} {p.negative}")
    if key_line:
        lines.append(key_line)
    return "\n".join(lines).strip()
