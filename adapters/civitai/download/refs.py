"""What to download: a reference (URL, AIR, ids) parsed, the file chosen from a version
(SafeTensor preferred), and Civitai's scan verdicts read.
"""

from __future__ import annotations

import functools
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import CivitaiNotFound
from adapters.civitai.api.types import ModelFile, ModelVersion
from adapters.civitai.download.errors import CivitaiArchived, TooBig, UnsafeModelFile, failure
from adapters.civitai.download.record import format_bytes
from adapters.civitai.text import LANGS, said
from bot.errors import BadInput
from bot.ids import parse_id
from bot.text import clean

log = logging.getLogger(__name__)


# --- what to download ---------------------------------------------------------------------------

# Ids are ASCII digits of at most 19 (a BIGINT); bot.ids.parse_id checks the range.
_DOWNLOAD_PATH = re.compile(r"/api/download/models/([0-9]{1,19})")
_MODEL_PATH = re.compile(r"/models/([0-9]{1,19})")
_VERSION_PATH = re.compile(r"/model-versions/([0-9]{1,19})")
_AIR = re.compile(r"civitai:([0-9]{1,19})@([0-9]{1,19})")
_OPTION_KEYS = ("type", "format", "size", "fp", "quantType")


@dataclass(frozen=True, slots=True)
class DownloadRef:
    """What a person pointed at: a version (or a model, meaning its newest version) and any
    file options carried by a download URL."""

    version_id: int | None
    model_id: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)


def _ref_id(digits: str, raw: object) -> int:
    """An id in a download reference; one out of range (or not ASCII digits) is refused."""
    number = parse_id(digits)
    if number is None:
        raise BadInput(
            f"{str(raw)[:80]!r} names no Civitai model version: its number is not a valid id"
        )
    return number


def parse_ref(text: str | int) -> DownloadRef:
    """A version id (``130072``), a download URL (``https://civitai.com/api/download/models/
    130072?type=VAE``), a model page (``https://civitai.com/models/4201?modelVersionId=130072``,
    or without the version: its newest), or an AIR (``urn:air:sd1:checkpoint:civitai:
    4201@130072``)."""
    if isinstance(text, int):
        return DownloadRef(_ref_id(str(text), text))
    raw = str(text).strip()
    if raw.isnumeric():
        return DownloadRef(_ref_id(raw, raw))
    air = _AIR.search(raw)
    if air:
        return DownloadRef(_ref_id(air.group(2), raw), _ref_id(air.group(1), raw))
    try:
        url = urllib.parse.urlsplit(raw if "://" in raw else "https://" + raw)
    except ValueError:  # "[" alone is an invalid IPv6 host to urlsplit
        url = urllib.parse.urlsplit("")
    query = dict(urllib.parse.parse_qsl(url.query))
    options = {k: v for k, v in query.items() if k in _OPTION_KEYS and v}
    if "fileId" in query and parse_id(query["fileId"]) is not None:
        options["fileId"] = query["fileId"]
    m = _DOWNLOAD_PATH.search(url.path)
    if m:
        return DownloadRef(_ref_id(m.group(1), raw), None, options)
    m = _VERSION_PATH.search(url.path)
    if m:
        return DownloadRef(_ref_id(m.group(1), raw), None, options)
    m = _MODEL_PATH.search(url.path)
    if m:
        version = parse_id(query.get("modelVersionId", ""))
        return DownloadRef(version, _ref_id(m.group(1), raw), options)
    raise BadInput(
        f"{raw[:80]!r} is not a Civitai model version: give its id (the number after "
        "modelVersionId=), a civitai.com/models/... page or a download link"
    )


def select_file(version: ModelVersion, options: Mapping[str, str]) -> ModelFile | None:
    """The file of ``version`` that ``options`` (type, format, size, fp, fileId) ask for: the
    primary file when none is given. Raises :class:`BadInput` naming what exists."""
    files = list(version.files)
    if not files:
        return None
    wanted_id = options.get("fileId")
    if wanted_id:
        found = next((f for f in files if str(f.id) == str(wanted_id)), None)
        if found is None:
            raise BadInput(f"model version {version.id} has no file {wanted_id}")
        return found
    if not any(options.get(k) for k in _OPTION_KEYS):
        primary = version.primary_file
        if primary is None:
            return None
        # the same kind of file as the primary one, a SafeTensor first (a pickle runs code)
        return _preferred([f for f in files if (f.type or "") == (primary.type or "")])

    def meta(f: ModelFile, key: str) -> str:
        m = f.metadata
        value = getattr(m, {"quantType": "quant_type"}.get(key, key), None) if m else None
        return str(value or "")

    chosen = files
    for key in _OPTION_KEYS:
        want = options.get(key)
        if not want:
            continue
        value: Callable[[ModelFile], str] = (
            (lambda f: f.type or "") if key == "type" else functools.partial(meta, key=key)
        )
        matching = [f for f in chosen if value(f).lower() == want.lower()]
        if not matching:
            have = sorted({value(f) for f in chosen if value(f)})
            listed = ", ".join(have) if have else "none listed"
            raise BadInput(
                f"model version {version.id} has no file with {key} {want!r} (it has: {listed})"
            )
        chosen = matching
    return _preferred(chosen)


def _preferred(files: list[ModelFile]) -> ModelFile:
    """A SafeTensor file over a PickleTensor (or other) one, the primary first among
    equals, then Civitai's order."""
    return min(
        files,
        key=lambda f: (
            ((f.metadata.format if f.metadata else None) or "").lower() != "safetensor",
            not f.primary,
        ),
    )


SCAN_OK = "success"


def scan_problems(file: ModelFile, lang: str = "en") -> list[str]:
    """What Civitai's scans say against ``file``: each scan (pickle, virus) whose verdict is
    not "Success" (Danger, Pending, Error, or none at all), with Civitai's message."""
    problems = []
    scans = (
        ("cv.dl.pickle_scan", file.pickle_scan_result, file.pickle_scan_message),
        ("cv.dl.virus_scan", file.virus_scan_result, file.virus_scan_message),
    )
    for label, verdict, message in scans:
        if (verdict or "").strip().lower() == SCAN_OK:
            continue
        scan = said(lang, label)
        line = (
            said(lang, "cv.dl.scan_says", scan=scan, verdict=clean(verdict, multiline=False)[:40])
            if verdict
            else said(lang, "cv.dl.scan_none", scan=scan)
        )
        note = clean(message or "", multiline=False)[:120]
        problems.append(line + (said(lang, "cv.dl.note", note=note) if note else ""))
    return problems


def _joined(lang: str, parts: list[str]) -> str:
    return ("；" if lang == "zh" else "; ").join(parts)


def version_label(version: ModelVersion) -> str:
    model = version.model.name if version.model and version.model.name else None
    if model and version.name:
        return f"{model} {version.name}"
    return model or version.name or f"model version {version.id}"


async def choose_file(
    client: CivitaiClient,
    parsed: DownloadRef,
    options: dict[str, Any],
    *,
    allow_unsafe: bool,
    by: str | None,
    max_bytes: int,
) -> tuple[ModelVersion, ModelFile]:
    """The version ``parsed`` names (a model's latest when it names a model) and the file to
    download from it, asked afresh (scan verdicts must be Civitai's latest). Refuses what is
    archived, missing, unsafe (unless ``allow_unsafe``: logged with ``by``, and noted in
    ``options``) or over ``max_bytes``."""
    version_id = parsed.version_id
    if version_id is None:
        assert parsed.model_id is not None
        model = await client.model(parsed.model_id, fresh=True)
        if model.mode == "Archived":
            raise failure(
                CivitaiArchived, "dl_archived", name=model.name or f"model {parsed.model_id}"
            )
        latest = model.latest_version
        if latest is None or latest.id is None:
            raise CivitaiNotFound(f"Civitai model {parsed.model_id} has no published version")
        version_id = latest.id
    # never from the lookup cache: the scan verdicts must be Civitai's latest
    version = await client.model_version(version_id, fresh=True)
    name = version_label(version)
    mode = version.model.mode if version.model else None
    if mode == "Archived":
        raise failure(CivitaiArchived, "dl_archived", name=name)
    file = select_file(version, options)
    if file is None:
        raise CivitaiNotFound(f"Civitai lists no files for {name}")
    unsafe = scan_problems(file)
    if unsafe and not allow_unsafe:
        raise failure(
            UnsafeModelFile,
            "dl_unsafe",
            file=file.name or "the file",
            name=name,
            verdicts={lang: _joined(lang, scan_problems(file, lang)) for lang in LANGS},
        )
    if unsafe:
        log.warning(
            "civitai: %s downloads %s (file %s of %s, version %d) despite its scans "
            "(--allow-unsafe): %s",
            by or "someone",
            file.name,
            file.id,
            name,
            version_id,
            "; ".join(unsafe),
        )
        options["allow_unsafe"] = by or True
    listed = file.size_bytes
    if listed is not None and listed > max_bytes:
        raise failure(
            TooBig,
            "dl_too_big",
            file=file.name or "the file",
            name=name,
            size=format_bytes(listed),
            limit=format_bytes(max_bytes),
        )
    return version, file
