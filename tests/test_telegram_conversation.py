"""The Telegram conversation (issue 13, items 8, 12, 13, 14): what a person is answered.

The real python-telegram-bot against the fake Bot API (tests/fakes/telegram.py), as in
tests/test_telegram.py, whose ``Env`` these tests reuse: a refusal is one direct reply, at
once, with no "working on it" placeholder; /start is short and /help is written for Telegram;
a file that is not a picture says so; 0 credits says who grants them; the same message twice
shows its job as it is now; Original follows the chat's NSFW policy and, in a group, goes
only to the person who asked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from telegram import Update

from bot.chat import ReplyTo, UserRef
from bot.commands import Incoming
from bot.i18n import t
from storage import repos
from tests.test_telegram import ANN, BOB, CAT, GROUP, Env, env

__all__ = ["env"]  # the fixture, reused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WORKING = (t("en", "tg.working"), t("zh", "tg.working"))


def calls_in(env: Env, method: str, chat: int) -> list[Any]:
    return [c for c in env.tg.calls_of(method) if c.params.get("chat_id") == chat]


def placeholders(env: Env, chat: int) -> list[Any]:
    return [c for c in calls_in(env, "sendMessage", chat) if c.params.get("text") in WORKING]


def job_of(photo: Any) -> int:
    """The job a picture belongs to, from its caption ("#12 · 1/1 · seed ...")."""
    return int(photo.caption.split(" ", 1)[0].lstrip("#"))


async def job_reply_to(env: Env, job_id: int) -> dict[str, Any]:
    assert env.app is not None
    job = await env.app.db.run_read(repos.get_job, job_id)
    assert job is not None
    return dict(job.reply_to)


# --- item 12: refusals are answered at once, directly ---------------------------------------


async def test_a_refusal_is_one_direct_reply_without_a_placeholder(env: Env) -> None:
    await env.start()
    tg = env.tg
    for chat, kind in ((ANN, "private"), (GROUP, "group")):
        before = len(tg.get_calls())
        started = time.monotonic()
        cmd = tg.inject_message(chat, ANN, "/imagine a fox --n 9", chat_type=kind)
        sent = await env.until(lambda chat=chat: calls_in(env, "sendMessage", chat))
        took = time.monotonic() - started
        await asyncio.sleep(0.3)  # nothing more comes
        calls = [c for c in tg.get_calls()[before:] if c.params.get("chat_id") == chat]
        assert [c.api_method for c in calls] == ["sendMessage"], calls
        assert "--n" in sent[0].params["text"] and sent[0].params["text"] not in WORKING
        reply = sent[0].params["reply_parameters"]
        assert reply["message_id"] == cmd["message"]["message_id"]
        assert took < 2.0
    assert tg.calls_of("editMessageText") == []
    assert await env.balance(ANN) == 20


async def test_an_accepted_job_gets_its_status_message_and_keeps_it(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a lighthouse")
    photo = (await env.until(lambda: env.photos(ANN)))[0]
    job = job_of(photo)
    [placeholder] = placeholders(env, ANN)
    status_id = placeholder.response["result"]["message_id"]
    # the job carried the status message's id from its first moment: edited in place
    assert ReplyTo.from_json(await job_reply_to(env, job)).status_message == status_id
    await env.until(lambda: "succeeded" in (tg.get_message(ANN, status_id) or {}).get("text", ""))
    texts = [c.params["text"] for c in calls_in(env, "editMessageText", ANN)]
    assert any(f"job #{job} queued" in text for text in texts)


async def test_a_refused_reroll_is_one_direct_reply(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a kite")
    photo = (await env.until(lambda: env.photos(ANN)))[0]
    assert env.app is not None
    await env.app.jobs.set_balance(UserRef("telegram", str(ANN)), 0)
    before = len(calls_in(env, "sendMessage", ANN))
    tg.inject_callback_query(ANN, ANN, photo.message_id, "r:1:0")
    await env.until(lambda: len(calls_in(env, "sendMessage", ANN)) > before)
    await asyncio.sleep(0.3)
    new = calls_in(env, "sendMessage", ANN)[before:]
    assert len(new) == 1 and "/grant" in new[0].params["text"]
    assert len(placeholders(env, ANN)) == 1  # the first job's only


# --- item 13: /start and /help ---------------------------------------------------------------


async def test_start_is_a_short_welcome_and_help_is_written_for_telegram(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(ANN, ANN, "/start")
    [welcome] = await env.until(lambda: env.texts(ANN))
    assert len(welcome) < 400 and "/imagine" in welcome and "/help" in welcome
    assert "20" in welcome  # the balance a newcomer starts with
    tg.inject_message(ANN, ANN, "/help")
    texts = await env.until(lambda: env.texts(ANN)[1:])
    help_text = "\n".join(texts)
    assert help_text.startswith(t("en", "chat.help.telegram"))
    for part in ("reply", "caption", "one prompt per line", "Reroll", "Original", "/credits"):
        assert part in help_text, part
    for console in ("PATH_OR_URL", "PROMPT | PROMPT"):
        assert console not in help_text
    tg.inject_message(BOB, BOB, "/start", language_code="zh-hans")
    [zh] = await env.until(lambda: env.texts(BOB))
    assert zh.startswith("👋 你好")


async def test_help_is_chosen_by_the_key_the_adapter_passes(env: Env) -> None:
    await env.start()
    assert env.app is not None
    commands = env.app.commands
    user = UserRef("discord", "5", "Dee")

    async def ask(text: str, texts: str | None, lang: str = "en") -> str:
        msg = Incoming(user=user, text=text, reply_to={}, texts=texts, lang=lang)
        return (await commands.handle(msg)).text

    discord_help = await ask("/help", "discord")
    assert discord_help.startswith(t("en", "chat.help.discord"))
    assert "Remix" in discord_help and "image option" in discord_help
    assert (await ask("/help", "discord", "zh")).startswith(t("zh", "chat.help.discord"))
    console = await ask("/help", None)
    assert "PATH_OR_URL" in console  # the console keeps its own
    assert (await ask("/start", None)).startswith(t("en", "help.intro"))


# --- item 14: misleading answers -------------------------------------------------------------


async def test_a_pdf_captioned_img2img_is_not_a_picture(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(
        ANN,
        ANN,
        document_bytes=b"%PDF-1.4\n%%EOF\n",
        document_name="scan.pdf",
        caption="/img2img watercolor",
    )
    [answer] = await env.until(lambda: env.texts(ANN))
    assert "not a picture" in answer and "application/pdf" in answer
    # in reply to a PDF, too
    pdf = tg.inject_message(BOB, BOB, document_bytes=b"%PDF-1.4\n", document_name="a.pdf")
    tg.inject_message(
        BOB, BOB, "/img2img watercolor", reply_to_message_id=pdf["message"]["message_id"]
    )
    [again] = await env.until(lambda: env.texts(BOB))
    assert "not a picture" in again
    assert "path or URL" not in answer + again
    # a PDF with a plain caption in a private chat is no prompt either
    tg.inject_message(CAT, CAT, document_bytes=b"%PDF-1.4\n", document_name="b.pdf", caption="hi")
    [plain] = await env.until(lambda: env.texts(CAT))
    assert "not a picture" in plain and await env.balance(CAT) == 20
    assert placeholders(env, ANN) == [] and await env.balance(ANN) == 20


async def test_no_credits_says_who_grants_them(env: Env) -> None:
    await env.start()
    tg = env.tg
    assert env.app is not None
    await env.app.jobs.set_balance(UserRef("telegram", str(ANN)), 0)
    tg.inject_message(ANN, ANN, "/imagine a boat --n 2")
    [answer] = await env.until(lambda: env.texts(ANN))
    assert "admins" in answer and "/grant" in answer
    assert "--n 1" not in answer
    # one picture affordable, four asked for: fewer pictures is the advice
    await env.app.jobs.set_balance(UserRef("telegram", str(BOB)), 1)
    tg.inject_message(BOB, BOB, "/imagine a boat --n 4")
    [fewer] = await env.until(lambda: env.texts(BOB))
    assert "--n 1" in fewer


async def test_the_same_message_twice_shows_the_jobs_real_state(env: Env) -> None:
    adapter = await env.start()
    tg = env.tg
    update = tg.inject_message(ANN, ANN, "/imagine a kite")
    job = job_of((await env.until(lambda: env.photos(ANN)))[0])
    [placeholder] = placeholders(env, ANN)
    status_id = placeholder.response["result"]["message_id"]
    await env.until(lambda: "succeeded" in (tg.get_message(ANN, status_id) or {}).get("text", ""))
    before = len(calls_in(env, "sendMessage", ANN))
    # delivered again, as after a crash before the offset was confirmed
    await adapter.handle_updates([Update.de_json(update, adapter.bot)])
    new = calls_in(env, "sendMessage", ANN)[before:]
    assert len(new) == 1
    text = new[0].params["text"]
    assert f"job #{job} · succeeded" in text
    assert "queued" not in text and "position" not in text
    assert len(placeholders(env, ANN)) == 1  # no second status message
    assert await env.balance(ANN) == 19


# --- item 8: Original and the chat's NSFW policy ---------------------------------------------


def alerts(env: Env) -> list[str]:
    answers = env.tg.calls_of("answerCallbackQuery")
    return [str(c.params.get("text")) for c in answers if c.params.get("show_alert")]


def original(photo: Any) -> str:
    """The callback data of the Original button under a picture."""
    buttons = [b["callback_data"] for row in photo.reply_markup["inline_keyboard"] for b in row]
    return next(data for data in buttons if data.startswith("o:"))


async def test_original_follows_the_chats_nsfw_policy(env: Env) -> None:
    adapter = await env.start(nsfw="blur", nsfw_chats={str(BOB): "allow"})
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine demo:nsfw a figure")
    tg.inject_message(BOB, BOB, "/imagine demo:nsfw a figure")
    ann = (await env.until(lambda: env.photos(ANN)))[0]
    bob = (await env.until(lambda: env.photos(BOB)))[0]
    assert calls_in(env, "sendPhoto", ANN)[0].params.get("has_spoiler") is True
    # blur: a document cannot be hidden behind a spoiler, so the PNG is not posted
    tg.inject_callback_query(ANN, ANN, ann.message_id, original(ann))
    await env.until(lambda: alerts(env))
    assert "not posted" in alerts(env)[0]
    # allow: the PNG
    tg.inject_callback_query(BOB, BOB, bob.message_id, original(bob))
    await env.until(lambda: calls_in(env, "sendDocument", BOB))
    # block (the operator tightened the policy since): withheld, with a notice
    adapter.cfg.nsfw_chats[str(BOB)] = "block"
    tg.inject_callback_query(BOB, BOB, bob.message_id, original(bob))
    await env.until(lambda: len(alerts(env)) == 2)
    assert "withheld" in alerts(env)[1]
    await asyncio.sleep(0.3)
    assert calls_in(env, "sendDocument", ANN) == [] and len(calls_in(env, "sendDocument", BOB)) == 1


async def test_in_a_group_only_the_requester_gets_the_original(env: Env) -> None:
    await env.start()
    tg = env.tg
    tg.inject_message(GROUP, ANN, "/imagine a tower", chat_type="group")
    photo = (await env.until(lambda: env.photos(GROUP)))[0]
    tg.inject_callback_query(GROUP, BOB, photo.message_id, "o:1:0", first_name="Bob")
    await env.until(lambda: alerts(env))
    assert "Only the person who asked" in alerts(env)[0]
    tg.inject_callback_query(GROUP, ANN, photo.message_id, "o:1:0")
    doc = await env.until(lambda: calls_in(env, "sendDocument", GROUP))
    assert len(doc) == 1
