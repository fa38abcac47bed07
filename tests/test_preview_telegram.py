"""A job's live preview on Telegram: a photo message next to the status, paced, then gone.

The real python-telegram-bot against the fake Bot API (``tests.test_telegram``'s ``Env``),
with a provider that reports pictures as they develop (``tests.preview_helpers``). What is
checked is what the fake received: the preview is one small JPEG photo message (sendPhoto),
later previews replace its picture (editMessageMedia) at most once per
``[images] preview_interval_s``, the same picture is not sent twice, the message is deleted
once the pictures are in the chat, each person's preview goes to their own chat, a preview
that is not a picture changes nothing else, and one a dead process left is deleted at start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.telegram.previews import PreviewLedger
from tests.chat_helpers import decoded
from tests.fakes.telegram import FakeTelegram
from tests.preview_helpers import BLUE, GREEN, RED, PreviewDemo, color_of, near, shades, square_png
from tests.test_telegram import ANN, BOB, GROUP, Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PREVIEW_MARK = "👀"


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeTelegram() as tg:
        e = Env(tg, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


async def start(env: Env, provider: PreviewDemo, interval: float, **telegram: Any) -> None:
    env.extra_providers = {"demo": provider}  # in place of the plain demo
    config_of = env.config

    def config(**tg: Any) -> Any:
        cfg = config_of(**tg)
        cfg.images.preview_interval_s = interval
        return cfg

    env.config = config  # type: ignore[method-assign]
    await env.start(nsfw="allow", **telegram)


def preview_sends(env: Env, chat: int) -> list[Any]:
    return [
        c
        for c in env.tg.calls_of("sendPhoto")
        if c.params.get("chat_id") == chat
        and str(c.params.get("caption", "")).startswith(PREVIEW_MARK)
    ]


def preview_edits(env: Env, chat: int) -> list[Any]:
    return [c for c in env.tg.calls_of("editMessageMedia") if c.params.get("chat_id") == chat]


def uploaded(call: Any) -> bytes:
    [upload] = call.files
    return bytes(upload.data)


def results(env: Env, chat: int) -> list[Any]:
    """The job's pictures (not its preview)."""
    return [
        m
        for m in env.photos(chat)
        if m.photo_bytes is not None and not (m.caption or "").startswith(PREVIEW_MARK)
    ]


async def test_one_small_preview_per_interval_then_it_goes_when_the_pictures_come(
    env: Env,
) -> None:
    # eight different previews within a fraction of the interval: one picture is shown
    provider = PreviewDemo(lambda prompt: shades(8), gap_s=0.05)
    await start(env, provider, interval=30.0)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a red fox")
    [picture] = await env.until(lambda: results(env, ANN))
    await env.until(lambda: tg.calls_of("deleteMessage"))
    assert provider.reported == 8
    [send] = preview_sends(env, ANN)
    assert preview_edits(env, ANN) == []
    jpeg = decoded(uploaded(send))
    assert jpeg.format == "JPEG" and jpeg.size == (512, 512)
    assert near(color_of(uploaded(send)), RED)  # the first preview
    # beside the status message, without a notification of its own
    status = send.params["reply_parameters"]["message_id"]
    opened = [c for c in tg.calls_of("sendMessage") if "working" in c.params.get("text", "")]
    assert status == opened[0].result["message_id"]
    assert send.params.get("disable_notification") is True
    preview_id = send.result["message_id"]
    [delete] = tg.calls_of("deleteMessage")
    assert delete.params["message_id"] == preview_id and delete.status == 200
    shown = {m.message_id: m for m in tg.sent_messages(ANN)}
    assert shown[preview_id].deleted
    # the pictures arrive as before: the PNG itself, after the preview
    assert decoded(picture.photo_bytes).format == "PNG"
    assert picture.message_id > preview_id
    await env.until(lambda: "succeeded" in (tg.get_message(ANN, status) or {}).get("text", ""))


async def test_later_previews_replace_the_picture_and_the_same_one_is_not_sent_again(
    env: Env,
) -> None:
    same = square_png(RED)
    then = square_png(BLUE)
    # each preview well after the last edit's turn: only the two different pictures show
    provider = PreviewDemo(lambda prompt: [same, same, same, then, then, then], gap_s=0.35)
    await start(env, provider, interval=0.1)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a harbour")
    await env.until(lambda: results(env, ANN))
    await env.until(lambda: tg.calls_of("deleteMessage"))
    [send] = preview_sends(env, ANN)
    [edit] = preview_edits(env, ANN)
    assert near(color_of(uploaded(send)), RED) and near(color_of(uploaded(edit)), BLUE)
    assert decoded(uploaded(edit)).size == (512, 512)
    # the media is an InputMediaPhoto naming the uploaded part (attach://)
    media = edit.params["media"]
    media = json.loads(media) if isinstance(media, str) else media
    assert media["type"] == "photo" and media["media"].startswith("attach://")
    assert edit.params["message_id"] == send.result["message_id"] and edit.status == 200
    assert [d.params["message_id"] for d in tg.calls_of("deleteMessage")] == [
        send.result["message_id"]
    ]


async def test_two_people_each_see_their_own_preview(env: Env) -> None:
    colors = {"ruby": RED, "sea": BLUE}

    def script(prompt: str) -> list[bytes]:
        return [square_png(colors[prompt.split()[0]])] * 3

    provider = PreviewDemo(script, gap_s=0.1)
    await start(env, provider, interval=0.05)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine ruby lake")
    tg.inject_message(BOB, BOB, "/imagine sea lake")
    await env.until(lambda: results(env, ANN) and results(env, BOB))
    await env.until(lambda: len(tg.calls_of("deleteMessage")) == 2)
    for chat, color in ((ANN, RED), (BOB, BLUE)):
        sends = preview_sends(env, chat)
        assert len(sends) == 1, chat
        assert preview_edits(env, chat) == []  # the same picture three times: shown once
        assert near(color_of(uploaded(sends[0])), color)


async def test_a_preview_that_is_not_a_picture_changes_nothing_else(env: Env) -> None:
    broken = square_png(GREEN)[:300]  # cut off: the header reads, the pixels do not
    provider = PreviewDemo(lambda prompt: [b"not a picture", broken, b"\x89PNG\r\n"], gap_s=0.1)
    await start(env, provider, interval=0.05)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a kite")
    [picture] = await env.until(lambda: results(env, ANN))
    assert provider.reported == 3
    assert preview_sends(env, ANN) == [] and tg.calls_of("editMessageMedia") == []
    assert tg.calls_of("deleteMessage") == []
    # the text progress went on (the job was shown running), and the outcome came
    await env.until(lambda: env.edited(ANN, "succeeded"))
    assert env.edited(ANN, "running")
    assert decoded(picture.photo_bytes).format == "PNG"


async def test_a_chat_that_blocks_nsfw_gets_no_preview_and_one_that_blurs_a_spoiler(
    env: Env,
) -> None:
    provider = PreviewDemo(lambda prompt: [square_png(RED)], gap_s=0.05)
    await start(env, provider, interval=0.05)
    assert env.adapter is not None
    env.adapter.cfg.nsfw = "blur"
    env.adapter.cfg.nsfw_chats = {str(GROUP): "block"}
    tg = env.tg
    tg.inject_message(GROUP, BOB, "/imagine a tower", chat_type="group")
    tg.inject_message(ANN, ANN, "/imagine a tower")
    await env.until(lambda: results(env, ANN) and env.sent(GROUP) and provider.reported == 2)
    await env.until(lambda: tg.calls_of("deleteMessage"))
    assert preview_sends(env, GROUP) == []
    [send] = preview_sends(env, ANN)
    assert send.params.get("has_spoiler") is True


async def test_a_stop_deletes_the_preview_and_a_crash_is_cleaned_up_at_the_next_start(
    env: Env,
) -> None:
    provider = PreviewDemo(lambda prompt: [square_png(RED)], gap_s=0.01)
    provider.hold = asyncio.Event()  # the job runs on while the process stops
    await start(env, provider, interval=0.05)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a slow river")
    [send] = await env.until(lambda: preview_sends(env, ANN))
    await env.until(lambda: send.status == 200)
    preview_id = send.result["message_id"]
    folder = env.tmp_path / "data" / "telegram" / "previews"
    [ledger] = await env.until(lambda: list(folder.glob("*.json")))
    assert json.loads(ledger.read_text()) == [[ANN, preview_id]]
    await env.stop()
    # the clean stop: the preview went, and nothing is left for the next start
    [delete] = tg.calls_of("deleteMessage")
    assert delete.params["message_id"] == preview_id
    assert list(folder.glob("*.json")) == [] and list(folder.glob("*.lock")) == []

    # a process that died with a preview shown left its ledger, its lock held by nobody:
    # the next start deletes what it names (here the bot's status message stands for it)
    leftover = send.params["reply_parameters"]["message_id"]
    (folder / "dead.json").write_text(json.dumps([[ANN, leftover]]))
    (folder / "dead.lock").write_bytes(b"")
    tg.clear_calls()
    provider.hold.set()
    await env.start(nsfw="allow")
    await env.until(
        lambda: any(
            c.params.get("message_id") == leftover and c.status == 200
            for c in tg.calls_of("deleteMessage")
        )
    )
    assert list(folder.glob("dead.*")) == []


def test_the_ledger_of_a_living_process_is_left_alone(tmp_path: Path) -> None:
    alive, other = PreviewLedger(tmp_path), PreviewLedger(tmp_path)
    assert alive.open() == []
    alive.add(ANN, 7)
    alive.add(BOB, 8)
    alive.remove(BOB, 8)
    assert other.open() == []  # its process holds the lock: nothing to take over
    alive.close()  # stopped with a preview it could not delete: the file stays
    late = PreviewLedger(tmp_path)
    assert late.open() == [(ANN, 7)]
    again = PreviewLedger(tmp_path)
    assert again.open() == []  # taken over once only
    for ledger in (other, late, again):
        ledger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
