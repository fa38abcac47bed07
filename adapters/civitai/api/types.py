"""The Civitai API's wire types: lenient pydantic models (every field optional, unknown
keys kept in ``.raw``, a field of the wrong type becomes its default).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

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

from adapters.civitai.api.meta import flat_meta, generation_params, parameters_text
from adapters.civitai.api.nsfw import _IMAGE_LEVEL_NAMES, _old_level
from bot.ids import is_digits
from bot.params import GenerationParams
from bot.text import clean_any

log = logging.getLogger(__name__)


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
            if is_digits(value.strip()):
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
