"""The Civitai API client against the loopback fake (tests/fakes/civitai.py)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.errors import (
    CivitaiBadRequest,
    CivitaiBadResponse,
    CivitaiChallenge,
    CivitaiError,
    CivitaiFiltered,
    CivitaiNotFound,
    CivitaiPagingLimit,
    CivitaiRateLimited,
    CivitaiUnauthorized,
    CivitaiUnavailable,
    error_message,
)
from adapters.civitai.api.meta import flat_meta, generation_params, parameters_text
from adapters.civitai.api.nsfw import ALL, NSFW_ONLY, PG, SFW, browsing_level
from adapters.civitai.api.types import Image, Model, ModelVersion, Page, PageMetadata
from bot.errors import BadInput, LimitReached, NotFound, UserError
from bot.infotext import parse_infotext
from tests.fakes.civitai import ERR_OVERLOADED, FakeCivitai

KEY = "civitai-secret-key-0123456789"


@pytest.fixture
async def fake():
    async with FakeCivitai(keys={KEY: "alice"}) as f:
        yield f


def make_client(fake: FakeCivitai, api_key: str | None = None, **kw: Any) -> CivitaiClient:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    return CivitaiClient(api_key, base_url=fake.base_url, **kw)


@pytest.fixture
async def client(fake: FakeCivitai):
    c = make_client(fake)
    yield c
    await c.aclose()


@pytest.fixture
async def keyed(fake: FakeCivitai):
    c = make_client(fake, KEY)
    yield c
    await c.aclose()


def first_file_hash(fake: FakeCivitai, model_id: int, kind: str, version: int = 0) -> str:
    return fake.catalogue.models[model_id].versions[version].files[0].hashes[kind]


# --- search: filters and enums pass through -------------------------------------------------------


async def test_search_models_filters_pass_through(fake: FakeCivitai, client: CivitaiClient) -> None:
    page = await client.search_models(
        types=["LORA", "Checkpoint"],
        base_models="SDXL 1.0",
        sort="Newest",
        period="Year",
        nsfw="X",
        primary_file_only=True,
        limit=10,
    )
    call = fake.calls_to("models")[-1]
    assert call.params("types") == ["LORA", "Checkpoint"]  # repeated, never comma-joined
    assert call.params("baseModels") == ["SDXL 1.0"]
    assert (call.param("sort"), call.param("period"), call.param("nsfw")) == (
        "Newest",
        "Year",
        "true",
    )
    assert call.param("primaryFileOnly") == "true"
    assert [m.name for m in page.items] == ["Portrait Booster", "Anime Lines"]  # newest first
    assert all(isinstance(m, Model) and m.type == "LORA" for m in page.items)
    version = page.items[1].model_versions[0]
    assert version.base_model == "SDXL 1.0"
    assert version.trained_words == ["animelines", "lineart"]
    assert version.primary_file is not None and version.primary_file.size_bytes
    assert page.next_cursor is None

    by_user = await client.search_models(username="carol", tag="wildcards")
    assert [m.name for m in by_user.items] == ["Wildcard Pack"]
    assert by_user.items[0].type == "Wildcards"  # an enum value a strict client choked on


async def test_search_models_shapes(fake: FakeCivitai, client: CivitaiClient) -> None:
    page = await client.search_models(sort="Most Downloaded")
    by_name = {m.name: m for m in page.items}
    archived = by_name["Old Merge"]
    assert archived.mode == "Archived"
    assert (
        archived.model_versions[0].files == [] and archived.model_versions[0].download_url is None
    )
    flux = by_name["Flux Detailer"]
    assert flux.stats is not None and flux.stats.download_count is None  # hidden metrics
    photon = by_name["Photon Realism"]
    files = photon.model_versions[0].files
    assert [f.primary for f in files] == [True, None]  # /models: true or absent
    assert files[1].download_url and "type=VAE" in files[1].download_url
    assert files[0].hash("sha256") == first_file_hash(fake, 4201, "SHA256")
    assert photon.creator is not None and photon.creator.username == "alice"
    assert photon.raw["modelVersions"][0]["files"][0]["sizeKB"] == files[0].size_kb

    only_primary = await client.search_models(primary_file_only=True, ids=[4201])
    assert len(only_primary.items[0].model_versions[0].files) == 1


async def test_bad_values_come_back_as_clear_errors(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    with pytest.raises(CivitaiBadRequest) as bad_sort:
        await client.search_models(sort="Most Awesome")
    text = str(bad_sort.value)
    assert text.startswith("Civitai rejected the models search: sort: Invalid option")
    assert "Highest Rated" in text and "\n" not in text
    assert isinstance(bad_sort.value, BadInput) and isinstance(bad_sort.value, UserError)

    with pytest.raises(CivitaiBadRequest, match="types: Invalid option"):
        await client.search_models(types="LORA,Checkpoint")  # a comma-joined value is one value
    with pytest.raises(CivitaiBadRequest, match="Cannot use page param with query search"):
        await client.search_models("photon", page=2)
    with pytest.raises(CivitaiBadRequest, match="browsingLevel: Invalid input: expected number"):
        await client.search_models(extra={"browsingLevel": 3})
    with pytest.raises(CivitaiBadRequest, match="username: Invalid string"):
        await client.images(username="not a name!")
    with pytest.raises(CivitaiBadRequest, match="limit: Too big"):
        await client.images(limit=500)
    with pytest.raises(CivitaiBadRequest, match="Invalid cursor"):
        await client.search_models(cursor="1|2")  # Highest Rated cursors have 3 values
    # detail endpoints answer with z.prettifyError text
    with pytest.raises(CivitaiBadRequest, match="expected number, received NaN"):
        await client._request("GET", "/models/abc", what="model abc")
    assert all(c.status in (400, 0) for c in fake.calls)


async def test_enums(client: CivitaiClient) -> None:
    enums = await client.enums()
    assert "LORA" in enums.model_type and "Wildcards" in enums.model_type
    assert "SDXL 1.0" in enums.base_model and "Model" in enums.model_file_type
    assert enums.base_model_type == ["Standard", "Inpainting", "Refiner", "Pix2Pix"]


# --- pagination -----------------------------------------------------------------------------------


async def test_iter_images_follows_cursors_to_the_end(
    fake: FakeCivitai, client: CivitaiClient, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [image.id async for image in client.iter_images(limit=7)]
    expected = fake.visible_image_ids(PG)
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    calls = fake.calls_to("images")
    assert len(calls) == -(-len(expected) // 7)
    assert calls[0].param("cursor") is None and all(c.param("cursor") for c in calls[1:])
    assert all(c.param("page") is None for c in calls)
    assert "stopping" not in caplog.text

    some = [image.id async for image in client.iter_images(limit=7, max_items=10)]
    assert some == ids[:10]


async def test_iter_models_follows_cursors_to_the_end(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    names = [m.name async for m in client.iter_models(limit=2, sort="Most Downloaded")]
    assert names == [
        "Photon Realism",
        "Anime Lines",
        "Portrait Booster",
        "Old Merge",
        "Wildcard Pack",
        "Flux Detailer",  # hidden download count sorts as 0
    ]
    assert len(fake.calls_to("models")) == 3
    # a text query pages with a numeric offset cursor
    found = [m.name async for m in client.iter_models("a", limit=2, sort="Newest")]
    assert len(found) == len(set(found)) >= 4
    assert [c.param("cursor") for c in fake.calls_to("models")[3:]][1] == "2"


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("cursor", "led back to a cursor seen before"),
        ("repeat", "repeated only items already seen"),
        ("empty", "was empty but carried a next cursor"),
    ],
)
async def test_cursor_bugs_stop_cleanly(
    fake: FakeCivitai,
    client: CivitaiClient,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    why: str,
) -> None:
    fake.loop_cursor(mode, on="images", after=2)
    ids = [image.id async for image in client.iter_images(limit=5)]
    assert len(ids) == len(set(ids))  # nothing yielded twice
    assert 10 <= len(ids) <= 15
    assert len(fake.calls_to("images")) == 3  # stopped at the first sign of trouble
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0].getMessage()


async def test_cursor_loop_on_models_stops(fake: FakeCivitai, client: CivitaiClient) -> None:
    fake.loop_cursor("cursor", on="models", after=1)
    names = [m.name async for m in client.iter_models(limit=2)]
    assert len(names) == len(set(names)) == 4
    assert len(fake.calls_to("models")) == 2


async def test_overlapping_pages_are_deduplicated(
    fake: FakeCivitai, client: CivitaiClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.loop_cursor("overlap", on="images")
    ids = [image.id async for image in client.iter_images(limit=6)]
    assert sorted(ids) == sorted(fake.visible_image_ids(PG))  # every one, each once
    assert "stopping" not in caplog.text


async def test_deep_paging_guard(fake: FakeCivitai, client: CivitaiClient) -> None:
    with pytest.raises(CivitaiPagingLimit, match="use cursors"):
        await client.images(page=11)  # 11 * 100 > 1000: refused before asking
    with pytest.raises(CivitaiPagingLimit):
        await client.search_models(page=6, limit=200)
    assert fake.calls == []
    # the server's own guard is a 429 that must not be retried as a rate limit
    with pytest.raises(CivitaiPagingLimit, match="too many pages"):
        await client.images(limit=50, extra={"page": 30})
    assert len(fake.calls_to("images")) == 1
    page = await client.images(page=2, limit=5)
    assert page.metadata.current_page == 2 and page.metadata.page_size == 5


async def test_page_numbered_lists(fake: FakeCivitai, client: CivitaiClient) -> None:
    tags = [t.name async for t in client.iter_tags(limit=7)]
    assert len(tags) == len(set(tags)) == len(fake.catalogue.tag_names)
    first = await client.tags(limit=7)
    assert first.metadata.total_pages == 5 and first.metadata.total_items == len(tags)
    assert first.items[0].link and "/api/v1/models?tag=" in first.items[0].link

    creators = [c async for c in client.iter_creators(limit=3)]
    assert [c.username for c in creators][:3] == ["alice", "bob_art", "carol"]
    by_name = {c.username: c for c in creators}
    assert by_name["alice"].model_count == 3
    assert by_name["dave"].model_count is None  # omitted when 0
    only = await client.creators("bob")
    assert [c.username for c in only.items] == ["bob_art"]


async def test_page_numbered_lists_stay_under_the_guard(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeCivitai(extra_tags=1500) as fake:
        async with make_client(fake) as client:
            tags = [t.name async for t in client.iter_tags(limit=200)]
    assert len(tags) == 1000
    assert max(int(c.param("page") or 1) for c in fake.calls_to("tags")) == 5
    assert "pages no deeper than 1000" in caplog.text


# --- retries --------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried(fake: FakeCivitai, client: CivitaiClient) -> None:
    fake.throttle(2, retry_after="0.1")
    started = time.monotonic()
    page = await client.images(limit=3)
    assert len(page.items) == 3
    assert time.monotonic() - started >= 0.2  # waited what the server asked, twice
    assert [c.status for c in fake.calls_to("images")] == [429, 429, 200]


async def test_503_overloaded_then_success(fake: FakeCivitai, client: CivitaiClient) -> None:
    fake.overload(1, retry_after="0.05", on="images")
    page = await client.images(limit=2)
    assert len(page.items) == 2
    assert [c.status for c in fake.calls_to("images")] == [503, 200]


async def test_5xx_and_dropped_connections_are_retried(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    fake.fail_next(500, on="models")
    fake.fail_next(502, "Bad gateway", on="models")
    fake.drop_next(on="models")
    page = await client.search_models(limit=1)
    assert len(page.items) == 1
    assert [c.status for c in fake.calls_to("models")] == [500, 502, 0, 200]


async def test_retries_give_up_with_a_clear_error(fake: FakeCivitai) -> None:
    async with make_client(fake, max_attempts=3) as client:
        fake.throttle(5, retry_after="0")
        with pytest.raises(CivitaiRateLimited) as limited:
            await client.images()
        assert isinstance(limited.value, LimitReached)
        assert "rate limiting" in str(limited.value)
        assert len(fake.calls_to("images")) == 3

        fake.fail_next(503, {"error": ERR_OVERLOADED}, times=5, on="models")
        with pytest.raises(CivitaiUnavailable) as down:
            await client.search_models()
        assert str(down.value) == (
            f"Civitai is unavailable (HTTP 503: {ERR_OVERLOADED}); try again later"
        )
    fake.faults.clear()
    async with make_client(fake, max_retry_after=1.0) as client:
        fake.throttle(1, retry_after="120")  # longer than we may wait: give up at once
        with pytest.raises(CivitaiRateLimited, match="retry in 120s"):
            await client.enums()
        assert len(fake.calls_to("enums")) == 1


async def test_client_errors_are_not_retried(fake: FakeCivitai, client: CivitaiClient) -> None:
    with pytest.raises(CivitaiNotFound):
        await client.model(999)
    with pytest.raises(CivitaiBadRequest):
        await client.images(sort="Best")
    assert len(fake.calls) == 2


# --- HTML instead of JSON -------------------------------------------------------------------------


async def test_cloudflare_challenge_is_a_clear_error(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    fake.challenge()
    with pytest.raises(CivitaiChallenge) as info:
        await client.search_models()
    message = str(info.value)
    assert "web page instead of data" in message and "Cloudflare" in message
    assert "<" not in message and "\n" not in message
    assert len(fake.calls_to("models")) == 1  # a challenge is not retried


async def test_cloudflare_rate_limit_page_is_retried(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    fake.throttle(1, retry_after="0", html=True)
    assert len((await client.images(limit=1)).items) == 1
    fake.challenge(2, status=503)
    assert len((await client.images(limit=1)).items) == 1


async def test_json_that_is_not_json(fake: FakeCivitai, client: CivitaiClient) -> None:
    fake.fail_next(200, "OK but not JSON", on="enums")
    with pytest.raises(CivitaiBadResponse, match="not JSON"):
        await client.enums()


# --- meta in both shapes --------------------------------------------------------------------------


async def test_meta_in_both_shapes_gives_the_same_params(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    image_id = 90003  # a meta with numbers as strings and A1111 extras
    version_id = fake.catalogue.models[4201].versions[0].id
    single = await client.image(image_id, nsfw="Soft")  # the legacy path: nested meta
    assert "meta" in single.raw["meta"] and single.raw["meta"]["id"] == image_id
    by_version = client.iter_images(model_version_id=version_id, nsfw="Soft", limit=100)
    (listed,) = [i async for i in by_version if i.id == image_id]
    assert "prompt" in listed.raw["meta"]  # flat on the modern path
    forced = (await client.images(model_version_id=version_id, nsfw=SFW, flat_meta=False)).items
    assert all("meta" in i.raw["meta"] for i in forced)

    assert single.meta == listed.meta
    params = single.params()
    assert params == listed.params()
    assert (params.steps, params.cfg, params.seed, params.sampler) == (23, 6.5, 730021, "Euler")
    assert (params.width, params.height, params.model) == (512, 768, "PhotonRealism_v2.0")
    assert params.prompt.startswith("a city street, rain") and params.negative

    text = single.parameters_text()
    assert text == listed.parameters_text()
    lines = text.split("\n")
    assert lines[1] == "Negative prompt: lowres, blurry, bad anatomy"
    assert lines[2].startswith(
        "Steps: 23, Sampler: Euler, CFG scale: 6.5, Seed: 730021, Size: 512x768, Model hash: "
    )
    assert "Model: PhotonRealism_v2.0, Clip skip: 2" in lines[2]
    assert "Denoising strength: 0.4" in lines[2] and "Hires upscale: 1.5" in lines[2]
    assert parse_infotext(text) == params.with_(strength=0.4)  # it reads back as the same


def test_meta_helpers_both_shapes_and_odd_values() -> None:
    flat = {
        "prompt": "a cat",
        "negativePrompt": "dog",
        "seed": "42",
        "steps": 30,
        "cfgScale": "7",
        "sampler": "Euler a",
        "Size": "832x1216",
        "Model": "sdxl",
    }
    nested = {"id": 5, "meta": flat}
    assert flat_meta(nested) == flat and flat_meta(flat) == flat
    assert flat_meta({"id": 5, "meta": None}) is None and flat_meta(None) is None
    p = generation_params(nested)
    assert p == generation_params(flat)
    assert (p.prompt, p.negative, p.seed, p.steps, p.cfg) == ("a cat", "dog", 42, 30, 7.0)
    assert (p.sampler, p.width, p.height, p.model) == ("Euler a", 832, 1216, "sdxl")
    assert (
        parameters_text(nested)
        == parameters_text(flat)
        == (
            "a cat\nNegative prompt: dog\n"
            "Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 832x1216, Model: sdxl"
        )
    )
    odd = generation_params({"seed": -1, "steps": "many", "cfgScale": "NaN", "Size": "big"})
    assert (odd.seed, odd.steps, odd.cfg, odd.width) == (None, None, None, None)
    sized = Image.model_validate({"id": 1, "width": 640, "height": 480, "meta": {"prompt": "x"}})
    assert (sized.params().width, sized.params().height) == (640, 480)
    assert sized.parameters_text() == "x\nSize: 640x480"
    quoted = parameters_text({"prompt": "p", "sampler": "DPM++ 2M, Karras"})
    assert quoted == 'p\nSampler: "DPM++ 2M, Karras"'


async def test_image_without_meta(fake: FakeCivitai, client: CivitaiClient) -> None:
    image = await client.image(90009)  # stored without generation data
    assert image.meta is None and image.raw["meta"] == {"id": 90009, "meta": None}
    assert image.params().prompt == "" and image.params().width == image.width


# --- model, version, by hash ----------------------------------------------------------------------


async def test_model_and_version_details(fake: FakeCivitai, client: CivitaiClient) -> None:
    model = await client.model(4201)
    assert model.name == "Photon Realism" and model.nsfw_level == 31
    assert [v.name for v in model.model_versions] == ["v2.0", "v1.0"]  # no draft
    assert {i.level for i in model.model_versions[0].images} >= {1, 4, 8, 16}  # every level
    safe = await client.model(4201, nsfw="safe")
    assert {i.level for v in safe.model_versions for i in v.images} == {1}
    with pytest.raises(CivitaiFiltered):
        await client.model(4203, nsfw=False)  # no PG content at all
    with pytest.raises(CivitaiNotFound) as missing:
        await client.model(424242)
    assert str(missing.value) == "Civitai has no model 424242"
    assert isinstance(missing.value, NotFound)

    version = await client.model_version(fake.catalogue.models[4204].versions[0].id)
    assert version.model is not None and version.model.name == "Flux Detailer"
    assert version.air == f"urn:air:flux1:lora:civitai:4204@{version.id}"
    assert version.stats is not None and version.stats.download_count is None
    assert version.files[0].primary is True
    assert all(i.id is not None and i.meta is not None for i in version.images if i.raw["hasMeta"])
    assert all("id" not in i.raw for i in version.images)  # ids recovered from the URLs
    with pytest.raises(CivitaiNotFound):
        await client.model_version(52011)  # a draft


async def test_version_by_hash(fake: FakeCivitai, client: CivitaiClient) -> None:
    auto_v2 = first_file_hash(fake, 4202, "AutoV2")
    version = await client.version_by_hash(f"  {auto_v2.lower()} ")
    assert version.model_id == 4202
    assert fake.calls[-1].path.endswith(f"/by-hash/{auto_v2}")  # upper-cased
    sha = first_file_hash(fake, 4201, "SHA256")
    found = await client.version_by_hash(sha)
    assert found.file_with_hash(sha) is not None and found.model_id == 4201
    vae_sha = fake.catalogue.models[4201].versions[0].files[1].hashes["SHA256"]
    assert (await client.version_by_hash(vae_sha)).id == found.id  # any file of the version
    shared = first_file_hash(fake, 4204, "AutoV1", version=1)  # also on a newer model's file
    assert (await client.version_by_hash(shared)).id == fake.catalogue.models[4204].versions[1].id
    with pytest.raises(CivitaiNotFound, match="no model file with hash 0123456789"):
        await client.version_by_hash("0123456789")
    calls = len(fake.calls)
    with pytest.raises(CivitaiBadRequest, match="not a file hash"):
        await client.version_by_hash("../../etc/passwd")
    assert len(fake.calls) == calls


async def test_versions_by_hashes_in_bulk(fake: FakeCivitai, client: CivitaiClient) -> None:
    a = first_file_hash(fake, 4201, "SHA256")
    b = first_file_hash(fake, 4207, "SHA256")
    unknown = "F" * 64
    fillers = [f"{i:064X}" for i in range(150)]
    found = await client.versions_by_hashes([a.lower(), b, unknown, a, *fillers])
    assert set(found) == {a, b}
    assert found[a].model_id == 4201 and found[b].model_id == 4207
    assert isinstance(found[a], ModelVersion)
    posts = fake.calls_to("by-hash-bulk")
    assert [len(c.body) for c in posts] == [100, 53]  # chunks of at most 100, deduplicated
    assert posts[0].method == "POST" and posts[0].body[0] == a

    ids = await client.version_ids_by_hashes([a, b.lower(), unknown])
    assert ids == {a: found[a].id, b: found[b].id}
    assert await client.versions_by_hashes([]) == {}


# --- the API key ----------------------------------------------------------------------------------


async def test_key_in_header_never_in_urls_or_logs(
    fake: FakeCivitai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(fake, KEY) as client:
        assert KEY not in repr(client) and "***" in repr(client)
        await client.search_models(favorites=True)
        await client.images(limit=2)
        fake.throttle(1, retry_after="0")
        await client.enums()
        fake.fail_next(401, {"error": "Unauthorized"}, on="models")
        with pytest.raises(CivitaiUnauthorized) as refused:
            await client.search_models()
        fake.challenge()
        with pytest.raises(CivitaiChallenge) as challenged:
            await client.tags()
    for call in fake.calls:
        assert call.token == KEY and call.user == "alice"
        assert call.headers["Authorization"] == "***"  # the fake saw "Bearer <key>"
        assert call.param("token") is None and KEY not in call.path
    assert KEY not in caplog.text
    assert KEY not in str(refused.value) and KEY not in str(challenged.value)
    assert "check civitai.api_key" in str(refused.value)
    async with make_client(fake, KEY) as client:
        with pytest.raises(ValueError):
            await client.images(extra={"token": KEY})


async def test_key_sent_as_bearer(fake: FakeCivitai) -> None:
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers.get("Authorization", ""))
        assert "token" not in request.url.params

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        async with CivitaiClient(KEY, base_url=fake.base_url, http=http) as client:
            await client.enums()
    assert seen == [f"Bearer {KEY}"]
    ua = fake.calls[-1].headers.get("User-Agent", "")
    assert ua.startswith("sdhost/") and "Mozilla" not in ua  # never a browser UA


async def test_auth_needed_and_unknown_keys(fake: FakeCivitai, client: CivitaiClient) -> None:
    with pytest.raises(CivitaiUnauthorized) as anonymous:
        await client.search_models(favorites=True)
    assert str(anonymous.value) == (
        "Civitai needs an API key for the models search: set civitai.api_key"
    )
    with pytest.raises(CivitaiUnauthorized):
        await client.search_models(favorites=False)  # present at all is enough
    async with make_client(fake, "not-a-real-key") as stranger:
        page = await stranger.search_models()  # public endpoints: simply anonymous
        assert page.items and fake.calls[-1].token == "not-a-real-key"
        assert fake.calls[-1].user is None
        with pytest.raises(CivitaiUnauthorized, match="refused the API key"):
            await stranger.search_models(favorites=True)
    async with make_client(fake, KEY) as owner:
        favorites = await owner.search_models(favorites=True)
        assert [m.id for m in favorites.items] == [4202]


# --- NSFW -----------------------------------------------------------------------------------------


def test_browsing_level() -> None:
    assert browsing_level(None) == PG == 1
    assert browsing_level("None") == 1 and browsing_level("Soft") == 3
    assert browsing_level("Mature") == 7 and browsing_level("X") == ALL == 31
    assert browsing_level("none,soft") == 3 and browsing_level(["None", "Mature"]) == 7
    assert browsing_level(False) == 1 and browsing_level(True) == 31
    assert browsing_level("safe") == 1 and browsing_level("sfw") == SFW == 3
    assert browsing_level("PG13") == 3 and browsing_level("R") == 7 and browsing_level("XXX") == 31
    assert browsing_level("nsfw") == NSFW_ONLY == 60
    assert browsing_level("block") == 1 and browsing_level("blur") == 31
    assert browsing_level("allow") == 31 and browsing_level(12) == 12 and browsing_level("3") == 3
    for bad in ("spicy", 0, 64, "", []):
        with pytest.raises(ValueError):
            browsing_level(bad)


async def test_pg_never_returns_r_or_x(fake: FakeCivitai, client: CivitaiClient) -> None:
    default = [i async for i in client.iter_images()]
    assert default and {i.level for i in default} == {1}
    assert fake.calls_to("images")[-1].param("browsingLevel") == "1"
    soft = [i.level async for i in client.iter_images(nsfw="Soft")]
    assert set(soft) == {1, 2}
    everything = [i.level async for i in client.iter_images(nsfw="X")]
    assert set(everything) == {1, 2, 4, 8, 16}
    only_nsfw = [i.level async for i in client.iter_images(nsfw="nsfw")]
    assert set(only_nsfw) == {4, 8, 16}

    fake.ignore_nsfw = True  # a server that forgets to filter: we still do
    page = await client.images(limit=200)
    assert {i.level for i in page.items} == {1} and page.hidden > 0
    with pytest.raises(CivitaiFiltered):
        await client.image(90004)  # an R image, asked for by a PG chat
    assert (await client.image(90004, nsfw="Mature")).level == 4


async def test_pg_model_search_with_a_query_is_filtered_here(
    fake: FakeCivitai, client: CivitaiClient
) -> None:
    """The real search ignores nsfw when there is a query (civitai#1664); the fake does too."""
    raw = await client._request("GET", "/models", what="x", params={"query": "e"})
    assert any(m["nsfwLevel"] & 1 == 0 for m in raw["items"])  # the server leaks
    page = await client.search_models("e", nsfw="safe")
    assert page.items and page.hidden >= 1
    assert all(m.nsfw_level and m.nsfw_level & 1 for m in page.items)
    assert all(i.level == 1 for m in page.items for v in m.model_versions for i in v.images)
    plain = await client.search_models()
    assert "Velvet Nights" not in [m.name for m in plain.items]  # PG only by default
    assert all(i.level == 1 for m in plain.items for v in m.model_versions for i in v.images)
    sfw = await client.search_models(nsfw="sfw")
    assert fake.calls_to("models")[-1].param("nsfw") == "true"  # wider, then narrowed here
    assert {i.level for m in sfw.items for v in m.model_versions for i in v.images} == {1, 2}


# --- lenient parsing, error bodies ----------------------------------------------------------------


def test_lenient_types() -> None:
    model = Model.model_validate(
        {
            "id": "12",
            "name": "M",
            "type": "BrandNewType",
            "nsfwLevel": "lots",
            "stats": "hidden",
            "tags": ["a", {"name": "b"}, 3],
            "allowCommercialUse": "Sell",
            "somethingNew": {"x": 1},
            "modelVersions": [
                {"id": 1, "files": [{"sizeKB": "12.5", "hashes": {"SHA256": "ab"}}, "junk"]},
                "junk",
                {"id": 2, "trainedWords": None, "baseModel": "Future Model 9"},
            ],
        }
    )
    assert (model.id, model.type, model.nsfw_level, model.stats) == (12, "BrandNewType", None, None)
    assert model.tags == ["a", "b"] and model.allow_commercial_use == "Sell"
    assert model.raw["somethingNew"] == {"x": 1} and model.model_extra == {"somethingNew": {"x": 1}}
    assert [v.id for v in model.model_versions] == [1, 2]
    assert model.model_versions[0].files[0].size_bytes == 12800
    assert model.model_versions[0].files[0].hash("sha256") == "AB"
    assert model.model_versions[1].trained_words == [] and model.latest_version is not None
    image = Image.model_validate(
        {"url": "https://x/original=true/777.jpeg", "nsfwLevel": "Soft", "meta": "garbage"}
    )
    assert (image.id, image.level, image.meta) == (777, 2, None)
    assert Image.model_validate({"nsfwLevel": "Unheard"}).level is None
    page: Page[Model] = Page([], PageMetadata.model_validate({"nextCursor": 101}))
    assert page.next_cursor == "101"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"error": "No model with id 5"}, "No model with id 5"),
        (
            {
                "error": {
                    "name": "ZodError",
                    "message": json.dumps(
                        [{"code": "too_big", "path": ["limit"], "message": "Too big"}]
                    ),
                }
            },
            "limit: Too big",
        ),
        ({"error": {"issues": [{"path": ["a", 0], "message": "bad"}]}}, "a.0: bad"),
        ({"error": "Unauthorized", "message": "Log in first"}, "Unauthorized: Log in first"),
        ({"message": "An unexpected error occurred", "error": "boom"}, "boom: An unexpected"),
        ({"error": {"json": {"message": "tRPC says no", "code": -32600}}}, "tRPC says no"),
        ({"message": "just a message"}, "just a message"),
        ({"error": "✖ Invalid input\n  → at id"}, "✖ Invalid input → at id"),
        ("plain text", "plain text"),
        ({}, None),
    ],
)
def test_error_message_shapes(body: Any, text: str | None) -> None:
    got = error_message(body)
    if text is None:
        assert got is None
    else:
        assert got is not None and got.startswith(text) and "\n" not in got


async def test_errors_are_user_errors(fake: FakeCivitai, client: CivitaiClient) -> None:
    fake.fail_next(400, {"error": "Invalid cursor: expected 3 value(s)"}, on="models")
    with pytest.raises(CivitaiError) as info:
        await client.search_models()
    assert isinstance(info.value, UserError) and info.value.status == 400
    assert (
        str(info.value) == "Civitai rejected the models search: Invalid cursor: expected 3 value(s)"
    )


async def test_pictures_from_the_cdn(fake: FakeCivitai, keyed: CivitaiClient) -> None:
    image = await keyed.image(90013)
    assert image.url
    with pytest.raises(CivitaiBadResponse, match=r"not one of civitai\.image_hosts"):
        await keyed.picture(image.url)  # the fake's CDN is on 127.0.0.1: not Civitai's
    assert fake.calls_to("image") == []
    keyed.image_hosts = frozenset({"127.0.0.1"})  # listed by address: allowed, though loopback
    small = await keyed.picture(image.url, width=450)
    assert small == fake.image_bytes(90013, 450)
    assert await keyed.picture(image.url) == fake.image_bytes(90013)  # as listed: original
    cdn = fake.calls_to("image")
    assert [c.path.split("/")[-2] for c in cdn] == ["width=450", "original=true"]
    assert all(c.token is None for c in cdn)  # the key stays with the API
    with pytest.raises(CivitaiBadResponse, match="over 1000 bytes"):
        await keyed.picture(image.url, max_bytes=1_000)
    fake.fail_next(200, "<html>cdn error</html>", on="image")
    with pytest.raises(CivitaiBadResponse, match="not a picture"):
        await keyed.picture(image.url)
    fake.fail_next(404, "Not Found", on="image")
    with pytest.raises(CivitaiUnavailable, match="HTTP 404"):
        await keyed.picture(image.url)
    with pytest.raises(CivitaiBadResponse, match="not http"):
        await keyed.picture("file:///etc/passwd")


async def test_a_picture_host_that_resolves_to_a_private_address_is_refused(
    fake: FakeCivitai,
) -> None:
    port = fake.urls["images"].rsplit(":", 1)[1]
    async with make_client(fake, image_hosts=["localhost"]) as client:
        with pytest.raises(CivitaiBadResponse, match="private or loopback"):
            await client.picture(f"http://localhost:{port}/x/original=true/90013.jpeg")
    assert fake.calls_to("image") == []


# --- real shapes (issue 16) ------------------------------------------------------------------


async def test_older_nsfw_shapes_map_to_levels(fake: FakeCivitai, client: CivitaiClient) -> None:
    """Version images with ``nsfw: true|false`` or an old level name and no ``nsfwLevel``,
    models with ``nsfw`` only: false/"None" is PG, true counts as X, names their level."""
    fake.old_shapes = True
    levels = {i.id: i.level for i in fake.catalogue.models[4201].versions[0].images}
    pg_model = {i.id: i.level for i in fake.catalogue.models[4202].versions[0].images}

    model = await client.model(4202, nsfw="PG")  # a model with nsfw: false
    assert {i.id for i in model.model_versions[0].images} == {
        i for i, level in pg_model.items() if level == 1
    }
    assert all("nsfwLevel" not in i.raw for i in model.model_versions[0].images)
    with pytest.raises(CivitaiFiltered):  # nsfw: true is not for a PG chat
        await client.model(4201, nsfw="PG")
    # a PG search keeps the PG models (their level unknown before: all were hidden)
    found = (await client.search_models()).items
    assert 4202 in {m.id for m in found} and 4201 not in {m.id for m in found}
    # with everything allowed, every image is there; "true" is X, names keep their level
    every = await client.model(4201, nsfw="X")
    seen = {i.id: i.level for i in every.model_versions[0].images}
    assert set(seen) == set(levels)
    for image_id, level in seen.items():
        expected = levels[image_id]
        if image_id % 2 == 0 and expected != 1:
            assert level == 8  # nsfw: true
        else:
            assert level == {16: 8}.get(expected, expected)  # "X" names both X and XXX


async def test_iter_models_follows_page_mode(fake: FakeCivitai, client: CivitaiClient) -> None:
    """/models answering in page mode (totalPages, nextPage with page=, no nextCursor)."""
    fake.models_page_mode = True
    names = [m.name async for m in client.iter_models(limit=2, sort="Most Downloaded")]
    assert len(names) == len(set(names)) == 6 and names[0] == "Photon Realism"
    calls = fake.calls_to("models")
    assert [c.param("page") for c in calls] == [None, "2", "3"]
    assert all(c.param("cursor") is None for c in calls)
    # max_items still ends it early, and a fresh listing starts at page one again
    two = [m.name async for m in client.iter_models(limit=2, max_items=3)]
    assert len(two) == 3 and fake.calls_to("models")[-1].param("page") == "2"


async def test_page_mode_loops_stop(
    fake: FakeCivitai, client: CivitaiClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.models_page_mode = "loop"
    names = [m.name async for m in client.iter_models(limit=2)]
    assert len(names) == 2 and len(fake.calls_to("models")) == 1
    assert "pointed back to page 1" in caplog.text


async def test_deterministic_500_is_not_retried(fake: FakeCivitai, client: CivitaiClient) -> None:
    """A 500 ``{"error":"URI malformed"}`` fails the same way every time: one request."""
    fake.fail_next(500, {"error": "URI malformed"}, on="images", times=5)
    with pytest.raises(CivitaiBadRequest, match="URI malformed"):
        await client.images(limit=2)
    assert [c.status for c in fake.calls_to("images")] == [500]
    fake.faults.clear()
    # a tRPC client-side code in a 500 body is the same
    fake.fail_next(500, {"error": "bad", "code": "BAD_REQUEST"}, on="models", times=5)
    with pytest.raises(CivitaiBadRequest):
        await client.search_models(limit=1)
    assert len(fake.calls_to("models")) == 1
    fake.faults.clear()
    # an unexpected 500, 502/503/504 and 429 are still retried
    fake.fail_next(500, on="tags")
    for status in (502, 503, 504):
        fake.fail_next(status, {"error": "upstream"}, on="tags")
    fake.throttle(1, retry_after="0", on="tags")
    async with make_client(fake, max_attempts=6) as patient:
        assert (await patient.tags(limit=1)).items
    assert [c.status for c in fake.calls_to("tags")] == [500, 502, 503, 504, 429, 200]


async def test_lookups_are_cached_briefly(fake: FakeCivitai) -> None:
    now = [1000.0]
    async with make_client(fake, cache_ttl_s=300, cache_size=3, clock=lambda: now[0]) as client:
        for _ in range(2):
            assert (await client.model(4201)).name == "Photon Realism"
            await client.model_version(52013)
            await client.image(90013)
        assert len(fake.calls_to("model")) == 1 and len(fake.calls_to("version")) == 1
        assert len(fake.calls_to("images")) == 1
        # a filter applied to one answer does not change the kept one
        assert len((await client.model(4201, nsfw="PG")).model_versions[0].images) < len(
            (await client.model(4201)).model_versions[0].images
        )
        sha = fake.catalogue.models[4201].versions[0].files[0].hashes["SHA256"]
        await client.version_by_hash(sha)
        await client.version_by_hash(sha.lower())  # the same hash, upper-cased
        assert len(fake.calls_to("by-hash")) == 1
        # listings are never cached
        await client.images(limit=2)
        await client.images(limit=2)
        assert len(fake.calls_to("images")) == 3
        # after the TTL, asked again; the size bound drops the least recently used
        now[0] += 301
        await client.version_by_hash(sha)
        assert len(fake.calls_to("by-hash")) == 2
        await client.model(4202)
        await client.model(4203)  # three kept at most: the image and model 4201 went out
        await client.version_by_hash(sha)
        assert len(fake.calls_to("by-hash")) == 2
        await client.model(4204)  # pushes out 4202, the least recently used
        await client.model(4202)
        assert len(fake.calls_to("model")) == 5
    async with make_client(fake, cache_ttl_s=0) as uncached:
        await uncached.model(4201)
        await uncached.model(4201)
    assert len(fake.calls_to("model")) == 7


def test_lora_tags_added_once_and_renamed_to_local_files() -> None:
    from adapters.civitai.api.meta import Resource, meta_resources, with_lora_tags
    from tests.fakes.civitai import REAL_META_LORAS

    resources = meta_resources(REAL_META_LORAS)
    kinds = [(r.kind, r.name, r.weight, r.version_id) for r in resources]
    assert kinds == [
        ("checkpoint", "juggernautXL_v9", None, 348913),
        ("lora", "add_detail", 0.6, None),
        ("lora", "epiNoiseoffset_v2", 0.7, None),
        ("lora", None, 0.8, 87153),  # named only by its version: no tag without a name
    ]
    prompt = with_lora_tags("x, <lora:add_detail:0.6>", resources, {1: "add_detail_v2"})
    assert prompt == "x, <lora:add_detail_v2:0.6>, <lora:epiNoiseoffset_v2:0.7>"
    assert with_lora_tags("", [Resource("lora", "a", None)]) == "<lora:a:1>"
