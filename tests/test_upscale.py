"""Upscale: the button under pictures from a provider that can upscale, and /upscale.

A small provider here (``Upscaler``, named "gpu") says ``capabilities().upscale`` and
enlarges the init picture by ``request.upscale`` with Pillow, writing down every request it
got. The core is driven through ``Results`` and ``Commands``; the chat buttons through the
real python-telegram-bot and discord.py against the fakes in tests/fakes/, as
test_telegram.py and test_discord.py do. What is checked: the pictures that arrive (their
size), the requests the provider received, the buttons the fakes received, the credits.
"""

from __future__ import annotations

import asyncio
import copy
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.app import App
from bot.chat import UserRef
from bot.commands import Incoming
from bot.config import DemoProviderConfig
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.params import GenerationParams
from bot.providers import (
    Capabilities,
    ModelInfo,
    Provider,
    ProviderRun,
    ResolvedRequest,
    ResultImage,
)
from bot.results import Results
from bot.routing import UPSCALE_MAX_SIDE, upscale_size
from tests.chat_helpers import RecordingDemo, decoded
from tests.conftest import REPLY, make_config, user

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GPU_IMG2IMG_PRICE = 3  # not the default img2img price (2): the provider's own is charged


class Upscaler(Provider):
    """A provider that can upscale: txt2img draws a flat picture of the asked size; an
    upscale request enlarges the init picture by ``request.upscale``."""

    name = "gpu"
    bills_when_cancelled = False

    def __init__(self) -> None:
        self.requests: list[ResolvedRequest] = []
        self.fail_upscales = False

    def capabilities(self) -> Capabilities:
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=(ModelInfo("sdxl"), ModelInfo("sd15")),
            default_model="sdxl",
            max_images=4,
            max_size=2048,
            upscale=True,
        )

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        self.requests.append(req)
        if run.task_id is None:
            await run.submitted(f"gpu-{len(self.requests)}")
        if req.upscale:
            if self.fail_upscales:
                raise ProviderFailure(FailureClass.PROVIDER_ERROR, "the GPU ran out of memory")
            assert req.init_image is not None
            img = Image.open(io.BytesIO(req.init_image))
            img.load()
            size = (round(img.width * req.upscale), round(img.height * req.upscale))
            await run.image(0, ResultImage(image=img.resize(size), seed=req.seed))
            return
        for i in range(req.n):
            img = Image.new("RGB", (req.width, req.height), (40 * i, 90, 200))
            nsfw = "nsfw" in req.prompt  # flags at the source, never when upscaling
            await run.image(i, ResultImage(image=img, seed=req.seed + i, nsfw=nsfw))

    def upscales(self) -> list[ResolvedRequest]:
        return [r for r in self.requests if r.upscale]


PRICES = {"provider_prices": {"gpu": {"img2img": GPU_IMG2IMG_PRICE}}}


# --- the size rule ---------------------------------------------------------------------------


def test_upscale_size_is_the_picture_times_the_factor_within_bounds() -> None:
    assert upscale_size((512, 384), 2.0) == (1024, 768)
    assert upscale_size((1024, 768), 4.0) == (4096, 3072)  # the limit itself
    assert upscale_size((601, 400), 1.5) == (904, 600)  # to the provider's multiple of 8
    with pytest.raises(BadInput) as too_big:
        upscale_size((1032, 512), 4.0)
    assert str(UPSCALE_MAX_SIDE) in str(too_big.value)
    for factor in (1.0, 1.2, 4.5, float("nan"), float("inf")):
        with pytest.raises(BadInput):
            upscale_size((512, 512), factor)
    with pytest.raises(BadInput):
        upscale_size(None, 2.0)


# --- the core --------------------------------------------------------------------------------


async def _wait_done(app: App, job_id: int) -> str:
    async with asyncio.timeout(15):
        while True:
            view = await app.jobs.job(None, job_id)
            if view.status in ("succeeded", "failed", "cancelled"):
                return view.status
            await asyncio.sleep(0.02)


async def _picture(app: App, provider: str, size: tuple[int, int], who: UserRef) -> int:
    params = GenerationParams(
        prompt="a lighthouse at dusk",
        negative="blurry",
        provider=provider,
        width=size[0],
        height=size[1],
        seed=1234,
        steps=20,
    )
    receipt = await app.jobs.submit(who, "txt2img", [params], REPLY)
    job_id = receipt.job_ids[0]
    assert await _wait_done(app, job_id) == "succeeded"
    return job_id


async def _job_count(app: App) -> int:
    return len(await app.jobs.jobs(user(), limit=100))


async def test_upscale_is_an_img2img_of_the_picture_on_its_provider_charged_once(
    app_factory: Any,
) -> None:
    gpu = Upscaler()
    demo = RecordingDemo(DemoProviderConfig(latency_s=0))
    app = await app_factory(provider_objs={"gpu": gpu, "demo": demo}, credits=PRICES)
    ann = user()
    job_id = await _picture(app, "gpu", (512, 384), ann)
    original = await app.jobs.job(None, job_id)
    assert await app.jobs.balance(ann) == 20 - 1

    results = Results(app.jobs)
    receipt = await results.upscale(ann, job_id, 0, REPLY, idem_key="press-1")
    again = await results.upscale(ann, job_id, 0, REPLY, idem_key="press-1")  # the same press
    assert again.job_ids == receipt.job_ids
    assert receipt.cost == GPU_IMG2IMG_PRICE
    assert await _wait_done(app, receipt.job_ids[0]) == "succeeded"
    assert await app.jobs.balance(ann) == 20 - 1 - GPU_IMG2IMG_PRICE

    [req] = gpu.upscales()
    assert req.kind == "img2img" and req.upscale == 2.0 and req.n == 1
    assert (req.width, req.height) == (1024, 768)
    assert req.model == original.model == "sdxl"
    assert req.prompt == "a lighthouse at dusk" and req.negative == "blurry"
    assert req.seed == original.images[0]["seed"]
    assert req.init_image == await results.picture_bytes(await results.picture(job_id, 0))

    view = await app.jobs.job(None, receipt.job_ids[0])
    assert view.provider == "gpu" and view.kind == "img2img"
    [image] = view.images
    assert (image["width"], image["height"]) == (1024, 768)
    data = app.files.get(image["sha256"])
    assert decoded(data).size == (1024, 768)
    # the new picture's parameters keep the prompt and seed
    assert "a lighthouse at dusk" in decoded(data).info["parameters"]
    assert f"Seed: {req.seed}" in decoded(data).info["parameters"]

    # a second, different press is a second job, charged again
    other = await results.upscale(ann, job_id, 0, REPLY, idem_key="press-2", factor=1.5)
    assert other.job_ids != receipt.job_ids
    assert await _wait_done(app, other.job_ids[0]) == "succeeded"
    assert (gpu.upscales()[1].width, gpu.upscales()[1].height) == (768, 576)
    assert await app.jobs.balance(ann) == 20 - 1 - 2 * GPU_IMG2IMG_PRICE


async def test_refusals_come_before_any_charge(app_factory: Any) -> None:
    gpu = Upscaler()
    demo = RecordingDemo(DemoProviderConfig(latency_s=0))
    app = await app_factory(provider_objs={"gpu": gpu, "demo": demo}, credits=PRICES)
    ann = user()
    demo_job = await _picture(app, "demo", (512, 512), ann)
    big_job = await _picture(app, "gpu", (1536, 1024), ann)
    balance, jobs = await app.jobs.balance(ann), await _job_count(app)
    results = Results(app.jobs)

    with pytest.raises(BadInput) as no_upscale:
        await results.upscale(ann, demo_job, 0, REPLY, idem_key="a")
    assert "cannot upscale" in str(no_upscale.value)
    with pytest.raises(BadInput) as too_big:
        await results.upscale(ann, big_job, 0, REPLY, idem_key="b", factor=3.0)
    assert "4608" in str(too_big.value) and "4096" in str(too_big.value)
    with pytest.raises(BadInput):
        await results.upscale(ann, big_job, 0, REPLY, idem_key="c", factor=8.0)
    # a forged params.upscale on a provider that cannot: the router refuses it too
    with pytest.raises(BadInput):
        await app.jobs.submit(
            ann,
            "img2img",
            [GenerationParams(prompt="x", provider="demo", upscale=2.0)],
            REPLY,
            init_image=await results.picture_bytes(await results.picture(demo_job, 0)),
            init_size=(512, 512),
        )
    assert await app.jobs.balance(ann) == balance
    assert await _job_count(app) == jobs
    assert demo.init_images == [] and gpu.upscales() == []


async def test_a_picture_flagged_nsfw_is_upscaled_only_where_nsfw_is_shown(
    app_factory: Any,
) -> None:
    gpu = Upscaler()
    app = await app_factory(provider_objs={"gpu": gpu}, credits=PRICES)
    ann = user()
    receipt = await app.jobs.submit(
        ann, "txt2img", [GenerationParams(prompt="nsfw pinup", provider="gpu")], REPLY
    )
    job_id = receipt.job_ids[0]
    assert await _wait_done(app, job_id) == "succeeded"
    results = Results(app.jobs)
    with pytest.raises(BadInput) as refused:
        await results.upscale(ann, job_id, 0, REPLY, idem_key="a")
    assert "NSFW" in str(refused.value)
    assert await app.jobs.balance(ann) == 19 and gpu.upscales() == []
    allowed = await results.upscale(ann, job_id, 0, {**REPLY, "nsfw_ok": True}, idem_key="b")
    assert await _wait_done(app, allowed.job_ids[0]) == "succeeded"
    assert len(gpu.upscales()) == 1


async def test_a_failed_upscale_is_refunded_and_can_be_retried(app_factory: Any) -> None:
    gpu = Upscaler()
    gpu.fail_upscales = True
    app = await app_factory(provider_objs={"gpu": gpu}, credits=PRICES)
    ann = user()
    job_id = await _picture(app, "gpu", (512, 512), ann)
    receipt = await Results(app.jobs).upscale(ann, job_id, 0, REPLY, idem_key="x")
    assert await _wait_done(app, receipt.job_ids[0]) == "failed"
    assert await app.jobs.balance(ann) == 20 - 1  # img2img failures are refunded

    # /retry: the same upscale again, sized from its input picture, charged again
    gpu.fail_upscales = False
    again = await app.jobs.retry(ann, receipt.job_ids[0], REPLY)
    assert await _wait_done(app, again.job_ids[0]) == "succeeded"
    assert [(r.width, r.height) for r in gpu.upscales()] == [(1024, 1024), (1024, 1024)]
    [image] = (await app.jobs.job(None, again.job_ids[0])).images
    assert (image["width"], image["height"]) == (1024, 1024)
    assert await app.jobs.balance(ann) == 20 - 1 - GPU_IMG2IMG_PRICE


async def test_upscale_command_by_reply_or_by_job_number(app_factory: Any) -> None:
    gpu = Upscaler()
    app = await app_factory(provider_objs={"gpu": gpu}, credits=PRICES)
    ann = user()
    job_id = await _picture(app, "gpu", (512, 384), ann)

    def said(text: str, **kw: Any) -> Incoming:
        return Incoming(user=ann, text=text, reply_to=REPLY, **kw)

    reply = await app.commands.handle(said("/upscale", replied_picture=(job_id, 0)))
    assert not reply.error and reply.receipt is not None, reply.text
    assert "upscale ×2" in reply.text
    reply = await app.commands.handle(said(f"/upscale #{job_id} 1 --scale 1.5"))
    assert not reply.error, reply.text
    for job in (reply.receipt.job_ids[0] if reply.receipt else 0,):
        assert await _wait_done(app, job) == "succeeded"
    sizes = sorted((r.width, r.height) for r in gpu.upscales())
    assert sizes == [(768, 576), (1024, 768)]
    assert app.commands.wants_status("/upscale --scale 2")

    balance = await app.jobs.balance(ann)
    for text, kw, words in [
        ("/upscale", {}, "reply to it"),  # nothing to upscale
        ("/upscale --scale 9", {"replied_picture": (job_id, 0)}, "1.5 to 4"),
        ("/upscale --scale big", {"replied_picture": (job_id, 0)}, "1.5 to 4"),
        (f"/upscale {job_id} 7", {}, "no longer exists"),
    ]:
        reply = await app.commands.handle(said(text, **kw))
        assert reply.error and words in reply.text, (text, reply.text)
    assert await app.jobs.balance(ann) == balance
    # in Chinese too
    zh = await app.commands.handle(said("/upscale", lang="zh"))
    assert "放大" in zh.text


# --- Telegram --------------------------------------------------------------------------------

ANN = 1001


class TelegramEnv:
    def __init__(self, tg: Any, tmp_path: Path, db_url: str) -> None:
        self.tg = tg
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.app: App | None = None
        self.adapter: Any = None
        self.gpu = Upscaler()

    async def start(self) -> Any:
        config = make_config(
            self.tmp_path,
            self.db_url,
            telegram={
                "token": self.tg.token,
                "base_url": self.tg.base_url,
                "base_file_url": self.tg.base_file_url,
                "poll_timeout_s": 1,
                "per_chat_per_s": 100.0,
                "per_group_per_min": 6000,
                "progress_edit_s": 0.05,
            },
            credits=PRICES,
        )
        config.database.auto_migrate = False
        demo = RecordingDemo(config.providers.demo)
        self.app = App(config, providers={"demo": demo, "gpu": self.gpu})
        self.app.add_configured_adapters()
        self.adapter = self.app.adapters["telegram"]
        if self.db_url.startswith("sqlite"):
            await self.app.db.create_all()
        await self.app.start()
        return self.adapter

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    def photos(self) -> list[Any]:
        return [m for m in self.tg.sent_messages(ANN) if m.photo_bytes is not None]

    def texts(self) -> list[str]:
        return [m.text or "" for m in self.tg.sent_messages(ANN) if m.text is not None]

    async def balance(self) -> int:
        assert self.app is not None
        return await self.app.jobs.balance(UserRef("telegram", str(ANN)))


async def until(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = pred()
            if value:
                return value
            await asyncio.sleep(0.02)


@pytest.fixture
async def tg_env(tmp_path: Path, db_url: str) -> AsyncIterator[TelegramEnv]:
    from tests.fakes.telegram import FakeTelegram

    async with FakeTelegram() as tg:
        env = TelegramEnv(tg, tmp_path, db_url)
        try:
            yield env
        finally:
            await env.stop()


def callback_data(message: Any) -> list[str]:
    markup = message.reply_markup or {}
    return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


async def test_telegram_upscale_button_only_under_pictures_that_can_be_upscaled(
    tg_env: TelegramEnv,
) -> None:
    adapter = await tg_env.start()
    tg = tg_env.tg
    tg.inject_message(ANN, ANN, "/imagine a paper boat --provider gpu --size 512x384")
    gpu_picture = (await until(tg_env.photos))[0]
    assert callback_data(gpu_picture) == ["r:1:0", "v:1:0", "u:1:0", "o:1:0", "i:1:0"]
    assert all(len(d.encode()) <= 64 for d in callback_data(gpu_picture))
    tg.inject_message(ANN, ANN, "/imagine a paper boat --provider demo")
    demo_picture = (await until(lambda: tg_env.photos()[1:]))[0]
    assert callback_data(demo_picture) == ["r:2:0", "v:2:0", "o:2:0", "i:2:0"]
    assert await tg_env.balance() == 20 - 2

    # a press: one picture, twice the size, charged once even when Telegram delivers the
    # same press again (a crash before the update offset was confirmed)
    update = tg.inject_callback_query(ANN, ANN, gpu_picture.message_id, "u:1:0")
    upscaled = (await until(lambda: tg_env.photos()[2:]))[0]
    assert decoded(upscaled.photo_bytes).size == (1024, 768)
    assert "u:3:0" in callback_data(upscaled)  # an upscale can be upscaled again
    from telegram import Update

    await adapter.handle_updates([Update.de_json(update, adapter.bot)])
    await asyncio.sleep(0.5)
    assert len(tg_env.photos()) == 3 and len(tg_env.gpu.upscales()) == 1
    assert await tg_env.balance() == 20 - 2 - GPU_IMG2IMG_PRICE
    receipts = [c.params.get("text") or "" for c in tg.calls_of("editMessageText")]
    assert any("cost 3" in t and "upscale ×2 of job #1 picture 1" in t for t in receipts)

    # a forged press on the demo picture (it has no Upscale button): refused, free
    info = tg.inject_callback_query(ANN, ANN, demo_picture.message_id, "i:2:0")
    await until(lambda: [t for t in tg_env.texts() if "paper boat" in t])
    forged = copy.deepcopy(info)
    forged["update_id"] = info["update_id"] + 1000
    forged["callback_query"]["id"] = "forged-1"
    forged["callback_query"]["data"] = "u:2:0"
    await adapter.handle_updates([Update.de_json(forged, adapter.bot)])
    await until(lambda: [t for t in tg_env.texts() if "cannot upscale" in t])
    assert len(tg_env.photos()) == 3 and len(tg_env.gpu.upscales()) == 1
    assert await tg_env.balance() == 20 - 2 - GPU_IMG2IMG_PRICE


async def test_telegram_upscale_typed_in_reply_to_a_picture(tg_env: TelegramEnv) -> None:
    await tg_env.start()
    tg = tg_env.tg
    tg.inject_message(ANN, ANN, "/imagine a kite --provider gpu --size 1536x1024")
    big = (await until(tg_env.photos))[0]
    tg.inject_message(ANN, ANN, "/upscale --scale 3", reply_to_message_id=big.message_id)
    await until(lambda: [t for t in tg_env.texts() if "4096" in t])
    assert await tg_env.balance() == 20 - 1  # refused before charging

    tg.inject_message(ANN, ANN, "/imagine a kite --provider gpu --size 512x512")
    small = (await until(lambda: tg_env.photos()[1:]))[0]
    tg.inject_message(ANN, ANN, "/upscale --scale 1.5", reply_to_message_id=small.message_id)
    upscaled = (await until(lambda: tg_env.photos()[2:]))[0]
    assert decoded(upscaled.photo_bytes).size == (768, 768)
    [req] = tg_env.gpu.upscales()
    assert decoded(req.init_image or b"").size == (512, 512)
    assert await tg_env.balance() == 20 - 2 - GPU_IMG2IMG_PRICE
    # without a picture: told how
    tg.inject_message(ANN, ANN, "/upscale")
    await until(lambda: [t for t in tg_env.texts() if "reply to it with /upscale" in t])


# --- Discord ---------------------------------------------------------------------------------


class DiscordEnv:
    def __init__(self, dc: Any, tmp_path: Path, db_url: str) -> None:
        self.dc = dc
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.app: App | None = None
        self.gpu = Upscaler()

    async def start(self) -> Any:
        from tests.fakes.discord_api import DEFAULT_TOKEN

        section = {
            "token": DEFAULT_TOKEN,
            "api_base_url": self.dc.api_base,
            "gateway_url": self.dc.gateway_url,
            "progress_edit_s": 0.05,
        }
        config = make_config(self.tmp_path, self.db_url, discord=section, credits=PRICES)
        config.providers.demo.latency_s = 0.0
        config.database.auto_migrate = False
        demo = RecordingDemo(config.providers.demo)
        self.app = App(config, providers={"demo": demo, "gpu": self.gpu})
        self.app.add_configured_adapters()
        adapter = self.app.adapters["discord"]
        adapter.client._connection.guild_ready_timeout = 0.05
        if self.db_url.startswith("sqlite"):
            await self.app.db.create_all()
        await self.app.start()
        return adapter

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    def pictures(self) -> list[dict[str, Any]]:
        from tests.fakes.discord_api import CHANNEL_ID

        return [m for m in self.dc.channel_messages(CHANNEL_ID) if m.get("attachments")]

    async def balance(self) -> int:
        from tests.fakes.discord_api import USER_ID

        assert self.app is not None
        return await self.app.jobs.balance(UserRef("discord", str(USER_ID)))


@pytest.fixture
async def dc_env(tmp_path: Path, db_url: str) -> AsyncIterator[DiscordEnv]:
    from tests.fakes.discord_api import FakeDiscord

    async with FakeDiscord() as dc:
        env = DiscordEnv(dc, tmp_path, db_url)
        try:
            yield env
        finally:
            await env.stop()


def rows(message: dict[str, Any]) -> list[list[str]]:
    return [[c["custom_id"] for c in row["components"]] for row in message.get("components", [])]


async def test_discord_upscale_button_in_a_row_of_its_own(dc_env: DiscordEnv) -> None:
    await dc_env.start()
    dc = dc_env.dc
    dc.slash("imagine", {"prompt": "a windmill --provider gpu --size 512x384"})
    gpu_picture = (await until(dc_env.pictures))[0]
    assert rows(gpu_picture) == [
        ["sd:r:1:0", "sd:v:1:0", "sd:o:1:0", "sd:i:1:0", "sd:d:1:0"],
        ["sd:u:1:0"],
    ]
    dc.slash("imagine", {"prompt": "a windmill --provider demo"})
    demo_picture = (await until(lambda: dc_env.pictures()[1:]))[0]
    assert not any("sd:u:" in c for row in rows(demo_picture) for c in row)

    press = dc.button(int(gpu_picture["id"]), "sd:u:1:0")
    upscaled = (await until(lambda: dc_env.pictures()[2:]))[0]
    [data] = dc.message_files(int(upscaled["id"])).values()
    assert decoded(data).size == (1024, 768)
    assert dc.interaction(press["token"])["response_type"] == 5  # deferred at once
    assert await dc_env.balance() == 20 - 2 - GPU_IMG2IMG_PRICE
    assert len(dc_env.gpu.upscales()) == 1


async def test_discord_four_pictures_keep_within_five_rows(dc_env: DiscordEnv) -> None:
    await dc_env.start()
    dc_env.dc.slash("imagine", {"prompt": "a harbour --provider gpu --size 256x256", "count": 4})
    await until(lambda: sum(len(m["attachments"]) for m in dc_env.pictures()) == 4)
    upscale_ids: list[str] = []
    for message in dc_env.pictures():
        shape = rows(message)
        assert len(shape) <= 5 and all(len(row) <= 5 for row in shape)
        assert all(len(c) <= 100 for row in shape for c in row)
        upscale_ids += [c for c in shape[-1] if c.startswith("sd:u:")]
        assert len(shape) == len(message["attachments"]) + 1  # Upscale: the last row
    assert sorted(upscale_ids) == [f"sd:u:1:{i}" for i in range(4)]


async def test_telegram_album_buttons_carry_upscale_per_picture(tg_env: TelegramEnv) -> None:
    await tg_env.start()
    tg = tg_env.tg
    tg.inject_message(ANN, ANN, "/imagine a harbour --provider gpu --size 256x256 --n 3")
    await until(lambda: len(tg_env.photos()) == 3)

    def upscale_buttons() -> dict[str, Any]:
        return {c: m for m in tg.sent_messages(ANN) for c in callback_data(m) if c.startswith("u:")}

    buttons = await until(lambda: len(upscale_buttons()) == 3 and upscale_buttons())
    assert sorted(buttons) == [f"u:1:{i}" for i in range(3)]
    assert tg.calls_of("sendMediaGroup"), "pictures that finish together go as an album"
    for message in {id(m): m for m in buttons.values()}.values():
        for row in message.reply_markup["inline_keyboard"]:
            if message.text:  # the album's buttons: a row per picture, numbered
                assert len(row) == 5 and row[-1]["text"].startswith("🔍 ")
                assert row[-1]["callback_data"].startswith("u:1:")
    tg.inject_callback_query(ANN, ANN, buttons["u:1:2"].message_id, "u:1:2")
    upscaled = (await until(lambda: tg_env.photos()[3:]))[0]
    assert decoded(upscaled.photo_bytes).size == (512, 512)
    assert decoded(tg_env.gpu.upscales()[0].init_image or b"").getpixel((1, 1)) == (80, 90, 200)
