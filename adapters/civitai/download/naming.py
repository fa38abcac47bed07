"""File names: from ``Content-Disposition``, sanitized (no directories, no traversal, no
reserved or invisible characters), and suffixed on a clash.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import urllib.parse
from pathlib import Path

from adapters.civitai.download.folders import PART_SUFFIX
from bot.text import clean

log = logging.getLogger(__name__)


# --- file names ---------------------------------------------------------------------------------

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
# Windows device names, whatever follows the first dot (NUL.tar.gz is NUL too); the
# superscript digits count as well.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"{dev}{i}" for dev in ("com", "lpt") for i in (*"123456789", "¹", "²", "³")}
)


def _visible(c: str) -> bool:
    """Not a control, format (U+202E, zero-width...), surrogate, private-use or unassigned
    character, nor a line or paragraph separator."""
    category = unicodedata.category(c)
    return not (category.startswith("C") or category in ("Zl", "Zp"))


MAX_NAME_BYTES = 200


def filename_from_disposition(header: str | None) -> str | None:
    """The file name in a ``Content-Disposition`` header (``filename*=UTF-8''...`` preferred
    over ``filename="..."``), unsanitized; ``None`` if there is none."""
    if not header:
        return None
    params: dict[str, str] = {}
    for m in re.finditer(
        r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', ";" + header.split(";", 1)[-1]
    ):
        key, value = m.group(1).lower(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key, value)
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            return urllib.parse.unquote(encoded or extended, encoding=charset or "utf-8")
        except LookupError:
            return urllib.parse.unquote(encoded or extended)
    return params.get("filename") or None


def sanitize_filename(raw: str | None, fallback: str = "model.bin") -> str:
    """A file name safe to create in a model folder: only the last path component (no
    ``../``, no absolute paths, no drive letters), no control or reserved characters, no
    leading dots, no Windows device names, at most 200 bytes (the extension kept), never
    ending in ``.part``. Falls back to ``fallback`` (sanitized too) when nothing is left."""
    name = unicodedata.normalize("NFC", str(raw or "")).replace("\\", "/").split("/")[-1]
    # C0 controls become "_" as reserved characters do; C1 and bidi/format characters
    # (U+202E turns "gpj.exe" around) are dropped.
    name = clean(_UNSAFE_CHARS.sub("_", name), multiline=False)
    name = "".join(c for c in name if _visible(c))
    trimmed = None
    while trimmed != name:  # ". .x" and ".\u3000x": until nothing more comes off
        trimmed, name = name, name.strip().lstrip(".").rstrip(". ")
    if not name or set(name) <= {"_", "."}:
        if raw == fallback or not fallback:
            return "model.bin"
        return sanitize_filename(fallback, "model.bin")
    _stem, dot, ext = name.rpartition(".")
    if not dot:
        ext = ""
    if name.split(".", 1)[0].rstrip(" ").lower() in _RESERVED:
        name = "_" + name
    if name.lower().endswith(PART_SUFFIX):
        name += "_"
    if len(name.encode()) > MAX_NAME_BYTES:
        suffix = ("." + ext) if dot and len(ext.encode()) < 20 else ""
        budget = MAX_NAME_BYTES - len(suffix.encode())
        cut = name[: len(name) - len(suffix)] if suffix else name
        while len(cut.encode()) > budget:
            cut = cut[:-1]
        name = cut.rstrip(". ") + suffix
    return name


def _suffixed(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot and stem else f"{name}-{n}"


def part_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + PART_SUFFIX)
