"""Which provider and model a request goes to, at what size, and what it costs.

Everything here runs before anything is charged, so a request a provider cannot serve is
refused with a clear message and costs nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from bot.config import Config
from bot.errors import BadInput
from bot.params import GenerationParams
from bot.providers import Capabilities, ModelInfo, Provider


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str
    width: int
    height: int
    seed: int
    unit_price: int
    max_inputs: int = 1  # input pictures the model takes (ModelInfo.max_inputs)


# An upscale (GenerationParams.upscale: the Upscale button, /upscale) enlarges a finished
# picture by a factor in this range; the result's long side is at most UPSCALE_MAX_SIDE.
# That bound holds whatever the provider's ``max_size``: the provider's size limits are for
# what it generates from noise, an upscaler enlarges what exists (A1111's extras or hires
# fix take 2048 -> 4096 in stride); 4096 keeps a picture near what chats take (a PNG of
# that size is usually well under Telegram's 50 MB for bots, a larger one is announced, not
# sent; Discord's uploads are re-encoded to fit) and what one GPU's memory holds. Above it
# an upscale is refused before anything is charged.
UPSCALE_MIN_FACTOR = 1.5
UPSCALE_MAX_FACTOR = 4.0
UPSCALE_MAX_SIDE = 4096


def upscale_size(
    init_size: tuple[int, int] | None, factor: float, multiple: int = 8
) -> tuple[int, int]:
    """The size of an upscale: the input picture's size times ``factor`` (rounded to the
    provider's multiple), or a clear refusal (no picture, a factor out of range, too big)."""
    if init_size is None:
        raise BadInput.of("error.upscale_needs_picture")
    if not (math.isfinite(factor) and UPSCALE_MIN_FACTOR <= factor <= UPSCALE_MAX_FACTOR):
        raise BadInput.of(
            "error.upscale_factor", low=f"{UPSCALE_MIN_FACTOR:g}", high=f"{UPSCALE_MAX_FACTOR:g}"
        )
    w, h = init_size
    width, height = _round(w * factor, multiple), _round(h * factor, multiple)
    if max(width, height) > UPSCALE_MAX_SIDE:
        raise BadInput.of(
            "error.upscale_too_big",
            width=width,
            height=height,
            factor=f"{factor:g}",
            limit=UPSCALE_MAX_SIDE,
        )
    return width, height


def _round(v: float, multiple: int) -> int:
    return max(multiple, round(v / multiple) * multiple)


def resolve_size(
    params: GenerationParams,
    caps: Capabilities,
    default_long: int,
    init_size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The concrete size: --size as given, else --ar at the default long side, else (for
    img2img) the input picture's own size fitted into what the provider can make."""
    lo, hi, m = caps.min_size, caps.max_size, caps.size_multiple
    if params.width and params.height:
        w, h = params.width, params.height
        if not (lo <= w <= hi and lo <= h <= hi):
            raise BadInput(f"--size must be between {lo} and {hi} on each side for this provider")
        return _round(w, m), _round(h, m)
    if init_size is not None and not params.aspect:
        w, h = init_size
        scale = min(1.0, hi / max(w, h))
        if min(w, h) * scale < lo:
            scale = lo / min(w, h)
        w, h = _round(w * scale, m), _round(h * scale, m)
        return min(max(w, lo), hi), min(max(h, lo), hi)
    aw, ah = 1, 1
    if params.aspect:
        a, _, b = params.aspect.partition(":")
        aw, ah = int(a), int(b)
    long_side = min(default_long, hi)
    if aw >= ah:
        exact_w, exact_h = float(long_side), long_side * ah / aw
    else:
        exact_w, exact_h = long_side * aw / ah, float(long_side)
    w, h = _round(exact_w, m), _round(exact_h, m)
    return min(max(w, lo), hi), min(max(h, lo), hi)


def _fit_pixels(
    width: int, height: int, info: ModelInfo, multiple: int, explicit: bool
) -> tuple[int, int]:
    """A size within the model's pixel count and aspect limits: an explicit --size outside
    them is refused; a size the router chose is scaled to fit."""
    lo, hi, aspect = info.min_pixels, info.max_pixels, info.max_aspect
    pixels = width * height
    long_ratio = max(width, height) / min(width, height)
    fits = (not lo or pixels >= lo) and (not hi or pixels <= hi)
    if fits and (not aspect or long_ratio <= aspect + 1e-9):
        return width, height
    if explicit or (aspect and long_ratio > aspect + 1e-9):
        raise BadInput.of(
            "error.model_size",
            model=info.name,
            low=round(lo / 1e6, 2),
            high=round(hi / 1e6, 2) if hi else "any",
            aspect=f"{aspect:g}" if aspect else "any",
            width=width,
            height=height,
        )
    target = hi if hi and pixels > hi else lo
    scale = math.sqrt(target / pixels)
    step = math.floor if target == hi else math.ceil
    w = max(multiple, step(width * scale / multiple) * multiple)
    h = max(multiple, step(height * scale / multiple) * multiple)
    return w, h


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers

    def bills_when_cancelled(self, provider: str) -> bool:
        """Whether a job of ``provider`` cancelled while it runs may have cost the operator
        money (``Provider.bills_when_cancelled``). A provider no longer configured is taken
        to be a hosted one: it may have billed."""
        found = self.providers.get(provider)
        return True if found is None else bool(found.bills_when_cancelled)

    def price(self, kind: str, provider: str) -> int:
        per_provider = self.config.credits.provider_prices.get(provider, {})
        return per_provider.get(kind, self.config.credits.prices[kind])

    def _pick_provider(self, params: GenerationParams) -> tuple[str, str | None]:
        model = params.model
        name = params.provider
        if model and model in self.config.providers.aliases:
            model = self.config.providers.aliases[model]  # "fast" -> "dashscope:wanx..."
        if model and ":" in model:
            prefix, _, rest = model.partition(":")
            if prefix in self.providers:
                if name and name != prefix:
                    raise BadInput(f"--model {model} belongs to {prefix}, not --provider {name}")
                name, model = prefix, rest
        if name is None and model:
            owners = [p for p, prov in self.providers.items() if prov.find_model(model)]
            if owners:
                name = owners[0]
        name = name or self.config.providers.default
        if name not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            raise BadInput(f"unknown provider {name!r}; configured providers: {known}")
        return name, model

    def resolve(
        self,
        params: GenerationParams,
        kind: str,
        init_size: tuple[int, int] | None = None,
        inputs: int = 1,
    ) -> Route:
        name, model = self._pick_provider(params)
        provider = self.providers[name]
        caps = provider.capabilities()
        need = "img2img" if kind == "img2img" else "txt2img"
        if need not in caps.kinds:
            raise BadInput(f"{name} cannot do {need}; try another --provider (see /models)")
        if model is None:
            # the default model, or the first that can do this kind (an img2img-only
            # edit model next to text-to-image ones)
            fits = [mi.name for mi in caps.models if need in mi.kinds]
            model = caps.default_model if caps.default_model in fits or not fits else fits[0]
        info = provider.find_model(model)
        if info is None:
            names = ", ".join(mi.name for mi in caps.models)
            raise BadInput(f"unknown model {model!r} for {name}; available: {names} (see /models)")
        model = info.name  # the model's own name, however it was asked for
        if need not in info.kinds:
            raise BadInput(f"model {model} cannot do {need}")
        if params.upscale and not caps.upscale:
            raise BadInput.of("error.no_upscale", provider=name)
        provider.check(params, model, need)
        if kind == "img2img" and inputs > max(1, info.max_inputs):
            several = [
                f"{p}:{mi.name} ({mi.max_inputs})"
                for p, prov in self.providers.items()
                for mi in prov.capabilities().models
                if mi.max_inputs > 1 and "img2img" in mi.kinds
            ]
            raise BadInput.of(
                "error.model_inputs",
                model=f"{name}:{model}",
                limit=max(1, info.max_inputs),
                count=inputs,
                several=", ".join(several) or "-",
            )
        if info.max_prompt and len(params.prompt) > info.max_prompt:
            raise BadInput.of(
                "error.model_prompt_long",
                model=model,
                limit=info.max_prompt,
                length=len(params.prompt),
            )
        if info.max_negative and len(params.negative) > info.max_negative:
            raise BadInput.of(
                "error.model_negative_long",
                model=model,
                limit=info.max_negative,
                length=len(params.negative),
            )
        if params.n > caps.max_images:
            raise BadInput(
                f"{name} makes at most {caps.max_images} images per job; "
                f"use --n 1..{caps.max_images}"
            )
        if info.min_side or info.max_side:
            caps = replace(
                caps,
                min_size=info.min_side or caps.min_size,
                max_size=info.max_side or caps.max_size,
            )
        if params.upscale is not None:
            # the picture times the factor: not the provider's sizes for generating, nor the
            # model's pixel limits (see UPSCALE_MAX_SIDE)
            if kind != "img2img":
                raise BadInput.of("error.upscale_needs_picture")
            width, height = upscale_size(init_size, params.upscale, caps.size_multiple)
        else:
            width, height = resolve_size(params, caps, self.config.images.default_size, init_size)
            explicit = bool(params.width and params.height)
            width, height = _fit_pixels(width, height, info, caps.size_multiple, explicit)
        seed = (
            params.seed if params.seed is not None else random.randrange(0, 2**32 - caps.max_images)
        )
        unit_kind = kind
        return Route(
            name, model, width, height, seed, self.price(unit_kind, name), max(1, info.max_inputs)
        )
