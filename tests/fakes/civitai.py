"""A loopback fake of the Civitai public REST API (``/api/v1``), after ``../shared/api/civitai.md``.

It serves, from a small deterministic catalogue (:class:`Catalogue`):

* ``GET /api/v1/images``: limit 0..200 (default 100), ``page`` (429 past ``page*limit>1000``,
  cursor wins), opaque ``a|b`` keyset cursors (an ISO date is read as a date), every documented
  filter and enum, NSFW as ``browsingLevel`` > ``nsfw`` (old names or a booleanString; ``true``
  is NSFW-only) > PG, ``withMeta`` (``meta: null`` otherwise), ``meta`` flat or nested
  ``{"id", "meta"}`` on the legacy path (``imageId``, or ``modelId`` without
  ``modelVersionId``) unless ``flatMeta`` says, and the DB-path sort collapse;
* ``GET /api/v1/models``: limit 0..100, repeated ``types``/``baseModels`` (a comma-joined
  value fails as an enum), ``page`` + ``query`` is 400, ``favorites``/``hidden`` without a
  valid session 401, z.boolean/z.number params (``browsingLevel``, ``allowNoCredit``...) 400
  from a query string, ``nsfw`` absent = PG only, ``primaryFileOnly``, archived models without
  files; ``query`` uses a numeric offset cursor and, like the real one, ignores ``nsfw``;
* ``GET /api/v1/models/{id}`` (every level, ``removeEmpty`` on versions),
  ``GET /api/v1/model-versions/{id}`` (published only; images with ``meta`` and no ``id``),
  ``GET /api/v1/model-versions/by-hash/{hash}`` (any hash type, upper-cased, oldest wins),
  ``POST /api/v1/model-versions/by-hash`` (<=100) and ``POST .../by-hash/ids`` (<=10,000);
* ``GET /api/v1/tags``, ``GET /api/v1/creators`` (page-numbered, totals in metadata),
  ``GET /api/v1/enums``.

Errors use the documented bodies: a serialized ZodError ``{"error": {"name": "ZodError",
"message": "<JSON of issues>"}}`` on /images, /models, /tags and /creators; a prettified
string ``{"error": "✖ ..."}`` on the detail endpoints; ``{"error": "No model with id N"}``;
``{"message": "An unexpected error occurred", "error": ...}`` for injected 500s.

Auth as on the real site: ``Authorization`` wins (token = second word; no scheme = no token),
else ``?token=``; an unknown key is simply anonymous on these public endpoints.

Switches: :meth:`fail_next` (any status/body), :meth:`throttle` (429 + Retry-After, JSON or
Cloudflare's HTML 1015 page), :meth:`overload` (503 + Retry-After, the search-overloaded
body), :meth:`challenge` (Cloudflare's HTML "Just a moment..." page), :meth:`drop_next`
(connection closed without an answer), :meth:`loop_cursor` (the known cursor bugs),
:attr:`ignore_nsfw` (the server forgets to filter by level), :attr:`latency_s`. The server,
call records (``calls``) and the fault queue behind these switches (``fake.faults``) are the
shared scaffold's (tests/fakes/scaffold.py).

Origins: the API is the ``"api"`` origin (``base_url``). :meth:`FakeCivitai.origins`
returns ``{name: aiohttp app}``; a subclass (the download/storage fake) adds a ``"storage"``
app there and routes on the API app, and gets ``self.urls["storage"]`` after start.

Image CDN (on unless ``FakeCivitai(image_cdn=False)``): an ``"images"`` origin serving
``/<key>/<uuid>/<params>/<id>.jpeg`` as ``image.civitai.com`` does, and image URLs in every
reply pointing at it instead of ``https://image.civitai.com``. ``<params>`` is comma-joined
``k=v``: ``original=true`` gives the original bytes, ``width=N`` a smaller picture (never
wider than the original); :meth:`FakeCivitai.image_bytes` gives the exact bytes served. Its
route is the ``"image"`` endpoint, so :meth:`fail_next`, :meth:`throttle`, :meth:`drop_next`
and :attr:`latency_s` apply to it with ``on="image"``. ``bandwidth_bps`` caps the bytes per
second of its bodies, all connections together (a shared token bucket). ``extra_images=N``
adds a model ("Bulk Gallery", 4299) with N PG images, for benchmarks.

Deliberate deviations (so tests are not misled):

* ``limit=0`` is treated as the default; text search is a case-insensitive substring match on
  name, tags and creator; "Random" is a fixed shuffle; cursor texts are the fake's own.
* Wording of errors the reference does not quote (bad cursors, the HTML pages) is the fake's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
import math
import random
import re
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from PIL import Image as PILImage

from tests.fakes.scaffold import CallLog, LoopbackServer, Recorded

Json = dict[str, Any]
UTC = dt.UTC
NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC)  # the fake's "now", for period filters

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
MODEL_FILE_TYPES = (
    "Model",
    "Text Encoder",
    "Vision Encoder",
    "Pruned Model",
    "Negative",
    "Training Data",
    "VAE",
    "Config",
    "Archive",
    "UNet",
    "Diffusion Model",
    "CLIPVision",
    "ControlNet",
    "Workflow",
    "Upscaler",
    "Enhancement LoRA",
    "Other",
)
BASE_MODELS = (
    "SD 1.4",
    "SD 1.5",
    "SD 1.5 LCM",
    "SD 2.1",
    "SDXL 1.0",
    "SDXL Turbo",
    "Pony",
    "Illustrious",
    "NoobAI",
    "Flux.1 S",
    "Flux.1 D",
    "Other",
)
ACTIVE_BASE_MODELS = ("SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "NoobAI", "Flux.1 D", "Other")
BASE_MODEL_TYPES = ("Standard", "Inpainting", "Refiner", "Pix2Pix")
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
PERIOD_DAYS = {"Year": 365, "Month": 30, "Week": 7, "Day": 1}
IMAGE_TYPES = ("image", "video", "audio")
COMMERCIAL_USES = ("None", "Image", "RentCivit", "Rent", "Sell")
CHECKPOINT_TYPES = ("Trained", "Merge")
NSFW_NAMES = {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "Blocked": 32}
LEVEL_NAMES = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X", 32: "Blocked"}
TRUE_WORDS = {"true", "1", "yes", "on", "y", "enabled"}
FALSE_WORDS = {"false", "0", "no", "off", "n", "disabled"}
USERNAME_RE = re.compile(r"^[A-Za-z0-9_]*$")
ISO_CURSOR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MAX_PAGED_ITEMS = 1000

ERR_TOO_MANY_PAGES = "You've requested too many pages, please use cursors instead"
ERR_PAGE_WITH_QUERY = "Cannot use page param with query search. Use cursor-based pagination."
ERR_OVERLOADED = "Search is temporarily overloaded — please retry."
ERR_UNEXPECTED = "An unexpected error occurred"
PUBLIC_CACHE = "public, s-maxage=300, stale-while-revalidate=150"
HASH_CACHE = "public, s-maxage=3600, stale-while-revalidate=150"

CHALLENGE_HTML = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow"></head><body><div class="main-wrapper" role="main">
<div class="main-content"><h1 class="zone-name-title h1">civitai.com</h1>
<h2 class="h2">Verifying you are human. This may take a few seconds.</h2>
<noscript>Enable JavaScript and cookies to continue</noscript></div></div>
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: "civitai.com",cType: 'managed'};}());
</script></body></html>
"""
RATE_LIMIT_HTML = """<!DOCTYPE html><html lang="en-US"><head>
<title>Access denied | civitai.com used Cloudflare to restrict access</title></head><body>
<div id="cf-wrapper"><h1><span class="cf-error-type">Error</span> <span>1015</span></h1>
<h2 class="cf-subheadline">You are being rate limited</h2></div></body></html>
"""


# --- the catalogue --------------------------------------------------------------------------------


# What Civitai's pickle scan says of an ordinary PickleTensor checkpoint it passed; a
# "Danger" verdict names the dangerous import instead (see DANGER_IMPORTS).
PICKLE_IMPORTS = (
    "Detected Pickle imports (3)\n* collections.OrderedDict\n* torch.FloatStorage\n"
    "* torch._utils._rebuild_tensor_v2"
)
DANGER_IMPORTS = "Dangerous import detected: builtins.exec"


@dataclasses.dataclass
class FakeUser:
    id: int
    username: str
    image: str | None = None
    favorites: set[int] = dataclasses.field(default_factory=set)
    hidden: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class FakeFile:
    id: int
    name: str
    type: str
    size_kb: float
    hashes: dict[str, str]
    primary: bool = False
    format: str = "SafeTensor"
    size: str | None = "pruned"
    fp: str | None = "fp16"
    # Civitai's scans of the file (ScanResultCode: Pending, Success, Danger, Error); None
    # leaves the key out, as a file scanned before the field existed has it.
    pickle_scan: str | None = "Success"
    pickle_message: str | None = "No Pickle imports"
    virus_scan: str | None = "Success"
    virus_message: str | None = None


@dataclasses.dataclass
class FakeImage:
    id: int
    version_id: int
    model_id: int
    username: str
    user_id: int
    level: int
    created_at: dt.datetime
    width: int
    height: int
    post_id: int
    base_model: str
    meta: Json | None
    tags: list[int]
    reactions: int
    comments: int
    collected: int
    type: str = "image"

    @property
    def url(self) -> str:
        key = uuid.uuid5(uuid.NAMESPACE_URL, f"civitai-fake-image-{self.id}")
        return (
            f"https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/{key}/original=true/{self.id}.jpeg"
        )

    @property
    def blurhash(self) -> str:
        return "U" + hashlib.sha1(str(self.id).encode()).hexdigest()[:33]


@dataclasses.dataclass
class FakeVersion:
    id: int
    model_id: int
    name: str
    base_model: str
    published_at: dt.datetime | None  # None: a draft, invisible to the public API
    files: list[FakeFile]
    trained_words: list[str] = dataclasses.field(default_factory=list)
    description: str | None = None
    downloads: int = 0
    thumbs_up: int = 0
    base_model_type: str = "Standard"
    images: list[FakeImage] = dataclasses.field(default_factory=list)

    @property
    def published(self) -> bool:
        return self.published_at is not None

    @property
    def nsfw_level(self) -> int:
        level = 0
        for image in self.images:
            level |= image.level & 31
        return level or 1


@dataclasses.dataclass
class FakeModel:
    id: int
    name: str
    type: str
    creator: str
    tags: list[str]
    versions: list[FakeVersion]  # newest first
    description: str = ""
    downloads: int | None = 0  # None: the creator hides metrics
    thumbs_up: int = 0
    thumbs_down: int = 0
    comments: int = 0
    collected: int = 0
    tipped: int | None = 0
    mode: str | None = None  # "Archived" | "TakenDown"
    checkpoint_type: str | None = None
    allow_commercial_use: list[str] = dataclasses.field(default_factory=lambda: ["Image"])
    supports_generation: bool = False

    @property
    def public_versions(self) -> list[FakeVersion]:
        return [v for v in self.versions if v.published and any(f.primary for f in v.files)]

    @property
    def nsfw_level(self) -> int:
        level = 0
        for version in self.public_versions:
            level |= version.nsfw_level
        return level or 1

    @property
    def last_version_at(self) -> dt.datetime:
        dates = [v.published_at for v in self.public_versions if v.published_at]
        return max(dates) if dates else NOW

    @property
    def images(self) -> list[FakeImage]:
        return [i for v in self.public_versions for i in v.images]


def file_hashes(file_id: int) -> dict[str, str]:
    seed = f"civitai-fake-file-{file_id}".encode()
    sha = hashlib.sha256(seed).hexdigest().upper()
    return {
        "AutoV1": hashlib.sha1(seed).hexdigest()[:8].upper(),
        "AutoV2": sha[:10],
        "AutoV3": hashlib.md5(seed).hexdigest()[:12].upper(),
        "SHA256": sha,
        "CRC32": f"{zlib.crc32(seed):08X}",
        "BLAKE3": hashlib.blake2b(seed, digest_size=32).hexdigest().upper(),
    }


IMAGE_TAGS = {
    1: "character",
    2: "style",
    3: "realistic",
    4: "anime",
    5: "base model",
    6: "concept",
    7: "clothing",
    8: "landscape",
    9: "photography",
    10: "woman",
}
EXTRA_TAGS = (
    "architecture",
    "buildings",
    "cars",
    "cartoon",
    "celebrity",
    "comics",
    "cyberpunk",
    "fantasy",
    "food",
    "game character",
    "horror",
    "lineart",
    "photorealistic",
    "poses",
    "retro",
    "sci-fi",
    "tool",
    "vehicle",
    "watercolor",
    "wildcards",
)
SAMPLERS = ("Euler a", "DPM++ 2M Karras", "DPM++ SDE", "Euler")
SUBJECTS = ("lighthouse at dusk", "red fox in snow", "portrait of a knight", "city street, rain")


class Catalogue:
    """The fake's data: a few models (Checkpoint, LORA, Wildcards) with versions, files with
    sizes and hashes, ~80 images with meta (some string-typed, some null) at every level."""

    def __init__(self, *, extra_tags: int = 0, extra_images: int = 0) -> None:
        self.users = {
            u.username: u
            for u in (
                FakeUser(1, "alice", "https://image.civitai.com/x/alice.jpeg", favorites={4202}),
                FakeUser(2, "bob_art", "https://image.civitai.com/x/bob.jpeg"),
                FakeUser(3, "carol"),
                FakeUser(4, "dave"),
                FakeUser(5, "erin"),
                FakeUser(6, "frank"),
                FakeUser(7, "grace_h"),
            )
        }
        self.models: dict[int, FakeModel] = {}
        self.tag_names = sorted(set(IMAGE_TAGS.values()) | set(EXTRA_TAGS)) + [
            f"tag {i:04d}" for i in range(extra_tags)
        ]
        self._next_file = 8100
        self._next_image = 90001
        d = dt.datetime
        self._add(
            4201,
            "Photon Realism",
            "Checkpoint",
            "alice",
            ["base model", "realistic", "photography"],
            [
                ("v2.0", "SD 1.5", d(2026, 6, 10, tzinfo=UTC), [1, 1, 2, 4, 1, 8, 1, 16, 1, 2]),
                ("v1.0", "SD 1.5", d(2025, 1, 5, tzinfo=UTC), [1, 2, 1, 1, 4, 1]),
                ("v3.0-draft", "SD 1.5", None, []),
            ],
            downloads=802158,
            thumbs_up=52554,
            comments=464,
            collected=3100,
            checkpoint_type="Trained",
            with_vae=True,
            supports_generation=True,
        )
        self._add(
            4202,
            "Anime Lines",
            "LORA",
            "bob_art",
            ["anime", "style", "lineart"],
            [("v1", "SDXL 1.0", d(2026, 7, 20, tzinfo=UTC), [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 2, 1])],
            downloads=120034,
            thumbs_up=9120,
            comments=88,
            collected=1200,
            trained_words=["animelines", "lineart"],
        )
        self._add(
            4203,
            "Velvet Nights",
            "LORA",
            "carol",
            ["concept", "clothing"],
            [("v1.0", "Pony", d(2026, 5, 2, tzinfo=UTC), [4, 8, 16, 4, 8, 16, 8, 4])],
            downloads=50321,
            thumbs_up=4100,
            comments=31,
            collected=800,
            trained_words=["velvet"],
        )
        self._add(
            4204,
            "Flux Detailer",
            "LORA",
            "alice",
            ["tool", "photography"],
            [
                ("v1.1", "Flux.1 D", d(2026, 7, 28, tzinfo=UTC), [1, 1, 1, 1, 1, 1]),
                ("v1.0", "Flux.1 D", d(2026, 3, 1, tzinfo=UTC), [1, 1, 1, 1, 1, 1]),
            ],
            downloads=None,
            tipped=None,
            thumbs_up=2210,
            comments=12,
            collected=640,
            trained_words=["detailed"],
            supports_generation=True,
        )
        self._add(
            4205,
            "Old Merge",
            "Checkpoint",
            "bob_art",
            ["base model", "anime"],
            [("final", "SD 1.5", d(2023, 4, 1, tzinfo=UTC), [1, 1, 2])],
            downloads=30001,
            thumbs_up=900,
            mode="Archived",
            checkpoint_type="Merge",
        )
        self._add(
            4206,
            "Wildcard Pack",
            "Wildcards",
            "carol",
            ["wildcards", "tool"],
            [("v1", "Other", d(2026, 2, 14, tzinfo=UTC), [1])],
            downloads=4100,
            thumbs_up=300,
            file_type="Archive",
            file_format="Other",
        )
        self._add(
            4207,
            "Portrait Booster",
            "LORA",
            "alice",
            ["realistic", "character", "woman"],
            [("v1", "SDXL 1.0", d(2026, 7, 31, tzinfo=UTC), [1, 1, 1, 2, 1, 1, 4, 1])],
            downloads=64000,
            thumbs_up=5200,
            comments=40,
            collected=990,
            trained_words=["portraitboost"],
        )
        # Two published files share an AutoV1 (as real collisions do): the oldest version wins.
        older = self.models[4204].versions[1].files[0]
        newer = self.models[4207].versions[0].files[0]
        newer.hashes["AutoV1"] = older.hashes["AutoV1"]
        if extra_images:  # a big PG gallery, for benchmarks
            self._add(
                4299,
                "Bulk Gallery",
                "LORA",
                "dave",
                ["photography"],
                [("v1", "SDXL 1.0", d(2026, 1, 1, tzinfo=UTC), [1] * extra_images)],
                downloads=1000,
            )

    def _add(
        self,
        model_id: int,
        name: str,
        type_: str,
        creator: str,
        tags: list[str],
        versions: list[tuple[str, str, dt.datetime | None, list[int]]],
        *,
        trained_words: list[str] | None = None,
        with_vae: bool = False,
        file_type: str = "Model",
        file_format: str = "SafeTensor",
        **fields: Any,
    ) -> None:
        built = []
        for index, (vname, base, published, levels) in enumerate(versions):
            vid = int(f"5{model_id % 1000:03d}{len(versions) - index}")
            files = [self._file(f"{name.replace(' ', '')}_{vname}", file_type, file_format, True)]
            if with_vae:
                vae = self._file(f"{name.replace(' ', '')}_vae", "VAE", "SafeTensor", False)
                vae.size_kb = 327_680.0
                files.append(vae)
            version = FakeVersion(
                id=vid,
                model_id=model_id,
                name=vname,
                base_model=base,
                published_at=published,
                files=files,
                trained_words=list(trained_words or []),
                downloads=(fields.get("downloads") or 1000) // (index + 2),
                thumbs_up=fields.get("thumbs_up", 0) // (index + 2),
                description=f"<p>{name} {vname}</p>" if index == 0 else None,
            )
            version.images = [
                self._image(model_id, version, creator, k, level, tags)
                for k, level in enumerate(levels)
            ]
            built.append(version)
        self.models[model_id] = FakeModel(
            id=model_id,
            name=name,
            type=type_,
            creator=creator,
            tags=tags,
            versions=built,
            description=f"<p>{name}: a fake model for tests.</p>",
            **fields,
        )

    def _file(self, stem: str, type_: str, fmt: str, primary: bool) -> FakeFile:
        self._next_file += 1
        fid = self._next_file
        ext = {"SafeTensor": "safetensors", "PickleTensor": "pt"}.get(fmt, "zip")
        size_kb = round(((fid * 7919) % 2_000_000) + 9_000 + (fid % 100) / 100, 2)
        return FakeFile(
            id=fid,
            name=f"{stem}.{ext}",
            type=type_,
            size_kb=size_kb,
            hashes=file_hashes(fid),
            primary=primary,
            format=fmt,
            size="pruned" if fmt == "SafeTensor" else None,
            fp="fp16" if fmt == "SafeTensor" else None,
            pickle_message="No Pickle imports" if fmt == "SafeTensor" else PICKLE_IMPORTS,
        )

    def _image(
        self, model_id: int, version: FakeVersion, creator: str, k: int, level: int, tags: list[str]
    ) -> FakeImage:
        iid = self._next_image
        self._next_image += 1
        assert version.published_at is not None
        width, height = [(832, 1216), (1024, 1024), (1216, 832), (512, 768)][iid % 4]
        author = creator if k % 3 else ["erin", "frank", "grace_h"][iid % 3]
        meta = self._meta(iid, version, width, height)
        tag_ids = [i for i, t in IMAGE_TAGS.items() if t in tags] + [1 + iid % 10]
        return FakeImage(
            id=iid,
            version_id=version.id,
            model_id=model_id,
            username=author,
            user_id=self.users[author].id,
            level=level,
            created_at=version.published_at + dt.timedelta(hours=6 * k + 1, minutes=iid % 60),
            width=width,
            height=height,
            post_id=700000 + iid // 3,
            base_model=version.base_model,
            meta=meta,
            tags=sorted(set(tag_ids)),
            reactions=(iid * 37) % 500,
            comments=(iid * 11) % 40,
            collected=(iid * 7) % 90,
        )

    def _meta(self, iid: int, version: FakeVersion, width: int, height: int) -> Json | None:
        if iid % 9 == 0:
            return None  # no generation data at all
        file = version.files[0]
        meta: Json = {
            "prompt": f"a {SUBJECTS[iid % 4]}, masterpiece, best quality, (detailed:1.2)",
            "negativePrompt": "lowres, blurry, bad anatomy" if iid % 5 else "",
            "seed": 100000 + iid * 7,
            "steps": 20 + iid % 15,
            "sampler": SAMPLERS[iid % 4],
            "cfgScale": [7, 5.5, 4, 6.5][iid % 4],
            "Size": f"{width}x{height}",
            "Model": file.name.rsplit(".", 1)[0],
            "hashes": {"model": file.hashes["AutoV2"].lower()},
            "civitaiResources": [{"type": "checkpoint", "modelVersionId": version.id}],
            "resources": [{"type": "model", "name": file.name, "hash": file.hashes["AutoV2"]}],
        }
        if iid % 3 == 0:  # as some uploads carry them: numbers as strings, A1111 extras
            meta["steps"] = str(meta["steps"])
            meta["cfgScale"] = str(meta["cfgScale"])
            meta["Clip skip"] = "2"
            meta["Hires upscale"] = "1.5"
            meta["Denoising strength"] = "0.4"
        elif iid % 4 == 1:
            meta["clipSkip"] = 2
        return meta

    # lookups ---------------------------------------------------------------------------------

    @property
    def images(self) -> list[FakeImage]:
        return [i for m in self.models.values() for i in m.images]

    def version(self, version_id: int) -> tuple[FakeModel, FakeVersion] | None:
        for model in self.models.values():
            for version in model.versions:
                if version.id == version_id:
                    return model, version
        return None

    def creators(self) -> list[tuple[FakeUser, int]]:
        counts = {u: 0 for u in self.users}
        for model in self.models.values():
            counts[model.creator] += 1
        return [(self.users[name], counts[name]) for name in self.users]

    def tags_with_counts(self) -> list[tuple[str, int]]:
        counts = {name: 0 for name in self.tag_names}
        for model in self.models.values():
            for tag in model.tags:
                counts[tag] = counts.get(tag, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# --- query parsing, as zod does it ----------------------------------------------------------


class _Query:
    """Reads query parameters the way the server's zod schemas do, collecting issues."""

    def __init__(self, request: web.Request) -> None:
        self.q = request.query
        self.issues: list[Json] = []

    def has(self, name: str) -> bool:
        return name in self.q

    def _one(self, name: str) -> str | None:
        values = self.q.getall(name, [])
        if not values:
            return None
        if len(values) > 1:
            self.issues.append(
                _issue(name, "invalid_type", "Invalid input: expected string, received array")
            )
            return None
        return values[0]

    def string(self, name: str, *, pattern: re.Pattern[str] | None = None) -> str | None:
        value = self._one(name)
        if value is not None and pattern is not None and not pattern.match(value):
            self.issues.append(
                _issue(
                    name,
                    "invalid_format",
                    f"Invalid string: must match pattern /{pattern.pattern}/",
                    format="regex",
                )
            )
            return None
        return value

    def number(
        self,
        name: str,
        *,
        lo: float | None = None,
        hi: float | None = None,
        integer: bool = True,
        default: int | None = None,
    ) -> int | None:
        raw = self._one(name)
        if raw is None:
            return default
        value = _js_number(raw)
        if value is None:
            msg = "Invalid input: expected number, received NaN"
            self.issues.append(_issue(name, "invalid_type", msg, expected="number"))
            return default
        if integer and not float(value).is_integer():
            msg = "Invalid input: expected int, received number"
            self.issues.append(_issue(name, "invalid_type", msg, expected="int"))
            return default
        if lo is not None and value < lo:
            msg = f"Too small: expected number to be >={lo:g}"
            self.issues.append(_issue(name, "too_small", msg, minimum=lo))
            return default
        if hi is not None and value > hi:
            msg = f"Too big: expected number to be <={hi:g}"
            self.issues.append(_issue(name, "too_big", msg, maximum=hi))
            return default
        return int(value)

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        """``booleanString``: a stringbool word, else 400."""
        raw = self._one(name)
        if raw is None:
            return default
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        msg = 'Invalid input: expected stringbool, received "' + raw + '"'
        self.issues.append(_issue(name, "invalid_value", msg))
        return default

    def coerced_boolean(self, name: str) -> bool | None:
        """``z.coerce.boolean()``: any non-empty string is true, "false" included."""
        raw = self._one(name)
        return None if raw is None else bool(raw)

    def enum(self, name: str, values: Sequence[str], default: str | None = None) -> str | None:
        raw = self._one(name)
        if raw is None:
            return default
        if raw not in values:
            self._bad_option(name, values)
            return default
        return raw

    def enum_list(self, name: str, values: Sequence[str], *, split: bool = False) -> list[str]:
        out: list[str] = []
        for raw in self.q.getall(name, []):
            for value in raw.split(",") if split else [raw]:
                if value not in values:
                    self._bad_option(name, values)
                    return []
                out.append(value)
        return out

    def numbers(self, name: str) -> list[int]:
        raw = self._one(name)
        if raw is None:
            return []
        out = []
        for part in raw.split(","):
            value = _js_number(part)
            if value is None or not float(value).is_integer():
                msg = "Invalid input: expected number, received NaN"
                self.issues.append(_issue(name, "invalid_type", msg, expected="number"))
                return []
            out.append(int(value))
        return out

    def not_from_query(self, name: str, expected: str) -> None:
        """A plain ``z.boolean()``/``z.number()``/array field: a query string can't feed it."""
        if self.has(name):
            msg = f"Invalid input: expected {expected}, received string"
            self.issues.append(_issue(name, "invalid_type", msg, expected=expected))

    def _bad_option(self, name: str, values: Sequence[str]) -> None:
        options = "|".join(json.dumps(v) for v in values)
        self.issues.append(
            _issue(
                name,
                "invalid_value",
                f"Invalid option: expected one of {options}",
                values=list(values),
            )
        )


def _issue(name: str, code: str, message: str, **extra: Any) -> Json:
    return {**extra, "code": code, "path": [name], "message": message}


def _js_number(raw: str) -> float | None:
    """JavaScript's ``Number(text)``: ``""`` is 0, hex allowed, NaN is ``None``."""
    text = raw.strip()
    if text == "":
        return 0.0
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", text):
            return float(int(text, 16))
        if re.fullmatch(r"[+-]?(Infinity)", text):
            return math.inf if not text.startswith("-") else -math.inf
        if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            return None
        return float(text)
    except ValueError:
        return None


def _zod_error(issues: list[Json]) -> web.Response:
    """zod v4's ``JSON.stringify(ZodError)``: the issues, as text, in ``message``."""
    body = {"error": {"name": "ZodError", "message": json.dumps(issues, indent=2)}}
    return web.json_response(body, status=400)


def _pretty_error(issues: list[Json]) -> web.Response:
    """``z.prettifyError``: one ``✖ message`` line and an ``→ at path`` line per issue."""
    lines = []
    for issue in issues:
        lines.append(f"✖ {issue['message']}")
        lines.append("  → at " + ".".join(str(p) for p in issue["path"]))
    return web.json_response({"error": "\n".join(lines)}, status=400)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _iso(when: dt.datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _remove_empty(data: Json) -> Json:
    return {k: v for k, v in data.items() if v is not None and v != []}


CDN_ORIGIN = "https://image.civitai.com"


_SHADES = ((196, 160, 120), (90, 120, 170), (60, 140, 90), (170, 80, 90), (120, 110, 160))


@functools.lru_cache(maxsize=512)
def _jpeg(width: int, height: int, shade: int) -> bytes:
    """A plain picture of that size as a JPEG (cached: the fake serves many of each size)."""
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), _SHADES[shade]).save(out, "JPEG", quality=60)
    return out.getvalue()


class _Bucket:
    """A bandwidth cap shared by every connection: each chunk reserves the next
    ``n / rate`` seconds of the line and is sent when its slot ends. Line time left idle in
    the last ``slack_s`` (a late wake-up of this loop) can still be used, as a link's buffer
    would; idle time before that is lost."""

    def __init__(self, slack_s: float = 0.025) -> None:
        self._free_at = 0.0
        self.slack_s = slack_s

    async def take(self, n: int, rate: float) -> None:
        now = asyncio.get_running_loop().time()
        self._free_at = max(now - self.slack_s, self._free_at) + n / rate
        await asyncio.sleep(max(0.0, self._free_at - now))


# --- switches -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Call(Recorded):
    """One request as the fake saw it (tests/fakes/scaffold.py): ``endpoint`` is its route
    name, ``token`` the key it carried and ``user`` whose it is; ``headers`` has any key
    replaced by ``***`` and ``query_items`` the ``token`` parameter."""

    user: str | None = None

    @property
    def token(self) -> str | None:
        return self.key


@dataclasses.dataclass
class LoopSpec:
    mode: str  # cursor | repeat | empty | overlap
    on: str
    after: int
    served: int = 0
    first_cursor: str | None = None
    nonce: int = 0


# --- real shapes (opt in with FakeCivitai.real_shapes()) ------------------------------------
# Seen in real Civitai answers (issue 16); civitai.md §1 "meta" lists these keys as free-form.

# ``Model`` as an object, not a string (civitai.md §1 meta: "Model"; §6.8 schema drift).
REAL_META_MODEL_OBJECT: Json = {
    "prompt": "1girl, belly, smile",
    "negativePrompt": "lowres",
    "seed": 1234,
    "steps": 25,
    "sampler": "DPM++ 2M Karras",
    "cfgScale": 7,
    "Size": "512x768",
    "Model": {"meina_belly_7": "3mix"},
}
# LoRAs three ways: ``hashes`` "lora:NAME" keys, ``civitaiResources`` (type, modelVersionId,
# weight) and ``additionalResources`` (name, type, strength); on-site Flux images carry
# ``fluxMode`` (civitai.md §1 meta: hashes{}, civitaiResources[], additionalResources[]).
REAL_META_LORAS: Json = {
    "prompt": "a castle on a hill, <lora:add_detail:0.6>, golden hour",
    "negativePrompt": "blurry",
    "seed": 42,
    "steps": 30,
    "sampler": "Euler a",
    "cfgScale": 5,
    "Size": "1024x1024",
    "Model": "juggernautXL_v9",
    "hashes": {
        "model": "c9e3e68f89",
        "lora:add_detail": "7c6bad76eb",
        "lora:epiNoiseoffset_v2": "d1131f7207",
    },
    "civitaiResources": [
        {"type": "checkpoint", "modelVersionId": 348913, "modelVersionName": "v9"},
        {"type": "lora", "weight": 0.8, "modelVersionId": 87153, "modelVersionName": "v1"},
    ],
    "additionalResources": [
        {"name": "epiNoiseoffset_v2", "type": "lora", "strength": 0.7, "strengthClip": 1},
    ],
    "fluxMode": "urn:air:flux1:checkpoint:civitai:618692@691639",
}
# Junk an upload carries as values (civitai.md §6.8): "Undefined", "", "null", NaN, negative
# numbers, a date that is not one.
REAL_META_JUNK: Json = {
    "prompt": "a quiet harbour",
    "negativePrompt": "null",
    "seed": -1,
    "steps": -5,
    "sampler": "Undefined",
    "cfgScale": "NaN",
    "Size": "768x512",
    "Model": "",
    "Clip skip": -2,
    "Denoising strength": "NaN",
    "Hires upscaler": "undefined",
    "Created Date": "2023-13-45T99:99:99",
    "Schedule type": "Karras",
}


# --- the server -----------------------------------------------------------------------------------


class FakeCivitai(LoopbackServer):
    record_type = Call
    redact_query = frozenset({"token"})

    def __init__(
        self,
        keys: dict[str, str] | None = None,
        *,
        extra_tags: int = 0,
        latency_s: float = 0.0,
        extra_images: int = 0,
        image_cdn: bool = True,
        bandwidth_bps: float | None = None,
    ) -> None:
        super().__init__(latency_s=latency_s)
        self.keys: dict[str, str] = dict(keys or {"civitai-test-key": "alice"})
        self.catalogue = Catalogue(extra_tags=extra_tags, extra_images=extra_images)
        self.image_cdn = image_cdn  # serve images on an "images" origin; URLs point at it
        self.bandwidth_bps = bandwidth_bps  # cap on the image CDN's body bytes per second
        self._bucket = _Bucket()
        self._image_index: dict[int, FakeImage] = {}
        self.ignore_nsfw = False  # the server forgets to filter images by level
        # Older shapes (civitai.md §6.8, [WIKI]): images carry ``nsfw: true|false`` or the old
        # level names, no numeric ``nsfwLevel``/``browsingLevel``; models ``nsfw`` only.
        self.old_shapes = False
        # /models in page mode (civitai.md §2 metadata, the pre-2024 [WIKI] shape):
        # ``currentPage``, ``pageSize``, ``totalPages``, ``nextPage`` with ``page=``, no cursor.
        self.models_page_mode: bool | str = False  # True, or "loop" (nextPage is page one)
        # Images that exist but ``/images?imageId=`` answers with nothing (issue 16; the
        # postId query still finds them).
        self.missing_by_image_id: set[int] = set()
        self.calls: CallLog[Call] = self.log
        self._loop: LoopSpec | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def origins(self) -> dict[str, web.Application]:
        """The origins this fake serves, by name. ``"api"`` is Civitai itself."""
        api = web.Application()
        r = api.router
        r.add_get("/api/v1/images", self._images, name="images")
        r.add_get("/api/v1/models", self._models, name="models")
        r.add_get("/api/v1/models/{id}", self._model, name="model")
        r.add_post("/api/v1/model-versions/by-hash/ids", self._by_hash_ids, name="by-hash-ids")
        r.add_post("/api/v1/model-versions/by-hash", self._by_hash_bulk, name="by-hash-bulk")
        r.add_get("/api/v1/model-versions/by-hash/{hash}", self._by_hash, name="by-hash")
        r.add_route("*", "/api/v1/model-versions/{id}", self._version, name="version")
        r.add_get("/api/v1/tags", self._tags, name="tags")
        r.add_get("/api/v1/creators", self._creators, name="creators")
        r.add_get("/api/v1/enums", self._enums, name="enums")
        apps = {"api": api}
        if self.image_cdn:
            cdn = web.Application()
            cdn.router.add_get("/{key}/{uuid}/{params}/{name}", self._cdn_image, name="image")
            apps["images"] = cdn
        return apps

    def key_of(self, request: web.Request) -> str | None:
        return _token(request)

    def redacted(self, value: str) -> str:
        return "***"

    def describe(self, call: Call, request: web.Request) -> None:
        call.user = self.keys.get(call.key) if call.key else None

    # --- switches ----------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        body: Any = None,
        *,
        on: str = "any",
        times: int = 1,
        retry_after: float | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests to ``on`` get this answer: ``body`` a dict/list (JSON),
        a str (text/plain) or ``None`` (the server's body for that status)."""
        if body is None:
            body = (
                {"message": ERR_UNEXPECTED, "error": "Internal server error"}
                if status >= 500
                else {"error": {400: "Bad Request", 429: "Too Many Requests"}.get(status, "Error")}
            )
        if isinstance(body, dict | list):
            raw, ctype = json.dumps(body).encode(), "application/json"
        else:
            raw, ctype = str(body).encode(), "text/plain; charset=utf-8"
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        self.faults.fail(status, raw, on=on, times=times, headers=extra, content_type=ctype)

    def throttle(
        self,
        times: int = 1,
        *,
        retry_after: float | str | None = "2",
        on: str = "any",
        html: bool = False,
    ) -> None:
        """429s: JSON, or Cloudflare's HTML "Error 1015" page with ``html``."""
        if html:
            self._html(429, RATE_LIMIT_HTML, times=times, on=on, retry_after=retry_after)
        else:
            self.fail_next(
                429, {"error": "Too Many Requests"}, on=on, times=times, retry_after=retry_after
            )

    def overload(
        self, times: int = 1, *, retry_after: float | str = "2", on: str = "images"
    ) -> None:
        """The search backend's 503 (images, or models with ``query``)."""
        self.fail_next(
            503,
            {"error": ERR_OVERLOADED},
            on=on,
            times=times,
            retry_after=retry_after,
            headers={"Cache-Control": "no-store"},
        )

    def real_shapes(self) -> dict[str, int]:
        """Give three PG images of "Photon Realism" v2.0 the real metas above; their ids."""
        pg = [i for i in self.catalogue.models[4201].versions[0].images if i.level == 1]
        shapes = {
            "model_object": REAL_META_MODEL_OBJECT,
            "loras": REAL_META_LORAS,
            "junk": REAL_META_JUNK,
        }
        out = {}
        for image, (name, meta) in zip(pg, shapes.items(), strict=False):
            image.meta = json.loads(json.dumps(meta))
            out[name] = image.id
        return out

    def challenge(self, times: int = 1, *, status: int = 403, on: str = "any") -> None:
        """Cloudflare's managed challenge: an HTML page instead of JSON."""
        self._html(status, CHALLENGE_HTML, times=times, on=on, retry_after=None)

    def drop_next(self, times: int = 1, *, on: str = "any") -> None:
        """Close the connection without an answer."""
        self.faults.drop(on=on, times=times)

    def _html(
        self, status: int, page: str, *, times: int, on: str, retry_after: float | str | None
    ) -> None:
        headers = {
            "Server": "cloudflare",
            "Cache-Control": "private, max-age=0, no-store, no-cache, must-revalidate",
        }
        if status == 403:
            headers["cf-mitigated"] = "challenge"
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        html = "text/html; charset=UTF-8"
        self.faults.fail(status, page, on=on, times=times, headers=headers, content_type=html)

    def loop_cursor(self, mode: str | None = "cursor", *, on: str = "any", after: int = 1) -> None:
        """Reproduce the server's cursor bugs on cursor-paged endpoints (images, models), from
        the ``after``-th request that carries a cursor:

        * ``cursor``: ``nextCursor`` goes back to the first cursor handed out (a loop);
        * ``repeat``: the previous page again, under a never-seen cursor;
        * ``empty``: no items, and yet a (new) ``nextCursor``;
        * ``overlap``: every page starts two items early (repeats within progress).

        ``loop_cursor(None)`` turns it off."""
        if mode is None:
            self._loop = None
            return
        if mode not in ("cursor", "repeat", "empty", "overlap"):
            raise ValueError(f"unknown loop mode {mode!r}")
        self._loop = LoopSpec(mode, on, after)

    def calls_to(self, endpoint: str) -> list[Call]:
        return self.calls_of(endpoint)

    # --- plumbing ----------------------------------------------------------------------------

    def _json(self, data: Any, *, cache: str = PUBLIC_CACHE, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, headers={"Cache-Control": cache})

    def _download_url(self, version: FakeVersion, file: FakeFile | None = None) -> str:
        url = f"{self.base_url}/api/download/models/{version.id}"
        if file is None or file.primary:
            return url
        params = {"type": file.type, "format": file.format, "size": file.size, "fp": file.fp}
        return url + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})

    # --- cursors -----------------------------------------------------------------------------

    def _slice(
        self,
        endpoint: str,
        items: list[Any],
        limit: int,
        cursor: str | None,
        tokens: Callable[[Any], list[int]],
        sign: int,
    ) -> tuple[list[Any], str | None] | web.Response:
        """A keyset page of ``items`` (sorted by their ``tokens`` times ``sign``) after
        ``cursor``, with the loop switches applied; or a 400 for a cursor that does not fit."""
        start = 0
        if cursor is not None:
            parts = cursor.split("|")
            expected = len(tokens(items[0])) if items else len(parts)
            if len(parts) != expected or not all(re.fullmatch(r"-?\d+", p) for p in parts):
                return _error(400, f"Invalid cursor: expected {expected} value(s), got {cursor!r}")
            after = tuple(sign * int(p) for p in parts)
            start = next(
                (i for i, it in enumerate(items) if tuple(sign * v for v in tokens(it)) > after),
                len(items),
            )
        page = items[start : start + limit]
        more = start + limit < len(items)
        next_cursor = "|".join(map(str, tokens(page[-1]))) if page and more else None
        loop = self._loop
        if loop is not None and loop.on in (endpoint, "any"):
            if cursor is not None:
                loop.served += 1
            if cursor is not None and loop.served >= loop.after:
                if loop.mode == "cursor" and loop.first_cursor is not None:
                    next_cursor = loop.first_cursor
                elif loop.mode == "repeat" and start > 0:
                    page = items[max(0, start - limit) : start]
                    next_cursor = self._fresh(loop, tokens(page[-1]))
                elif loop.mode == "empty":
                    last = tokens(page[-1]) if page else tokens(items[-1])
                    page, next_cursor = [], self._fresh(loop, last)
            if loop.mode == "overlap" and next_cursor and len(page) > 2:
                next_cursor = "|".join(map(str, tokens(page[-3])))
            if loop.first_cursor is None and next_cursor is not None:
                loop.first_cursor = next_cursor
        return page, next_cursor

    @staticmethod
    def _fresh(loop: LoopSpec, values: list[int]) -> str:
        """A cursor text never handed out before that reads as ``values`` (zero-padded)."""
        loop.nonce += 1
        return "|".join(["0" * loop.nonce + str(values[0]), *map(str, values[1:])])

    # --- /images -------------------------------------------------------------------------------

    async def _images(self, request: web.Request) -> web.StreamResponse:
        q = _Query(request)
        limit = q.number("limit", lo=0, hi=200, default=100) or 100
        page_no = q.number("page", lo=1)
        cursor = q.string("cursor")
        post_id = q.number("postId")
        model_id = q.number("modelId")
        version_id = q.number("modelVersionId")
        image_id = q.number("imageId")
        user_id = q.number("userId")
        username = q.string("username", pattern=USERNAME_RE)
        period = q.enum("period", PERIODS, "AllTime")
        sort = q.enum("sort", IMAGE_SORTS, "Most Reactions")
        nsfw = self._nsfw_param(q)
        browsing = q.number("browsingLevel", lo=0, hi=63)
        tags = q.numbers("tags")
        type_ = q.enum("type", IMAGE_TYPES)
        base_models = q.enum_list("baseModels", BASE_MODELS, split=True)
        with_meta = q.boolean("withMeta", False)
        flat = q.boolean("flatMeta")
        with_tags = q.boolean("withTags", False)
        requiring_meta = q.boolean("requiringMeta", False)
        if q.issues:
            return _zod_error(q.issues)
        if cursor is None and page_no is not None and page_no * limit > MAX_PAGED_ITEMS:
            return _error(429, ERR_TOO_MANY_PAGES)
        level = browsing if browsing is not None else (nsfw if nsfw is not None else 1)
        legacy = image_id is not None or (model_id is not None and version_id is None)

        images = self.catalogue.images
        if not self.ignore_nsfw:
            images = [i for i in images if i.level & level]
        if post_id is not None:
            images = [i for i in images if i.post_id == post_id]
        if model_id is not None:
            images = [i for i in images if i.model_id == model_id]
        if version_id is not None:
            images = [i for i in images if i.version_id == version_id]
        if image_id is not None:
            images = [
                i for i in images if i.id == image_id and i.id not in self.missing_by_image_id
            ]
        if user_id is not None:
            images = [i for i in images if i.user_id == user_id]
        if username:
            images = [i for i in images if i.username.lower() == username.lower()]
        if period != "AllTime":
            since = NOW - dt.timedelta(days=PERIOD_DAYS[period])
            images = [i for i in images if i.created_at >= since]
        if tags:
            images = [i for i in images if set(tags) & set(i.tags)]
        if type_:
            images = [i for i in images if i.type == type_]
        if base_models:
            images = [i for i in images if i.base_model in base_models]
        if requiring_meta:
            images = [i for i in images if i.meta]

        effective = sort or "Most Reactions"
        if legacy and effective in ("Most Reactions", "Most Comments", "Most Collected"):
            effective = "Id"  # the DB path collapses these to newest-by-id
        tokens = _image_tokens(effective)
        sign = 1 if effective in ("Oldest", "Random") else -1
        images.sort(key=lambda i: tuple(sign * v for v in tokens(i)))

        metadata: Json = {}
        if cursor is None and page_no is not None:
            start = (page_no - 1) * limit
            chunk = images[start : start + limit]
            more = start + limit < len(images)
            metadata = {"currentPage": page_no, "pageSize": limit}
            if more:
                metadata["nextCursor"] = "|".join(map(str, tokens(chunk[-1])))
                metadata["nextPage"] = str(request.url.update_query(page=str(page_no + 1)))
        else:
            sliced = self._slice("images", images, limit, cursor, tokens, sign)
            if isinstance(sliced, web.Response):
                return sliced
            chunk, next_cursor = sliced
            if next_cursor is not None:
                metadata["nextCursor"] = next_cursor
                metadata["nextPage"] = str(request.url.update_query(cursor=next_cursor))
        items = [
            self._image_json(
                i, with_meta=bool(with_meta), nested=_nested(flat, legacy), tags=bool(with_tags)
            )
            for i in chunk
        ]
        return self._json({"items": items, "metadata": metadata})

    def _nsfw_param(self, q: _Query) -> int | None:
        raw = q._one("nsfw")
        if raw is None:
            return None
        if raw in NSFW_NAMES:
            return NSFW_NAMES[raw]
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return 4 | 8 | 16 | 32  # NSFW only: no PG
        if word in FALSE_WORDS:
            return 1
        q.issues.append(
            _issue("nsfw", "invalid_value", f"Invalid input: expected stringbool, received {raw!r}")
        )
        return None

    def _image_json(self, image: FakeImage, *, with_meta: bool, nested: bool, tags: bool) -> Json:
        meta: Any = None
        if with_meta:
            meta = {"id": image.id, "meta": image.meta} if nested else image.meta
        out: Json = {
            "id": image.id,
            "url": self._image_url(image),
            "hash": image.blurhash,
            "width": image.width,
            "height": image.height,
            "nsfwLevel": LEVEL_NAMES.get(image.level, "None"),
            "type": image.type,
            "nsfw": image.level != 1,
            "browsingLevel": image.level,
            "createdAt": _iso(image.created_at),
            "postId": image.post_id,
            "stats": {
                "cryCount": image.reactions % 7,
                "laughCount": image.reactions % 11,
                "likeCount": image.reactions // 2,
                "dislikeCount": 0,
                "heartCount": image.reactions - image.reactions // 2,
                "commentCount": image.comments,
            },
            "meta": meta,
            "username": image.username,
            "baseModel": image.base_model,
            "modelVersionIds": [image.version_id],
        }
        if tags:
            out["tags"] = [{"id": t, "name": IMAGE_TAGS[t]} for t in image.tags]
        if self.old_shapes:
            del out["browsingLevel"]
        return out

    # --- the image CDN (image_cdn=True) -----------------------------------------------------

    def _image_url(self, image: FakeImage) -> str:
        if self.image_cdn and "images" in self.urls:
            return image.url.replace(CDN_ORIGIN, self.urls["images"], 1)
        return image.url

    def _find_image(self, image_id: int) -> FakeImage | None:
        index = self._image_index
        if image_id not in index:
            index.clear()
            index.update((i.id, i) for i in self.catalogue.images)
        return index.get(image_id)

    def image_bytes(self, image_id: int, width: int | None = None) -> bytes:
        """The exact body the CDN serves for an image: ``width=None`` is ``original=true``."""
        image = self._find_image(image_id)
        if image is None:
            raise KeyError(f"no image {image_id}")
        size = 20_000 + (image_id * 7919) % 60_000
        w, h = image.width or 512, image.height or 512
        if width is not None and width < w:
            size = max(1_000, int(size * (width / w) ** 2))
            w, h = width, max(1, round(h * width / w))
        seed = image_id if width is None else image_id * 100_003 + width
        # A real JPEG of that size (so it decodes), grown to ``size`` with comment segments
        # of random bytes (so sizes vary like photos do, at no encoding cost per request).
        base = _jpeg(w, h, image_id % len(_SHADES))
        filler = random.Random(seed).randbytes(max(0, size - len(base)))
        segments = b"".join(
            b"\xff\xfe" + (len(part) + 2).to_bytes(2, "big") + part
            for part in (filler[i : i + 65_000] for i in range(0, len(filler), 65_000))
        )
        return base[:2] + segments + base[2:]

    async def _cdn_image(self, request: web.Request) -> web.StreamResponse:
        m = re.fullmatch(r"(\d+)\.[A-Za-z0-9]+", request.match_info["name"])
        image = self._find_image(int(m.group(1))) if m else None
        if image is None or image.url.split("/")[4] != request.match_info["uuid"]:
            return web.Response(status=404, text="Not Found")
        params = dict(p.partition("=")[::2] for p in request.match_info["params"].split(",") if p)
        width = None
        if params.get("original") != "true" and "width" in params:
            if not params["width"].isdigit() or int(params["width"]) < 1:
                return web.Response(status=400, text="bad width")
            width = int(params["width"])
        body = self.image_bytes(image.id, width)
        response = web.StreamResponse(
            headers={
                "Content-Type": "image/jpeg",
                "Content-Length": str(len(body)),
                "Cache-Control": "public, max-age=31536000, immutable",
            }
        )
        await response.prepare(request)
        step = 16_384
        try:
            for start in range(0, len(body), step):
                chunk = body[start : start + step]
                if self.bandwidth_bps:
                    await self._bucket.take(len(chunk), self.bandwidth_bps)
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-picture (a cancelled harvest)
        return response

    # --- /models -------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        q = _Query(request)
        limit = q.number("limit", lo=0, hi=100, default=100) or 100
        page_no = q.number("page", lo=1)
        cursor = q.string("cursor")
        query = q.string("query")
        tag = q.string("tag") or q.string("tagname")
        username = q.string("username") or q.string("user")
        types = q.enum_list("types", MODEL_TYPES)
        base_models = q.enum_list("baseModels", BASE_MODELS)
        sort = q.enum("sort", MODEL_SORTS, "Highest Rated") or "Highest Rated"
        period = q.enum("period", PERIODS, "AllTime")
        nsfw = q.boolean("nsfw")
        primary_only = q.boolean("primaryFileOnly", False)
        favorites = q.boolean("favorites", False)
        hidden = q.boolean("hidden", False)
        ids = q.numbers("ids")
        version_ids = q.numbers("modelVersionIds")
        commercial = q.enum("allowCommercialUse", COMMERCIAL_USES)
        checkpoint_type = q.enum("checkpointType", CHECKPOINT_TYPES)
        supports_generation = q.coerced_boolean("supportsGeneration")
        archived = q.coerced_boolean("archived")
        for name in ("fromPlatform", "earlyAccess", "followed"):
            q.coerced_boolean(name)
        for name in ("allowNoCredit", "allowDerivatives", "allowDifferentLicense"):
            q.not_from_query(name, "boolean")
        q.not_from_query("browsingLevel", "number")
        q.not_from_query("fileFormats", "array")
        if q.issues:
            return _zod_error(q.issues)
        token = _token(request)
        user_name = self.keys.get(token) if token else None
        if (q.has("favorites") or q.has("hidden")) and user_name is None:
            return _error(401, "Unauthorized")
        if page_no is not None and query:
            return _error(400, ERR_PAGE_WITH_QUERY)
        if cursor is None and page_no is not None and page_no * limit > MAX_PAGED_ITEMS:
            return _error(429, ERR_TOO_MANY_PAGES)
        user = self.catalogue.users.get(user_name or "")
        level = 31 if nsfw else 1

        models = list(self.catalogue.models.values())
        if query:
            needle = query.lower()
            models = [
                m
                for m in models
                if needle in m.name.lower()
                or any(needle in t for t in m.tags)
                or needle in m.creator.lower()
            ]
        elif ids:
            models = [m for m in models if m.id in ids]
        if version_ids:
            models = [m for m in models if {v.id for v in m.versions} & set(version_ids)]
        if types:
            models = [m for m in models if m.type in types]
        if base_models:
            models = [
                m for m in models if any(v.base_model in base_models for v in m.public_versions)
            ]
        if tag:
            models = [m for m in models if tag.lower() in m.tags]
        if username:
            models = [m for m in models if m.creator.lower() == username.lower()]
        if favorites and user:
            models = [m for m in models if m.id in user.favorites]
        if user:
            models = [m for m in models if (m.id in user.hidden) == bool(hidden)]
        if supports_generation is not None:
            models = [m for m in models if m.supports_generation == supports_generation]
        if archived:
            models = [m for m in models if m.mode == "Archived"]
        if checkpoint_type:
            models = [m for m in models if m.checkpoint_type == checkpoint_type]
        if commercial:
            models = [m for m in models if commercial in m.allow_commercial_use]
        if period != "AllTime":
            since = NOW - dt.timedelta(days=PERIOD_DAYS[period or "AllTime"])
            models = [m for m in models if m.last_version_at >= since]
        models = [m for m in models if m.public_versions]
        filter_levels = not query  # the real search ignores nsfw with a query (civitai#1664)
        if filter_levels:
            models = [m for m in models if m.nsfw_level & level]
        tokens = _model_tokens(sort)
        sign = 1 if sort == "Oldest" else -1
        models.sort(key=lambda m: tuple(sign * v for v in tokens(m)))

        metadata: Json = {}
        if query:
            start = 0
            if cursor is not None:
                offset = _js_number(cursor)
                if offset is None or not offset.is_integer() or offset < 0:
                    return _error(400, "Invalid cursor: expected a numeric offset")
                start = int(offset)
            chunk = models[start : start + limit]
            if start + limit < len(models):
                metadata["nextCursor"] = str(start + limit)
                metadata["nextPage"] = str(request.url.update_query(cursor=str(start + limit)))
        elif self.models_page_mode and cursor is None:
            page_no = page_no or 1
            start = (page_no - 1) * limit
            chunk = models[start : start + limit]
            total = max(1, -(-len(models) // limit))
            metadata = {"currentPage": page_no, "pageSize": limit, "totalPages": total}
            metadata["totalItems"] = len(models)
            if page_no < total:  # "loop": a server that keeps pointing at page one
                again = 1 if self.models_page_mode == "loop" else page_no + 1
                metadata["nextPage"] = str(request.url.update_query(page=str(again)))
        elif cursor is None and page_no is not None:
            start = (page_no - 1) * limit
            chunk = models[start : start + limit]
            metadata = {"currentPage": page_no, "pageSize": limit}
            if start + limit < len(models):
                next_cursor = "|".join(map(str, tokens(chunk[-1])))
                metadata["nextCursor"] = next_cursor
                metadata["nextPage"] = str(request.url.update_query(cursor=next_cursor))
        else:
            sliced = self._slice("models", models, limit, cursor, tokens, sign)
            if isinstance(sliced, web.Response):
                return sliced
            chunk, next_cursor = sliced
            if next_cursor is not None:
                metadata["nextCursor"] = next_cursor
                metadata["nextPage"] = str(request.url.update_query(cursor=next_cursor))
        items = [
            self._model_json(
                m,
                image_level=level if filter_levels else 31,
                primary_only=bool(primary_only),
                detail=False,
            )
            for m in chunk
        ]
        return self._json({"items": items, "metadata": metadata})

    def _model_json(
        self, model: FakeModel, *, image_level: int, primary_only: bool, detail: bool
    ) -> Json:
        versions = []
        for index, version in enumerate(model.public_versions):
            v = self._list_version_json(model, version, index, image_level, primary_only)
            versions.append(_remove_empty(v) if detail else v)
        out: Json = {
            "id": model.id,
            "name": model.name,
            "description": model.description,
            "type": model.type,
            "poi": False,
            "minor": False,
            "sfwOnly": False,
            "nsfw": bool(model.nsfw_level & 28),
            "nsfwLevel": model.nsfw_level,
            "availability": "Public",
            "allowNoCredit": True,
            "allowCommercialUse": list(model.allow_commercial_use),
            "allowDerivatives": True,
            "allowDifferentLicense": True,
            "supportsGeneration": model.supports_generation,
            "stats": {
                "downloadCount": model.downloads,
                "thumbsUpCount": model.thumbs_up,
                "thumbsDownCount": model.thumbs_down,
                "commentCount": model.comments,
                "tippedAmountCount": model.tipped,
            },
            "creator": {
                "username": model.creator,
                "image": self.catalogue.users[model.creator].image,
            },
            "tags": list(model.tags),
            "modelVersions": versions,
        }
        if model.mode:
            out["mode"] = model.mode
        if self.old_shapes:
            del out["nsfwLevel"]
        return out

    def _list_version_json(
        self,
        model: FakeModel,
        version: FakeVersion,
        index: int,
        image_level: int,
        primary_only: bool,
    ) -> Json:
        archived = model.mode == "Archived"
        files = [] if archived else [f for f in version.files if f.primary or not primary_only]
        images = [] if model.mode == "TakenDown" else version.images
        out: Json = {
            "id": version.id,
            "index": index,
            "name": version.name,
            "modelId": model.id,
            "baseModel": version.base_model,
            "baseModelType": version.base_model_type,
            "nsfwLevel": version.nsfw_level,
            "availability": "Public",
            "publishedAt": _iso(version.published_at),
            "description": version.description,
            "trainedWords": list(version.trained_words),
            "supportsGeneration": model.supports_generation,
            "earlyAccessDeadline": None,
            "paidAccess": None,
            "stats": {
                "downloadCount": None if model.downloads is None else version.downloads,
                "thumbsUpCount": version.thumbs_up,
                "thumbsDownCount": 0,
            },
            "files": [self._file_json(version, f, always_primary=False) for f in files],
            "images": [
                {
                    "id": i.id,
                    "url": self._image_url(i),
                    **self._image_level_json(i),
                    "width": i.width,
                    "height": i.height,
                    "hash": i.blurhash,
                    "type": i.type,
                    "hasMeta": i.meta is not None,
                    "onSite": False,
                    "remixOfId": None,
                }
                for i in images
                if i.level & image_level
            ],
        }
        if not archived:
            out["downloadUrl"] = self._download_url(version)
        if self.old_shapes:
            del out["nsfwLevel"]
        return out

    def _image_level_json(self, image: FakeImage) -> Json:
        """A version image's level: the number, or with ``old_shapes`` the old ``nsfw`` field
        (a boolean on even ids, the old level name on odd ones)."""
        if not self.old_shapes:
            return {"nsfwLevel": image.level}
        if image.id % 2 == 0:
            return {"nsfw": image.level != 1}
        return {"nsfw": LEVEL_NAMES.get(image.level, "None")}

    def _file_json(self, version: FakeVersion, file: FakeFile, *, always_primary: bool) -> Json:
        meta = {"format": file.format, "size": file.size, "fp": file.fp}
        out: Json = {
            "id": file.id,
            "sizeKB": file.size_kb,
            "name": file.name,
            "type": file.type,
            "pickleScanResult": file.pickle_scan,
            "pickleScanMessage": file.pickle_message,
            "virusScanResult": file.virus_scan,
            "virusScanMessage": file.virus_message,
            "scannedAt": _iso(version.published_at),
            "metadata": {k: v for k, v in meta.items() if v is not None},
            "hashes": dict(file.hashes),
            "downloadUrl": self._download_url(version, file),
        }
        for key in ("pickleScanResult", "virusScanResult"):
            if out[key] is None:
                del out[key]
        if always_primary:
            out["primary"] = file.primary
        elif file.primary:
            out["primary"] = True
        return out

    # --- /models/{id}, /model-versions -------------------------------------------------------

    async def _model(self, request: web.Request) -> web.StreamResponse:
        model_id = _path_int(request.match_info["id"])
        if model_id is None:
            return _pretty_error(
                [_issue("id", "invalid_type", "Invalid input: expected number, received NaN")]
            )
        model = self.catalogue.models.get(model_id)
        if model is None or not model.public_versions:
            return _error(404, f"No model with id {model_id}")
        return self._json(self._model_json(model, image_level=63, primary_only=False, detail=True))

    async def _version(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _error(405, "Method not allowed")
        version_id = _path_int(request.match_info["id"])
        if version_id is None:
            return _pretty_error(
                [_issue("id", "invalid_type", "Invalid input: expected number, received NaN")]
            )
        found = self.catalogue.version(version_id)
        if found is None or not found[1].published:
            return _error(404, "Model not found")
        return self._json(self._version_json(*found))

    def _version_json(self, model: FakeModel, version: FakeVersion) -> Json:
        eco = {
            "SD 1.5": "sd1",
            "SDXL 1.0": "sdxl",
            "Pony": "sdxl",
            "Flux.1 D": "flux1",
        }.get(version.base_model, "other")
        model_json: Json = {
            "name": model.name,
            "type": model.type,
            "nsfw": bool(model.nsfw_level & 28),
            "poi": False,
        }
        if model.mode:
            model_json["mode"] = model.mode
        files = [] if model.mode == "Archived" else version.files
        return {
            "id": version.id,
            "modelId": model.id,
            "name": version.name,
            "nsfwLevel": version.nsfw_level,
            "createdAt": _iso(version.published_at),
            "updatedAt": _iso(version.published_at),
            "status": "Published",
            "publishedAt": _iso(version.published_at),
            "trainedWords": list(version.trained_words),
            "trainingStatus": None,
            "trainingDetails": None,
            "baseModel": version.base_model,
            "baseModelType": version.base_model_type,
            "description": version.description,
            "uploadType": "Created",
            "usageControl": "Download",
            "air": f"urn:air:{eco}:{model.type.lower()}:civitai:{model.id}@{version.id}",
            "stats": {
                "downloadCount": None if model.downloads is None else version.downloads,
                "thumbsUpCount": version.thumbs_up,
            },
            "model": model_json,
            "files": [self._file_json(version, f, always_primary=True) for f in files],
            "images": [
                {
                    "url": self._image_url(i),
                    **self._image_level_json(i),
                    "width": i.width,
                    "height": i.height,
                    "hash": i.blurhash,
                    "type": i.type,
                    "hasMeta": i.meta is not None,
                    "meta": i.meta,
                }
                for i in version.images[:10]
            ],
            "downloadUrl": self._download_url(version),
        }

    def _versions_with_hash(self, wanted: str) -> list[tuple[FakeModel, FakeVersion]]:
        found = []
        for model in self.catalogue.models.values():
            for version in model.versions:
                if not version.published:
                    continue
                if any(wanted == h.upper() for f in version.files for h in f.hashes.values()):
                    found.append((model, version))
        found.sort(key=lambda mv: (mv[1].published_at or NOW, mv[1].id))
        return found

    async def _by_hash(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["hash"].strip().upper()
        found = self._versions_with_hash(wanted)
        if not found:
            return _error(404, "Model not found")
        return self._json(self._version_json(*found[0]), cache=HASH_CACHE)

    def _hash_list(self, body: Any, most: int) -> list[str] | web.Response:
        if not isinstance(body, list) or not all(isinstance(h, str) for h in body):
            return _pretty_error(
                [_issue("body", "invalid_type", "Invalid input: expected array, received object")]
            )
        if len(body) > most:
            msg = f"Too big: expected array to have <={most} items"
            return _pretty_error([_issue("body", "too_big", msg)])
        return [h.strip().upper() for h in body]

    async def _by_hash_bulk(self, request: web.Request) -> web.StreamResponse:
        hashes = self._hash_list(await _json_body(request), 100)
        if isinstance(hashes, web.Response):
            return hashes
        out, seen = [], set()
        for wanted in hashes:
            found = self._versions_with_hash(wanted)
            if found and found[0][1].id not in seen:
                seen.add(found[0][1].id)
                out.append(self._version_json(*found[0]))
        return self._json(out, cache="no-store")

    async def _by_hash_ids(self, request: web.Request) -> web.StreamResponse:
        hashes = self._hash_list(await _json_body(request), 10_000)
        if isinstance(hashes, web.Response):
            return hashes
        out = []
        for wanted in dict.fromkeys(hashes):
            found = self._versions_with_hash(wanted)
            if found:
                out.append({"modelVersionId": found[0][1].id, "hash": wanted})
        return self._json(out, cache="no-store")

    # --- /tags, /creators, /enums ---------------------------------------------------------------

    def _numbered(
        self, request: web.Request, rows: list[Json], limit: int, page_no: int
    ) -> web.Response:
        total = len(rows)
        pages = max(1, math.ceil(total / limit))
        start = (page_no - 1) * limit
        metadata: Json = {
            "totalItems": total,
            "currentPage": page_no,
            "pageSize": limit,
            "totalPages": pages,
        }
        if page_no < pages:
            metadata["nextPage"] = str(request.url.update_query(page=str(page_no + 1)))
        if page_no > 1:
            metadata["prevPage"] = str(request.url.update_query(page=str(page_no - 1)))
        return self._json({"items": rows[start : start + limit], "metadata": metadata})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        q = _Query(request)
        limit = q.number("limit", lo=1, hi=200, default=20) or 20
        page_no = q.number("page", lo=1, default=1) or 1
        query = q.string("query")
        if q.issues:
            return _zod_error(q.issues)
        rows = [
            {"name": name, "link": f"{self.base_url}/api/v1/models?tag={urllib.parse.quote(name)}"}
            for name, _count in self.catalogue.tags_with_counts()
            if not query or query.lower() in name
        ]
        return self._numbered(request, rows, limit, page_no)

    async def _creators(self, request: web.Request) -> web.StreamResponse:
        q = _Query(request)
        limit = q.number("limit", lo=1, hi=200, default=20) or 20
        page_no = q.number("page", lo=1, default=1) or 1
        query = q.string("query")
        if q.issues:
            return _zod_error(q.issues)
        rows = []
        for user, count in self.catalogue.creators():
            if query and query.lower() not in user.username.lower():
                continue
            row: Json = {
                "username": user.username,
                "link": f"{self.base_url}/api/v1/models?username={user.username}",
            }
            if count:
                row["modelCount"] = count
            if user.image:
                row["image"] = user.image
            rows.append(row)
        return self._numbered(request, rows, limit, page_no)

    async def _enums(self, request: web.Request) -> web.StreamResponse:
        return self._json(
            {
                "ModelType": list(MODEL_TYPES),
                "ModelFileType": list(MODEL_FILE_TYPES),
                "ActiveBaseModel": list(ACTIVE_BASE_MODELS),
                "BaseModel": list(BASE_MODELS),
                "BaseModelType": list(BASE_MODEL_TYPES),
            }
        )

    # --- helpers for tests ------------------------------------------------------------------------

    def visible_image_ids(self, mask: int = 1, **filters: Any) -> list[int]:
        """Ids of the images ``/images`` would list at ``mask`` (``model_version_id=`` etc.)."""
        out = []
        for image in self.catalogue.images:
            if not image.level & mask:
                continue
            if "model_version_id" in filters and image.version_id != filters["model_version_id"]:
                continue
            if "model_id" in filters and image.model_id != filters["model_id"]:
                continue
            out.append(image.id)
        return out


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        parts = header.split(" ")
        return parts[1] if len(parts) > 1 and parts[1] else None
    return request.query.get("token") or None


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _path_int(raw: str) -> int | None:
    value = _js_number(raw)
    if value is None or not value.is_integer() or not 1 <= value <= 2147483647:
        return None
    return int(value)


def _nested(flat: bool | None, legacy: bool) -> bool:
    return (not flat) if flat is not None else legacy


def _image_tokens(sort: str) -> Callable[[FakeImage], list[int]]:
    metric: dict[str, Callable[[FakeImage], int]] = {
        "Most Reactions": lambda i: i.reactions,
        "Most Comments": lambda i: i.comments,
        "Most Collected": lambda i: i.collected,
        "Newest": lambda i: _ms(i.created_at),
        "Oldest": lambda i: _ms(i.created_at),
        "Random": lambda i: (i.id * 2654435761) % 2**32,
        "Id": lambda i: i.id,
    }
    fn = metric[sort]
    return lambda i: [fn(i), i.id]


def _model_tokens(sort: str) -> Callable[[FakeModel], list[int]]:
    metric: dict[str, Callable[[FakeModel], int]] = {
        "Highest Rated": lambda m: m.thumbs_up,
        "Most Downloaded": lambda m: m.downloads or 0,
        "Most Liked": lambda m: m.thumbs_up,
        "Most Discussed": lambda m: m.comments,
        "Most Collected": lambda m: m.collected,
        "Most Images": lambda m: len(m.images),
    }
    if sort in ("Newest", "Oldest"):
        return lambda m: [_ms(m.last_version_at), m.id]
    fn = metric[sort]
    return lambda m: [fn(m), _ms(m.last_version_at), m.id]


# --- downloads: /api/download/models/{id} and the signed storage origin ---------------------------
#
# (Additions for the model download manager; see FakeCivitaiDownloads.)

ERR_DOWNLOAD_QUOTA = (
    "We've noticed an unusual amount of downloading from your account. "
    "Contact support@civitai.com or come back later."
)
ERR_LOGIN_REQUIRED = "The creator of this asset requires you to be logged in to download it"
ERR_DOWNLOADS_DISABLED = "The creator of this asset has disabled downloads on this file"
ERR_EARLY_ACCESS = "This asset is in Early Access. You can use Buzz access it now!"
ERR_ARCHIVED = "Model archived, not available for download"
ERR_NO_ACCESS = "You do not have access to download this file"
FILE_FORMATS = ("SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other")
FILE_SIZES = ("full", "pruned")
FILE_FPS = (
    "fp32",
    "fp16",
    "bf16",
    "mxfp8",
    "fp8_mixed",
    "fp8_scaled",
    "fp8",
    "int8",
    "nf4",
    "nvfp4",
    "int4",
)
MAIN_WEIGHT_FILE_TYPES = ("Model", "Pruned Model", "UNet", "Diffusion Model")
BROWSER_UA_WORDS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
# What R2 answers a presigned URL that also carries an Authorization header.
R2_TWO_AUTHS = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRequest</Code><Message>Only one '
    "auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
    "parameter or the Authorization header should be specified</Message></Error>"
)
R2_EXPIRED = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    "<Message>Request has expired</Message></Error>"
)
R2_BAD_SIGNATURE = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>'
    "<Message>The request signature we calculated does not match the signature you provided."
    "</Message></Error>"
)
_CONTENT_BLOCK = 64 * 1024


@dataclasses.dataclass
class FileContent:
    """The bytes storage serves for one file: ``data`` itself, or (for big files that should
    not sit in memory) a 64 KiB pseudo-random block repeated up to ``size``."""

    size: int
    seed: int
    data: bytes | None = None
    sha256: str = ""  # upper-case hex, as Civitai lists it
    _block: bytes | None = dataclasses.field(default=None, repr=False)

    def block(self) -> bytes:
        if self._block is None:
            seed = f"civitai-fake-content-{self.seed}".encode()
            self._block = hashlib.shake_256(seed).digest(_CONTENT_BLOCK)
        return self._block

    def chunks(self, start: int, end: int, step: int = _CONTENT_BLOCK) -> Any:
        """The bytes ``[start, end)`` in pieces of at most ``step``."""
        if self.data is not None:
            for pos in range(start, end, step):
                yield self.data[pos : min(end, pos + step)]
            return
        block = self.block()
        doubled = block + block
        pos = start
        while pos < end:
            offset = pos % _CONTENT_BLOCK
            n = min(end - pos, _CONTENT_BLOCK, step)
            yield doubled[offset : offset + n]
            pos += n

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.chunks(start, self.size if end is None else end))


@dataclasses.dataclass
class StorageHit:
    """One request to the storage origin, as it arrived."""

    path: str
    range: str | None
    authorization: bool  # an Authorization header was present (the answer is then a 400)
    user_agent: str | None
    file_id: int | None = None
    status: int = 0
    sent: int = 0  # body bytes written before the end (or the drop)


@dataclasses.dataclass
class _Link:
    file_id: int
    disposition: str
    expired: bool = False


class FakeCivitaiDownloads(FakeCivitai):
    """:class:`FakeCivitai` plus ``GET /api/download/models/{modelVersionId}`` (route
    ``"download"``) and a second origin, ``"storage"`` (route ``"storage"``), playing the signed
    R2/B2 host, after §4 of ``../shared/api/civitai.md``:

    * the download endpoint checks, in order: blocklist (403), the 24 h quota (429 with the
      quota text, every hit counts), params (400), missing/unpublished (404 ``File not
      found``), archived (410), downloads disabled (401), login required (401), Early Access
      (403 with ``deadline``); then picks the file (``fileId``, else scored against SafeTensor,
      pruned, fp16, main-weight types +1000, overridden by ``type``/``format``/``size``/``fp``;
      a requested format the chosen file lacks is 404) and answers **307** to a fresh signed
      URL (``Cache-Control: no-store``). A browser ``User-Agent`` gets plain-text errors and
      redirects to ``/login`` or the version page instead, as the real site does;
    * storage serves the file with ``Content-Disposition`` (from the link, as R2's
      ``response-content-disposition``), ``Accept-Ranges``, ``Range`` -> 206 with
      ``Content-Range``, a range past the end -> 416 ``bytes */size``, and **400** (R2's
      InvalidRequest) whenever an ``Authorization`` header arrives; an unknown or expired
      signature is 403. Links alternate between an R2-like and a B2-like path.

    Every file gets real content (``file_size`` bytes, a little more per file id) and the
    catalogue's ``SHA256``/``AutoV2``/``CRC32`` hashes and ``sizeKB`` are rewritten to match it,
    so by-hash lookups find downloaded files. :meth:`set_content` changes one file.

    Switches: :meth:`drop_mid_file` (the connection closes part-way through a body),
    :meth:`corrupt_next` (wrong bytes, right length), :meth:`ignore_range` (a 200 with the
    whole file to a ranged request), :meth:`expire_links`, :attr:`single_use_links`,
    :attr:`download_quota`, :attr:`blocked`, :attr:`require_auth`,
    :attr:`downloads_disabled`, :attr:`early_access` (+ :attr:`purchases`),
    :attr:`disposition` (a raw ``Content-Disposition`` per file id), :attr:`storage_bps` (a
    bandwidth cap on storage bodies, all connections together). ``fail_next(on="download")``
    / ``fail_next(on="storage")`` and :attr:`latency_s` apply too.
    ``storage_hits`` records every storage request; ``download_hits`` counts API hits.
    :attr:`oversize` makes storage send more than Civitai lists (a lying host), with or
    without a ``Content-Length``. Each file's ``pickle_scan``/``virus_scan`` (and their
    messages) are what the API lists for it.
    """

    def __init__(
        self,
        keys: dict[str, str] | None = None,
        *,
        file_size: int = 200_000,
        storage_bps: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, **kwargs)
        self.storage_bps = storage_bps
        self.contents: dict[int, FileContent] = {}
        for model in self.catalogue.models.values():
            for version in model.versions:
                for file in version.files:
                    self.set_content(file.id, size=file_size + (file.id % 100) * 1_003)
        self.blocked = False
        self.download_quota: int | None = None  # hits left before the 24 h quota's 429
        self.require_auth: set[int] = set()  # version ids whose creator requires a login
        self.downloads_disabled: set[int] = set()  # version ids with downloads turned off
        self.early_access: dict[int, dt.datetime] = {}  # version id -> Early Access deadline
        self.purchases: dict[str, set[int]] = {}  # username -> version ids bought early
        self.disposition: dict[int, str] = {}  # file id -> raw Content-Disposition
        self.single_use_links = False  # a signed URL works once (proves fresh links)
        self.download_hits = 0
        self.storage_hits: list[StorageHit] = []
        self._links: dict[str, _Link] = {}
        self._drops: list[int | None] = []
        self._corrupt = 0
        self._ignore_range = 0
        self._storage_free_at = 0.0
        # file id -> (bytes storage really sends, whether it says so in Content-Length):
        # a host that lies about (or does not give) the size Civitai lists
        self.oversize: dict[int, tuple[int, bool]] = {}

    def origins(self) -> dict[str, web.Application]:
        apps = super().origins()
        apps["api"].router.add_get(
            "/api/download/models/{modelVersionId}", self._download, name="download"
        )
        storage = web.Application()
        storage.router.add_route("*", "/{tail:.+}", self._storage, name="storage")
        apps["storage"] = storage
        return apps

    # --- content ---------------------------------------------------------------------------

    def file(self, file_id: int) -> FakeFile:
        for model in self.catalogue.models.values():
            for version in model.versions:
                for file in version.files:
                    if file.id == file_id:
                        return file
        raise KeyError(f"no file {file_id}")

    def primary_file(self, version_id: int) -> FakeFile:
        found = self.catalogue.version(version_id)
        if found is None:
            raise KeyError(f"no version {version_id}")
        return next(f for f in found[1].files if f.primary)

    def set_content(
        self, file_id: int, *, size: int | None = None, data: bytes | None = None
    ) -> str:
        """Give a file new content (``data``, or ``size`` generated bytes) and make the
        catalogue list its real SHA256, AutoV2, CRC32 and sizeKB. Returns the SHA256."""
        file = self.file(file_id)
        if data is None and size is None:
            raise ValueError("give size or data")
        content = FileContent(size=len(data) if data is not None else int(size or 0), seed=file_id)
        content.data = data
        sha = hashlib.sha256()
        crc = 0
        for chunk in content.chunks(0, content.size, 1 << 20):
            sha.update(chunk)
            crc = zlib.crc32(chunk, crc)
        content.sha256 = sha.hexdigest().upper()
        self.contents[file_id] = content
        file.size_kb = round(content.size / 1024, 2)
        file.hashes["SHA256"] = content.sha256
        file.hashes["AutoV2"] = content.sha256[:10]
        file.hashes["CRC32"] = f"{crc:08X}"
        return content.sha256

    def content(self, file_id: int) -> bytes:
        """The exact bytes storage serves for a file."""
        return self.contents[file_id].read()

    # --- switches ----------------------------------------------------------------------------

    def drop_mid_file(self, times: int = 1, *, after: int | None = None) -> None:
        """The next ``times`` storage bodies stop after ``after`` bytes (default: half of what
        was to be sent) and the connection is closed."""
        self._drops.extend([after] * times)

    def corrupt_next(self, times: int = 1) -> None:
        """The next ``times`` storage bodies have one byte changed (same length)."""
        self._corrupt += times

    def ignore_range(self, times: int = 1) -> None:
        """The next ``times`` ranged storage requests get a 200 with the whole file."""
        self._ignore_range += times

    def expire_links(self) -> None:
        """Every signed URL handed out so far now answers 403 (expired)."""
        for link in self._links.values():
            link.expired = True

    # --- the download endpoint ---------------------------------------------------------------

    def _dl_error(self, status: int, body: Json, browser: bool) -> web.Response:
        headers = {"Cache-Control": "no-store, max-age=0"}
        if browser:  # the real site answers browsers in plain text
            text = str(body.get("message") or body.get("error") or "Error")
            return web.Response(status=status, text=text, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.download_hits += 1
        ua = request.headers.get("User-Agent", "").lower()
        browser = any(word in ua for word in BROWSER_UA_WORDS)
        version_id = _path_int(request.match_info["modelVersionId"])
        if version_id is None:
            return _pretty_error(
                [
                    _issue(
                        "modelVersionId",
                        "invalid_type",
                        "Invalid input: expected number, received NaN",
                    )
                ]
            )
        token = _token(request)
        user = self.keys.get(token) if token else None
        if self.blocked:
            return self._dl_error(403, {"error": "Forbidden"}, browser)
        if self.download_quota is not None:
            if self.download_quota <= 0:
                return self._dl_error(429, {"error": ERR_DOWNLOAD_QUOTA}, browser)
            self.download_quota -= 1
        q = _Query(request)
        type_ = q.enum("type", MODEL_FILE_TYPES)
        fmt = q.enum("format", FILE_FORMATS)
        size = q.enum("size", FILE_SIZES)
        fp = q.enum("fp", FILE_FPS)
        quant = q.string("quantType")
        if quant is not None and len(quant) > 64:
            q.issues.append(_issue("quantType", "too_big", "Too big: expected string <=64"))
        file_id = q.number("fileId")
        if q.issues:
            return _pretty_error(q.issues)
        found = self.catalogue.version(version_id)
        if found is None or not found[1].published:
            return self._dl_error(404, {"error": "File not found"}, browser)
        model, version = found
        if model.mode == "Archived":
            return self._dl_error(410, {"error": ERR_ARCHIVED}, browser)
        if version_id in self.downloads_disabled:
            body = {"error": "Unauthorized", "message": ERR_DOWNLOADS_DISABLED}
            return self._dl_error(401, body, browser)
        if version_id in self.require_auth and user is None:
            if browser:
                target = f"/login?reason=download-auth&returnUrl=/api/download/models/{version_id}"
                return web.Response(status=307, headers={"Location": target})
            body = {"error": "Unauthorized", "message": ERR_LOGIN_REQUIRED}
            return self._dl_error(401, body, browser)
        deadline = self.early_access.get(version_id)
        if deadline is not None and version_id not in self.purchases.get(user or "", set()):
            if browser:
                return web.Response(
                    status=307, headers={"Location": f"/model-versions/{version_id}"}
                )
            body = {
                "error": "Early Access",
                "deadline": _iso(deadline),
                "message": ERR_EARLY_ACCESS,
            }
            return self._dl_error(403, body, browser)
        file = self._choose_file(version, type_, fmt, size, fp, file_id)
        if file is None or (fmt and file.format != fmt) or (size and file.size != size):
            return self._dl_error(404, {"error": "File not found"}, browser)
        if fp and file.fp != fp:
            return self._dl_error(404, {"error": "File not found"}, browser)
        return web.Response(
            status=307,
            headers={"Location": self._sign(file), "Cache-Control": "no-store, max-age=0"},
        )

    @staticmethod
    def _choose_file(
        version: FakeVersion,
        type_: str | None,
        fmt: str | None,
        size: str | None,
        fp: str | None,
        file_id: int | None,
    ) -> FakeFile | None:
        if file_id is not None:
            return next((f for f in version.files if f.id == file_id), None)
        files = [f for f in version.files if not type_ or f.type == type_]
        want = (fmt or "SafeTensor", size or "pruned", fp or "fp16")

        def score(f: FakeFile) -> float:
            s = 1000.0 if f.type in MAIN_WEIGHT_FILE_TYPES else 0.0
            return s + 100 * (f.format == want[0]) + 10 * (f.size == want[1]) + (f.fp == want[2])

        return max(files, key=score, default=None)

    def _sign(self, file: FakeFile) -> str:
        signature = uuid.uuid4().hex + uuid.uuid4().hex
        disposition = self.disposition.get(file.id) or f'attachment; filename="{file.name}"'
        self._links[signature] = _Link(file.id, disposition)
        if len(self._links) % 2:
            prefix = "civitai-delivery-worker-prod/model/fake"
        else:
            prefix = "file/civitai-modelfiles/model/fake"
        query = urllib.parse.urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Expires": "86400",
                "response-content-disposition": disposition,
                "X-Amz-Signature": signature,
            },
            quote_via=urllib.parse.quote,
        )
        name = urllib.parse.quote(file.name)
        return f"{self.urls['storage']}/{prefix}/{file.id}/{name}?{query}"

    # --- the storage origin ------------------------------------------------------------------

    async def _pace(self, n: int) -> None:
        if not self.storage_bps:
            return
        # a token bucket: a late wake-up is made up for (up to 50 ms of line time)
        now = asyncio.get_running_loop().time()
        self._storage_free_at = max(now - 0.05, self._storage_free_at) + n / self.storage_bps
        if self._storage_free_at > now:
            await asyncio.sleep(self._storage_free_at - now)

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        hit = StorageHit(
            path=request.path,
            range=request.headers.get("Range"),
            authorization=auth is not None,
            user_agent=request.headers.get("User-Agent"),
        )
        self.storage_hits.append(hit)
        xml = "application/xml"
        if auth is not None:
            hit.status = 400
            return web.Response(status=400, text=R2_TWO_AUTHS, content_type=xml)
        link = self._links.get(request.query.get("X-Amz-Signature", ""))
        if link is None or request.method not in ("GET", "HEAD"):
            hit.status = 403
            return web.Response(status=403, text=R2_BAD_SIGNATURE, content_type=xml)
        if link.expired:
            hit.status = 403
            return web.Response(status=403, text=R2_EXPIRED, content_type=xml)
        if self.single_use_links:
            link.expired = True
        hit.file_id = link.file_id
        content = self.contents[link.file_id]
        declare = True
        if link.file_id in self.oversize:
            served, declare = self.oversize[link.file_id]
            content = FileContent(size=served, seed=link.file_id + 7)
        total = content.size
        start, end, status = 0, total, 200
        if hit.range and self._ignore_range:
            self._ignore_range -= 1
        elif hit.range:
            parsed = _byte_range(hit.range, total)
            if parsed == "unsatisfiable":
                hit.status = 416
                return web.Response(
                    status=416,
                    headers={"Content-Range": f"bytes */{total}", "Content-Type": xml},
                    text='<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRange'
                    "</Code><Message>The requested range is not satisfiable</Message></Error>",
                )
            if parsed is not None:
                start, end = parsed
                status = 206
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
            "Content-Disposition": link.disposition,
            "Accept-Ranges": "bytes",
            "ETag": f'"{content.sha256[:32].lower()}"',
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        if not declare:
            del headers["Content-Length"]  # sent chunked: the size shows only at the end
        response = web.StreamResponse(status=status, headers=headers)
        hit.status = status
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        drop = self._drops.pop(0) if self._drops else -1
        if drop is None:
            drop = (end - start) // 2
        corrupt_at = -1
        if self._corrupt:
            self._corrupt -= 1
            corrupt_at = (end - start) // 2
        for chunk in content.chunks(start, end):
            if hit.sent <= corrupt_at < hit.sent + len(chunk):
                i = corrupt_at - hit.sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            if 0 <= drop < hit.sent + len(chunk):
                part = chunk[: drop - hit.sent]
                if part:
                    await response.write(part)
                    hit.sent += len(part)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            await self._pace(len(chunk))
            try:
                await response.write(chunk)
            except (ConnectionResetError, ConnectionError):  # the client went away
                return response
            hit.sent += len(chunk)
        await response.write_eof()
        return response


def _byte_range(header: str, total: int) -> tuple[int, int] | str | None:
    """``[start, end)`` for one ``bytes=`` range, ``"unsatisfiable"``, or ``None`` (ignored,
    as S3 ignores a malformed or multi-part range)."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        return (max(0, total - n), total) if n else "unsatisfiable"
    start = int(m.group(1))
    if start >= total:
        return "unsatisfiable"
    end = min(total, int(m.group(2)) + 1) if m.group(2) else total
    if end <= start:
        return None
    return start, end
