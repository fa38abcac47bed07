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
on. Nothing here downloads model files; that is adapters/civitai/download/.
The wire (retries, cache, paging) is in transport.py; errors, types, NSFW levels and the
A1111 metadata mapping have their own modules in this package.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.civitai.api.errors import (
    CivitaiBadResponse,
    CivitaiFiltered,
    CivitaiNotFound,
    CivitaiUnavailable,
)
from adapters.civitai.api.nsfw import ALL, BLOCKED, PG, NsfwPolicy, browsing_level, level_allowed
from adapters.civitai.api.transport import (
    BULK_HASH_IDS_MAX,
    BULK_HASHES_MAX,
    IMAGES_MAX_LIMIT,
    MODELS_MAX_LIMIT,
    ORIGINAL,
    PICTURE_MAX_BYTES,
    CivitaiTransport,
    Params,
    _checked_hash,
    _comma,
    _listed,
    sized_url,
)
from adapters.civitai.api.types import (
    Creator,
    Enums,
    HashMatch,
    Image,
    Model,
    ModelVersion,
    Page,
    Tag,
)
from adapters.http import TooLarge, read_capped
from bot.errors import BadInput
from bot.fetch import make_client

log = logging.getLogger(__name__)


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


class CivitaiClient(CivitaiTransport):
    """An async client of the Civitai API. One per process; safe to share between tasks.

    ``api_key`` is optional (public endpoints work anonymously; an unknown key is treated as
    anonymous by the server). ``requests_per_second`` caps the request rate of this client.
    ``http`` lets a caller supply its own ``httpx.AsyncClient`` (its base URL is ignored).
    """

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


def _model_filter(mask: int) -> Callable[[Model], bool]:
    def allowed(model: Model) -> bool:
        # a model's level is the OR of its content's levels; unknown counts as unknown
        return level_allowed(model.level, mask)

    return allowed


def _filter_version_images(versions: Iterable[ModelVersion], mask: int) -> None:
    for version in versions:
        version.images = [i for i in version.images if level_allowed(i.level, mask)]
