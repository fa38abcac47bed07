"""An async client of the public Civitai REST API (``/api/v1``).

What it does for its callers (see ``../shared/api/civitai.md`` for the API's own behaviour):

* **Auth.** The optional API key goes in ``Authorization: Bearer``; never in a URL (no
  ``?token=``), never in a log line, an error message or a ``repr``.
* **Retries.** 429, 5xx, timeouts and dropped connections are retried with exponential
  backoff and jitter; a ``Retry-After`` header is honoured (up to ``max_retry_after``). The
  deep-paging 429 ("too many pages") is not a rate limit and is never retried.
* **Not JSON.** A web page where JSON was expected (a Cloudflare challenge) raises
  :class:`CivitaiChallenge` with a clear message instead of a parse error.
* **Pagination.** :meth:`CivitaiClient.iter_images` / :meth:`CivitaiClient.iter_models`
  follow ``metadata.nextCursor`` to the end and stop cleanly (one warning) on the known
  server bugs: a cursor seen before, a page of nothing but ids already seen, an empty page
  that still carries a cursor. Page-numbered endpoints never go past the server's deep-paging
  guard (``page * limit > 1000``).
* **Lenient types.** Every field is optional, enums are open strings, unknown keys are kept
  (``.raw`` holds the item as it came), a field of the wrong type becomes its default instead
  of failing the whole response. Image ``meta`` is read in both its flat and nested
  (``{"id", "meta": {...}}``) shapes.
* **NSFW** is a browsing-level bitmask (:func:`browsing_level`): PG=1, PG13=2, R=4, X=8,
  XXX=16. The old names (None, Soft, Mature, X), booleans and the chat policies (allow,
  blur, block) are accepted. Results are also filtered on our side, so a PG request never
  returns an R/X item even when the server forgets to filter (``query`` + ``nsfw``).

Errors are :class:`CivitaiError` (a :class:`bot.errors.UserError`): one line a person can act
on. Nothing here downloads model files; that is a separate module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from aiolimiter import AsyncLimiter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from adapters.http import TooLarge, backoff_s, read_capped, retry_after_s
from bot.errors import BadInput, Forbidden, LimitReached, NotFound, UserError
from bot.fetch import make_client
from bot.grammar import MAX_SEED
from bot.infotext import NEGATIVE_PREFIX, format_number, quote
from bot.params import GenerationParams
from bot.text import clean, clean_any

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://civitai.com"
API_PREFIX = "/api/v1"
USER_AGENT = "sdhost/0.1 (civitai api client)"  # never a browser UA

# The server refuses ``page * limit`` above this with a 429 (deep-paging guard).
MAX_PAGED_ITEMS = 1000
# Lookups (a model, a version, an image, a version by file hash) are kept this long, this many
# at most (least recently used out first), so repeated /civitai lookups and "use" after
# "image" ask Civitai once; Civitai's own edge caches these for 300 s. Listings and the
# harvest are never cached. ``CivitaiClient(cache_ttl_s=0)`` turns it off.
CACHE_TTL_S = 300.0
CACHE_SIZE = 512
IMAGES_MAX_LIMIT = 200
MODELS_MAX_LIMIT = 100
TAGS_MAX_LIMIT = 200
BULK_HASHES_MAX = 100
BULK_HASH_IDS_MAX = 10_000

# Known values, for help texts and completion. Never enforced: the server decides, and new
# values appear (Wildcards broke a strict client once).
MODEL_TYPES = (
    "Checkpoint",
    "TextualInversion",
    "Hypernetwork",
    "AestheticGradient",
    "LORA",
    "LoCon",
    "DoRA",
    "Controlnet",
    "Upscaler",
    "MotionModule",
    "VAE",
    "TextEncoder",
    "UNet",
    "CLIPVision",
    "Poses",
    "Wildcards",
    "Workflows",
    "ComfyWorkflows",
    "Detection",
    "VisionLanguage",
    "CLIP",
    "LLM",
    "Other",
)
MODEL_SORTS = (
    "Highest Rated",
    "Most Downloaded",
    "Most Liked",
    "Most Discussed",
    "Most Collected",
    "Most Images",
    "Newest",
    "Oldest",
)
IMAGE_SORTS = ("Most Reactions", "Most Comments", "Most Collected", "Newest", "Oldest", "Random")
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")

# --- NSFW browsing levels -----------------------------------------------------------------------

PG, PG13, R, X, XXX, BLOCKED = 1, 2, 4, 8, 16, 32
PUBLIC, SFW, ALL, NSFW_ONLY = PG, PG | PG13, PG | PG13 | R | X | XXX, R | X | XXX | BLOCKED
# What a policy word means, as "everything up to this level" (the old names are cumulative).
_POLICY_LEVELS = {
    # the API's deprecated names
    "none": PG,
    "soft": SFW,
    "mature": PG | PG13 | R,
    "x": ALL,
    "blocked": BLOCKED,
    # the level names, cumulatively
    "pg": PG,
    "pg13": SFW,
    "pg-13": SFW,
    "r": PG | PG13 | R,
    "xxx": ALL,
    # the reference's named sets
    "public": PUBLIC,
    "safe": PUBLIC,
    "sfw": SFW,
    "all": ALL,
    "nsfw": NSFW_ONLY,
    # booleans as text: NSFW allowed or not
    "true": ALL,
    "yes": ALL,
    "on": ALL,
    "false": PG,
    "no": PG,
    "off": PG,
    # the chats' NSFW policies (bot.config): blur/spoiler still show NSFW, hidden behind a click
    "allow": ALL,
    "blur": ALL,
    "spoiler": ALL,
    "block": PG,
}
# A single image's deprecated ``nsfwLevel`` string, as the server maps it back.
_IMAGE_LEVEL_NAMES = {"none": PG, "soft": PG13, "mature": R, "x": X, "blocked": BLOCKED}
# Older shapes (version images, models) carry only ``nsfw: true|false``: false is PG; true
# says only "not PG", so it counts as X (civitai.md §0: X is what "nsfw" meant before the
# levels), shown where X is allowed, hidden under the PG and SFW defaults.
_NSFW_TRUE = X


def _old_level(value: Any) -> int | None:
    """A level from the older fields: ``nsfw`` true/false, or an old level name."""
    if isinstance(value, bool):
        return _NSFW_TRUE if value else PG
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return _NSFW_TRUE if word == "true" else PG
        return _IMAGE_LEVEL_NAMES.get(word)
    return None


NsfwPolicy = bool | int | str | Iterable[bool | int | str]


def browsing_level(policy: NsfwPolicy | None) -> int:
    """The browsing-level bitmask for ``policy``.

    ``None`` is PG only (the API's own default). ``True``/``False`` mean NSFW allowed (31) or
    not (1). An int is taken as a bitmask (1..63). Words: the old names ``None`` (1),
    ``Soft`` (3), ``Mature`` (7), ``X`` (31), ``Blocked`` (32); the levels ``PG``, ``PG13``,
    ``R``, ``XXX`` (each meaning "up to"); ``safe``/``public`` (1), ``sfw`` (3), ``all`` (31),
    ``nsfw`` (60, NSFW only, as the reference defines it); a chat's ``allow``/``blur``/
    ``spoiler`` (31) or ``block`` (1). Comma lists and iterables are OR-ed together.
    """
    if policy is None:
        return PG
    if isinstance(policy, bool):
        return ALL if policy else PG
    if isinstance(policy, int):
        if not 1 <= policy <= 63:
            raise ValueError(f"a browsing level is a bitmask from 1 to 63, not {policy}")
        return policy
    if isinstance(policy, str):
        words = [w.strip() for w in policy.split(",") if w.strip()]
        if not words:
            raise ValueError("an empty NSFW policy")
        mask = 0
        for word in words:
            if word.isascii() and word.isdigit():
                mask |= browsing_level(int(word))
                continue
            level = _POLICY_LEVELS.get(word.lower().replace(" ", ""))
            if level is None:
                known = "None, Soft, Mature, X, PG, PG13, R, XXX, safe, sfw, all, allow, block"
                raise ValueError(f"unknown NSFW level {word!r} (use one of {known})")
            mask |= level
        return mask
    mask = 0
    for part in policy:
        mask |= browsing_level(part)
    if not mask:
        raise ValueError("an empty NSFW policy")
    return mask


def level_allowed(level: int | None, mask: int) -> bool:
    """Whether something at ``level`` (a bitmask, ``None`` when unknown) may be shown under
    ``mask``. An unknown level is shown only when every NSFW level is allowed."""
    if level is None or level <= 0:
        return mask & (R | X | XXX) == (R | X | XXX)
    return bool(level & mask)


# --- errors -----------------------------------------------------------------------------------


class CivitaiError(UserError):
    """Something went wrong talking to Civitai; ``str(err)`` is one line to show a person."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable


class CivitaiNotFound(CivitaiError, NotFound):
    pass


class CivitaiFiltered(CivitaiNotFound):
    """It exists, but its NSFW level is not allowed here."""


class CivitaiUnauthorized(CivitaiError, Forbidden):
    """401: an API key is needed, or the one configured was refused."""


class CivitaiForbidden(CivitaiError, Forbidden):
    pass


class CivitaiRateLimited(CivitaiError, LimitReached):
    pass


class CivitaiUnavailable(CivitaiError):
    """5xx, timeouts, connection failures, after the retries."""


class CivitaiBadRequest(CivitaiError, BadInput):
    """400: the server rejected a parameter; the message is the server's."""


class CivitaiPagingLimit(CivitaiBadRequest):
    """The deep-paging guard: ``page * limit`` above 1000."""


class CivitaiChallenge(CivitaiError):
    """An HTML page (a Cloudflare check) came back where JSON was expected."""


class CivitaiBadResponse(CivitaiError):
    """A reply we cannot use: not JSON, or not the shape the endpoint returns."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(clean(text, multiline=False).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _issues_text(issues: Sequence[Any]) -> str | None:
    parts = []
    for issue in issues:
        if not isinstance(issue, Mapping):
            continue
        message = str(issue.get("message") or issue.get("code") or "invalid")
        path = issue.get("path")
        where = ".".join(str(p) for p in path) if isinstance(path, list) and path else ""
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or None


def error_message(body: Any) -> str | None:
    """The human part of a Civitai error body, whatever its shape: ``{"error": "text"}``,
    ``{"error": <ZodError>}`` (whose ``message`` is the JSON text of its issues),
    ``{"error": ..., "message": ...}``, tRPC's ``{"error": {"json": {"message"}}}``,
    ``{"message": ...}``, a bare string or a list of issues. One line, or ``None``."""
    text = _error_text(body, depth=0)
    return _one_line(text) if text else None


def _error_text(body: Any, depth: int) -> str | None:
    if depth > 4 or body is None:
        return None
    if isinstance(body, str):
        stripped = body.strip()
        if stripped[:1] in "[{":
            try:
                return _error_text(json.loads(stripped), depth + 1) or stripped
            except ValueError:
                pass
        return stripped or None
    if isinstance(body, list):
        return _issues_text(body)
    if not isinstance(body, Mapping):
        return str(body)
    if isinstance(body.get("issues"), list):
        return _issues_text(body["issues"])
    if "json" in body and isinstance(body["json"], Mapping):
        return _error_text(body["json"], depth + 1)
    error = _error_text(body.get("error"), depth + 1)
    message = _error_text(body.get("message"), depth + 1)
    if error and message and error != message:
        if body.get("name") == "ZodError":
            return message
        return f"{error}: {message}"
    return error or message


# --- lenient response types ----------------------------------------------------------------------


class Lenient(BaseModel):
    """Every field optional; a field of the wrong type gets its default; unknown keys kept.

    Text is cleaned as it comes in (``bot.text.clean``): no control characters, bidi
    overrides or invisible format characters reach a terminal, a chat or a log line from
    here. Only the fields in ``_MULTILINE`` keep line breaks; names and the like are one
    line. ``raw`` keeps the item exactly as it came, for the metadata files written as JSON.
    """

    _MULTILINE: ClassVar[frozenset[str]] = frozenset(
        {"description", "meta", "pickle_scan_message", "virus_scan_message"}
    )

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        alias_generator=to_camel,
        protected_namespaces=(),
    )
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    @field_validator("*", mode="wrap")
    @classmethod
    def _lenient_field(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        multiline = info.field_name in cls._MULTILINE
        try:
            return clean_any(handler(value), multiline=multiline)
        except ValidationError:
            if isinstance(value, list):  # keep the elements that do validate
                kept: list[Any] = []
                for item in value:
                    try:
                        kept.extend(handler([item]))
                    except ValidationError:
                        continue
                return clean_any(kept, multiline=multiline)
            spec = cls.model_fields.get(info.field_name or "")
            log.debug("civitai: ignoring %s.%s of unexpected type", cls.__name__, info.field_name)
            return spec.get_default(call_default_factory=True) if spec is not None else None

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        obj = handler(data)
        if isinstance(data, dict) and isinstance(obj, Lenient):
            obj._raw = data
        return obj

    @property
    def raw(self) -> dict[str, Any]:
        """The item exactly as the server sent it (or, when built by hand, its wire form)."""
        if self._raw is not None:
            return self._raw
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Stats(Lenient):
    download_count: int | None = None
    thumbs_up_count: int | None = None
    thumbs_down_count: int | None = None
    comment_count: int | None = None
    tipped_amount_count: int | None = None
    favorite_count: int | None = None
    collected_count: int | None = None
    rating_count: int | None = None
    rating: float | None = None
    like_count: int | None = None
    heart_count: int | None = None
    laugh_count: int | None = None
    cry_count: int | None = None
    dislike_count: int | None = None


class Creator(Lenient):
    username: str | None = None
    image: str | None = None
    model_count: int | None = None
    link: str | None = None


class Tag(Lenient):
    name: str | None = None
    link: str | None = None
    model_count: int | None = None
    id: int | None = None


class FileMetadata(Lenient):
    format: str | None = None
    size: str | None = None
    fp: str | None = None
    quant_type: str | None = None
    is_required: bool | None = None


class ModelFile(Lenient):
    id: int | None = None
    name: str | None = None
    type: str | None = None
    size_kb: float | None = Field(default=None, alias="sizeKB")
    primary: bool | None = None
    metadata: FileMetadata | None = None
    hashes: dict[str, str] = Field(default_factory=dict)
    download_url: str | None = None
    pickle_scan_result: str | None = None
    pickle_scan_message: str | None = None
    virus_scan_result: str | None = None
    virus_scan_message: str | None = None
    scanned_at: str | None = None

    @field_validator("hashes", mode="before")
    @classmethod
    def _hashes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items() if isinstance(v, str | int) and v}
        return value

    @property
    def size_bytes(self) -> int | None:
        """About the file's size (``sizeKB`` is KiB, with a fraction)."""
        return None if self.size_kb is None else round(self.size_kb * 1024)

    def hash(self, kind: str = "SHA256") -> str | None:
        """The ``kind`` hash (AutoV1, AutoV2, AutoV3, SHA256, CRC32, BLAKE3), upper-case."""
        for key, value in self.hashes.items():
            if key.lower() == kind.lower():
                return value.upper()
        return None

    def matches(self, hash_: str) -> bool:
        wanted = hash_.strip().upper()
        return any(v.upper() == wanted for v in self.hashes.values())


class ImageTag(Lenient):
    id: int | None = None
    name: str | None = None


_IMAGE_ID_IN_URL = re.compile(r"/(\d+)\.[A-Za-z0-9]+$")
# Keys a flat generation meta carries at its top level (never a nested wrapper's).
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


class Image(Lenient):
    id: int | None = None
    url: str | None = None
    hash: str | None = None  # a BlurHash, not a file hash
    width: int | None = None
    height: int | None = None
    type: str | None = None
    nsfw_level: str | int | None = None  # "None"/"Soft"/... on /images, a number elsewhere
    browsing_level: int | None = None
    nsfw: bool | str | None = None  # a bool; an old level name ("Mature") in older shapes
    created_at: str | None = None
    post_id: int | None = None
    username: str | None = None
    base_model: str | None = None
    model_version_ids: list[int] = Field(default_factory=list)
    stats: Stats | None = None
    meta: dict[str, Any] | None = None  # always flat here; ``raw`` keeps the shape sent
    tags: list[ImageTag] = Field(default_factory=list)
    has_meta: bool | None = None

    @field_validator("meta", mode="before")
    @classmethod
    def _flatten_meta(cls, value: Any) -> Any:
        return flat_meta(value)

    @model_validator(mode="after")
    def _id_from_url(self) -> Image:
        # /model-versions images carry no id; their URL ends in <imageId>.jpeg
        if self.id is None and self.url:
            m = _IMAGE_ID_IN_URL.search(self.url)
            if m:
                self.id = int(m.group(1))
        return self

    @property
    def level(self) -> int | None:
        """The image's browsing level (1, 2, 4, 8, 16 or 32), ``None`` when unknown."""
        if isinstance(self.browsing_level, int) and self.browsing_level > 0:
            return self.browsing_level
        value = self.nsfw_level
        if isinstance(value, int) and not isinstance(value, bool):
            return value if value > 0 else None
        if isinstance(value, str):
            if value.strip().isascii() and value.strip().isdigit():
                return int(value) or None
            if value.strip().lower() in _IMAGE_LEVEL_NAMES:
                return _IMAGE_LEVEL_NAMES[value.strip().lower()]
        return _old_level(self.nsfw)  # the older shape: nsfw true|false or a level name

    def params(self) -> GenerationParams:
        """Its generation parameters (the picture's own size when meta has none)."""
        return generation_params(self.meta, width=self.width, height=self.height)

    def parameters_text(self) -> str:
        """Its generation parameters as A1111's ``parameters`` text."""
        return parameters_text(self.meta, width=self.width, height=self.height)


class VersionModel(Lenient):
    """The ``model`` summary inside a model-version body."""

    name: str | None = None
    type: str | None = None
    nsfw: bool | None = None
    poi: bool | None = None
    mode: str | None = None


class ModelVersion(Lenient):
    id: int | None = None
    model_id: int | None = None
    index: int | None = None
    name: str | None = None
    base_model: str | None = None
    base_model_type: str | None = None
    nsfw_level: int | None = None
    availability: str | None = None
    status: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    published_at: str | None = None
    description: str | None = None
    trained_words: list[str] = Field(default_factory=list)
    supports_generation: bool | None = None
    early_access_deadline: str | None = None
    early_access_ends_at: str | None = None
    usage_control: str | None = None
    upload_type: str | None = None
    air: str | None = None
    stats: Stats | None = None
    model: VersionModel | None = None
    files: list[ModelFile] = Field(default_factory=list)
    images: list[Image] = Field(default_factory=list)
    download_url: str | None = None

    @property
    def level(self) -> int | None:
        """Its browsing level; from the older shape's names when it has no number."""
        if self.nsfw_level:
            return self.nsfw_level
        return _old_level(self.raw.get("nsfwLevel")) or _old_level(self.raw.get("nsfw"))

    @property
    def primary_file(self) -> ModelFile | None:
        """The primary file, else the first model-weights file, else the first file."""
        for f in self.files:
            if f.primary:
                return f
        for f in self.files:
            if (f.type or "").lower() in ("model", "pruned model"):
                return f
        return self.files[0] if self.files else None

    def file_with_hash(self, hash_: str) -> ModelFile | None:
        return next((f for f in self.files if f.matches(hash_)), None)


class Model(Lenient):
    id: int | None = None
    name: str | None = None
    description: str | None = None
    type: str | None = None
    poi: bool | None = None
    minor: bool | None = None
    nsfw: bool | None = None
    sfw_only: bool | None = None
    nsfw_level: int | None = None
    availability: str | None = None
    mode: str | None = None  # "Archived", "TakenDown"; absent when healthy
    allow_no_credit: bool | None = None
    allow_commercial_use: list[str] | str | None = None
    allow_derivatives: bool | None = None
    allow_different_license: bool | None = None
    supports_generation: bool | None = None
    stats: Stats | None = None
    creator: Creator | None = None
    tags: list[str] = Field(default_factory=list)
    model_versions: list[ModelVersion] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                v.get("name") if isinstance(v, Mapping) else v
                for v in value
                if isinstance(v, str) or (isinstance(v, Mapping) and isinstance(v.get("name"), str))
            ]
        return value

    @property
    def level(self) -> int | None:
        """Its browsing level; from ``nsfw`` true/false or an old name in older shapes."""
        if self.nsfw_level:
            return self.nsfw_level
        return _old_level(self.raw.get("nsfwLevel")) or _old_level(self.nsfw)

    @property
    def latest_version(self) -> ModelVersion | None:
        return self.model_versions[0] if self.model_versions else None


class PageMetadata(Lenient):
    next_cursor: str | int | None = None
    next_page: str | None = None
    current_page: int | None = None
    page_size: int | None = None
    total_items: int | None = None
    total_pages: int | None = None
    prev_page: str | None = None


class HashMatch(Lenient):
    model_version_id: int | None = None
    hash: str | None = None


class Enums(Lenient):
    model_type: list[str] = Field(default_factory=list, alias="ModelType")
    model_file_type: list[str] = Field(default_factory=list, alias="ModelFileType")
    active_base_model: list[str] = Field(default_factory=list, alias="ActiveBaseModel")
    base_model: list[str] = Field(default_factory=list, alias="BaseModel")
    base_model_type: list[str] = Field(default_factory=list, alias="BaseModelType")


T = TypeVar("T", bound=Lenient)


@dataclass(slots=True)
class Page(Generic[T]):
    """One page. ``items`` are the ones allowed by the NSFW mask; ``hidden`` counts those
    removed on our side; ``keys`` identifies every item the server sent (loop defence)."""

    items: list[T]
    metadata: PageMetadata = field(default_factory=PageMetadata)
    hidden: int = 0
    keys: tuple[Any, ...] = ()

    @property
    def next_cursor(self) -> str | None:
        cursor = self.metadata.next_cursor
        if cursor is None or isinstance(cursor, bool) or cursor == "":
            return None
        return str(cursor)

    @property
    def received(self) -> int:
        return len(self.keys)


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
    prompt, seed, steps, CFG, sampler, size and model. ``width``/``height`` are used when
    ``meta`` has no size (pass the picture's own). Odd values become ``None``."""
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


# --- the client ---------------------------------------------------------------------------------

Params = dict[str, Any]
_HASH = re.compile(r"^[0-9A-Fa-f]{8,64}$")


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _clean(params: Mapping[str, Any]) -> Params:
    """Drop unset values, write booleans as the API reads them; lists become repeated params."""
    out: Params = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            values = [_query_value(v) for v in value if v is not None]
            if values:
                out[key] = values
            continue
        out[key] = _query_value(value)
    return out


def _comma(values: str | int | Iterable[str | int] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str | int):
        return str(values)
    joined = ",".join(str(v) for v in values)
    return joined or None


def _listed(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


ORIGINAL = "original"
# Civitai's image CDN and its legacy host (§5 of civitai.md): where pictures come from.
IMAGE_HOSTS = ("image.civitai.com", "imagecache.civitai.com")
PICTURE_MAX_BYTES = 8 * 1024 * 1024  # a preview bigger than this is not worth a chat
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def sized_url(url: str, size: str | int, *, still: bool = False) -> str:
    """``url`` asking the image CDN for ``size``: its params segment (``original=true``,
    ``width=450``, ``anim=false,width=450,optimized=true``: the one before the file name)
    becomes ``original=true`` or ``width=N``; a Civitai URL without one gets one. ``still``
    asks for one frame of a video or an animation (``anim=false``). Other URLs are returned
    unchanged."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    params = "original=true" if size == ORIGINAL else f"width={int(size)}"
    if still:
        params = f"anim=false,{params}"
    if len(segments) >= 3 and "=" in segments[-2]:
        segments[-2] = params
    elif len(segments) == 4 and _UUID.match(segments[2]):  # /<key>/<uuid>/<name>
        segments.insert(3, params)
    else:
        return url
    return urlunsplit(parts._replace(path="/".join(segments)))


def _looks_html(content_type: str, body: bytes) -> bool:
    if "html" in content_type.lower():
        return True
    head = body[:256].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


class CivitaiClient:
    """An async client of the Civitai API. One per process; safe to share between tasks.

    ``api_key`` is optional (public endpoints work anonymously; an unknown key is treated as
    anonymous by the server). ``requests_per_second`` caps the request rate of this client.
    ``http`` lets a caller supply its own ``httpx.AsyncClient`` (its base URL is ignored).
    """

    _retry_statuses: ClassVar[frozenset[int]] = frozenset(
        {408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
    )

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        requests_per_second: float | None = None,
        http: httpx.AsyncClient | None = None,
        user_agent: str = USER_AGENT,
        image_hosts: Iterable[str] = IMAGE_HOSTS,
        cache_ttl_s: float = CACHE_TTL_S,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_key = (api_key or "").strip() or None
        self.image_hosts = frozenset(h.strip().lower() for h in image_hosts if h.strip())
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = max(0, cache_size)
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._timeout = timeout
        self._pictures: httpx.AsyncClient | None = None  # made on first use
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._limiter = AsyncLimiter(requests_per_second, 1.0) if requests_per_second else None
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,
        )
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"CivitaiClient(base_url={self.base_url!r}, api_key={key!r})"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
        if self._pictures is not None:
            await self._pictures.aclose()

    async def __aenter__(self) -> CivitaiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the wire ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One API call with retries; the decoded JSON, or a :class:`CivitaiError`."""
        url = f"{self.base_url}{API_PREFIX}{path}"
        query = _clean(params or {})
        if "token" in query:  # the key travels in the header only
            raise ValueError("pass the API key to CivitaiClient, not as a token parameter")
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._limiter is not None:
                    await self._limiter.acquire()
                log.debug("civitai: %s %s %s (attempt %d)", method, path, query, attempt)
                response = await self._http.request(
                    method, url, params=query, json=body, headers=self._request_headers()
                )
                return self._decode(response, what)
            except httpx.TimeoutException:
                error: CivitaiError = CivitaiUnavailable(
                    f"Civitai did not answer in time ({what}); try again later", retryable=True
                )
            except httpx.UnsupportedProtocol:
                raise CivitaiError(
                    f"civitai.base_url {self.base_url!r} is not an http(s) address"
                ) from None
            except httpx.TransportError as exc:
                error = CivitaiUnavailable(
                    f"Civitai could not be reached ({what}: {type(exc).__name__}); try again later",
                    retryable=True,
                )
            except CivitaiError as exc:
                error = exc
            if not error.retryable or attempt >= self.max_attempts:
                raise error
            if error.retry_after is not None and error.retry_after > self.max_retry_after:
                raise error  # the server asks for a longer pause than we are allowed to wait
            wait = backoff_s(
                attempt, error.retry_after, base=self.backoff_base, cap=self.backoff_max
            )
            log.info(
                "civitai: %r; retry %d/%d in %.2fs",
                self._redact(str(error)),
                attempt,
                self.max_attempts - 1,
                wait,
            )
            await asyncio.sleep(wait)

    async def _lookup(
        self,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        fresh: bool = False,
    ) -> Any:
        """A GET lookup through the cache (see ``CACHE_TTL_S``): the decoded JSON, kept for
        ``cache_ttl_s``; errors are not kept. Callers parse it afresh each time. ``fresh``
        asks Civitai again (and keeps the new answer): for what must not be minutes old,
        such as the scan verdicts a download is judged by."""
        key = (path, json.dumps(_clean(params or {}), sort_keys=True, default=str))
        now = self._clock()
        hit = None if fresh else self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        data = await self._request("GET", path, what=what, params=params)
        if self.cache_ttl_s > 0 and self.cache_size > 0:
            self._cache[key] = (now + self.cache_ttl_s, data)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data

    def _decode(self, response: httpx.Response, what: str) -> Any:
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        raw = response.content
        retry_after = retry_after_s(response) if status in (429, 503) else None
        retryable = status in self._retry_statuses
        if raw and _looks_html(content_type, raw):
            message = (
                f"Civitai answered {what} with a web page instead of data (HTTP {status}), "
                "probably a Cloudflare check or an outage; try again later"
            )
            if retryable:
                cls = CivitaiRateLimited if status == 429 else CivitaiUnavailable
                raise cls(message, status=status, retry_after=retry_after, retryable=True)
            raise CivitaiChallenge(message, status=status)
        data: Any = None
        text = ""
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                text = raw[:500].decode("utf-8", "replace")
                if status < 300:
                    raise CivitaiBadResponse(
                        f"Civitai sent {what} a reply that is not JSON "
                        f"(HTTP {status}, {content_type or 'no content type'})",
                        status=status,
                    ) from None
        if 200 <= status < 300:
            return data
        detail = error_message(data) if data is not None else _one_line(text) or None
        suffix = f": {detail}" if detail else ""
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            raise CivitaiBadResponse(
                f"Civitai redirected {what} to {location}; set civitai.base_url to that host",
                status=status,
            )
        if status == 400 or status == 405 or status == 422:
            raise CivitaiBadRequest(f"Civitai rejected {what}{suffix}", status=status)
        if status == 401:
            if self._api_key:
                message = f"Civitai refused the API key for {what}; check civitai.api_key"
            else:
                message = f"Civitai needs an API key for {what}: set civitai.api_key"
            raise CivitaiUnauthorized(message, status=status)
        if status == 403:
            raise CivitaiForbidden(f"Civitai refused {what}{suffix}", status=status)
        if status in (404, 410):
            raise CivitaiNotFound(f"Civitai has no {what}", status=status)
        if status == 429:
            if detail and "too many pages" in detail.lower():
                raise CivitaiPagingLimit(
                    f"Civitai refused {what}: too many pages, use cursors instead", status=status
                )
            wait = f" (retry in {retry_after:g}s)" if retry_after else ""
            raise CivitaiRateLimited(
                f"Civitai is rate limiting us{wait}; try again later",
                status=status,
                retry_after=retry_after,
                retryable=True,
            )
        if status == 500 and _deterministic(data, detail):
            # the same request fails the same way again: no retry (issue 16)
            raise CivitaiBadRequest(f"Civitai rejected {what} (HTTP 500{suffix})", status=status)
        if status >= 500 or retryable:
            raise CivitaiUnavailable(
                f"Civitai is unavailable (HTTP {status}{suffix}); try again later",
                status=status,
                retry_after=retry_after,
                retryable=retryable,
            )
        raise CivitaiError(
            f"Civitai could not answer {what} (HTTP {status}{suffix})", status=status
        )

    # --- helpers --------------------------------------------------------------------------------

    def _page(
        self,
        data: Any,
        parse: Callable[[dict[str, Any]], T],
        what: str,
        *,
        allowed: Callable[[T], bool] | None = None,
        key: Callable[[T], Any] = lambda item: getattr(item, "id", None),
    ) -> Page[T]:
        if not isinstance(data, Mapping) or not isinstance(data.get("items", []), list):
            raise CivitaiBadResponse(f"Civitai sent {what} a reply without items")
        parsed = [parse(item) for item in data.get("items") or [] if isinstance(item, dict)]
        metadata = data.get("metadata")
        meta = PageMetadata.model_validate(metadata if isinstance(metadata, dict) else {})
        keys = tuple(key(item) for item in parsed)
        kept = [item for item in parsed if allowed is None or allowed(item)]
        return Page(kept, meta, hidden=len(parsed) - len(kept), keys=keys)

    @staticmethod
    def _check_deep_page(page: int | None, limit: int | None, default_limit: int) -> None:
        if page is not None and page * (limit or default_limit) > MAX_PAGED_ITEMS:
            raise CivitaiPagingLimit(
                f"Civitai serves at most {MAX_PAGED_ITEMS} items by page number; "
                "use cursors (iter_images / iter_models) to go further"
            )

    async def _follow(
        self,
        fetch: Callable[[str | None, int | None], Awaitable[Page[T]]],
        *,
        what: str,
        cursor: str | None,
        max_items: int | None,
    ) -> AsyncIterator[T]:
        """Yield items page after page along ``nextCursor`` (or, when a server answers in
        page mode without one, along ``nextPage``'s ``page=``); stop at the end, or (logging
        once) on a cursor or page seen before, a page of repeated ids, an empty page that
        points further, or the deep-paging guard."""
        seen_cursors: set[str] = set() if cursor is None else {cursor}
        seen_keys: set[Any] = set()
        yielded = 0
        pages = 0
        page_no: int | None = None
        while True:
            page = await fetch(cursor, page_no)
            pages += 1
            fresh = any(k is None or k not in seen_keys for k in page.keys)
            for item in page.items:
                k = getattr(item, "id", None)
                if k is not None:
                    if k in seen_keys:
                        continue  # the server sent it before
                    seen_keys.add(k)
                yield item
                yielded += 1
                if max_items is not None and yielded >= max_items:
                    return
            seen_keys.update(k for k in page.keys if k is not None)
            next_cursor = page.next_cursor
            next_page = None if next_cursor is not None else _next_page(page.metadata)
            if isinstance(next_page, str):  # nextPage carries the cursor itself
                next_cursor, next_page = next_page, None
            if next_cursor is None and next_page is None:
                return
            if page.received == 0:
                log.warning(
                    "civitai: %s page %d was empty but carried a next cursor; stopping",
                    what,
                    pages,
                )
                return
            if not fresh:
                log.warning(
                    "civitai: %s page %d repeated only items already seen; stopping", what, pages
                )
                return
            if next_page is not None:  # page mode
                size = page.metadata.page_size or page.received
                if next_page <= (page_no or 1):
                    log.warning(
                        "civitai: %s page %d pointed back to page %d; stopping",
                        what,
                        pages,
                        next_page,
                    )
                    return
                if next_page * size > MAX_PAGED_ITEMS:
                    log.warning(
                        "civitai: %s stops at page %d: Civitai pages no deeper than %d items",
                        what,
                        pages,
                        MAX_PAGED_ITEMS,
                    )
                    return
                cursor, page_no = None, next_page
                continue
            assert next_cursor is not None
            if next_cursor in seen_cursors:
                log.warning(
                    "civitai: %s page %d led back to a cursor seen before (%r); stopping",
                    what,
                    pages,
                    next_cursor,
                )
                return
            seen_cursors.add(next_cursor)
            cursor, page_no = next_cursor, None

    async def _follow_pages(
        self,
        fetch: Callable[[int], Awaitable[Page[T]]],
        *,
        what: str,
        limit: int,
        key: Callable[[T], Any],
        max_items: int | None,
    ) -> AsyncIterator[T]:
        """Page-numbered iteration that stays under the deep-paging guard."""
        seen: set[Any] = set()
        yielded = 0
        page_no = 1
        while True:
            page = await fetch(page_no)
            fresh = [item for item in page.items if key(item) not in seen]
            for item in fresh:
                seen.add(key(item))
                yield item
                yielded += 1
                if max_items is not None and yielded >= max_items:
                    return
            total_pages = page.metadata.total_pages
            if not page.items or (total_pages is not None and page_no >= total_pages):
                return
            if total_pages is None and not page.metadata.next_page:
                return
            if not fresh:
                log.warning("civitai: %s page %d repeated earlier items; stopping", what, page_no)
                return
            if (page_no + 1) * limit > MAX_PAGED_ITEMS:
                log.warning(
                    "civitai: %s stops at %d items: Civitai pages no deeper than %d",
                    what,
                    page_no * limit,
                    MAX_PAGED_ITEMS,
                )
                return
            page_no += 1

    # --- models ---------------------------------------------------------------------------

    async def search_models(
        self,
        query: str | None = None,
        *,
        types: str | Iterable[str] | None = None,
        base_models: str | Iterable[str] | None = None,
        sort: str | None = None,
        period: str | None = None,
        nsfw: NsfwPolicy | None = None,
        tag: str | None = None,
        username: str | None = None,
        ids: Iterable[int] | None = None,
        primary_file_only: bool | None = None,
        favorites: bool | None = None,
        hidden: bool | None = None,
        allow_commercial_use: str | None = None,
        checkpoint_type: str | None = None,
        supports_generation: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        page: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Page[Model]:
        """One page of ``GET /models``. ``types`` and ``base_models`` go as repeated params
        (the server does not split commas there). ``nsfw`` is a policy (see
        :func:`browsing_level`); models and version images outside it are removed here too.
        Values such as ``sort`` are passed through unchanged: the server validates them."""
        mask = browsing_level(nsfw)
        self._check_deep_page(page, limit, MODELS_MAX_LIMIT)
        params: Params = {
            "query": query,
            "types": _listed(types),
            "baseModels": _listed(base_models),
            "sort": sort,
            "period": period,
            # /models only knows a boolean: absent = PG only, true = everything; narrower
            # masks are applied on our side.
            "nsfw": True if mask != PG else None,
            "tag": tag,
            "username": username,
            "ids": _comma(ids),
            "primaryFileOnly": primary_file_only,
            "favorites": favorites,
            "hidden": hidden,
            "allowCommercialUse": allow_commercial_use,
            "checkpointType": checkpoint_type,
            "supportsGeneration": supports_generation,
            "limit": limit,
            "cursor": cursor,
            "page": page,
            **dict(extra or {}),
        }
        data = await self._request("GET", "/models", what="the models search", params=params)
        page_ = self._page(
            data, Model.model_validate, "the models search", allowed=_model_filter(mask)
        )
        for model in page_.items:
            _filter_version_images(model.model_versions, mask)
        return page_

    def iter_models(
        self, query: str | None = None, *, max_items: int | None = None, **filters: Any
    ) -> AsyncIterator[Model]:
        """Every model matching the filters of :meth:`search_models`, following cursors."""
        if "page" in filters:
            raise TypeError("iter_models follows cursors; it takes no page")
        start = filters.pop("cursor", None)

        async def fetch(cursor: str | None, page: int | None) -> Page[Model]:
            return await self.search_models(query, cursor=cursor, page=page, **filters)

        return self._follow(fetch, what="models", cursor=start, max_items=max_items)

    async def model(
        self, model_id: int, *, nsfw: NsfwPolicy | None = None, fresh: bool = False
    ) -> Model:
        """``GET /models/{id}``. The server returns every level here, and so does this by
        default (``nsfw=None``: no filtering). With ``nsfw`` a policy, version images outside
        it are removed, and a model with nothing allowed raises :class:`CivitaiFiltered`."""
        what = f"model {model_id}"
        data = await self._lookup(f"/models/{int(model_id)}", what=what, fresh=fresh)
        if not isinstance(data, dict):
            raise CivitaiBadResponse(f"Civitai sent an unusable reply for {what}")
        model = Model.model_validate(data)
        if nsfw is not None:
            mask = browsing_level(nsfw)
            if model.level and not model.level & mask:
                raise CivitaiFiltered(f"Civitai {what} is not shown here (its NSFW level)")
            _filter_version_images(model.model_versions, mask)
        return model

    async def model_version(
        self, version_id: int, *, nsfw: NsfwPolicy | None = None, fresh: bool = False
    ) -> ModelVersion:
        """``GET /model-versions/{id}`` (``nsfw`` and ``fresh`` as for :meth:`model`)."""
        what = f"model version {version_id}"
        data = await self._lookup(f"/model-versions/{int(version_id)}", what=what, fresh=fresh)
        return self._version(data, what, nsfw)

    def _version(self, data: Any, what: str, nsfw: NsfwPolicy | None) -> ModelVersion:
        if not isinstance(data, dict):
            raise CivitaiBadResponse(f"Civitai sent an unusable reply for {what}")
        version = ModelVersion.model_validate(data)
        if nsfw is not None:
            mask = browsing_level(nsfw)
            if version.level and not version.level & mask:
                raise CivitaiFiltered(f"Civitai {what} is not shown here (its NSFW level)")
            _filter_version_images([version], mask)
        return version

    async def version_by_hash(self, hash_: str, *, nsfw: NsfwPolicy | None = None) -> ModelVersion:
        """The model version holding a file with this hash (AutoV1, AutoV2, AutoV3, CRC32,
        SHA256 or BLAKE3; any case)."""
        wanted = _checked_hash(hash_)
        what = f"model file with hash {wanted}"
        data = await self._lookup(f"/model-versions/by-hash/{wanted}", what=what)
        return self._version(data, what, nsfw)

    async def versions_by_hashes(self, hashes: Iterable[str]) -> dict[str, ModelVersion]:
        """Bulk lookup (``POST /model-versions/by-hash``, 100 SHA256 hashes a request): each
        requested hash (upper-case) that matched, with its version. Unmatched ones are absent."""
        wanted = list(dict.fromkeys(_checked_hash(h) for h in hashes))
        found: dict[str, ModelVersion] = {}
        for start in range(0, len(wanted), BULK_HASHES_MAX):
            chunk = wanted[start : start + BULK_HASHES_MAX]
            data = await self._request(
                "POST", "/model-versions/by-hash", what="the hash lookup", body=chunk
            )
            if not isinstance(data, list):
                raise CivitaiBadResponse("Civitai sent an unusable reply for the hash lookup")
            versions = [ModelVersion.model_validate(v) for v in data if isinstance(v, dict)]
            for h in chunk:
                for version in versions:
                    if version.file_with_hash(h) is not None:
                        found[h] = version
                        break
        return found

    async def version_ids_by_hashes(self, hashes: Iterable[str]) -> dict[str, int]:
        """Bulk lookup of ids only (``POST /model-versions/by-hash/ids``, 10,000 a request)."""
        wanted = list(dict.fromkeys(_checked_hash(h) for h in hashes))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), BULK_HASH_IDS_MAX):
            chunk = wanted[start : start + BULK_HASH_IDS_MAX]
            data = await self._request(
                "POST", "/model-versions/by-hash/ids", what="the hash lookup", body=chunk
            )
            if not isinstance(data, list):
                raise CivitaiBadResponse("Civitai sent an unusable reply for the hash lookup")
            for row in data:
                match = HashMatch.model_validate(row) if isinstance(row, dict) else None
                if match and match.hash and match.model_version_id is not None:
                    found[match.hash.upper()] = match.model_version_id
        return found

    # --- images -------------------------------------------------------------------------------

    async def images(
        self,
        *,
        model_id: int | None = None,
        model_version_id: int | None = None,
        post_id: int | None = None,
        image_id: int | None = None,
        username: str | None = None,
        user_id: int | None = None,
        sort: str | None = None,
        period: str | None = None,
        nsfw: NsfwPolicy | None = None,
        tags: Iterable[int] | None = None,
        type: str | None = None,
        base_models: str | Iterable[str] | None = None,
        with_meta: bool = True,
        flat_meta: bool | None = None,
        with_tags: bool | None = None,
        requiring_meta: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        page: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Page[Image]:
        """One page of ``GET /images``. ``nsfw`` is a policy (default PG only) sent as the
        ``browsingLevel`` bitmask; anything outside it is also removed here. ``meta`` is
        asked for by default (the API leaves it ``null`` otherwise)."""
        mask = browsing_level(nsfw)
        self._check_deep_page(page, limit, 100)
        params: Params = {
            "modelId": model_id,
            "modelVersionId": model_version_id,
            "postId": post_id,
            "imageId": image_id,
            "username": username,
            "userId": user_id,
            "sort": sort,
            "period": period,
            "browsingLevel": mask,
            "tags": _comma(tags),
            "type": type,
            "baseModels": _comma(base_models),
            "withMeta": with_meta,
            "flatMeta": flat_meta,
            "withTags": with_tags,
            "requiringMeta": requiring_meta,
            "limit": limit,
            "cursor": cursor,
            "page": page,
            **dict(extra or {}),
        }
        data = await self._request("GET", "/images", what="the images search", params=params)
        return self._page(
            data,
            Image.model_validate,
            "the images search",
            allowed=lambda image: level_allowed(image.level, mask),
        )

    def iter_images(self, *, max_items: int | None = None, **filters: Any) -> AsyncIterator[Image]:
        """Every image matching the filters of :meth:`images`, following cursors (pages of
        ``limit``, default 100). Stops cleanly on the server's cursor loops."""
        if "page" in filters:
            raise TypeError("iter_images follows cursors; it takes no page")
        start = filters.pop("cursor", None)

        async def fetch(cursor: str | None, page: int | None) -> Page[Image]:
            return await self.images(cursor=cursor, page=page, **filters)

        return self._follow(fetch, what="images", cursor=start, max_items=max_items)

    async def image(
        self, image_id: int, *, nsfw: NsfwPolicy | None = None, post_id: int | None = None
    ) -> Image:
        """One image with its meta (``GET /images?imageId=``). Civitai answers some images
        that exist with an empty list there; with ``post_id`` (the API has no other way to
        name one image) the image is then looked for in its post (``/images?postId=``).
        Raises :class:`CivitaiNotFound`, or :class:`CivitaiFiltered` when its level is
        outside ``nsfw`` (default PG only)."""
        mask = browsing_level(nsfw)
        what = f"image {image_id}"
        wide = {"browsingLevel": ALL | BLOCKED, "withMeta": True}
        data = await self._lookup("/images", what=what, params={"imageId": int(image_id), **wide})
        page = self._page(data, Image.model_validate, what)
        match = next((i for i in page.items if i.id == int(image_id)), None)
        if match is None and post_id is not None:
            params = {"postId": int(post_id), "limit": IMAGES_MAX_LIMIT, **wide}
            data = await self._lookup("/images", what=f"post {post_id}", params=params)
            page = self._page(data, Image.model_validate, f"post {post_id}")
            match = next((i for i in page.items if i.id == int(image_id)), None)
        if match is None:
            where = f" (nor did post {post_id})" if post_id is not None else ""
            raise CivitaiNotFound(
                f"Civitai did not return {what}{where}: it answers some existing images with "
                "nothing; if you know the image's post, add --post POST_ID"
            )
        if not level_allowed(match.level, mask):
            raise CivitaiFiltered(f"Civitai {what} is not shown here (its NSFW level)")
        return match

    # --- tags, creators, enums --------------------------------------------------------------

    async def tags(
        self, query: str | None = None, *, limit: int | None = None, page: int | None = None
    ) -> Page[Tag]:
        """One page of model tags (``GET /tags``, page-numbered)."""
        params = {"query": query, "limit": limit, "page": page}
        data = await self._request("GET", "/tags", what="the tags list", params=params)
        return self._page(data, Tag.model_validate, "the tags list", key=lambda t: t.name)

    def iter_tags(
        self, query: str | None = None, *, limit: int = 100, max_items: int | None = None
    ) -> AsyncIterator[Tag]:
        async def fetch(page: int) -> Page[Tag]:
            return await self.tags(query, limit=limit, page=page)

        return self._follow_pages(
            fetch, what="tags", limit=limit, key=lambda t: t.name, max_items=max_items
        )

    async def creators(
        self, query: str | None = None, *, limit: int | None = None, page: int | None = None
    ) -> Page[Creator]:
        """One page of creators (``GET /creators``, page-numbered)."""
        params = {"query": query, "limit": limit, "page": page}
        data = await self._request("GET", "/creators", what="the creators list", params=params)
        return self._page(
            data, Creator.model_validate, "the creators list", key=lambda c: c.username
        )

    def iter_creators(
        self, query: str | None = None, *, limit: int = 100, max_items: int | None = None
    ) -> AsyncIterator[Creator]:
        async def fetch(page: int) -> Page[Creator]:
            return await self.creators(query, limit=limit, page=page)

        return self._follow_pages(
            fetch, what="creators", limit=limit, key=lambda c: c.username, max_items=max_items
        )

    async def enums(self) -> Enums:
        """The server's current enums (model types, file types, base models)."""
        data = await self._request("GET", "/enums", what="the enums")
        if not isinstance(data, dict):
            raise CivitaiBadResponse("Civitai sent an unusable reply for the enums")
        return Enums.model_validate(data)

    async def picture(
        self,
        url: str,
        *,
        width: int | None = None,
        still: bool = False,
        max_bytes: int = PICTURE_MAX_BYTES,
    ) -> bytes:
        """An image's bytes from Civitai's image CDN, to show in a chat: ``width`` asks for a
        smaller rendition, ``still`` for one frame of a video. The API key does not go along
        (the CDN needs none), redirects are followed, and the body is capped at
        ``max_bytes``. One try: a preview is a courtesy, and a chat should not wait for it."""
        if width is not None or still:
            url = sized_url(url, width or ORIGINAL, still=still)
        if not url.lower().startswith(("http://", "https://")):
            raise CivitaiBadResponse(f"Civitai gave a picture address that is not http(s): {url}")
        host = (urlsplit(url).hostname or "").lower()
        if host not in self.image_hosts:
            raise CivitaiBadResponse(
                f"not fetching a picture from {host or 'nowhere'}: it is not one of "
                "civitai.image_hosts"
            )
        if self._pictures is None:
            # the /img2img guard: every connection (redirects too) to public addresses
            # only, but for IP addresses listed in image_hosts
            self._pictures = make_client(trusted=self.image_hosts, timeout=self._timeout)
        headers = {"User-Agent": self._headers["User-Agent"]}
        try:
            async with self._pictures.stream(
                "GET", url, headers=headers, follow_redirects=True
            ) as response:
                status = response.status_code
                if status != 200:
                    raise CivitaiUnavailable(f"Civitai's picture is not there (HTTP {status})")
                kind = response.headers.get("content-type", "")
                if not kind.startswith("image/"):
                    raise CivitaiBadResponse(f"Civitai sent {kind or 'something'}, not a picture")
                return await read_capped(response, max_bytes)
        except TooLarge:
            raise CivitaiBadResponse(f"Civitai's picture is over {max_bytes} bytes") from None
        except httpx.HTTPError as exc:
            raise CivitaiUnavailable(
                f"Civitai's picture could not be fetched ({type(exc).__name__})", retryable=True
            ) from None
        except BadInput as exc:  # the guard: a private or loopback address
            raise CivitaiBadResponse(f"not fetching a picture from {host}: {exc}") from None


# 500s that say the request itself cannot be served (a JavaScript URIError on a bad percent
# escape, a validation failure, a tRPC client-side code): retrying sends the same request.
_DETERMINISTIC_500 = re.compile(
    r"URI malformed|URIError|malformed|ZodError|invalid (input|cursor|value|hash|id)", re.I
)
_CLIENT_CODES = frozenset({"BAD_REQUEST", "PARSE_ERROR", "NOT_FOUND", "UNPROCESSABLE_CONTENT"})


def _deterministic(body: Any, detail: str | None) -> bool:
    if isinstance(body, Mapping) and str(body.get("code") or "").upper() in _CLIENT_CODES:
        return True
    return bool(detail and _DETERMINISTIC_500.search(detail))


def _next_page(metadata: PageMetadata) -> int | str | None:
    """Where a page-mode answer (no ``nextCursor``) goes next: the ``cursor=`` or ``page=``
    of ``nextPage``, else ``currentPage + 1`` while under ``totalPages``; ``None`` at the end."""
    if metadata.next_page:
        query = parse_qs(urlsplit(metadata.next_page).query)
        cursor = (query.get("cursor") or [""])[0]
        if cursor:
            return cursor
        number = _as_int((query.get("page") or [""])[0])
        return number if number and number > 0 else None
    current, total = metadata.current_page, metadata.total_pages
    if current is not None and total is not None and current < total:
        return current + 1
    return None


def _checked_hash(hash_: str) -> str:
    wanted = str(hash_).strip().upper()
    if not _HASH.match(wanted):
        raise CivitaiBadRequest(
            f"{_one_line(str(hash_), 80)!r} is not a file hash (AutoV2: 10 hex digits, SHA256: 64)"
        )
    return wanted


def _model_filter(mask: int) -> Callable[[Model], bool]:
    def allowed(model: Model) -> bool:
        # a model's level is the OR of its content's levels; unknown counts as unknown
        return level_allowed(model.level, mask)

    return allowed


def _filter_version_images(versions: Iterable[ModelVersion], mask: int) -> None:
    for version in versions:
        version.images = [i for i in version.images if level_allowed(i.level, mask)]


__all__ = [
    "ALL",
    "BLOCKED",
    "DEFAULT_BASE_URL",
    "IMAGE_SORTS",
    "MODEL_SORTS",
    "MODEL_TYPES",
    "NSFW_ONLY",
    "PERIODS",
    "PG",
    "PG13",
    "PUBLIC",
    "SFW",
    "XXX",
    "CivitaiBadRequest",
    "CivitaiBadResponse",
    "CivitaiChallenge",
    "CivitaiClient",
    "CivitaiError",
    "CivitaiFiltered",
    "CivitaiForbidden",
    "CivitaiNotFound",
    "CivitaiPagingLimit",
    "CivitaiRateLimited",
    "CivitaiUnauthorized",
    "CivitaiUnavailable",
    "Creator",
    "Enums",
    "FileMetadata",
    "HashMatch",
    "Image",
    "ImageTag",
    "Model",
    "ModelFile",
    "ModelVersion",
    "Page",
    "PageMetadata",
    "R",
    "Stats",
    "Tag",
    "X",
    "browsing_level",
    "error_message",
    "flat_meta",
    "generation_params",
    "level_allowed",
    "parameters_text",
]
