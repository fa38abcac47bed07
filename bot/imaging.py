"""Checking images people send us and encoding the images we send back.

Uploaded images are hostile until proven otherwise: a few kilobytes can declare billions of
pixels (a decompression bomb), a file can be cut off halfway, and EXIF can carry location
data the sender did not mean to share. ``load_input_image`` therefore bounds size before
decoding, decodes fully once to prove the file is whole, and re-encodes to a plain PNG so
nothing but pixels (and, separately, any A1111 generation parameters) survives.

Everything here is synchronous and CPU-bound; callers run it with ``asyncio.to_thread``.
Nothing here touches process-global Pillow settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters), so concurrent threads cannot
weaken each other's checks.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from PIL import Image, ImageCms, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from bot.errors import BadInput

__all__ = [
    "ACCEPTED_FORMATS",
    "InputImage",
    "encode_output_png",
    "image_size",
    "load_input_image",
    "make_preview",
    "make_thumbnail",
    "read_parameters",
    "thumbnail_of",
]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
PARAMETERS_KEY = "parameters"  # the text chunk AUTOMATIC1111 (and most readers) use

# Measured on 512x512 (see the module tests): level 1 with the RLE strategy is as fast as
# any other non-zero setting and gives the smallest files for detailed pictures; higher
# levels cost 2-5x the time for a few percent.
_PNG_SAVE = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# Thumbnails are made from files we already accepted or generated; this only stops a
# stray huge file from being decoded in full on the way to a 256 px preview.
_THUMB_MAX_PIXELS = 100_000_000
# Pictures from elsewhere (Civitai examples) shown in a chat: what is decoded at most, after
# JPEG's reduced-scale decoding. 25 MP of RGBA is 100 MB; a 100 MP PNG peaked near 500 MB.
PREVIEW_MAX_PIXELS = 25_000_000
_MAX_TEXT_BYTES = 1024 * 1024  # cap when inflating zTXt/iTXt, so text cannot be a zip bomb

_UNSUPPORTED = "unsupported image format; send a PNG, JPEG or WebP"
_CORRUPT = "the image is corrupt or truncated"

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


@dataclass(frozen=True)
class InputImage:
    """A decoded, normalised upload: RGB or RGBA pixels as a metadata-free PNG."""

    data: bytes
    width: int
    height: int
    source_format: str
    parameters: str | None


def load_input_image(
    data: bytes, *, max_bytes: int = 10 * 1024 * 1024, max_pixels: int = 40_000_000
) -> InputImage:
    """Validate an uploaded image and return it re-encoded as a clean PNG.

    Raises ``BadInput`` with a message the sender can act on; any other exception from here
    would be a bug.
    """
    if len(data) > max_bytes:
        raise BadInput(f"the image is {_mb(len(data), up=True)}; the limit is {_mb(max_bytes)}")
    if not data:
        raise BadInput("the image is empty")

    png = data.startswith(_PNG_MAGIC)
    pixels = _png_for_decoding(data) if png else data
    im: Image.Image = _open(pixels, max_pixels)
    source_format = im.format or "PNG"
    try:
        im.verify()
    except Exception as exc:
        raise BadInput(_CORRUPT) from exc
    if png:
        _check_png_complete(pixels)

    # verify() leaves the image unusable, so decode from a fresh handle.
    im = _open(pixels, max_pixels, formats=(source_format,))
    try:
        im.load()
    except Exception as exc:
        raise BadInput(_CORRUPT) from exc

    parameters = _parameters_of(im, data)
    try:
        ImageOps.exif_transpose(im, in_place=True)  # in place: no full copy when upright
    except Exception:
        pass  # malformed EXIF is the sender's camera's fault; keep the pixels as they are
    im = _to_rgb(im)
    return InputImage(
        data=_png_bytes(im),
        width=im.width,
        height=im.height,
        source_format=source_format,
        parameters=parameters,
    )


def encode_output_png(image: Image.Image, parameters: str) -> bytes:
    """PNG with the generation parameters where A1111-compatible tools look for them.

    tEXt is Latin-1 only; anything else goes into a UTF-8 iTXt chunk under the same key,
    which A1111, ComfyUI and Pillow-based readers all accept.
    """
    info = PngInfo()
    if parameters:
        try:
            parameters.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(PARAMETERS_KEY, parameters)
        else:
            info.add_text(PARAMETERS_KEY, parameters)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = _to_rgb(image)
    return _png_bytes(image, pnginfo=info)


def read_parameters(data: bytes) -> str | None:
    """The A1111 ``parameters`` text of a PNG, JPEG or WebP, without decoding any pixels.

    PNG chunks are walked by hand: Pillow only exposes text chunks that follow the pixel
    data after a full decode, which would make this as expensive (and as exposed to bombs)
    as loading the picture.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_parameters(data)
    try:
        im = Image.open(BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception:
        return None
    return _exif_parameters(im)


def make_thumbnail(data: bytes, *, max_side: int = 256) -> bytes:
    """A small WebP preview, same aspect ratio, never upscaled."""
    return thumbnail_of(_decode_upright(data, max_side), max_side=max_side)


def make_preview(
    data: bytes,
    *,
    max_side: int = 1280,
    max_pixels: int = PREVIEW_MAX_PIXELS,
    quality: int = 85,
) -> bytes:
    """A picture from elsewhere (a Civitai example) made fit to show in a chat: decoded
    under the pixel budget, upright, at most ``max_side`` a side, flattened onto white, as a
    JPEG without metadata, which every chat platform shows inline. Raises ``BadInput`` when
    the bytes are not a PNG, JPEG or WebP picture, or when decoding them would take more
    than ``max_pixels`` (read from the header: nothing is decoded then). A job's live
    preview goes through here too, smaller and at a lower ``quality``."""
    im = _to_rgb(_decode_upright(data, max_side, max_pixels))
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        im = flat
    im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = BytesIO()
    im.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _decode_upright(data: bytes, max_side: int, max_pixels: int = _THUMB_MAX_PIXELS) -> Image.Image:
    """Decode, at a reduced scale where JPEG allows (``max_side`` is what is needed), and
    turn upright by the EXIF orientation. Refused before decoding when what would be decoded
    (after JPEG's reduction) is over ``max_pixels``."""
    im = _open(data, None)
    width, height = im.size
    if im.format == "JPEG":
        im.draft("RGB", (max_side, max_side))  # let libjpeg decode at 1/2..1/8 scale
    decoded = im.size[0] * im.size[1]
    if decoded > max_pixels:
        raise BadInput(
            f"the image is {width}x{height} ({_mp(width * height)}); the limit is {_mp(max_pixels)}"
        )
    try:
        im.load()
        return ImageOps.exif_transpose(im)
    except Exception as exc:
        raise BadInput(_CORRUPT) from exc


def thumbnail_of(image: Image.Image, *, max_side: int = 256) -> bytes:
    """``make_thumbnail`` for a picture already in memory (one we just generated)."""
    im = _to_rgb(image)
    if im is image:
        im = im.copy()  # thumbnail() works in place; leave the caller's picture alone
    im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = BytesIO()
    im.save(out, "WEBP", quality=80, method=2)  # method 2: near-best size, ~30% faster than 4
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone; the pixel data is not decoded."""
    if len(data) >= 24 and data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return _open(data, None).size


# --- helpers ---------------------------------------------------------------------------


def _open(
    data: bytes, max_pixels: int | None, formats: tuple[str, ...] = ACCEPTED_FORMATS
) -> ImageFile.ImageFile:
    """Open lazily (header only) and enforce the pixel budget before anything decodes.

    Pillow's own bomb guard is a process-wide setting shared by every thread; our explicit
    ``max_pixels`` check is the one that counts. Pillow's error (over twice its global
    limit) and warning (if someone turned warnings into errors) are mapped to the same
    user-facing message.
    """
    try:
        im = Image.open(BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput("the image has too many pixels to process") from exc
    except UnidentifiedImageError as exc:
        if _sniff(data) is not None:  # right magic bytes, broken header
            raise BadInput(_CORRUPT) from exc
        raise BadInput(_UNSUPPORTED) from exc
    except Exception as exc:
        raise BadInput(_CORRUPT) from exc
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise BadInput(
            f"the image is {width}x{height} ({_mp(width * height)}); the limit is {_mp(max_pixels)}"
        )
    return im


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# Bytes per pixel sample set, by PNG colour type: grey, RGB, palette, grey+alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(type, start, end)`` of each whole chunk after the signature, up to IEND; a chunk
    cut off by the end of the data ends the walk (the decoder reports it)."""
    pos, end = 8, len(data)
    while pos + 12 <= end:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        stop = pos + 12 + length
        if stop > end:
            return
        yield ctype, pos, stop
        pos = stop
        if ctype == b"IEND":
            return


def _png_for_decoding(data: bytes) -> bytes:
    """The PNG as Pillow should see it: without text chunks (we read the parameters from the
    original bytes ourselves, and Pillow refuses a file whose text is over its 1 MB cap)
    and without an ICC profile Pillow would refuse for its size: the profile is dropped
    from what we keep anyway, so a picture is not refused over metadata."""
    parts = [data[:8]]
    dropped = False
    for ctype, start, stop in _png_chunks(data):
        if ctype in _TEXT_CHUNKS or (
            ctype == b"iCCP" and not _icc_fits(data[start + 8 : stop - 4])
        ):
            dropped = True
            continue
        parts.append(data[start:stop])
    return b"".join(parts) if dropped else data


def _icc_fits(body: bytes) -> bool:
    """Whether an iCCP chunk's profile inflates within Pillow's cap (name, NUL, method,
    then zlib data)."""
    name_end = body.find(b"\0")
    if name_end < 0:
        return True  # malformed: Pillow says so
    try:
        d = zlib.decompressobj()
        out = d.decompress(body[name_end + 2 :], PngImagePlugin.MAX_TEXT_CHUNK + 1)
    except zlib.error:
        return True  # a broken profile Pillow ignores on its own
    return len(out) <= PngImagePlugin.MAX_TEXT_CHUNK


def _check_png_complete(data: bytes) -> None:
    """Refuse a PNG whose pixel data ends before its picture does.

    Pillow treats the end of the compressed stream as the end of the picture and leaves
    the missing rows blank, so a file that claims 1x100000 pixels and holds 100 bytes would
    decode "fine". The rows are counted here instead: the inflated IDAT data must cover
    every row (and every interlace pass) the header declares.
    """
    header = next(_png_chunks(data), None)
    if header is None or header[0] != b"IHDR" or header[2] - header[1] != 25:
        return  # Pillow has already refused what this would
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _PNG_CHANNELS.get(colour)
    if channels is None or width == 0 or height == 0:
        return
    bits = channels * depth

    def rows(w: int, h: int) -> int:  # a filter byte, then the packed samples, per row
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if interlace:
        need = sum(
            rows(max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy)))
            for x0, y0, dx, dy in _ADAM7
        )
    else:
        need = rows(width, height)
    got = 0
    inflater = zlib.decompressobj()
    try:
        for ctype, start, stop in _png_chunks(data):
            if ctype != b"IDAT":
                continue
            pending = data[start + 8 : stop - 4]
            while pending and got < need:
                got += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
            if got >= need:
                return
    except zlib.error as exc:
        raise BadInput(_CORRUPT) from exc
    rows_held = got * height // need
    raise BadInput.of("error.image_short", width=width, height=height, rows=rows_held)


def _sniff(data: bytes) -> str | None:
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Reduce any decoded mode to RGB, or RGBA when there is transparency to keep.

    Providers expect 8-bit sRGB. CMYK and non-sRGB RGB are colour-managed when the file
    carries an ICC profile (otherwise CMYK photos come out garish); 16-bit greys are scaled
    rather than clipped, which is what a plain ``convert`` would do.
    """
    mode = im.mode
    if mode in ("RGB", "CMYK"):
        return _icc_to_srgb(im)
    if mode == "RGBA":
        return im
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode in ("LA", "La", "RGBa"):
        return im.convert("RGBA")
    if mode == "L" and "transparency" in im.info:
        return im.convert("RGBA")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples: map 0..65535 to 0..255 (v * 1/257), then to grey.
        grey = im.convert("I").point(lambda v: v * (1 / 257)).convert("L")
        return grey.convert("RGB")
    if mode == "F":
        low, high = cast(tuple[float, float], im.getextrema())  # one band: (min, max)
        scale = 255 / (high - low) if high > low else 0
        return im.point(lambda v: (v - low) * scale).convert("L").convert("RGB")
    return im.convert("RGB")  # 1, L, YCbCr, LAB, HSV


def _icc_to_srgb(im: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile when there is one; fall back to a plain
    conversion when the profile is missing or unusable (broken profiles are common)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(BytesIO(icc))
            if im.mode == "RGB" and ImageCms.getProfileDescription(src).startswith("sRGB"):
                return im  # already what we want; the transform would cost ~20 ns/pixel
            srgb = ImageCms.createProfile("sRGB")  # per call: lcms handles are not shared safely
            out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
        except Exception:
            out = None
        if out is not None:
            return out
    return im if im.mode == "RGB" else im.convert("RGB")


def _png_bytes(im: Image.Image, **extra: object) -> bytes:
    # A bare copy of the pixels: Pillow's PNG writer would otherwise carry over the ICC
    # profile and transparency key from ``info``, which we have already applied or dropped.
    if im.info:
        im = im.copy()
        im.info = {}
    out = BytesIO()
    im.save(out, "PNG", **_PNG_SAVE, **extra)
    return out.getvalue()


def _parameters_of(im: Image.Image, data: bytes) -> str | None:
    if im.format == "PNG":
        return _png_parameters(data)
    return _exif_parameters(im)


def _png_parameters(data: bytes) -> str | None:
    """Find a tEXt, zTXt or iTXt chunk keyed ``parameters`` in raw PNG bytes."""
    pos = 8
    end = len(data)
    while pos + 12 <= end:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IEND" or len(body) < length:
            break
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, sep, rest = body.partition(b"\0")
        if not sep or key != PARAMETERS_KEY.encode():
            continue
        text = _decode_text_chunk(ctype, rest)
        if text:
            return text
    return None


def _decode_text_chunk(ctype: bytes, rest: bytes) -> str | None:
    try:
        if ctype == b"tEXt":
            return rest.decode("latin-1")
        if ctype == b"zTXt":  # compression method byte, then zlib data
            return _inflate(rest[1:]).decode("latin-1")
        # iTXt: compressed flag, method, language tag\0, translated keyword\0, text
        flag = rest[0]
        _lang, _, rest = rest[2:].partition(b"\0")
        _tkey, _, text = rest.partition(b"\0")
        return (_inflate(text) if flag else text).decode("utf-8", "replace")
    except (IndexError, zlib.error):
        return None


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    return d.decompress(data, _MAX_TEXT_BYTES)


def _exif_parameters(im: Image.Image) -> str | None:
    """A1111 stores parameters of JPEG/WebP output in EXIF UserComment."""
    try:
        exif = im.getexif()
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT) or exif.get(_USER_COMMENT)
    except Exception:
        return None
    if isinstance(comment, str):
        return comment.strip("\0 ") or None
    if not isinstance(comment, bytes):
        return None
    return _decode_user_comment(comment, big_endian=exif.endian != "<") or None


def _decode_user_comment(raw: bytes, *, big_endian: bool = True) -> str:
    """EXIF UserComment: an 8-byte charset id, then the text.

    "UNICODE" is UTF-16 in the byte order of the EXIF block (A1111, via piexif, writes
    big-endian throughout), but some tools write little-endian regardless. Parameters text
    is mostly ASCII, whose high bytes are zero, so a clear majority of zeros on one side
    overrides the declared order; short or non-Latin text keeps the declared order.
    """
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", "replace")
        else:
            body = body[: len(body) // 2 * 2]
            zeros_if_be, zeros_if_le = body[0::2].count(0), body[1::2].count(0)
            if zeros_if_be > 2 * zeros_if_le + 2:
                big_endian = True
            elif zeros_if_le > 2 * zeros_if_be + 2:
                big_endian = False
            text = body.decode("utf-16-be" if big_endian else "utf-16-le", "replace")
    elif prefix == b"ASCII\0\0\0":
        text = body.decode("latin-1")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", "replace")
    elif prefix == b"\0" * 8:
        text = body.decode("utf-8", "replace")
    else:
        text = raw.decode("utf-8", "replace")
    return text.strip("\0 ")


def _mb(n: int, *, up: bool = False) -> str:
    """Megabytes for messages; rounded up for the actual size so that an image just over
    the limit never reads as being exactly at it."""
    value = n / (1024 * 1024)
    if up:
        value = math.ceil(value * 10) / 10
    return f"{value:.1f}".removesuffix(".0") + " MB"


def _mp(pixels: int) -> str:
    mega = pixels / 1_000_000
    return (f"{mega:.0f}" if mega >= 100 else f"{mega:.3g}") + " megapixels"
