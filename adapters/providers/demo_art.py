"""Procedural pictures for the demo provider.

The demo provider stands in for a real model in tests, in the throughput benchmark and on a
fresh install with no keys, so the drawing has three jobs: look obviously different for
different prompts and seeds (so people can see the bot doing something), be bit-for-bit
reproducible (so a job resumed after a restart yields the same picture), and be cheap enough
that the benchmark measures the job core rather than Pillow. Everything is built from a few
C-level Pillow operations; there are no per-pixel Python loops, and the text masks, which
cost more than the rest of a small picture, are cached.
"""

from __future__ import annotations

import hashlib
import random
import threading
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["DEMO_LABEL", "render"]

DEMO_LABEL = "DEMO - not an AI model"  # ASCII: the bundled default font has no em dash
_SHORT_LABEL = "DEMO"
_PROMPT_CHARS = 40
_FONT_LOCK = threading.Lock()

Color = tuple[int, int, int]


def render(
    prompt: str,
    seed: int,
    width: int,
    height: int,
    *,
    variant: int = 0,
    init: Image.Image | None = None,
    strength: float = 0.6,
) -> Image.Image:
    """Draw the picture for (prompt, seed, size, variant), optionally over an init image.

    The palette comes from the prompt alone, so one prompt keeps its mood across seeds while
    the seed moves the shapes around. ``strength`` follows img2img convention: 1 keeps almost
    nothing of ``init``, 0 returns (nearly) the init image. The label is drawn after
    blending so that every result, img2img included, says it is a demo.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    # A str seed is hashed with SHA-512 by random.Random, so it is stable across processes
    # (unlike hash()) and, unlike an int seed, does not fold negative seeds onto positive ones.
    rng = random.Random(f"{seed}/{variant}/{digest.hex()}")
    night = variant % 2 == 1
    top, horizon, ground = _palette(digest, night)

    img = _sky(width, height, top, horizon)
    _celestial(img, rng, night)
    _mountains(ImageDraw.Draw(img), rng, width, height, horizon, ground)

    if init is not None:
        strength = min(1.0, max(0.0, float(strength)))
        base = _fit(init, width, height)
        img = Image.blend(base, img, strength)

    _label(img, prompt)
    return img


def _fit(init: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop ``init`` to the target aspect and scale it, cheaply.

    A proper bilinear downscale costs ~5 ms at 512 px, ten times the whole drawing, so
    shrinking uses an integer box ``reduce`` plus nearest-neighbour for the remainder;
    only (cheap, small) upscales get bilinear.
    """
    if init.mode != "RGB":
        init = init.convert("RGB")
    src_w, src_h = init.size
    scale = min(src_w / width, src_h / height)
    crop_w, crop_h = width * scale, height * scale
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    if scale < 1:
        return init.resize((width, height), Image.Resampling.BILINEAR, box=box)
    factor = int(scale)
    if factor >= 2:
        init = init.reduce(factor, box=tuple(round(v) for v in box))  # type: ignore[arg-type]
        box = (0, 0, init.width, init.height)
    return init.resize((width, height), Image.Resampling.NEAREST, box=box)


def _palette(digest: bytes, night: bool) -> tuple[Color, Color, Color]:
    """Three related colours from the prompt hash: sky top, horizon glow, foreground."""
    hue = digest[0] / 255 * 360
    spread = 30 + digest[1] % 90
    sat = 0.45 + digest[2] / 255 * 0.5
    light = 0.25 if night else 0.55
    top = _hsl(hue, sat, light * 0.8)
    horizon = _hsl((hue + spread) % 360, sat, min(0.9, light + 0.25))
    ground = _hsl((hue + 180 + spread / 2) % 360, sat * 0.7, light * 0.45)
    return top, horizon, ground


def _hsl(h: float, s: float, lightness: float) -> Color:
    """HSL to 8-bit RGB; colorsys would do, but it works in HLS order and 0..1 hue."""
    c = (1 - abs(2 * lightness - 1)) * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = lightness - c / 2
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return (round((r + m) * 255), round((g + m) * 255), round((b + m) * 255))


@lru_cache(maxsize=1)
def _ramp() -> Image.Image:
    """A 1x256 black-to-white column: the only gradient Pillow needs to make for us."""
    return Image.linear_gradient("L").crop((0, 0, 1, 256))


def _sky(width: int, height: int, top: Color, horizon: Color) -> Image.Image:
    """Vertical gradient built on a 1-pixel column and then stretched sideways.

    Compositing two flat colours through the ramp happens in C on ``height`` pixels only,
    so the cost of the sky is one nearest-neighbour resize of the column.
    """
    mask = _ramp().resize((1, height), Image.Resampling.BILINEAR)
    column = Image.composite(
        Image.new("RGB", (1, height), horizon), Image.new("RGB", (1, height), top), mask
    )
    return column.resize((width, height), Image.Resampling.NEAREST)


def _celestial(img: Image.Image, rng: random.Random, night: bool) -> None:
    """A sun (or a moon and stars at night) high enough not to hide behind the ridges."""
    width, height = img.size
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    if night:
        for _ in range(6 + rng.randrange(10)):
            x, y = rng.randrange(width), rng.randrange(max(1, height // 2))
            r = max(1, side // 150)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 235))
    r = max(3, int(side * rng.uniform(0.06, 0.12)))
    cx = rng.randrange(r, max(r + 1, width - r))
    cy = rng.randrange(r, max(r + 1, height * 3 // 10))
    if not night:
        glow = (255, 236 - rng.randrange(60), 120 + rng.randrange(80))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=glow)
        return
    # A crescent is a disc minus an offset disc; cutting it out of a mask (rather than
    # painting the offset disc in a flat colour) leaves the sky gradient behind it intact.
    mask = Image.new("L", (2 * r + 1, 2 * r + 1))
    cut = ImageDraw.Draw(mask)
    cut.ellipse((0, 0, 2 * r, 2 * r), fill=255)
    dx = max(1, r // 2)
    cut.ellipse((dx, -dx // 2, 2 * r + dx, 2 * r - dx // 2), fill=0)
    img.paste((255, 250, 220), (cx - r, cy - r), mask)


def _mountains(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    width: int,
    height: int,
    far: Color,
    near: Color,
) -> None:
    """Two ridges of random peaks, the far one tinted towards the sky for depth."""
    far_tint = tuple((a + b * 2) // 3 for a, b in zip(far, near, strict=True))
    for layer, colour in ((0, far_tint), (1, near)):
        base = height * (0.55 + 0.15 * layer)
        peaks = 4 + rng.randrange(5)
        points: list[tuple[float, float]] = [(0, height)]
        for i in range(peaks + 1):
            x = width * i / peaks
            y = base - rng.uniform(0.05, 0.3) * height * (1 - 0.4 * layer)
            points.append((x, y))
        points.append((width, height))
        draw.polygon(points, fill=colour)
    # a few seeded "trees" or rocks in front so the seed visibly moves things near the camera
    for _ in range(2 + rng.randrange(4)):
        x = rng.randrange(width)
        y = int(height * rng.uniform(0.8, 0.97))
        s = max(2, int(min(width, height) * rng.uniform(0.03, 0.08)))
        draw.polygon([(x, y - 2 * s), (x - s, y), (x + s, y)], fill=(20, 30, 25))


def _font_size(width: int, height: int) -> int:
    return max(9, min(width, height) // 48)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=512)
def _text_mask(text: str, size: int) -> Image.Image:
    """Rendered glyphs as an L mask; cached because FreeType is the slowest step here.

    Renders run in worker threads and a FreeType face must not be used by two threads at
    once, so cache misses are serialised.
    """
    with _FONT_LOCK:
        return _render_text(text, size)


def _render_text(text: str, size: int) -> Image.Image:
    font = _font(size)
    # Crisp, not antialiased: tiny text stays legible after blending. Hinting for mode "1"
    # makes glyphs wider than the default bbox says, so measure in that mode too.
    _, _, right, bottom = font.getbbox(text, mode="1")
    mask = Image.new("L", (int(right) + 1, int(bottom) + 1))
    draw = ImageDraw.Draw(mask)
    draw.fontmode = "1"
    draw.text((0, 0), text, font=font, fill=255)
    return mask


def _label(img: Image.Image, prompt: str) -> None:
    """Prompt excerpt and the demo notice, bottom-left, white on a 1 px dark shadow.

    Narrow pictures cannot fit the whole notice, so they get just "DEMO"; the prompt line is
    cut to roughly what fits, which also keeps text rendering cheap at 64x64.
    """
    width, height = img.size
    size = _font_size(width, height)
    label = DEMO_LABEL if _text_mask(DEMO_LABEL, size).width + 4 <= width else _SHORT_LABEL
    fits = max(4, width * 2 // size)
    excerpt = " ".join(prompt.split())[: min(_PROMPT_CHARS, fits)]
    lines = [t for t in (excerpt, label) if t]
    line_h = size + 2
    y = height - 2 - line_h * len(lines)
    for text in lines:
        mask = _text_mask(text, size)
        img.paste((0, 0, 0), (3, y + 1), mask)
        img.paste((255, 255, 255), (2, y), mask)
        y += line_h
