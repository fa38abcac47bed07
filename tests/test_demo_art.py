from __future__ import annotations

import time

import pytest
from PIL import Image, ImageChops, ImageStat

from adapters.providers.demo_art import render

PROMPT = "a lighthouse on a cliff at dusk"


def diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.mark.parametrize(("w", "h"), [(64, 64), (512, 512), (768, 512), (64, 200), (1, 1)])
def test_size_and_mode(w: int, h: int) -> None:
    img = render(PROMPT, 1, w, h)
    assert img.size == (w, h)
    assert img.mode == "RGB"


def test_same_inputs_same_pixels() -> None:
    for variant in (0, 1):
        a = render(PROMPT, 42, 256, 192, variant=variant)
        b = render(PROMPT, 42, 256, 192, variant=variant)
        assert a.tobytes() == b.tobytes()


def test_seed_prompt_and_variant_all_change_the_picture() -> None:
    base = render(PROMPT, 1, 256, 256)
    assert diff(base, render(PROMPT, 2, 256, 256)) > 3
    assert diff(base, render("a cat made of clouds", 1, 256, 256)) > 3
    assert diff(base, render(PROMPT, 1, 256, 256, variant=1)) > 3
    assert diff(base, render(PROMPT, -1, 256, 256)) > 3  # negative seeds are not abs()'d


def test_not_a_flat_picture() -> None:
    img = render(PROMPT, 7, 256, 256)
    assert len(img.getcolors(maxcolors=100_000) or []) > 20
    top, bottom = img.crop((0, 0, 256, 8)), img.crop((0, 200, 256, 208))
    assert diff(top, bottom) > 10  # sky gradient and ground differ


def test_label_is_drawn_bottom_left() -> None:
    img = render(PROMPT, 3, 512, 512)
    corner = img.crop((0, 480, 120, 512))
    # white glyphs with a black shadow: both extremes appear in the corner
    colors = {c for _, c in corner.getcolors(maxcolors=100_000)}
    assert (255, 255, 255) in colors and (0, 0, 0) in colors
    assert render("", 3, 512, 512).crop((0, 480, 120, 512)).tobytes() != corner.tobytes()


def test_tiny_sizes_do_not_crash_and_still_get_a_label() -> None:
    img = render("x" * 500, 5, 64, 64)
    assert (255, 255, 255) in {c for _, c in img.getcolors(maxcolors=100_000)}
    render("🎨 émoji and 中文", 5, 8, 8)


def test_init_image_blends_by_strength() -> None:
    init = Image.new("RGB", (300, 200), (10, 200, 90))
    drawn = render(PROMPT, 9, 128, 128)
    weak = render(PROMPT, 9, 128, 128, init=init, strength=0.0)
    strong = render(PROMPT, 9, 128, 128, init=init, strength=1.0)
    mid = render(PROMPT, 9, 128, 128, init=init, strength=0.5)
    flat = Image.new("RGB", (128, 128), (10, 200, 90))
    upper = (0, 0, 128, 96)  # above the label
    assert diff(weak.crop(upper), flat.crop(upper)) < 1
    assert strong.crop(upper).tobytes() == drawn.crop(upper).tobytes()
    assert 5 < diff(mid.crop(upper), flat.crop(upper)) < diff(drawn.crop(upper), flat.crop(upper))
    # the demo notice survives even strength 0
    assert (255, 255, 255) in {c for _, c in weak.getcolors(maxcolors=100_000)}


def test_init_image_in_other_modes_and_out_of_range_strength() -> None:
    init = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    img = render(PROMPT, 1, 96, 64, init=init, strength=-3)
    assert img.size == (96, 64)
    assert img.getpixel((48, 5)) == (255, 0, 0)  # clamped to 0: all init


def test_fast_enough_for_the_benchmark() -> None:
    """The throughput benchmark needs hundreds of renders per second per core; allow a wide
    margin for slow CI machines while still catching an accidental per-pixel loop."""
    render(PROMPT, 0, 512, 512)
    n = 20
    start = time.perf_counter()
    for seed in range(n):
        render(PROMPT, seed, 512, 512)
    per_512 = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for seed in range(n):
        render(PROMPT, seed, 64, 64)
    per_64 = (time.perf_counter() - start) / n
    assert per_512 < 0.010, f"512x512 took {per_512 * 1000:.2f} ms"
    assert per_64 < 0.002, f"64x64 took {per_64 * 1000:.2f} ms"
