"""The Telegram adapter end to end: the real python-telegram-bot against the fake Bot API.

Nothing of PTB is mocked. Each test starts the fake server, an sdhost App with the demo
provider and the Telegram adapter polling the fake, plays a person (messages, photos, button
presses injected into the fake) and checks what the fake received: texts, edits, photo bytes,
albums, documents; and what the database holds: charges, jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.telegram import TelegramAdapter, photo_fits, split_text
from bot.app import App
from tests.chat_helpers import RecordingDemo, decoded, png
from tests.conftest import make_config, sdhost_run
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ANN = 1001  # a person, in a private chat with the bot (chat id == user id)
BOB = 1002
CAT = 1003
GROUP = -2001


class Env:
    def __init__(self, tg: FakeTelegram, tmp_path: Path, db_url: str) -> None:
        self.tg = tg
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.app: App | None = None
        self.adapter: TelegramAdapter | None = None
        self.provider: RecordingDemo | None = None
        self.civitai_url = "http://127.0.0.1:9"  # nothing listens: no test reaches Civitai
        self.extra_providers: dict[str, Any] = {}  # next to the demo (e.g. BFL on its fake)

    def config(self, **telegram: Any) -> Any:
        tg_section = {
            "token": self.tg.token,
            "base_url": self.tg.base_url,
            "base_file_url": self.tg.base_file_url,
            "poll_timeout_s": 1,
            "per_chat_per_s": 100.0,
            "per_group_per_min": 6000,
            "progress_edit_s": 0.05,
            "admin_ids": [999],
        }
        tg_section.update(telegram)
        return make_config(
            self.tmp_path,
            self.db_url,
            telegram=tg_section,
            providers={"demo": {"latency_s": 0.05}},
            civitai={"base_url": self.civitai_url, "image_hosts": ["127.0.0.1"]},
        )

    async def start(self, *, latency_s: float = 0.05, **telegram: Any) -> TelegramAdapter:
        config = self.config(**telegram)
        config.providers.demo.latency_s = latency_s
        config.database.auto_migrate = False  # the db_url fixture made the tables
        self.provider = RecordingDemo(config.providers.demo)
        self.app = App(config, providers={"demo": self.provider, **self.extra_providers})
        self.app.add_configured_adapters()
        adapter = self.app.adapters["telegram"]
        assert isinstance(adapter, TelegramAdapter)
        self.adapter = adapter
        if self.db_url.startswith("sqlite"):
            await self.app.db.create_all()
        await self.app.start()
        return adapter

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    def sent(self, chat: int) -> list[Any]:
        return self.tg.sent_messages(chat)

    def photos(self, chat: int) -> list[Any]:
        return [m for m in self.sent(chat) if m.photo_bytes is not None]

    def texts(self, chat: int) -> list[str]:
        return [m.text or "" for m in self.sent(chat) if m.text is not None]

    def edited(self, chat: int, part: str) -> list[str]:
        """Texts this chat's messages were ever edited to that contain ``part``."""
        edits = self.tg.calls_of("editMessageText")
        texts = [c.params.get("text", "") for c in edits if c.params.get("chat_id") == chat]
        return [t for t in texts if part in t]

    async def until(self, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = pred()
                if value:
                    return value
                await asyncio.sleep(0.02)

    async def balance(self, user_id: int) -> int:
        assert self.app is not None
        from bot.chat import UserRef

        return await self.app.jobs.balance(UserRef("telegram", str(user_id)))


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeTelegram() as tg:
        e = Env(tg, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


# --- pure helpers ----------------------------------------------------------------------------


def test_photo_rules_and_text_splitting() -> None:
    assert photo_fits(1000, 1024, 1024)
    assert not photo_fits(11 * 1024 * 1024, 1024, 1024)
    assert not photo_fits(1000, 6000, 4100)  # width + height over 10000
    assert not photo_fits(1000, 2100, 100)  # ratio over 20
    parts = split_text("line\n" * 2000)
    assert all(len(p) <= 4096 for p in parts) and "".join(parts).count("line") == 2000


# --- commands --------------------------------------------------------------------------------


async def test_imagine_in_private_chat(env: Env) -> None:
    await env.start()
    tg = env.tg
    # the client shows the commands, in English and Chinese
    menus = {c.params.get("language_code") for c in tg.calls_of("setMyCommands")}
    assert menus == {None, "zh"}

    cmd = tg.inject_message(ANN, ANN, "/imagine a red fox in the snow --ar 16:9 --seed 7")
    photo = await env.until(lambda: env.photos(ANN))
    msg = photo[0]
    img = decoded(msg.photo_bytes)
    assert img.format == "PNG" and abs(img.width / img.height - 16 / 9) < 0.02
    assert msg.message["reply_to_message"]["message_id"] == cmd["message"]["message_id"]
    assert msg.caption.startswith("#1 · 1/1 · seed 7")
    buttons = [b["callback_data"] for row in msg.reply_markup["inline_keyboard"] for b in row]
    assert buttons == ["r:1:0", "v:1:0", "o:1:0", "i:1:0"]
    # the status message: sent at once, edited with the receipt, then with the outcome
    status = next(m for m in env.sent(ANN) if m.message_id < msg.message_id and m.text)
    await env.until(
        lambda: "succeeded" in (tg.get_message(ANN, status.message_id) or {}).get("text", "")
    )
    versions = [h.get("text", "") for h in status.history] + [status.text]
    assert any("job #1 queued" in v for v in versions)
    assert await env.balance(ANN) == 19


async def test_every_command_answers_and_groups_only_see_what_is_for_the_bot(env: Env) -> None:
    await env.start()
    tg = env.tg
    for text in ("/credits", "/jobs", "/models", "/help", "/start"):
        tg.inject_message(ANN, ANN, text)
    await env.until(lambda: len(env.texts(ANN)) >= 5)
    texts = env.texts(ANN)
    assert "you have 20 credits" in texts[0]
    assert "no jobs yet" in texts[1]
    assert "demo" in texts[2]
    assert "/imagine" in texts[3] and "/imagine" in texts[4]

    # groups: a command for another bot is not ours; one addressed to us is
    tg.inject_message(GROUP, BOB, "/credits@some_other_bot", chat_type="group")
    tg.inject_message(GROUP, BOB, "/credits@sdhost_test_bot", chat_type="group")
    await env.until(lambda: env.texts(GROUP))
    await asyncio.sleep(0.3)
    assert len(env.texts(GROUP)) == 1 and "you have 20 credits" in env.texts(GROUP)[0]
    # plain text in a private chat is a prompt
    tg.inject_message(BOB, BOB, "a quiet harbour at dawn")
    await env.until(lambda: env.photos(BOB))


async def test_bad_input_costs_nothing_and_says_why(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a cat --steps 9000")
    tg.inject_message(ANN, ANN, "/img2img a cat with no picture")
    tg.inject_message(ANN, ANN, "/imagine a cat --n 4 --model nope")
    tg.inject_message(ANN, ANN, "/frobnicate")
    await env.until(lambda: len([t for t in env.texts(ANN) if "⏳" not in t]) >= 4)
    await asyncio.sleep(0.2)
    texts = " | ".join(env.texts(ANN))
    assert "steps" in texts and "img2img needs a picture" in texts
    assert "unknown command /frobnicate" in texts
    assert "Traceback" not in texts
    assert await env.balance(ANN) == 20


# --- img2img ---------------------------------------------------------------------------------


async def test_reply_to_a_photo_with_img2img_sends_its_bytes_to_the_provider(env: Env) -> None:
    await env.start()
    tg = env.tg
    source = png(640, 480, (10, 120, 200))
    photo = tg.inject_message(ANN, ANN, photo_bytes=source)
    hint = await env.until(lambda: env.texts(ANN))
    assert "/img2img" in hint[0]  # a bare photo gets a hint, costs nothing
    tg.inject_message(
        ANN,
        ANN,
        "/img2img make it a watercolor --strength 0.4",
        reply_to_message_id=photo["message"]["message_id"],
    )
    await env.until(lambda: env.photos(ANN))
    assert env.provider is not None and len(env.provider.init_images) == 1
    got = decoded(env.provider.init_images[0])
    assert got.size == (640, 480)
    assert got.convert("RGB").getpixel((320, 240)) == (10, 120, 200)
    result = decoded(env.photos(ANN)[0].photo_bytes)
    assert abs(result.width / result.height - 640 / 480) < 0.05
    assert await env.balance(ANN) == 18  # img2img costs 2


async def test_photo_with_command_caption_and_image_document(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, photo_bytes=png(512, 512, (0, 200, 0)), caption="/img2img neon")
    tg.inject_message(
        BOB,
        BOB,
        document_bytes=png(300, 600, (0, 0, 250)),
        document_name="scan.png",
        caption="/img2img pencil sketch",
    )
    await env.until(lambda: env.photos(ANN) and env.photos(BOB))
    assert env.provider is not None
    sizes = sorted(decoded(b).size for b in env.provider.init_images)
    assert sizes == [(300, 600), (512, 512)]


async def test_reply_to_the_bots_own_picture_uses_the_original_png(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a lighthouse --seed 3")
    first = (await env.until(lambda: env.photos(ANN)))[0]
    tg.inject_message(ANN, ANN, "now at night", reply_to_message_id=first.message_id)
    await env.until(lambda: len(env.photos(ANN)) == 2)
    assert env.provider is not None and len(env.provider.init_images) == 1
    # the provider got the stored PNG (lossless, with its parameters), not Telegram's copy
    assert decoded(env.provider.init_images[0]).tobytes() == decoded(first.photo_bytes).tobytes()


async def test_a_file_over_telegrams_download_limit_is_refused_before_downloading(
    env: Env,
) -> None:
    await env.start()
    tg = env.tg
    big = tg.inject_message(
        ANN, ANN, document_bytes=b"\x89PNG" + b"\0" * (21 * 1024 * 1024), document_name="x.png"
    )
    tg.inject_message(
        ANN, ANN, "/img2img sharper", reply_to_message_id=big["message"]["message_id"]
    )
    text = await env.until(lambda: [t for t in env.texts(ANN) if "MB" in t])
    assert "20 MB" in text[0]
    assert tg.calls_of("getFile") == []
    assert await env.balance(ANN) == 20


# --- batches and albums ----------------------------------------------------------------------


async def test_a_banned_persons_picture_is_never_downloaded(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(999, 999, "/ban " + str(ANN))
    await env.until(lambda: env.texts(999))
    photo = tg.inject_message(ANN, ANN, photo_bytes=png(64, 64))
    tg.inject_message(
        ANN, ANN, "/img2img sharper", reply_to_message_id=photo["message"]["message_id"]
    )
    refused = await env.until(lambda: [t for t in env.texts(ANN) if "not allowed" in t])
    assert refused
    assert tg.calls_of("getFile") == []


async def test_batch_streams_pictures_in_albums_with_one_status_message(env: Env) -> None:
    await env.start(latency_s=0.2)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/batch a red apple\na green pear\na blue plum\na gold fig")
    await env.until(lambda: len(env.photos(ANN)) == 4, timeout=20)
    photos = env.photos(ANN)
    assert sorted(p.caption.split(" · ")[0] for p in photos) == ["#1", "#2", "#3", "#4"]
    albums = tg.calls_of("sendMediaGroup")
    assert albums, "pictures that finish together go as an album"
    buttons = await env.until(lambda: [m for m in env.sent(ANN) if m.reply_markup and m.text])
    assert all(m.message.get("reply_to_message") for m in buttons)
    status = [m for m in env.sent(ANN) if m.text and "batch #1" in m.text]
    assert len(status) == 1  # one status message, edited
    await env.until(
        lambda: "4/4" in (tg.get_message(ANN, status[0].message_id) or {}).get("text", "")
    )
    assert await env.balance(ANN) == 16


# --- buttons ---------------------------------------------------------------------------------


async def test_buttons_reroll_vary_original_info(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a paper boat --seed 11")
    first = (await env.until(lambda: env.photos(ANN)))[0]
    mid = first.message_id

    tg.inject_callback_query(ANN, ANN, mid, "i:1:0")
    info = await env.until(lambda: [t for t in env.texts(ANN) if "paper boat" in t and "11" in t])
    assert "seed" in info[0]
    tg.inject_callback_query(ANN, ANN, mid, "o:1:0")
    doc = await env.until(lambda: [m for m in env.sent(ANN) if m.document_bytes])
    assert doc[0].document_bytes is not None
    original = decoded(doc[0].document_bytes)
    assert original.format == "PNG" and "paper boat" in original.info.get("parameters", "")
    assert env.app is not None
    stored = env.app.files.get(original_sha(doc[0].document_bytes))
    assert stored == doc[0].document_bytes

    tg.inject_callback_query(ANN, ANN, mid, "r:1:0")
    await env.until(lambda: len(env.photos(ANN)) == 2)
    tg.inject_callback_query(ANN, ANN, mid, "v:1:0")
    await env.until(lambda: len(env.photos(ANN)) == 3)
    answered = tg.calls_of("answerCallbackQuery")
    assert len(answered) == 4
    # the reroll (1 credit) and the variation (img2img, 2 credits) were charged
    assert await env.balance(ANN) == 20 - 1 - 1 - 2
    assert env.provider is not None and len(env.provider.init_images) == 1
    seeds = {p.caption.split("seed ")[1] for p in env.photos(ANN)}
    assert len(seeds) == 3  # every picture has a new seed


def original_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


async def test_a_press_handled_twice_is_charged_once(env: Env) -> None:
    adapter = await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a kite")
    first = (await env.until(lambda: env.photos(ANN)))[0]
    update = tg.inject_callback_query(ANN, ANN, first.message_id, "r:1:0")
    await env.until(lambda: len(env.photos(ANN)) == 2)
    # the same update again, as after a crash before the offset was confirmed
    from telegram import Update

    await adapter.handle_updates([Update.de_json(update, adapter.bot)])
    await asyncio.sleep(0.5)
    assert len(env.photos(ANN)) == 2
    assert await env.balance(ANN) == 18


# --- platform rules --------------------------------------------------------------------------


async def test_flood_control_delays_but_loses_nothing(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.flood(2, retry_after=1, method="sendPhoto", chat_id=ANN)
    t0 = asyncio.get_running_loop().time()
    tg.inject_message(ANN, ANN, "/imagine a storm")
    await env.until(lambda: env.photos(ANN))
    assert asyncio.get_running_loop().time() - t0 >= 2.0
    await asyncio.sleep(0.3)
    assert len(env.photos(ANN)) == 1
    assert env.adapter is not None and env.adapter.pacer.flood_waits == 2


async def test_a_long_flood_wait_goes_back_to_the_outbox(env: Env) -> None:
    await env.start(max_inline_wait_s=0.5)
    tg = env.tg
    tg.flood(1, retry_after=2, method="sendPhoto", chat_id=ANN)
    tg.inject_message(ANN, ANN, "/imagine a long wait")
    await env.until(lambda: env.photos(ANN), timeout=20)
    assert len(env.photos(ANN)) == 1


async def test_blocked_user_and_vanished_chat_do_not_stop_the_bot(env: Env) -> None:
    await env.start(latency_s=0.3)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a secret")
    tg.inject_message(CAT, CAT, "/imagine a lost island")
    # both receipts were shown (progress edits may already have replaced them)
    for chat in (ANN, CAT):
        await env.until(lambda c=chat: env.edited(c, "queued"))
    tg.block_user(ANN)
    tg.vanish_chat(CAT)
    tg.inject_message(BOB, BOB, "/imagine a public square")
    await env.until(lambda: env.photos(BOB))
    assert env.app is not None
    async with asyncio.timeout(10):
        while len(await env.app.jobs.all_jobs(status="succeeded")) < 3:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert env.photos(ANN) == [] and env.photos(CAT) == []
    refused = [c for c in tg.calls_of("sendPhoto") if c.params.get("chat_id") in (ANN, CAT)]
    assert len(refused) == 2 and all(not c.ok for c in refused)  # dropped, not retried
    assert env.adapter is not None and env.adapter.updates_handled == 3
    assert await env.balance(ANN) == 19  # the picture was made and paid for


async def test_nsfw_policy_blurs_or_withholds(env: Env) -> None:
    await env.start(nsfw="blur", nsfw_chats={str(BOB): "block"})
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine demo:nsfw a figure")
    tg.inject_message(BOB, BOB, "/imagine demo:nsfw a figure")
    await env.until(lambda: env.photos(ANN))
    sends = [c for c in tg.calls_of("sendPhoto") if c.params.get("chat_id") == ANN]
    assert sends[0].params.get("has_spoiler") is True
    await env.until(lambda: [t for t in env.texts(BOB) if "withheld" in t])
    assert env.photos(BOB) == []


async def test_photo_that_breaks_telegrams_rules_goes_as_a_document(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.fail_next(1, description="PHOTO_INVALID_DIMENSIONS", method="sendPhoto")
    tg.inject_message(ANN, ANN, "/imagine a tall tower")
    doc = await env.until(lambda: [m for m in env.sent(ANN) if m.document_bytes])
    assert decoded(doc[0].document_bytes).format == "PNG"
    assert doc[0].reply_markup is not None


async def test_restart_mid_batch_delivers_each_picture_once(env: Env) -> None:
    await env.start(latency_s=0.4)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/batch " + "\n".join(f"tile {i}" for i in range(8)))
    await env.until(lambda: len(env.photos(ANN)) >= 2, timeout=20)
    await env.stop()  # in the middle: some delivered, some running, some queued
    await env.start(latency_s=0.05)
    await env.until(lambda: len(env.photos(ANN)) >= 8, timeout=30)
    await asyncio.sleep(0.5)
    captions = [p.caption.split(" · ")[0] for p in env.photos(ANN)]
    assert sorted(captions) == sorted(f"#{i}" for i in range(1, 9))
    assert await env.balance(ANN) == 12


async def test_languages_follow_telegram_and_lang_command(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/credits", language_code="zh-hans")
    zh = await env.until(lambda: env.texts(ANN))
    assert "积分" in zh[0]
    tg.inject_message(BOB, BOB, "/lang zh", language_code="en")
    tg.inject_message(BOB, BOB, "/imagine a bridge", language_code="en")
    await env.until(lambda: env.photos(BOB))
    await env.until(
        lambda: any("任务" in t for t in env.texts(BOB) if "⏳" not in t and "语言" not in t)
    )
    buttons = env.photos(BOB)[0].reply_markup["inline_keyboard"]
    assert buttons[0][0]["text"] == "🔁 重画"


async def test_admin_commands_only_for_admins(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/credits", username="ann")
    await env.until(lambda: env.texts(ANN))
    tg.inject_message(BOB, BOB, "/grant @ann 50")
    refused = await env.until(lambda: env.texts(BOB))
    assert "admin" in refused[0].lower()
    tg.inject_message(999, 999, "/grant @ann 50")
    await env.until(lambda: env.texts(999))
    assert await env.balance(ANN) == 70
    tg.inject_message(999, 999, "/stats")
    await env.until(lambda: len(env.texts(999)) == 2)


async def test_allowlist_keeps_strangers_out(env: Env) -> None:
    await env.start(allowed_users=[ANN])
    tg = env.tg
    tg.inject_message(BOB, BOB, "/imagine a secret garden")
    text = await env.until(lambda: env.texts(BOB))
    assert "private" in text[0] and str(BOB) in text[0]
    tg.inject_message(ANN, ANN, "/credits")
    await env.until(lambda: env.texts(ANN))
    assert env.app is not None and await env.app.jobs.all_jobs() == []


async def test_webhook_mode(env: Env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await env.start(
        mode="webhook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_url=f"http://127.0.0.1:{port}/telegram",
        set_webhook=True,
    )
    tg = env.tg
    assert tg.calls_of("setWebhook")[0].params["secret_token"]
    tg.inject_message(ANN, ANN, "/imagine a harbour by night")
    await env.until(lambda: env.photos(ANN))
    assert tg.calls_of("getUpdates") == []


async def test_webhook_refuses_a_wrong_secret_of_the_same_length(env: Env) -> None:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "S" * 40
    adapter = await env.start(
        mode="webhook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_url=f"http://127.0.0.1:{port}/telegram",
        set_webhook=True,
        webhook_secret=secret,
    )
    assert env.tg.calls_of("setWebhook")[0].params["secret_token"] == secret
    update = {
        "update_id": 77,
        "message": {
            "message_id": 5,
            "date": 0,
            "chat": {"id": ANN, "type": "private"},
            "from": {"id": ANN, "is_bot": False, "first_name": "Ann"},
            "text": "/credits",
        },
    }
    url = f"http://127.0.0.1:{adapter.webhook_port}/telegram"
    header = "X-Telegram-Bot-Api-Secret-Token"
    async with httpx.AsyncClient() as client:
        for wrong in (b"S" * 39 + b"T", b"T" + b"S" * 39, b"", b"S" * 41, b"\xe9" * 40):
            got = await client.post(url, json=update, headers={header: wrong})
            assert got.status_code == 403, wrong
        missing = await client.post(url, json=update)
        assert missing.status_code == 403
        assert env.texts(ANN) == [] and adapter.updates_handled == 0
        right = await client.post(url, json=update, headers={header: secret})
        assert right.status_code == 200
    await env.until(lambda: env.texts(ANN))


# --- as a user runs it -----------------------------------------------------------------------


async def test_sdhost_run_serves_telegram(tmp_path: Path) -> None:
    async with FakeTelegram() as tg:
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f"""
[data]
dir = "{tmp_path / "data"}"
[providers.demo]
latency_s = 0.05
[telegram]
base_url = "{tg.base_url}"
base_file_url = "{tg.base_file_url}"
poll_timeout_s = 1
""",
            encoding="utf-8",
        )
        async with sdhost_run(cfg, {"SDHOST_TELEGRAM__TOKEN": tg.token}) as line:
            assert b"telegram" in line
            tg.inject_message(ANN, ANN, "/imagine a windmill --ar 3:2")
            async with asyncio.timeout(30):
                while not [m for m in tg.sent_messages(ANN) if m.photo_bytes]:
                    await asyncio.sleep(0.05)
            photo = next(m for m in tg.sent_messages(ANN) if m.photo_bytes)
            assert decoded(photo.photo_bytes).size[0] > decoded(photo.photo_bytes).size[1]
        # the last update was confirmed on the way out: a restart would not see it again
        assert tg.pending_updates() == []


async def test_sends_to_one_chat_are_paced(env: Env) -> None:
    await env.start(per_chat_per_s=5.0)  # a burst of 3, then one every 0.2 s
    tg = env.tg
    for _ in range(8):
        tg.inject_message(ANN, ANN, "/credits")
    await env.until(lambda: len(env.texts(ANN)) == 8)
    times = [c.time for c in tg.calls_of("sendMessage") if c.params.get("chat_id") == ANN]
    assert times[-1] - times[0] >= 0.9


async def test_progress_edits_are_throttled_per_chat(env: Env) -> None:
    await env.start(latency_s=2.0, progress_edit_s=0.9)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a slow sunrise")
    await env.until(lambda: env.photos(ANN), timeout=20)
    edits = [c for c in tg.calls_of("editMessageText") if c.params.get("chat_id") == ANN]
    progress = [c for c in edits if "%" in str(c.params.get("text"))]
    assert len(progress) >= 2, [c.params.get("text") for c in edits]
    gaps = [b.time - a.time for a, b in itertools.pairwise(progress)]
    assert min(gaps) >= 0.85  # progress comes every 0.5 s


async def test_civitai_lookups_and_use_from_telegram(env: Env) -> None:
    from tests.fakes.civitai import FakeCivitai

    async with FakeCivitai() as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        tg = env.tg
        tg.inject_message(ANN, ANN, "/civitai models --type LORA")
        found = await env.until(lambda: [t for t in env.texts(ANN) if "Anime Lines" in t])
        assert "downloads" in found[0]
        tg.inject_message(ANN, ANN, "/civitai use 90013")
        made = await env.until(
            lambda: [m for m in env.photos(ANN) if (m.caption or "").startswith("#1 ")]
        )
        assert "seed 730091" in made[0].caption


async def test_civitai_pictures_and_buttons_on_telegram(env: Env) -> None:
    from tests.fakes.civitai import FakeCivitai

    async with FakeCivitai() as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        tg = env.tg
        for menu in tg.calls_of("setMyCommands"):
            names = [c["command"] for c in menu.params["commands"]]
            assert "civitai" in names and "settings" in names
        tg.inject_message(ANN, ANN, "/civitai image 90013")
        [shown] = await env.until(lambda: env.photos(ANN))
        assert "Seed: 730091" in shown.caption and decoded(shown.photo_bytes).width == 800
        [[button]] = shown.reply_markup["inline_keyboard"]
        assert button == {"text": "🎨 Use these settings", "callback_data": "x:/civitai use 90013"}

        # Bob presses the button on Ann's answer: the job is his, charged to him, once
        tg.inject_callback_query(ANN, BOB, shown.message_id, button["callback_data"])
        made = await env.until(
            lambda: [m for m in env.photos(ANN) if (m.caption or "").startswith("#1 ")]
        )
        assert "seed 730091" in made[0].caption
        assert await env.balance(BOB) == 19 and await env.balance(ANN) == 20
        assert all(c.ok for c in tg.calls_of("answerCallbackQuery"))

        # a list: its pictures as an album, then the text with a button per result
        tg.inject_message(ANN, ANN, "/civitai images --model 4201")
        album = await env.until(lambda: [m for m in env.photos(ANN) if m.media_group_id])
        listing = await env.until(
            lambda: [m for m in env.sent(ANN) if m.text and "/civitai use ID" in m.text]
        )
        keys = [
            b["callback_data"] for row in listing[0].reply_markup["inline_keyboard"] for b in row
        ]
        ids = re.findall(r"^#(\d+) ", listing[0].text, re.M)
        drawable = re.findall(r"^#(\d+) (?!\(no prompt\))", listing[0].text, re.M)
        assert keys == [f"x:/civitai use {i}" for i in drawable] and len(album) == len(ids) > 1
        assert album[0].caption.startswith(f"#{ids[0]} · ")
        assert listing[0].message_id > album[-1].message_id  # the buttons come last

        tg.inject_message(ANN, ANN, "/civitai models --type LORA")
        [answer] = await env.until(  # the covers come first, then the text with the buttons
            lambda: [
                m
                for m in env.sent(ANN)
                if "Anime Lines" in (m.caption or m.text or "") and m.reply_markup
            ]
        )
        press = answer.reply_markup["inline_keyboard"][0][0]["callback_data"]
        assert press == "x:/civitai model 4202"
        tg.inject_callback_query(ANN, ANN, answer.message_id, press)
        await env.until(
            lambda: [m for m in env.sent(ANN) if "trigger words" in (m.caption or m.text or "")]
        )


async def test_an_admin_downloads_a_model_with_progress_that_survives_a_restart(
    env: Env,
) -> None:
    from tests.fakes.civitai import FakeCivitaiDownloads

    root = 999  # in telegram.admin_ids
    async with FakeCivitaiDownloads(file_size=3_000_000, storage_bps=1_000_000) as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        tg = env.tg
        tg.inject_message(ANN, ANN, "/civitai download 52013")
        await env.until(lambda: [t for t in env.texts(ANN) if "admin" in t])
        assert civitai.download_hits == 0  # refused before anything was asked of Civitai

        tg.inject_message(root, root, "/civitai download 52013")
        await env.until(lambda: env.edited(root, "/s,"))  # bytes are arriving: a speed
        status = next(m for m in env.sent(root) if "Photon Realism" in (m.text or ""))
        await env.stop()  # mid-file: the download stops as queued, to go on at the next start
        have = next(iter(env.tmp_path.rglob("*.part"))).stat().st_size
        assert 0 < have < 3_000_000

        civitai.storage_bps = 4_000_000
        await env.start()
        await env.until(
            lambda: "downloaded" in (tg.get_message(root, status.message_id) or {}).get("text", "")
        )
        final = tg.get_message(root, status.message_id)["text"]
        assert "matches Civitai" in final and "checkpoints" in final, final
        # progress went through that one message: a bar, bytes, speed and time left
        assert any("MB/s" in t and "left" in t for t in env.edited(root, "▰"))

        # the end is told in a new message too (an edit notifies no one), once
        def notices() -> list[Any]:
            return [m for m in env.sent(root) if (m.text or "").startswith("✅ #1")]

        await env.until(lambda: len(notices()) >= 2)
        await asyncio.sleep(0.3)
        assert len(notices()) == 2, [m.text for m in notices()]
        assert status.message_id in [m.message_id for m in notices()]
        ranged = [h for h in civitai.storage_hits if h.range]
        assert ranged and ranged[0].range == f"bytes={have}-"  # went on, not over
        files = list((env.tmp_path / "data" / "models" / "checkpoints").iterdir())
        content = civitai.content(civitai.primary_file(52013).id)
        assert [f.read_bytes() == content for f in files] == [True]
