"""The bulk image harvester (adapters/civitai/harvest.py) against the fake Civitai and its
image CDN (tests/fakes/civitai.py, ``image_cdn=True``)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from adapters.civitai.api.client import CivitaiClient
from adapters.civitai.api.types import Image
from adapters.civitai.cli import add_harvest_arguments as add_arguments
from adapters.civitai.cli import run_harvest_cli as run_cli
from adapters.civitai.harvest import (
    MANIFEST,
    Harvester,
    parse_meta,
    parse_size,
    sized_url,
)
from bot.config import Config
from bot.errors import BadInput
from tests.fakes.civitai import FakeCivitai

KEY = "civitai-test-key"
META_SUFFIXES = (".json", ".txt", ".jsonl", ".part")


@pytest.fixture
async def fake() -> AsyncIterator[FakeCivitai]:
    async with FakeCivitai(image_cdn=True) as f:
        yield f


@pytest.fixture
async def client(fake: FakeCivitai) -> AsyncIterator[CivitaiClient]:
    c = CivitaiClient(base_url=fake.base_url, backoff_base=0.01, backoff_max=0.05)
    yield c
    await c.aclose()


def harvester(client: CivitaiClient, out: Path, **kw: Any) -> Harvester:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("progress", False)
    return Harvester(client, out, **kw)


def images_in(out: Path) -> dict[int, Path]:
    return {
        int(p.stem): p
        for p in out.iterdir()
        if p.is_file() and p.stem.isdigit() and not p.name.endswith(META_SUFFIXES)
    }


def manifest(out: Path) -> dict[int, dict[str, Any]]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["id"]: e for e in entries}


def parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*.part"))


def assert_complete(fake: FakeCivitai, out: Path, meta: tuple[str, ...] = ("json", "txt")) -> None:
    """Every image on disk is whole, listed in the manifest, and has its metadata."""
    entries = manifest(out)
    on_disk = images_in(out)
    assert parts(out) == []
    assert set(on_disk) == set(entries)
    for image_id, entry in entries.items():
        body = on_disk[image_id].read_bytes()
        width = None if entry["size"] == "original" else int(entry["size"].split("=")[1])
        assert body == fake.image_bytes(image_id, width)
        assert entry["bytes"] == len(body)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["file"] == on_disk[image_id].name
        for kind in meta:
            assert (out / f"{image_id}.{kind}").is_file()
        if "json" in meta:
            assert json.loads((out / f"{image_id}.json").read_text())["id"] == image_id


# --- downloading ----------------------------------------------------------------------------


async def test_downloads_images_with_metadata_and_manifest(
    fake: FakeCivitai, tmp_path: Path
) -> None:
    async with CivitaiClient(KEY, base_url=fake.base_url) as client:
        result = await harvester(client, tmp_path, max_items=12, concurrency=4).run()
        sent = {i.id: i for i in (await client.images(limit=12)).items}

    assert (result.listed, result.downloaded, result.skipped, result.failed) == (12, 12, 0, [])
    assert result.ok and result.bytes == sum(e["bytes"] for e in manifest(tmp_path).values())
    assert set(images_in(tmp_path)) == set(sent)
    assert_complete(fake, tmp_path)
    for image_id, image in sent.items():
        entry = manifest(tmp_path)[image_id]
        assert entry["file"] == f"{image_id}.jpeg" and entry["size"] == "original"
        assert "/original=true/" in entry["url"] and entry["url"].startswith(fake.urls["images"])
        # the item exactly as the API sent it, and A1111 parameters beside the picture
        assert json.loads((tmp_path / f"{image_id}.json").read_text()) == image.raw
        txt = (tmp_path / f"{image_id}.txt").read_text()
        assert txt == image.parameters_text() + "\n"
        if image.meta and image.meta.get("prompt"):
            assert txt.startswith(image.meta["prompt"]) and "Steps: " in txt
    # the API key went to the API only, never to the image CDN
    assert all(c.token == KEY for c in fake.calls_to("images"))
    cdn = fake.calls_to("image")
    assert len(cdn) == 12
    assert all(c.token is None and "Authorization" not in c.headers for c in cdn)
    assert all("Mozilla" not in c.headers.get("User-Agent", "") for c in cdn)


async def test_max_is_respected(fake: FakeCivitai, client: CivitaiClient, tmp_path: Path) -> None:
    result = await harvester(client, tmp_path / "five", max_items=5).run()
    assert (result.listed, result.downloaded) == (5, 5)
    assert len(images_in(tmp_path / "five")) == 5 and len(manifest(tmp_path / "five")) == 5
    assert fake.calls_to("images")[0].param("limit") == "5"  # no bigger page than needed
    assert len(fake.calls_to("image")) == 5

    # more than there is: everything the listing has (PG by default), then a clean stop
    everything = await harvester(client, tmp_path / "all", max_items=10_000, page_size=7).run()
    assert everything.ok and everything.downloaded == len(fake.visible_image_ids(1))
    assert set(images_in(tmp_path / "all")) == set(fake.visible_image_ids(1))


async def test_rerun_downloads_nothing_new(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    first = await harvester(client, tmp_path, max_items=10).run()
    assert first.downloaded == 10
    fetched = len(fake.calls_to("image"))

    again = await harvester(client, tmp_path, max_items=10).run()
    assert (again.listed, again.downloaded, again.skipped, again.failed) == (10, 0, 10, [])
    assert len(fake.calls_to("image")) == fetched
    assert len((tmp_path / MANIFEST).read_text().splitlines()) == 10

    # a missing picture and one of the wrong size are fetched again; a missing .txt is
    # written from the listing without fetching the picture
    ids = sorted(images_in(tmp_path))
    images_in(tmp_path)[ids[0]].unlink()
    images_in(tmp_path)[ids[1]].write_bytes(b"\xff\xd8 cut short")
    (tmp_path / f"{ids[2]}.txt").unlink()
    repaired = await harvester(client, tmp_path, max_items=10).run()
    assert (repaired.downloaded, repaired.skipped) == (2, 8)
    assert len(fake.calls_to("image")) == fetched + 2
    assert_complete(fake, tmp_path)

    # a bigger --max fetches only the new ones
    more = await harvester(client, tmp_path, max_items=15).run()
    assert (more.downloaded, more.skipped) == (5, 10)
    assert_complete(fake, tmp_path)


async def test_an_interrupted_run_leaves_no_partial_files_and_a_rerun_completes(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    fake.latency_s = 0.01
    fake.bandwidth_bps = 600_000  # about 0.1 s a picture: the cancel lands mid-stream
    h = harvester(client, tmp_path, max_items=20, concurrency=4)
    task = asyncio.create_task(h.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if h.result.downloaded >= 3 and parts(tmp_path):
            break
    assert parts(tmp_path), "no download was in progress"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # nothing half-written: no .part, every picture whole, with metadata and a manifest line
    assert parts(tmp_path) == []
    assert 3 <= len(manifest(tmp_path)) < 20
    assert_complete(fake, tmp_path)

    fake.bandwidth_bps = None
    done_before = len(manifest(tmp_path))
    rerun = await harvester(client, tmp_path, max_items=20, concurrency=4).run()
    assert rerun.ok and (rerun.skipped, rerun.downloaded) == (done_before, 20 - done_before)
    assert len(manifest(tmp_path)) == 20
    assert_complete(fake, tmp_path)


async def test_leftovers_of_a_killed_run_are_cleaned_up(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    await harvester(client, tmp_path, max_items=3).run()
    (tmp_path / "90099.part").write_bytes(b"half a picture")
    (tmp_path / "90099.json.part").write_text('{"id": 9')
    (tmp_path / "notes.part").write_text("not ours")
    with (tmp_path / MANIFEST).open("a") as f:
        f.write('{"id": 90099, "file": "9009')  # a line cut short by a kill
    result = await harvester(client, tmp_path, max_items=5).run()
    assert (result.downloaded, result.skipped) == (2, 3)
    assert sorted(p.name for p in tmp_path.glob("*.part")) == ["notes.part"]
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert len(lines) == 6 and sum(1 for line in lines if line.startswith('{"id": 90099')) == 1
    assert len(manifest_lines_ok(tmp_path)) == 5


def manifest_lines_ok(out: Path) -> list[dict[str, Any]]:
    ok = []
    for line in (out / MANIFEST).read_text().splitlines():
        try:
            ok.append(json.loads(line))
        except ValueError:
            continue
    return ok


# --- the listing: cursor loops, filters ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["cursor", "repeat", "empty", "overlap"])
async def test_cursor_loops_do_not_hang(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path, mode: str
) -> None:
    fake.loop_cursor(mode, on="images", after=1)
    result = await asyncio.wait_for(harvester(client, tmp_path, page_size=5).run(), timeout=10)
    assert result.ok and result.downloaded == result.listed > 0
    assert len(images_in(tmp_path)) == result.listed  # every id once
    assert len(fake.calls_to("images")) <= len(fake.visible_image_ids(1))


async def test_filters_pass_through(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    result = await harvester(client, tmp_path / "model", filters={"model_id": 4201}).run()
    assert fake.calls_to("images")[-1].param("modelId") == "4201"
    assert set(images_in(tmp_path / "model")) == set(fake.visible_image_ids(1, model_id=4201))
    assert result.downloaded == len(fake.visible_image_ids(1, model_id=4201))

    velvet = fake.catalogue.models[4203].versions[0].id  # R and X images only
    pg = await harvester(client, tmp_path / "pg", filters={"model_version_id": velvet}).run()
    assert pg.ok and pg.listed == 0
    x = await harvester(
        client, tmp_path / "x", filters={"model_version_id": velvet, "nsfw": "X"}
    ).run()
    call = fake.calls_to("images")[-1]
    assert (call.param("modelVersionId"), call.param("browsingLevel")) == (str(velvet), "31")
    assert x.downloaded == len(fake.visible_image_ids(31, model_version_id=velvet)) == 8

    await harvester(
        client,
        tmp_path / "carol",
        max_items=3,
        filters={
            "username": "carol",
            "sort": "Newest",
            "period": "Year",
            "base_models": ["Pony", "SDXL 1.0"],
            "nsfw": "all",
        },
    ).run()
    call = fake.calls_to("images")[-1]
    assert call.param("username") == "carol"
    assert (call.param("sort"), call.param("period")) == ("Newest", "Year")
    assert call.param("baseModels") == "Pony,SDXL 1.0"
    sent = [json.loads(p.read_text()) for p in (tmp_path / "carol").glob("*.json")]
    assert len(sent) == 3 and {s["username"] for s in sent} == {"carol"}


# --- errors ----------------------------------------------------------------------------------


async def test_throttling_and_transient_errors_are_retried(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    fake.throttle(1, on="images", retry_after="0")  # the API page: the client retries it
    fake.throttle(2, on="image", retry_after="0")
    fake.throttle(1, on="image", retry_after="0", html=True)  # Cloudflare's 1015 page
    fake.fail_next(503, on="image")
    fake.drop_next(on="image")
    result = await harvester(client, tmp_path, max_items=6, concurrency=2).run()
    assert result.ok and result.downloaded == 6
    assert len(fake.calls_to("image")) == 6 + 5
    assert [c.status for c in fake.calls_to("images")] == [429, 200]
    assert_complete(fake, tmp_path)


async def test_a_failed_image_is_recorded_and_the_run_goes_on(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    fake.fail_next(404, on="image")  # the first picture: final at once
    fake.fail_next(500, on="image", times=3)  # the second: 500 on every try
    result = await harvester(client, tmp_path, max_items=6, concurrency=1, retries=2).run()
    listed = [i.id for i in (await client.images(limit=6)).items]
    assert (result.downloaded, len(result.failed)) == (4, 2) and not result.ok
    gone, broken = result.failed
    assert (gone.id, gone.attempts, gone.error) == (listed[0], 1, "HTTP 404")
    assert (broken.id, broken.attempts) == (listed[1], 3) and "HTTP 500" in broken.error
    assert "2 failed" in result.summary()
    assert set(images_in(tmp_path)) == set(listed[2:]) == set(manifest(tmp_path))
    assert not (tmp_path / f"{listed[0]}.json").exists()
    assert_complete(fake, tmp_path)

    rerun = await harvester(client, tmp_path, max_items=6).run()
    assert rerun.ok and (rerun.downloaded, rerun.skipped) == (2, 4)


async def test_a_listing_that_fails_ends_the_listing_not_the_run(
    fake: FakeCivitai, tmp_path: Path
) -> None:
    async with CivitaiClient(base_url=fake.base_url, max_attempts=2, backoff_base=0.01) as c:
        fake.fail_next(500, on="images", times=2)
        result = await harvester(c, tmp_path, max_items=5).run()
    assert result.listed == 0 and not result.ok
    assert result.listing_error and "unavailable" in result.listing_error


# --- sizes ------------------------------------------------------------------------------------


async def test_size_original_and_width(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    small = await harvester(client, tmp_path, max_items=4, size=512).run()
    assert small.downloaded == 4
    assert all("/width=512/" in c.path for c in fake.calls_to("image"))
    assert {e["size"] for e in manifest(tmp_path).values()} == {"width=512"}
    assert_complete(fake, tmp_path)
    small_bytes = small.bytes

    # the same images asked for at their original size are fetched again, in place
    fake.calls.clear()
    original = await harvester(client, tmp_path, max_items=4, size="original").run()
    assert (original.downloaded, original.skipped) == (4, 0)
    assert original.bytes > small_bytes
    assert all("/original=true/" in c.path for c in fake.calls_to("image"))
    assert len(images_in(tmp_path)) == 4
    assert_complete(fake, tmp_path)


def test_sized_url() -> None:
    base = "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/7c3e4a8e-4b8f-4d0e-9d7b-1a2b3c4d5e6f"
    assert sized_url(f"{base}/original=true/1.jpeg", 450) == f"{base}/width=450/1.jpeg"
    assert sized_url(f"{base}/width=450/1.jpeg", "original") == f"{base}/original=true/1.jpeg"
    assert (
        sized_url(f"{base}/anim=false,width=450,optimized=true/1.jpeg", 1024)
        == f"{base}/width=1024/1.jpeg"
    )
    assert sized_url(f"{base}/1.jpeg", "original") == f"{base}/original=true/1.jpeg"
    still = sized_url(f"{base}/original=true/1.mp4", 450, still=True)
    assert still == f"{base}/anim=false,width=450/1.mp4"  # one frame of a video
    assert sized_url("https://example.com/pics/1.png", 512) == "https://example.com/pics/1.png"
    assert parse_size("ORIGINAL") == "original" and parse_size("768") == 768
    assert parse_meta("txt, json") == {"json", "txt"} and parse_meta("none") == set()


# --- progress ----------------------------------------------------------------------------------


async def test_progress_bar_only_on_a_terminal(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    quiet = io.StringIO()
    await Harvester(client, tmp_path / "a", max_items=2, console=Console(file=quiet)).run()
    assert quiet.getvalue() == ""

    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=120)
    await Harvester(client, tmp_path / "b", max_items=2, console=console).run()
    assert "civitai images" in shown.getvalue() and "2/2" in shown.getvalue()


# --- the CLI ----------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdhost civitai images")
    add_arguments(parser)
    return parser.parse_args(argv)


async def test_cli_runs_a_harvest(
    fake: FakeCivitai, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Config(civitai={"base_url": fake.base_url, "api_key": KEY})
    argv = ["--model", "4204", "--max", "3", "--out", str(tmp_path), "--size", "320"]
    argv += ["--meta", "txt", "--rate", "0", "--nsfw", "--sort", "newest"]
    assert await run_cli(parse(argv), config) == 0
    assert len(images_in(tmp_path)) == 3 and len(list(tmp_path.glob("*.txt"))) == 3
    assert not list(tmp_path.glob("*.json"))
    call = fake.calls_to("images")[0]
    assert (call.param("modelId"), call.param("browsingLevel"), call.param("sort")) == (
        "4204",
        "31",
        "Newest",
    )
    assert call.token == KEY
    assert all("/width=320/" in c.path for c in fake.calls_to("image"))
    out = capsys.readouterr().out
    assert "3 listed: 3 downloaded" in out and str(tmp_path) in out

    fake.fail_next(404, on="image")
    assert await run_cli(parse([*argv[:4], "--out", str(tmp_path / "b")]), config) == 1
    assert "failed: image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--size", "huge"], "--size"),
        (["--meta", "xml"], "--meta"),
        (["--concurrency", "0"], "--concurrency"),
        (["--max", "-3"], "--max"),
        (["--max", "lots"], "--max"),
        (["--sort", "Best"], "--sort"),
        (["--period", "Decade"], "--period"),
        (["--nsfw", "lots"], "--nsfw"),
        (["--user", "bad name!"], "--user"),
        (["--rate", "fast"], "--rate"),
        (["--model", "abc"], "--model"),
        (["--type", "gif"], "--type"),
        (["--retries", "-1"], "--retries"),
    ],
)
async def test_cli_bad_flags_give_one_line(tmp_path: Path, argv: list[str], flag: str) -> None:
    base = {"--max": "5", "--out": str(tmp_path)}
    for name, value in base.items():
        if name not in argv:
            argv = [*argv, name, value]
    with pytest.raises(BadInput) as err:
        await run_cli(parse(argv), Config())
    message = str(err.value)
    assert flag in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing started


async def test_cli_needs_max_and_out(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="--max"):
        await run_cli(parse(["--out", str(tmp_path)]), Config())
    with pytest.raises(BadInput, match="--out"):
        await run_cli(parse(["--max", "3"]), Config())


def test_image_metadata_from_a_bare_item() -> None:
    """An item without meta still gets a parameters text (its size), and its JSON as sent."""
    image = Image.model_validate({"id": 7, "url": "https://x/7.jpeg", "width": 64, "height": 32})
    assert image.parameters_text() == "Size: 64x32"
    assert image.raw == {"id": 7, "url": "https://x/7.jpeg", "width": 64, "height": 32}


async def test_links_planted_in_the_folder_are_refused_not_written_through(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first, second = [i.id for i in (await client.images(limit=2)).items]
    # dangling links where the image's and the metadata's .part files go
    (out / f"{first}.part").symlink_to(tmp_path / "made-through-a-link")
    (out / f"{second}.txt.part").symlink_to(tmp_path / "made-through-a-link-too")
    # and a manifest that is a link to a file elsewhere
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = await harvester(client, out, max_items=2, concurrency=1).run()
    assert not (tmp_path / "made-through-a-link").exists()
    assert not (tmp_path / "made-through-a-link-too").exists()
    failed = {f.id: f.error for f in result.failed}
    assert "refusing to write through a symbolic link" in failed[first]
    assert "symbolic link" in failed[second]

    (out / MANIFEST).unlink()
    (out / MANIFEST).symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"):
        await harvester(client, out, max_items=2).run()
    assert precious.read_text() == "keep me"


# --- real meta shapes (issue 16) -------------------------------------------------------------


async def test_real_meta_shapes_reach_the_txt(
    fake: FakeCivitai, client: CivitaiClient, tmp_path: Path
) -> None:
    ids = fake.real_shapes()
    filters = {"model_version_id": 52013, "sort": "Oldest"}
    result = await harvester(client, tmp_path, filters=filters, max_items=40).run()
    assert result.ok and set(ids.values()) <= set(images_in(tmp_path))
    texts = {name: (tmp_path / f"{i}.txt").read_text() for name, i in ids.items()}

    # Model as an object: its key is the name
    assert "Model: meina_belly_7" in texts["model_object"]
    # LoRAs: the tag already in the prompt kept once, the others added with their weight;
    # the checkpoint hash and the LoRA hashes in A1111's keys
    loras = texts["loras"]
    prompt, _negative, keys = loras.rstrip("\n").split("\n")
    assert prompt.count("<lora:add_detail:0.6>") == 1
    assert "<lora:epiNoiseoffset_v2:0.7>" in prompt
    assert "Model hash: c9e3e68f89" in keys and "Model: juggernautXL_v9" in keys
    assert 'Lora hashes: "add_detail: 7c6bad76eb, epiNoiseoffset_v2: d1131f7207"' in keys
    assert "Flux mode:" in keys
    # junk is left out, real values stay
    junk = texts["junk"]
    assert junk.startswith("a quiet harbour\n") and "Negative prompt" not in junk
    for word in ("Undefined", "undefined", "NaN", "Seed:", "Steps:", "Clip skip", "2023-13"):
        assert word not in junk, word
    assert "Size: 768x512" in junk and "Schedule type: Karras" in junk
