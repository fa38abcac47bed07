"""/civitai in chat, against the fake Civitai: lookups, the NSFW rule, and starting a job
from an image's settings."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from adapters.civitai.api.client import CivitaiClient
from bot.commands import Action, Incoming
from tests.conftest import REPLY, user
from tests.fakes.civitai import DANGER_IMPORTS, FakeCivitai, FakeCivitaiDownloads


@pytest.fixture
async def civitai() -> AsyncIterator[FakeCivitai]:
    async with FakeCivitai() as fake:
        yield fake


def with_cdn(fake: FakeCivitai, **more: Any) -> dict[str, Any]:
    """[civitai] for the fake, its image CDN (on 127.0.0.1) allowed explicitly: pictures
    come only from civitai.image_hosts, and a loopback address only when listed."""
    return {"base_url": fake.base_url, "image_hosts": ["127.0.0.1"], **more}


async def ask(app: Any, text: str, *, nsfw_ok: bool = False, key: str | None = None) -> Any:
    return await app.commands.handle(
        Incoming(user(), text, dict(REPLY), nsfw_ok=nsfw_ok, message_key=key)
    )


async def levels_of(civitai: FakeCivitai, ids: list[int]) -> set[int]:
    client = CivitaiClient(base_url=civitai.base_url)
    try:
        return {(await client.image(i, nsfw=31)).level or 0 for i in ids}
    finally:
        await client.aclose()


async def test_lookups(app_factory, civitai: FakeCivitai, tmp_path: Path) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    models = await ask(app, "/civitai models --type LORA")
    assert not models.error and "Anime Lines" in models.text and "Photon" not in models.text
    model = await ask(app, "/civitai model 4201")
    assert "Photon Realism" in model.text and "version" in model.text and "MB" in model.text
    found = await ask(app, "/civitai hash 0A8D22B278")
    assert "Photon Realism" in found.text
    image = await ask(app, "/civitai image 90013")
    assert "a red fox in snow" in image.text and "Seed: 730091" in image.text
    bad = await ask(app, "/civitai frobnicate")
    assert bad.error and "/civitai models" in bad.text
    missing = await ask(app, "/civitai model 999999")
    assert missing.error and "Traceback" not in missing.text


async def test_a_chat_not_allowed_nsfw_only_gets_pg(app_factory, civitai: FakeCivitai) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    safe = await ask(app, "/civitai images --nsfw")
    ids = [int(i) for i in re.findall(r"^#(\d+) ", safe.text, re.M)]
    assert ids and await levels_of(civitai, ids) == {1}
    anything = await ask(app, "/civitai images --nsfw --sort Newest", nsfw_ok=True)
    ids = [int(i) for i in re.findall(r"^#(\d+) ", anything.text, re.M)]
    assert ids


async def test_use_starts_a_job_with_the_images_settings(app_factory, civitai) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    reply = await ask(app, "/civitai use 90013", key="m1")
    assert reply.receipt is not None and reply.receipt.cost == 1
    view = await app.jobs.job(None, reply.receipt.job_ids[0])
    assert view.params["prompt"].startswith("a red fox in snow")
    assert view.params["seed"] == 730091
    again = await ask(app, "/civitai use 90013", key="m1")
    assert again.receipt is not None and again.receipt.duplicate  # one message, one charge
    assert await app.jobs.balance(user()) == 19


async def test_an_image_civitai_does_not_return_by_id(app_factory, civitai) -> None:
    """/images?imageId= answers some existing images with nothing: say what is true, and
    find it through its post when the person gives one."""
    civitai.missing_by_image_id.add(90013)
    post = civitai._find_image(90013).post_id
    app = await app_factory(civitai={"base_url": civitai.base_url})
    missing = await ask(app, "/civitai image 90013")
    assert missing.error and "did not return image 90013" in missing.text
    assert "has no" not in missing.text and "--post" in missing.text
    found = await ask(app, f"/civitai image 90013 --post {post}")
    assert not found.error and "a red fox in snow" in found.text
    assert civitai.calls_to("images")[-1].param("postId") == str(post)
    used = await ask(app, f"/civitai use 90013 --post {post}", key="m2")
    assert used.receipt is not None


# --- model downloads from chat (admins) -------------------------------------------------------


@pytest.fixture
async def storage() -> AsyncIterator[FakeCivitaiDownloads]:
    async with FakeCivitaiDownloads(file_size=300_000) as fake:
        yield fake


async def admin_ask(app: Any, text: str) -> Any:
    return await app.commands.handle(Incoming(user("root"), text, dict(REPLY), is_admin=True))


async def until_status(app: Any, task_id: int, *wanted: str) -> Any:
    manager = app.commands.extensions["civitai"].downloads
    async with asyncio.timeout(15):
        while (view := await manager.get(task_id)).status not in wanted:
            await asyncio.sleep(0.02)
    return view


async def test_downloads_are_for_admins_only(app_factory, storage: FakeCivitaiDownloads) -> None:
    app = await app_factory(civitai={"base_url": storage.base_url})
    for text in ("/civitai download 52013", "/civitai downloads", "/civitai cancel 1"):
        reply = await ask(app, text)
        assert reply.error and "admin" in reply.text.lower(), reply.text
    assert storage.download_hits == 0
    assert await app.commands.extensions["civitai"].downloads.tasks() == []
    helped = await ask(app, "/help")
    assert "/civitai download" not in helped.text  # not offered to those who may not
    assert "/civitai download" in (await admin_ask(app, "/help")).text


async def test_an_admin_downloads_a_model_from_chat(
    app_factory, storage: FakeCivitaiDownloads, tmp_path: Path
) -> None:
    app = await app_factory(civitai={"base_url": storage.base_url})
    file = storage.primary_file(52013)
    reply = await admin_ask(app, "/civitai download 52013")
    assert not reply.error and reply.text.startswith(("⏳ #1", "⬇️ #1", "✅ #1")), reply.text
    view = await until_status(app, 1, "done")
    path = Path(view.path or "")
    assert path.parent == tmp_path / "data" / "models" / "checkpoints"
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest()
        == hashlib.sha256(storage.content(file.id)).hexdigest()
    )
    listed = await admin_ask(app, "/civitai downloads")
    assert "#1 Photon Realism" in listed.text and "downloaded" in listed.text
    again = await admin_ask(
        app, "/civitai download https://civitai.com/models/4201?modelVersionId=52013"
    )
    assert "downloaded" in again.text and storage.download_hits == 1  # not fetched twice


async def test_pause_resume_and_cancel_from_chat(app_factory, tmp_path: Path) -> None:
    async with FakeCivitaiDownloads(file_size=2_000_000, storage_bps=500_000) as slow:
        app = await app_factory(civitai={"base_url": slow.base_url})
        await admin_ask(app, "/civitai download 52021")
        manager = app.commands.extensions["civitai"].downloads
        async with asyncio.timeout(10):
            while not (await manager.get(1)).bytes_done:
                await asyncio.sleep(0.02)
        paused = await admin_ask(app, "/civitai pause 1")
        assert "paused" in paused.text and "/civitai resume 1" in paused.text
        have = (await manager.get(1)).bytes_done
        assert 0 < have < 2_000_000
        slow.storage_bps = None
        resumed = await admin_ask(app, "/civitai resume 1")
        assert not resumed.error, resumed.text
        view = await until_status(app, 1, "done")
        assert Path(view.path or "").read_bytes() == slow.content(slow.primary_file(52021).id)
        ranged = [h for h in slow.storage_hits if h.range]
        assert ranged and ranged[-1].range.startswith(f"bytes={have}-")  # went on, not over

        await admin_ask(app, "/civitai download 52031")
        gone = await admin_ask(app, "/civitai cancel 2")
        assert "cancelled" in gone.text
        assert not list((tmp_path / "data" / "models").rglob("*.part"))


async def test_download_mistakes_get_one_clear_line(
    app_factory, storage: FakeCivitaiDownloads
) -> None:
    app = await app_factory(civitai={"base_url": storage.base_url})
    cases = {
        "/civitai download": "needs a model version id",
        "/civitai download not-a-model": "civitai",
        "/civitai pause": "needs a number",
        "/civitai pause 77": "#77",
        "/civitai download 52013 --format Banana": "no file with format 'Banana'",
        "/civitai download 999999": "no model version 999999",
    }
    for text, part in cases.items():
        reply = await admin_ask(app, text)
        assert reply.error and part.lower() in reply.text.lower(), (text, reply.text)
        assert "Traceback" not in reply.text and "\n" not in reply.text.strip(), reply.text
    storage.require_auth.add(52031)
    await admin_ask(app, "/civitai download 52031")
    view = await until_status(app, 1, "failed")
    assert "civitai.api_key" in (view.error or "")
    listed = await admin_ask(app, "/civitai downloads")
    assert "civitai.api_key" in listed.text


# --- pictures and buttons ----------------------------------------------------------------------


def picture_of(data: bytes) -> PILImage.Image:
    im = PILImage.open(io.BytesIO(data))
    im.load()
    return im


async def test_an_image_comes_with_its_picture_and_a_use_button(
    app_factory, civitai: FakeCivitai
) -> None:
    app = await app_factory(civitai=with_cdn(civitai, api_key="sekrit-key"))
    reply = await ask(app, "/civitai image 90013")
    assert "Seed: 730091" in reply.text and f"{civitai.base_url}/images/90013" in reply.text
    assert civitai.calls_to("image") and all(
        "authorization" not in {k.lower() for k in c.headers} for c in civitai.calls_to("image")
    )  # the key goes to the API only, never to the image CDN
    assert any(c.token for c in civitai.calls if c.endpoint != "image")
    [picture] = reply.pictures
    im = picture_of(picture.data)
    assert im.format == "JPEG" and im.width == 800  # the CDN's 800 px rendition, not original
    assert [c.path for c in civitai.calls_to("image")][-1].split("/")[-2] == "width=800"
    assert reply.actions == [Action("🎨 Use these settings", "/civitai use 90013")]
    # the button is the command: pressing it is typing it, charged once per press
    pressed = await ask(app, reply.actions[0].command, key="press-1")
    assert pressed.receipt is not None and pressed.receipt.cost == 1


async def test_lists_show_covers_and_buttons_for_each_result(
    app_factory, civitai: FakeCivitai
) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    models = await ask(app, "/civitai models --type LORA")
    ids = [int(i) for i in re.findall(r"^#(\d+) ", models.text, re.M)]
    assert ids and len(models.pictures) == len(ids)
    assert [a.command for a in models.actions] == [f"/civitai model {i}" for i in ids]
    assert all(picture_of(p.data).width <= 450 for p in models.pictures)
    assert models.pictures[0].caption.startswith(f"#{ids[0]} ")

    images = await ask(app, "/civitai images --model 4201")
    shown = [int(i) for i in re.findall(r"^#(\d+) ", images.text, re.M)]
    drawable = [int(i) for i in re.findall(r"^#(\d+) (?!\(no prompt\))", images.text, re.M)]
    assert [a.command for a in images.actions] == [f"/civitai use {i}" for i in drawable]
    assert 0 < len(drawable) < len(shown)  # no Use button where there is no prompt to use
    blank = await ask(app, f"/civitai image {(set(shown) - set(drawable)).pop()}")
    assert blank.actions == [] and "/civitai use" not in blank.text
    assert [p.caption.split(" · ")[0] for p in images.pictures] == [f"#{i}" for i in shown]

    model = await ask(app, "/civitai model 4201")
    assert 1 <= len(model.pictures) <= 3
    assert [a.command for a in model.actions] == ["/civitai images --model 4201"]
    admin = await app.commands.handle(
        Incoming(user("root"), "/civitai model 4201", dict(REPLY), is_admin=True)
    )
    assert admin.actions[-1].command.startswith("/civitai download ")


async def test_a_chat_not_allowed_nsfw_gets_only_pg_pictures(
    app_factory, civitai: FakeCivitai
) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    reply = await ask(app, "/civitai images --nsfw --sort Newest")
    served = {int(c.path.rsplit("/", 1)[-1].split(".")[0]) for c in civitai.calls_to("image")}
    assert reply.pictures and served
    assert await levels_of(civitai, sorted(served)) == {1}


async def test_pictures_that_fail_or_dawdle_are_left_out_not_the_answer(
    app_factory, civitai: FakeCivitai
) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    civitai.fail_next(404, "Not Found", on="image")
    missing = await ask(app, "/civitai image 90013")
    assert not missing.error and "Seed: 730091" in missing.text and missing.pictures == []
    assert missing.actions  # the button does not need the picture

    app.commands.extensions["civitai"].picture_wait_s = 0.3
    civitai.bandwidth_bps = 2_000  # a few kilobytes take seconds
    started = asyncio.get_running_loop().time()
    slow = await ask(app, "/civitai image 90013")
    assert asyncio.get_running_loop().time() - started < 2.0
    assert not slow.error and slow.pictures == []


# --- what lookups may cost the operator -------------------------------------------------------


async def test_lookups_are_limited_per_person_with_a_clear_reply(
    app_factory, civitai: FakeCivitai
) -> None:
    app = await app_factory(
        civitai={"base_url": civitai.base_url}, limits={"free_commands_per_minute": 3}
    )
    now = [1000.0]
    app.commands.free_commands.clock = lambda: now[0]
    for text in ("/civitai models --type LORA", "/civitai image 90013", "/civitai hash 0A8D22B278"):
        assert not (await ask(app, text)).error, text
        now[0] += 10
    before = len(civitai.calls)
    refused = await ask(app, "/civitai model 4201")
    assert refused.error
    assert refused.text == "that is 3 lookups in a minute, the most allowed; try again in 30 s"
    zh = await app.commands.handle(Incoming(user(), "/civitai images", dict(REPLY), lang="zh"))
    assert zh.text == "一分钟内已查询 3 次，已达上限；请 30 秒后再试"
    assert len(civitai.calls) == before  # refused before anything was asked of Civitai
    # someone else, an admin, and a charged /civitai use are not held back
    other = await app.commands.handle(Incoming(user("bob"), "/civitai model 4201", dict(REPLY)))
    assert not other.error
    admin = Incoming(user("root"), "/civitai model 4201", dict(REPLY), is_admin=True)
    assert not (await app.commands.handle(admin)).error
    used = await ask(app, "/civitai use 90013", key="u1")
    assert used.receipt is not None
    # the first lookup leaves the window: one more is allowed, and then not
    now[0] += 31
    assert not (await ask(app, "/civitai model 4201")).error
    assert "try again in 9 s" in (await ask(app, "/civitai model 4201")).text


class DecodeMeter:
    """Pillow's decodes of files (``ImageFile.load``), counted and, at most, how many ran at
    once (each is made to take ``hold_s``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_s: float = 0.0) -> None:
        import threading
        import time

        from PIL import ImageFile

        self.count = self.active = self.most = 0
        lock = threading.Lock()
        real = ImageFile.ImageFile.load

        def load(im: Any) -> Any:
            if not im.tile:  # decoded already: nothing to do
                return real(im)
            with lock:
                self.count += 1
                self.active += 1
                self.most = max(self.most, self.active)
            try:
                time.sleep(hold_s)
                return real(im)
            finally:
                with lock:
                    self.active -= 1

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixels are a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_a_100_megapixel_preview_is_left_out_without_being_decoded(
    app_factory, civitai: FakeCivitai, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    bomb = png_claiming(10_000, 10_000)
    assert len(bomb) < 200
    monkeypatch.setattr(civitai, "image_bytes", lambda image_id, width=None: bomb)
    meter = DecodeMeter(monkeypatch)
    reply = await ask(app, "/civitai image 90013")
    assert civitai.calls_to("image")  # it was fetched
    assert not reply.error and "Seed: 730091" in reply.text and reply.pictures == []
    assert meter.count == 0  # and never decoded


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_previews_decode_at_most_25_megapixels_jpeg_at_reduced_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.errors import BadInput
    from bot.imaging import PREVIEW_MAX_PIXELS, make_preview

    meter = DecodeMeter(monkeypatch)
    for width, height in ((10_000, 10_000), (5_100, 5_000)):
        with pytest.raises(BadInput, match="the limit is 25"):
            make_preview(png_claiming(width, height), max_side=800)
    assert meter.count == 0
    # a JPEG over the budget is decoded by libjpeg at 1/4 scale: 6.5 MP, not 26
    buf = io.BytesIO()
    PILImage.new("RGB", (5_100, 5_100), (10, 120, 200)).save(buf, "JPEG", quality=50)
    assert 5_100 * 5_100 > PREVIEW_MAX_PIXELS
    data = make_preview(buf.getvalue(), max_side=800)
    assert meter.count == 1 and picture_of(data).size == (800, 800)


async def test_at_most_two_previews_decode_at_once(
    app_factory, civitai: FakeCivitai, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await app_factory(civitai=with_cdn(civitai))
    app.commands.extensions["civitai"].picture_wait_s = 30
    meter = DecodeMeter(monkeypatch, hold_s=0.15)
    reply = await ask(app, "/civitai images --model 4201")
    assert len(reply.pictures) == 5 and meter.count == 5
    assert meter.most == 2


async def test_pictures_from_hosts_not_allowed_are_not_fetched_but_the_text_goes(
    app_factory, civitai: FakeCivitai
) -> None:
    # the defaults: only Civitai's own image hosts; the fake's CDN is on 127.0.0.1
    app = await app_factory(civitai={"base_url": civitai.base_url})
    model = await ask(app, "/civitai model 4201")
    assert not model.error and "Photon Realism" in model.text and model.pictures == []
    image = await ask(app, "/civitai image 90013")
    assert not image.error and "Seed: 730091" in image.text and image.pictures == []
    assert civitai.calls_to("image") == []

    # a listed host name that resolves to a loopback address: the /img2img guard refuses it
    port = civitai.urls["images"].rsplit(":", 1)[1]
    civitai.urls["images"] = f"http://localhost:{port}"
    named = await app_factory(civitai={"base_url": civitai.base_url, "image_hosts": ["localhost"]})
    again = await ask(named, "/civitai image 90013")
    assert "localhost" in (await named.commands.extensions["civitai"].client.image(90013)).url
    assert not again.error and "Seed: 730091" in again.text and again.pictures == []
    assert civitai.calls_to("image") == []


async def test_a_file_civitais_scans_flag_is_refused_in_chat_unless_an_admin_overrides(
    app_factory, storage: FakeCivitaiDownloads, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory(civitai={"base_url": storage.base_url})
    file = storage.primary_file(52013)
    file.pickle_scan, file.pickle_message = "Danger", DANGER_IMPORTS
    refused = await admin_ask(app, "/civitai download 52013")
    assert refused.error and 'pickle scan says "Danger"' in refused.text, refused.text
    assert "--allow-unsafe" in refused.text and "Traceback" not in refused.text
    assert storage.download_hits == 0
    with caplog.at_level(logging.WARNING, logger="adapters.civitai.download"):
        taken = await admin_ask(app, "/civitai download 52013 --allow-unsafe")
        assert not taken.error, taken.text
        view = await until_status(app, 1, "done")
    assert Path(view.path or "").read_bytes() == storage.content(file.id)
    [warned] = [r.getMessage() for r in caplog.records if "--allow-unsafe" in r.getMessage()]
    assert "admin test:root" in warned and "Danger" in warned and file.name in warned


# --- real meta: checkpoint and LoRAs (issue 16) ------------------------------------------------


def registry_row(sha: str, name: str, **kw: Any) -> dict[str, Any]:
    return {
        "sha256": sha,
        "name": name,
        "type": kw.pop("type", "lora"),
        "size_bytes": 1000,
        "source": "civitai",
        "path": f"/models/{name}",
        "status": kw.pop("status", "ready"),
        "created_at": 1.0,
        "updated_at": 1.0,
        **kw,
    }


async def test_use_carries_the_images_loras_and_checkpoint(app_factory, civitai) -> None:
    ids = civitai.real_shapes()
    app = await app_factory(civitai={"base_url": civitai.base_url})
    ckpt_sha = "c9e3e68f89" + "0" * 54  # the image's AutoV2 is the start of this SHA256
    anime = civitai.catalogue.models[4202].versions[0]
    anime_sha = anime.files[0].hashes["SHA256"].lower()

    def fill(conn: Any) -> None:
        from storage import repos

        repos.upsert_model(conn, registry_row(ckpt_sha, "juggernaut_local.safetensors"))
        # the LoRA named only by its version id in civitaiResources
        repos.upsert_model(
            conn, registry_row("ab" * 32, "detail_tweaker.safetensors", civitai_version_id=87153)
        )
        # a file this host has for a LoRA Civitai knows by hash (an AutoV3 in the prompt)
        repos.upsert_model(conn, registry_row(anime_sha, "anime_lines_here.safetensors"))

    await app.db.run_write(fill)
    reply = await ask(app, f"/civitai use {ids['loras']}", key="lora-1")
    assert reply.receipt is not None, reply.text
    view = await app.jobs.job(None, reply.receipt.job_ids[0])
    prompt = view.params["prompt"]
    assert prompt.startswith("a castle on a hill, <lora:add_detail:0.6>, golden hour")
    assert prompt.count("<lora:add_detail:") == 1
    assert "<lora:epiNoiseoffset_v2:0.7>" in prompt and "<lora:detail_tweaker:0.8>" in prompt
    assert "checkpoint: juggernaut_local [c9e3e68f89] (here)" in reply.text
    assert "LoRA: detail_tweaker ×0.8 (here)" in reply.text
    assert "LoRA: epiNoiseoffset_v2 ×0.7 [d1131f7207]" in reply.text
    assert view.params["model"] != "juggernaut_local"  # no provider here offers it

    # a LoRA the registry cannot match by its hash: Civitai names its file, the registry has it
    from adapters.civitai.api.meta import Resource
    from adapters.civitai.resolve import resolve_resources

    client = app.commands.extensions["civitai"].client
    autov3 = anime.files[0].hashes["AutoV3"]
    found = await resolve_resources(
        app.db,
        [
            Resource("lora", name="animelines", weight=0.5, hash=autov3),
            Resource("lora", weight=0.3, version_id=anime.id),
            Resource("lora", name="nowhere", hash="0123456789AB"),
        ],
        client,
    )
    assert [r.name for r in found] == ["anime_lines_here", "anime_lines_here", "nowhere"]
    assert [r.local is not None for r in found] == [True, True, False]
    assert found[0].sha256 == anime_sha


async def test_civitai_failures_are_said_in_the_chats_language(
    app_factory, civitai: FakeCivitai
) -> None:
    """The transport names the failure (kind, status); the chat's words come from the
    catalogue, so a Chinese chat is told in Chinese and the log keeps the English line."""
    app = await app_factory(civitai={"base_url": civitai.base_url})
    civitai.fail_next(403, {"error": "Forbidden"}, times=2)
    en = await ask(app, "/civitai model 4201")
    zh = await app.commands.handle(Incoming(user(), "/civitai model 4201", dict(REPLY), lang="zh"))
    assert en.error and zh.error
    assert en.text.startswith("Civitai refused model 4201"), en.text
    assert zh.text.startswith("Civitai 拒绝了 model 4201"), zh.text
    assert "Forbidden" in en.text and "Forbidden" in zh.text
