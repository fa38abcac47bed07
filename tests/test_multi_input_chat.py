"""img2img from several pictures in the chats (issue 17, FLUX.2): a reply to a Telegram
album, an album captioned /img2img, Discord's image2..image4. The pictures go to the BFL
fake, which records input_image, input_image_2, ... as it received them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.chat.telegram import TelegramAdapter
from adapters.chat.telegram.albums import AlbumMemory
from adapters.providers.bfl import BflProvider
from tests.fakes.bfl import FakeBfl
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.test_discord import Env as DiscordEnv
from tests.test_multi_input import inputs_sent
from tests.test_provider_bfl import config as bfl_config
from tests.test_telegram import ANN, GROUP, Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COLORS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(out, format="PNG")
    return out.getvalue()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


def color_of(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as im:
        return tuple(im.convert("RGB").getpixel((5, 5)))  # type: ignore[arg-type]


class BflEnv(Env):
    fake: FakeBfl

    async def start(self, *, latency_s: float = 0.05, **telegram: Any) -> TelegramAdapter:
        adapter = await super().start(latency_s=latency_s, **telegram)
        adapter.album_settle_s = 0.3
        return adapter


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[BflEnv]:
    async with FakeTelegram() as tg, FakeBfl(delay_s=0.05) as fake:
        e = BflEnv(tg, tmp_path, db_url)
        e.fake = fake
        e.extra_providers = {"bfl": BflProvider(bfl_config(fake))}
        try:
            yield e
        finally:
            await e.stop()


def album(env: BflEnv, group: str, caption: str | None = None) -> list[dict[str, Any]]:
    return [
        env.tg.inject_message(
            ANN,
            ANN,
            photo_bytes=png(c),
            media_group_id=group,
            caption=caption if i == 0 else None,
        )
        for i, c in enumerate(COLORS[:3])
    ]


async def test_a_reply_to_an_album_sends_all_its_pictures(env: BflEnv) -> None:
    await env.start()
    items = album(env, "g1")
    hints = await env.until(lambda: env.texts(ANN))
    second = items[1]["message"]["message_id"]
    env.tg.inject_message(
        ANN,
        ANN,
        "/img2img one scene of the three --model bfl:flux-2-pro",
        reply_to_message_id=second,
    )
    await env.until(lambda: env.photos(ANN))
    assert len(hints) == 1  # an album gets one hint, not one per picture
    (task,) = env.fake.tasks.values()
    # the one replied to first, then the others in the album's order
    assert [color_of(d) for d in inputs_sent(task)] == [COLORS[1], COLORS[0], COLORS[2]]
    assert await env.balance(ANN) == 18  # priced per picture made, as ever


async def test_an_album_captioned_img2img_waits_for_all_its_items(env: BflEnv) -> None:
    await env.start()
    album(env, "g2", caption="/img2img blend them --model bfl:flux-2-pro")
    await env.until(lambda: env.photos(ANN))
    (task,) = env.fake.tasks.values()
    assert [color_of(d) for d in inputs_sent(task)] == COLORS[:3]
    assert not [t for t in env.texts(ANN) if "/img2img" in t and "hint" in t.lower()]


async def test_a_one_picture_model_takes_the_picture_replied_to(env: BflEnv) -> None:
    """The default model (the demo) takes one: the reply still works, with a note."""
    await env.start()
    items = album(env, "g3")
    await env.until(lambda: env.texts(ANN))
    env.tg.inject_message(
        ANN, ANN, "/img2img make it blue", reply_to_message_id=items[2]["message"]["message_id"]
    )
    await env.until(lambda: env.photos(ANN))
    assert env.provider is not None and len(env.provider.init_images) == 1
    assert color_of(env.provider.init_images[0]) == COLORS[2]
    assert env.edited(ANN, "takes 1 input picture(s): used the first 1 of the album's 3")
    assert env.fake.submits == []


async def test_an_album_captioned_for_a_one_picture_model_is_refused_unpaid(env: BflEnv) -> None:
    await env.start()
    album(env, "g4", caption="/img2img blend them --model bfl:flux-pro-1.1")
    # refused before anything is queued: said directly, no status message (issue 13)
    said = await env.until(
        lambda: [x for x in env.texts(ANN) if "takes at most 1 input picture" in x]
    )
    assert "bfl:flux-2-pro (8)" in said[0]
    assert env.fake.submits == [] and await env.balance(ANN) == 20


async def test_an_album_unknown_since_a_restart_uses_the_picture_replied_to(
    env: BflEnv,
) -> None:
    adapter = await env.start()
    items = album(env, "g5")
    # every item handled (the hint comes after the first), then forgotten as by a restart
    await env.until(lambda: env.texts(ANN) and adapter.updates_handled >= len(items))
    adapter.albums = AlbumMemory()  # as after a restart
    env.tg.inject_message(
        ANN,
        ANN,
        "/img2img all of them --model bfl:flux-2-pro",
        reply_to_message_id=items[0]["message"]["message_id"],
    )
    await env.until(lambda: env.photos(ANN))
    (task,) = env.fake.tasks.values()
    assert [color_of(d) for d in inputs_sent(task)] == [COLORS[0]]
    assert env.edited(ANN, "that album is not known to me")


async def test_plain_text_in_reply_to_the_bots_own_album_in_a_group(env: BflEnv) -> None:
    await env.start()
    assert env.app is not None
    # delivered once all three are made: they go out together, as one album
    await env.app.deliverer.stop()
    env.tg.inject_message(GROUP, ANN, "/imagine three boats --n 3", chat_type="group")
    async with asyncio.timeout(15):
        while [j.status for j in await env.app.jobs.all_jobs()] != ["succeeded"]:
            await asyncio.sleep(0.05)
    await env.app.deliverer.start()
    made = await env.until(lambda: len(env.photos(GROUP)) == 3 and env.photos(GROUP))
    assert made[0].media_group_id and len({m.media_group_id for m in made}) == 1
    env.tg.inject_message(
        GROUP,
        ANN,
        "all three in one harbour --model bfl:flux-2-pro",
        chat_type="group",
        reply_to_message_id=made[2].message["message_id"],
    )
    await env.until(lambda: env.fake.tasks)
    await env.until(lambda: len(env.photos(GROUP)) == 4)
    (task,) = env.fake.tasks.values()
    # the bot's own original PNGs, the one replied to first
    assert env.app is not None
    view = await env.app.jobs.job(None, 1)
    originals = [
        Path(im["path"]).read_bytes() for im in sorted(view.images, key=lambda i: i["idx"])
    ]
    assert [pixels(d) for d in inputs_sent(task)] == [pixels(originals[i]) for i in (2, 0, 1)]


async def test_a_captioned_album_item_alone_in_a_group_says_so(env: BflEnv) -> None:
    """Privacy mode shows a group's bot only the captioned item of an album."""
    await env.start()
    for i, c in enumerate(COLORS[:2]):
        env.tg.inject_message(
            GROUP,
            ANN,
            photo_bytes=png(c),
            media_group_id="g6",
            chat_type="group",
            caption="/img2img blend --model bfl:flux-2-pro" if i == 0 else None,
        )
    await env.until(lambda: env.photos(GROUP))
    (task,) = env.fake.tasks.values()
    assert [color_of(d) for d in inputs_sent(task)] == [COLORS[0]]
    assert env.edited(GROUP, "that album is not known to me")


def test_album_memory_is_bounded() -> None:
    class Msg:
        def __init__(self, i: int) -> None:
            self.media_group_id, self.message_id = f"g{i}", i

    memory = AlbumMemory(groups=3, max_age_s=3600)
    for i in range(5):
        memory.add(1, Msg(i))  # type: ignore[arg-type]
    assert [memory.get(1, f"g{i}") is not None for i in range(5)] == [False] * 2 + [True] * 3


# --- Discord: /img2img image image2 image3 ---------------------------------------------------


class DiscordBflEnv(DiscordEnv):
    fake: FakeBfl


@pytest.fixture
async def denv(tmp_path: Path, db_url: str) -> AsyncIterator[DiscordBflEnv]:
    async with FakeDiscord() as dc, FakeBfl(delay_s=0.05) as fake:
        e = DiscordBflEnv(dc, tmp_path, db_url)
        e.fake = fake
        e.extra_providers = {"bfl": BflProvider(bfl_config(fake))}
        try:
            yield e
        finally:
            await e.stop()


async def test_discord_img2img_with_image2_and_image3(denv: DiscordBflEnv) -> None:
    await denv.start()
    denv.dc.slash(
        "img2img",
        {"prompt": "one scene --model bfl:flux-2-pro"},
        attachments={
            "image": ("a.png", png(COLORS[0])),
            "image2": ("b.png", png(COLORS[1])),
            "image3": ("c.png", png(COLORS[2])),
        },
    )
    await denv.until(denv.pictures)
    (task,) = denv.fake.tasks.values()
    assert [color_of(d) for d in inputs_sent(task)] == COLORS[:3]
    assert await denv.balance() == 18


async def test_discord_img2img_image2_on_a_one_picture_model_is_refused(
    denv: DiscordBflEnv,
) -> None:
    await denv.start()
    sent = denv.dc.slash(
        "img2img",
        {"prompt": "one scene"},  # the demo provider: one picture
        attachments={"image": ("a.png", png(COLORS[0])), "image2": ("b.png", png(COLORS[1]))},
    )
    said = await denv.until(lambda: "input picture" in denv.original_text(sent["token"]))
    assert said
    assert "takes at most 1 input picture(s) and you gave 2" in denv.original_text(sent["token"])
    assert denv.fake.submits == [] and await denv.balance() == 20
