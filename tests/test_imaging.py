from __future__ import annotations

import struct
import time
import zlib
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageDraw
from PIL.PngImagePlugin import PngInfo

from bot.errors import BadInput
from bot.imaging import (
    _decode_user_comment,
    encode_output_png,
    image_size,
    load_input_image,
    make_thumbnail,
    read_parameters,
)

A1111 = (
    "a lighthouse at dusk, volumetric light\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512"
)


# --- helpers ---------------------------------------------------------------------------


def save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    out = BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(BytesIO(data))
    im.load()
    return im


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def chunk(ctype: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(ctype + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    im = Image.new("RGB", (width, height), (0, 0, 255))
    ImageDraw.Draw(im).rectangle((0, 0, width // 2 - 1, height - 1), fill=(255, 0, 0))
    return im


def rotated_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def noisy(width: int, height: int) -> Image.Image:
    return Image.effect_noise((width, height), 60).convert("RGB")


def exif_with_comment(comment: bytes, orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


# --- load_input_image: acceptance and normalisation -------------------------------------


def test_png_round_trip_keeps_pixels_and_strips_metadata() -> None:
    src = halves(40, 30)
    info = PngInfo()
    info.add_text("parameters", A1111)
    info.add_text("Comment", "private note")
    data = save(src, "PNG", pnginfo=info, exif=exif_with_comment(b"ASCII\0\0\0gps here"))

    result = load_input_image(data)

    assert (result.width, result.height, result.source_format) == (40, 30, "PNG")
    assert result.parameters == A1111
    out = decode(result.data)
    assert out.format == "PNG" and out.mode == "RGB"
    assert out.tobytes() == src.tobytes()
    kinds = {c for c, _ in png_chunks(result.data)}
    assert kinds <= {b"IHDR", b"IDAT", b"IEND"}  # no text, no eXIf, no iCCP


def test_jpeg_and_webp_are_accepted() -> None:
    for fmt in ("JPEG", "WEBP"):
        result = load_input_image(save(noisy(33, 21), fmt))
        assert (result.width, result.height, result.source_format) == (33, 21, fmt)
        assert decode(result.data).mode == "RGB"


def test_exif_orientation_6_is_applied() -> None:
    data = save(halves(60, 40), "JPEG", quality=95, exif=rotated_exif())
    result = load_input_image(data)
    assert (result.width, result.height) == (40, 60)
    out = decode(result.data)
    # Orientation 6 means "rotate 90° clockwise to display": the left (red) half goes on top.
    top, bottom = out.getpixel((20, 5)), out.getpixel((20, 55))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert 0x0112 not in out.getexif()


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan/black: pure red
    result = load_input_image(save(cmyk, "JPEG", quality=95))
    out = decode(result.data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30


def test_icc_profiles_are_applied_or_ignored_but_never_kept() -> None:
    src = noisy(16, 16)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, b"not a real profile"):
        result = load_input_image(save(src, "PNG", icc_profile=icc))
        assert decode(result.data).tobytes() == src.tobytes()
        assert b"iCCP" not in {c for c, _ in png_chunks(result.data)}


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    im = Image.new("I;16", (3, 1))
    for x, v in enumerate((0, 32896, 65535)):
        im.putpixel((x, 0), v)
    data = save(im, "PNG")
    assert decode(data).mode == "I;16"  # really a 16-bit file
    out = decode(load_input_image(data).data)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize(
    ("make", "mode"),
    [
        (lambda: Image.new("LA", (4, 4), (100, 50)), "RGBA"),
        (lambda: Image.new("L", (4, 4), 77), "RGB"),
        (lambda: Image.new("1", (4, 4), 1), "RGB"),
        (lambda: Image.new("RGBA", (4, 4), (1, 2, 3, 4)), "RGBA"),
    ],
)
def test_modes_are_normalised(make, mode: str) -> None:  # type: ignore[no-untyped-def]
    out = decode(load_input_image(save(make(), "PNG")).data)
    assert out.mode == mode


def test_palette_png_with_transparency_keeps_alpha() -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    out = decode(load_input_image(save(im, "PNG", transparency=0)).data)
    assert out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0
    assert out.getpixel((1, 1)) == (255, 0, 0, 255)


# --- load_input_image: refusals --------------------------------------------------------


def test_oversize_bytes_refused_before_decoding() -> None:
    # Not an image at all: if it were decoded first, the error would be about the format.
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024)
    with pytest.raises(BadInput) as err:
        load_input_image(data, max_bytes=2 * 1024 * 1024)
    assert str(err.value) == "the image is 3.1 MB; the limit is 2 MB"


def test_default_limit_message() -> None:
    data = b"\0" * (12 * 1024 * 1024 + 300 * 1024)
    with pytest.raises(BadInput, match=r"^the image is 12\.3 MB; the limit is 10 MB$"):
        load_input_image(data)


def _bomb_png(width: int, height: int, *, real_pixels: bool) -> bytes:
    """A 1-bit greyscale PNG: 20000x20000 inflates to 50 MB of rows but stores in ~50 KB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if real_pixels:
        comp = zlib.compressobj(9)
        row = b"\0" * (1 + (width + 7) // 8)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        idat = b"not zlib at all"  # decoding would fail, so a size error proves no decode
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _bomb_png(20000, 20000, real_pixels=True)


def test_decompression_bomb_refused_cheaply(bomb: bytes) -> None:
    assert len(bomb) < 100_000
    start = time.perf_counter()
    with pytest.raises(BadInput, match="pixels"):
        load_input_image(bomb)
    assert time.perf_counter() - start < 0.5
    assert image_size(bomb) == (20000, 20000)  # header read only, no decode


def test_pixel_limit_checked_before_decode() -> None:
    # 8000x8000 is under Pillow's own global threshold; only our max_pixels stops it.
    data = _bomb_png(8000, 8000, real_pixels=False)
    with pytest.raises(BadInput) as err:
        load_input_image(data)
    assert str(err.value) == "the image is 8000x8000 (64 megapixels); the limit is 40 megapixels"
    with pytest.raises(BadInput) as err:
        load_input_image(save(noisy(100, 60), "PNG"), max_pixels=5000)
    assert str(err.value) == "the image is 100x60 (0.006 megapixels); the limit is 0.005 megapixels"


def test_truncated_jpeg_refused() -> None:
    data = save(noisy(200, 200), "JPEG", quality=90)
    with pytest.raises(BadInput, match=r"^the image is corrupt or truncated$"):
        load_input_image(data[: len(data) * 2 // 3])


def test_truncated_and_corrupt_png_refused() -> None:
    data = save(noisy(64, 64), "PNG")
    with pytest.raises(BadInput, match="corrupt or truncated"):
        load_input_image(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # breaks the IDAT CRC, which verify() checks
    with pytest.raises(BadInput, match="corrupt or truncated"):
        load_input_image(bytes(flipped))
    with pytest.raises(BadInput, match="corrupt or truncated"):
        load_input_image(data[:20])  # right signature, header cut off


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_other_formats_refused(fmt: str) -> None:
    data = save(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    assert decode(data).format == fmt  # Pillow could read it; we choose not to
    with pytest.raises(BadInput, match=r"^unsupported image format; send a PNG, JPEG or WebP$"):
        load_input_image(data)


def test_empty_and_junk_refused() -> None:
    with pytest.raises(BadInput, match="empty"):
        load_input_image(b"")
    with pytest.raises(BadInput, match="unsupported image format"):
        load_input_image(b"<html>not an image</html>")


# --- parameters ------------------------------------------------------------------------


def test_output_png_carries_parameters_in_text_chunk() -> None:
    data = encode_output_png(noisy(32, 32), A1111)
    chunks = dict(png_chunks(data))
    assert chunks[b"tEXt"] == b"parameters\0" + A1111.encode("latin-1")
    assert decode(data).info["parameters"] == A1111  # what A1111's own PNG Info reads
    assert read_parameters(data) == A1111
    assert load_input_image(data).parameters == A1111


def test_non_latin_parameters_use_itxt() -> None:
    text = "猫がピアノを弾く 🎹, Steps: 20"
    data = encode_output_png(Image.new("RGB", (8, 8)), text)
    kinds = [c for c, _ in png_chunks(data)]
    assert b"iTXt" in kinds and b"tEXt" not in kinds
    assert decode(data).info["parameters"] == text
    assert read_parameters(data) == text


def test_output_png_without_parameters_has_no_text() -> None:
    data = encode_output_png(Image.new("RGB", (8, 8)), "")
    assert [c for c, _ in png_chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    assert read_parameters(data) is None


def test_output_png_handles_odd_modes() -> None:
    data = encode_output_png(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "x")
    assert decode(data).mode == "RGB"


def test_read_parameters_from_ztxt_and_after_idat() -> None:
    info = PngInfo()
    info.add_text("parameters", A1111, zip=True)
    zdata = save(Image.new("RGB", (4, 4)), "PNG", pnginfo=info)
    assert b"zTXt" in [c for c, _ in png_chunks(zdata)]
    assert read_parameters(zdata) == A1111

    plain = save(Image.new("RGB", (4, 4)), "PNG")
    trailing = chunk(b"tEXt", b"parameters\0late text")
    late = plain[:-12] + trailing + plain[-12:]  # just before IEND
    assert read_parameters(late) == "late text"
    assert load_input_image(late).parameters == "late text"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_parameters_from_exif_user_comment(fmt: str) -> None:
    # A1111 writes JPEG/WebP parameters with piexif: b"UNICODE\0" + UTF-16BE text.
    comment = b"UNICODE\0" + A1111.encode("utf-16-be")
    data = save(noisy(24, 24), fmt, exif=exif_with_comment(comment))
    assert read_parameters(data) == A1111
    result = load_input_image(data)
    assert result.parameters == A1111
    assert b"Steps" not in result.data  # and the re-encoded PNG does not carry it


def test_user_comment_byte_orders_and_charsets() -> None:
    text = "héllo ✓, Steps: 20"
    assert _decode_user_comment(b"UNICODE\0" + text.encode("utf-16-le")) == text
    assert _decode_user_comment(b"UNICODE\0" + text.encode("utf-16-be")) == text
    assert _decode_user_comment(b"UNICODE\0" + text.encode("utf-16")) == text  # with BOM
    assert _decode_user_comment(b"ASCII\0\0\0plain\0") == "plain"
    assert _decode_user_comment(b"\0" * 8 + "ütf8".encode()) == "ütf8"
    # "一" (U+4E00) has a zero low byte; a lone CJK character must follow the declared order.
    assert _decode_user_comment(b"UNICODE\0" + "一".encode("utf-16-be")) == "一"
    le = b"UNICODE\0" + "一".encode("utf-16-le")
    assert _decode_user_comment(le, big_endian=False) == "一"


@settings(max_examples=60)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), max_size=60))
def test_a1111_style_comments_round_trip(prompt: str) -> None:
    text = f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7".strip(" ")
    raw = b"UNICODE\0" + text.encode("utf-16-be", "surrogatepass")
    assert _decode_user_comment(raw) == text.strip("\0 ")


def test_read_parameters_of_images_without_any() -> None:
    assert read_parameters(save(Image.new("RGB", (4, 4)), "JPEG")) is None
    assert read_parameters(save(Image.new("RGB", (4, 4)), "WEBP")) is None
    assert read_parameters(b"garbage") is None


# --- thumbnails and sizes --------------------------------------------------------------


def test_thumbnail_keeps_aspect_and_is_webp() -> None:
    thumb = decode(make_thumbnail(save(noisy(1000, 500), "PNG")))
    assert thumb.format == "WEBP"
    assert thumb.size == (256, 128)
    tall = decode(make_thumbnail(save(noisy(300, 900), "JPEG"), max_side=90))
    assert tall.size == (30, 90)


def test_thumbnail_never_upscales_and_keeps_alpha() -> None:
    small = decode(make_thumbnail(save(Image.new("RGBA", (40, 20), (9, 9, 9, 0)), "PNG")))
    assert small.size == (40, 20)
    assert small.mode == "RGBA"


def test_thumbnail_of_rotated_jpeg_is_upright() -> None:
    data = save(halves(400, 200), "JPEG", exif=rotated_exif())
    assert decode(make_thumbnail(data, max_side=100)).size == (50, 100)


def test_image_size_reads_headers() -> None:
    assert image_size(save(Image.new("RGB", (123, 45)), "PNG")) == (123, 45)
    assert image_size(save(Image.new("RGB", (77, 12)), "JPEG")) == (77, 12)
    assert image_size(save(Image.new("RGB", (31, 9)), "WEBP")) == (31, 9)
    with pytest.raises(BadInput, match="unsupported"):
        image_size(save(Image.new("RGB", (4, 4)), "GIF"))
    with pytest.raises(BadInput, match="corrupt"):
        image_size(save(Image.new("RGB", (4, 4)), "PNG")[:20])


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def png_with_big_icc_profile(profile_bytes: int = 5 * 1024 * 1024) -> bytes:
    """A valid 64x64 PNG carrying an ICC profile of ``profile_bytes`` (random, so it does not
    compress): past Pillow's 1 MB cap for inflated metadata."""
    buf = BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    png = buf.getvalue()
    iccp = _chunk(b"iCCP", b"big profile\0\0" + zlib.compress(random_bytes(profile_bytes), 1))
    return png[:33] + iccp + png[33:]  # right after IHDR, where the PNG spec puts it


def random_bytes(n: int) -> bytes:
    import random

    return random.Random(7).randbytes(n)


def png_claiming_more_rows_than_it_holds(width: int = 1, height: int = 100_000) -> bytes:
    """A header that says ``width`` x ``height``, and a complete zlib stream that ends after
    20 rows: about 100 bytes."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = (b"\0" + b"\xff\x00\x00" * width) * 20
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def test_a_big_icc_profile_does_not_make_a_valid_png_corrupt() -> None:
    data = png_with_big_icc_profile()
    assert len(data) > 5 * 1024 * 1024
    out = load_input_image(data, max_bytes=8 * 1024 * 1024)
    assert (out.width, out.height) == (64, 64)
    im = Image.open(BytesIO(out.data))
    assert im.getpixel((10, 10)) == (200, 10, 10)
    assert "icc_profile" not in im.info  # dropped, as every profile is


def test_a_big_text_chunk_does_not_make_a_valid_png_corrupt() -> None:
    buf = BytesIO()
    info = PngInfo()
    info.add_text("comment", random_bytes(2 * 1024 * 1024).hex()[: 2 * 1024 * 1024], zip=True)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG", pnginfo=info)
    assert load_input_image(buf.getvalue()).width == 32


def test_a_png_whose_data_ends_before_its_rows_do_is_refused_saying_so() -> None:
    data = png_claiming_more_rows_than_it_holds()
    assert len(data) < 120
    with pytest.raises(BadInput) as err:
        load_input_image(data)
    assert str(err.value) == (
        "the image is cut short: its header says 1x100000 pixels, "
        "but its data holds only about 20 of the 100000 rows"
    )


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "I;16"])
def test_complete_pngs_of_every_layout_pass_the_row_count(mode: str, interlace: int) -> None:
    im = Image.effect_noise((37, 23), 60).convert("L")
    im = im.convert(mode) if mode != "I;16" else im.convert("I").convert("I;16")
    buf = BytesIO()
    im.save(buf, "PNG", interlace=interlace)
    assert load_input_image(buf.getvalue()).width == 37


def test_an_interlaced_png_cut_short_is_refused() -> None:
    buf = BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "PNG", interlace=1)
    png = buf.getvalue()
    # keep the header, replace the pixel data by a complete stream of half of it
    ihdr_end = 33
    raw = zlib.decompress(b"".join(_idat_bodies(png)))
    short = _chunk(b"IDAT", zlib.compress(raw[: len(raw) // 2]))
    with pytest.raises(BadInput, match="cut short"):
        load_input_image(png[:ihdr_end] + short + _chunk(b"IEND", b""))


def _idat_bodies(png: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos + 12 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            out.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return out
