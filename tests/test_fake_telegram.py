"""Conformance tests: the real python-telegram-bot against the fake Telegram server.

The fake is only worth something if PTB parses every answer it gives and raises the same
exceptions it would raise against Telegram, so nothing of PTB is mocked here: a real ``Bot`` or
``Application`` talks HTTP to the fake on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeAllGroupChats,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    ReplyParameters,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.fakes.telegram import DEFAULT_TOKEN, FakeTelegram, FakeTelegramRemote

# PTB 22 warns on every RetryAfter that retry_after will become a timedelta; that is PTB's
# migration notice, not something this fake can act on.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning"
)

ROOT = Path(__file__).resolve().parents[1]
USER = 4242
GROUP = -100777


def _png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _seconds(retry_after: int | dtm.timedelta) -> float:
    """PTB 22 exposes retry_after as int or timedelta depending on PTB_TIMEDELTA."""
    if isinstance(retry_after, dtm.timedelta):
        return retry_after.total_seconds()
    return float(retry_after)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours *_PROXY variables; loopback traffic must never go through a proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(DEFAULT_TOKEN, base_url=tg.base_url, base_file_url=tg.base_file_url) as b:
        yield b


@contextlib.asynccontextmanager
async def running_app(tg: FakeTelegram, *handlers: Any) -> AsyncIterator[Application]:
    """An Application polling the fake, started and stopped as ENGINEERING.md §1.4 says."""
    app = (
        ApplicationBuilder()
        .token(DEFAULT_TOKEN)
        .base_url(tg.base_url)
        .base_file_url(tg.base_file_url)
        .build()
    )
    for handler in handlers:
        app.add_handler(handler)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


# ------------------------------------------------------------------------------ identity


async def test_initialize_calls_get_me(tg: FakeTelegram, bot: Bot) -> None:
    assert bot.username == "sdhost_test_bot"
    assert bot.bot.is_bot
    assert bot.bot.can_join_groups is True
    assert bot.bot.can_read_all_group_messages is False  # privacy mode, the BotFather default
    assert bot.id == 123456
    assert [c.api_method for c in tg.calls] == ["getMe"]


async def test_wrong_token_raises_invalid_token(tg: FakeTelegram) -> None:
    # Bot.shutdown() is a no-op after a failed initialize(), so close our own request objects.
    requests = (HTTPXRequest(), HTTPXRequest())
    wrong = Bot(
        "999:WRONG",
        base_url=tg.base_url,
        base_file_url=tg.base_file_url,
        request=requests[0],
        get_updates_request=requests[1],
    )
    try:
        with pytest.raises(InvalidToken):
            await wrong.initialize()
    finally:
        for request in requests:
            await request.shutdown()
    assert tg.calls[-1].status == 401
    assert tg.calls[-1].response == {
        "ok": False,
        "error_code": 401,
        "description": "Unauthorized",
    }


async def test_unknown_method_is_404(tg: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(EndPointNotFound):  # PTB's name for a 404 after a successful getMe
        await bot.do_api_request("sendTelepathy", api_kwargs={"chat_id": USER})
    assert tg.calls[-1].status == 404
    assert tg.calls[-1].response == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_my_commands_per_scope(tg: FakeTelegram, bot: Bot) -> None:
    commands = [BotCommand("imagine", "Generate an image"), BotCommand("balance", "Credits")]
    assert await bot.set_my_commands(commands)
    assert await bot.set_my_commands(
        [BotCommand("queue", "Show the queue")], scope=BotCommandScopeAllGroupChats()
    )
    assert list(await bot.get_my_commands()) == commands
    group = await bot.get_my_commands(scope=BotCommandScopeAllGroupChats())
    assert [c.command for c in group] == ["queue"]
    assert await bot.delete_my_commands()
    assert await bot.get_my_commands() == ()
    with pytest.raises(BadRequest, match=r"(?i)BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand("Bad-Name", "x")])


# ------------------------------------------------------------------------------ updates


async def test_command_handler_receives_injected_command(tg: FakeTelegram) -> None:
    seen: list[list[str]] = []

    async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        seen.append(list(context.args or []))
        await update.effective_message.reply_text(f"queued: {' '.join(context.args or [])}")

    async with running_app(tg, CommandHandler("imagine", imagine)):
        update = tg.inject_message(USER, USER, "/imagine@sdhost_test_bot a cat", username="ann")
        entity = update["message"]["entities"][0]
        assert entity == {"type": "bot_command", "offset": 0, "length": 24}
        call = await tg.wait_for(method="sendMessage")
    assert seen == [["a", "cat"]]
    assert call.params["chat_id"] == USER
    sent = tg.sent_messages(USER)
    assert [m.text for m in sent] == ["queued: a cat"]
    assert sent[0].message["from"]["username"] == "sdhost_test_bot"
    assert tg.pending_updates() == []  # the updater confirmed the offset on stop


async def test_privacy_mode_hides_plain_group_messages(tg: FakeTelegram) -> None:
    texts: list[str] = []
    got_both = asyncio.Event()

    async def record(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        texts.append(update.effective_message.text or "")
        if len(texts) == 2:
            got_both.set()

    async with running_app(tg, MessageHandler(filters.TEXT, record)):
        tg.inject_message(GROUP, USER, "just chatting", chat_type="group")
        tg.inject_message(GROUP, USER, "/imagine@other_bot a dog", chat_type="group")
        tg.inject_message(GROUP, USER, "/imagine a cat", chat_type="group")
        tg.inject_message(GROUP, USER, "hey @sdhost_test_bot draw", chat_type="group")
        await asyncio.wait_for(got_both.wait(), 5)
    assert texts == ["/imagine a cat", "hey @sdhost_test_bot draw"]
    assert [u["message"]["text"] for u in tg.undelivered] == [
        "just chatting",
        "/imagine@other_bot a dog",
    ]


async def test_raw_wire_formats(tg: FakeTelegram) -> None:
    """Other clients than PTB: JSON bodies, GET with a query string, any method-name case."""
    async with httpx.AsyncClient(
        base_url=f"{tg.base_url}{DEFAULT_TOKEN}/", trust_env=False
    ) as http:
        me = (await http.get("getme")).json()
        assert me["ok"] and me["result"]["username"] == "sdhost_test_bot"
        markup = {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
        sent = await http.post(
            "sendMessage", json={"chat_id": USER, "text": "123", "reply_markup": markup}
        )
        result = sent.json()["result"]
        assert result["text"] == "123"  # a string field is never JSON-decoded to a number
        assert result["reply_markup"] == markup
        form = await http.post(
            "SENDMESSAGE", data={"chat_id": str(USER), "text": "true", "reply_markup": "{bad"}
        )
        assert form.status_code == 400
        assert form.json()["description"] == (
            "Bad Request: can't parse reply keyboard markup JSON object"
        )
        query = await http.get("sendMessage", params={"chat_id": USER, "text": "via GET"})
        assert query.json()["result"]["text"] == "via GET"
    methods = [c.api_method for c in tg.calls]
    assert methods == ["getMe", "sendMessage", "sendMessage", "sendMessage"]
    assert tg.calls[2].params == {"chat_id": USER, "text": "true", "reply_markup": "{bad"}


async def test_a_call_looked_at_before_its_body_arrived_is_still_answered_on_it(
    tg: FakeTelegram,
) -> None:
    """The record is in the log as soon as the request arrives; reading its params while the
    body is still on its way must not leave the handler without them."""
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield f"chat_id={USER}&".encode()
        halfway.set()
        await go_on.wait()
        yield b"text=late"

    async with httpx.AsyncClient(
        base_url=f"{tg.base_url}{DEFAULT_TOKEN}/", trust_env=False
    ) as http:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        sending = asyncio.create_task(http.post("sendMessage", content=body(), headers=headers))
        async with asyncio.timeout(5):
            await halfway.wait()
            while not tg.calls_of("sendMessage"):
                await asyncio.sleep(0.01)
        assert tg.calls_of("sendMessage")[0].params == {}  # nothing read yet
        go_on.set()
        answer = (await sending).json()
    assert answer["ok"], answer
    assert answer["result"]["text"] == "late"
    assert tg.calls_of("sendMessage")[0].params == {"chat_id": USER, "text": "late"}


async def test_long_poll_returns_promptly_and_offset_confirms(tg: FakeTelegram, bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.05)
    tg.inject_message(USER, USER, "hello")
    updates = await asyncio.wait_for(poll, 2)
    assert loop.time() - started < 2
    assert [u.message.text for u in updates if u.message] == ["hello"]
    # Not confirmed yet: returned again. Confirmed by offset: gone.
    assert len(await bot.get_updates()) == 1
    assert await bot.get_updates(offset=updates[-1].update_id + 1) == ()
    assert tg.pending_updates() == []
    # An empty poll with a timeout really waits, then answers [].
    started = loop.time()
    assert await bot.get_updates(timeout=0.3) == ()
    assert loop.time() - started >= 0.25


async def test_allowed_updates_filter(tg: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(USER, "pick", reply_markup=_keyboard("job:1"))
    tg.inject_message(USER, USER, "text")
    tg.inject_callback_query(USER, USER, sent.message_id, "job:1")
    updates = await bot.get_updates(allowed_updates=["callback_query"])
    assert [u.callback_query.data for u in updates if u.callback_query] == ["job:1"]


async def test_stop_answers_pending_long_poll() -> None:
    fake = FakeTelegram()
    await fake.start()
    async with Bot(DEFAULT_TOKEN, base_url=fake.base_url) as other:
        poll = asyncio.create_task(other.get_updates(timeout=30))
        await asyncio.sleep(0.1)  # let the request reach the server and start waiting
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fake.stop()
        assert await asyncio.wait_for(poll, 3) == ()
        assert loop.time() - started < 3


# ------------------------------------------------------------------------------ sending


async def test_send_message_reply_and_html(tg: FakeTelegram, bot: Bot) -> None:
    update = tg.inject_message(USER, USER, "a prompt")
    user_msg_id = update["message"]["message_id"]
    reply = await bot.send_message(
        USER,
        "<b>Done</b> &amp; <i>saved</i>",
        parse_mode=ParseMode.HTML,
        reply_parameters=ReplyParameters(message_id=user_msg_id),
    )
    assert reply.text == "Done & saved"
    assert [(e.type, e.offset, e.length) for e in reply.entities] == [
        ("bold", 0, 4),
        ("italic", 7, 5),
    ]
    assert reply.reply_to_message is not None
    assert reply.reply_to_message.text == "a prompt"
    assert reply.message_id > user_msg_id
    legacy = await bot.send_message(USER, "x", reply_to_message_id=reply.message_id)
    assert legacy.reply_to_message is not None
    assert legacy.reply_to_message.message_id == reply.message_id
    assert legacy.reply_to_message.reply_to_message is None  # never nested twice
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(USER, "x", reply_parameters=ReplyParameters(message_id=999))
    with pytest.raises(BadRequest, match=r"(?i)can.t parse entities: unsupported start tag \"3\""):
        await bot.send_message(USER, "i <3 cats", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)reserved"):
        await bot.send_message(USER, "v1.5 done", parse_mode=ParseMode.MARKDOWN_V2)
    ok = await bot.send_message(USER, r"*v1\.5* done", parse_mode=ParseMode.MARKDOWN_V2)
    assert ok.text == "v1.5 done"
    assert ok.entities[0].type == "bold"


async def test_send_photo_sizes_and_download(tg: FakeTelegram, bot: Bot) -> None:
    png = _png(1024, 768)
    message = await bot.send_photo(USER, png, caption="a red square", has_spoiler=True)
    assert message.caption == "a red square"
    assert message.has_media_spoiler is True
    largest = message.photo[-1]
    assert (largest.width, largest.height) == (1024, 768)
    areas = [p.width * p.height for p in message.photo]
    assert areas == sorted(areas) and len(areas) > 1
    file = await bot.get_file(largest.file_id)
    assert file.file_path is not None and file.file_path.startswith(tg.base_file_url)
    assert tg.calls_of("getFile")[-1].result["file_path"].startswith("photos/")
    assert bytes(await file.download_as_bytearray()) == png  # largest serves the original
    thumb_file = await bot.get_file(message.photo[0].file_id)
    with Image.open(io.BytesIO(bytes(await thumb_file.download_as_bytearray()))) as thumb:
        assert thumb.size == (message.photo[0].width, message.photo[0].height)
        assert max(thumb.size) <= 90
    sent = tg.sent_messages(USER)[-1]
    assert sent.photo_bytes == png
    assert tg.calls_of("sendPhoto")[-1].uploads["photo"].data == png
    # Re-sending by file_id gives the same set of sizes without an upload.
    again = await bot.send_photo(USER, largest.file_id)
    assert [p.file_id for p in again.photo] == [p.file_id for p in message.photo]


async def test_send_document_keeps_bytes(tg: FakeTelegram, bot: Bot) -> None:
    data = os.urandom(300_000)
    message = await bot.send_document(USER, data, filename="grid.png", caption="original")
    document = message.document
    assert document is not None
    assert (document.file_name, document.mime_type, document.file_size) == (
        "grid.png",
        "image/png",
        len(data),
    )
    file = await document.get_file()
    assert bytes(await file.download_as_bytearray()) == data
    assert tg.sent_messages(USER)[-1].document_bytes == data


async def test_media_group(tg: FakeTelegram, bot: Bot) -> None:
    photos = [_png(64 + i, 64, (i * 60, 0, 0)) for i in range(3)]
    media = [InputMediaPhoto(p, caption=f"#{i}") for i, p in enumerate(photos)]
    messages = await bot.send_media_group(USER, media)
    assert len(messages) == 3
    assert len({m.media_group_id for m in messages}) == 1 and messages[0].media_group_id
    assert [m.message_id for m in messages] == sorted(m.message_id for m in messages)
    assert [m.caption for m in messages] == ["#0", "#1", "#2"]
    assert [m.photo[-1].width for m in messages] == [64, 65, 66]
    assert [s.photo_bytes for s in tg.sent_messages(USER)] == photos
    documents = await bot.send_media_group(
        USER, [InputMediaDocument(b"one", filename="a.txt"), InputMediaDocument(b"two")]
    )
    assert [d.document.file_size for d in documents if d.document] == [3, 3]

    with pytest.raises(BadRequest, match=r"(?i)2-10"):
        await bot.send_media_group(USER, [InputMediaPhoto(photos[0])])
    with pytest.raises(BadRequest, match=r"(?i)too many messages to send as an album"):
        await bot.send_media_group(USER, [InputMediaPhoto(photos[0])] * 11)
    with pytest.raises(
        BadRequest, match=r"(?i)failed to send message #2 .*PHOTO_INVALID_DIMENSIONS"
    ):
        await bot.send_media_group(USER, [InputMediaPhoto(photos[0]), InputMediaPhoto(_png(2, 60))])
    assert len(tg.sent_messages(USER)) == 5  # refused albums send nothing


async def test_concurrent_sends_get_unique_increasing_ids(tg: FakeTelegram, bot: Bot) -> None:
    results = await asyncio.gather(*(bot.send_message(USER, f"m{i}") for i in range(25)))
    ids = sorted(m.message_id for m in results)
    assert ids == list(range(ids[0], ids[0] + 25))
    assert len(tg.calls_of("sendMessage")) == 25


# ------------------------------------------------------------------------------ limits


def _keyboard(data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data=data)]])


async def test_limits(tg: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "x" * 4096)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(USER, "   ")
    png = _png(32, 32)
    with pytest.raises(BadRequest, match=r"(?i)message caption is too long"):
        await bot.send_photo(USER, png, caption="c" * 1025)
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "pick", reply_markup=_keyboard("d" * 65))
    await bot.send_message(USER, "pick", reply_markup=_keyboard("d" * 64))
    with pytest.raises(BadRequest, match=r"(?i)PHOTO_INVALID_DIMENSIONS"):
        await bot.send_photo(USER, _png(2, 50))  # aspect ratio 25 > 20
    with pytest.raises(BadRequest, match=r"(?i)PHOTO_INVALID_DIMENSIONS"):
        await bot.send_photo(USER, _png(6000, 4001))  # width + height > 10000
    with pytest.raises(BadRequest, match=r"(?i)PHOTO_SAVE_FILE_INVALID"):
        await bot.send_photo(USER, b"\xff\xd8" + bytes(10 * 1024 * 1024))  # over 10 MB
    with pytest.raises(BadRequest, match=r"(?i)IMAGE_PROCESS_FAILED"):
        await bot.send_photo(USER, b"not an image")
    with pytest.raises(NetworkError, match=r"(?i)Request Entity Too Large"):
        await bot.send_document(USER, bytes(50 * 1024 * 1024 + 1), filename="huge.bin")
    assert tg.calls[-1].status == 413


async def test_get_file_over_20_mb(tg: FakeTelegram, bot: Bot) -> None:
    big = bytes(20 * 1024 * 1024 + 1)
    tg.inject_message(USER, USER, document_bytes=big, document_name="huge.safetensors")
    (update,) = await bot.get_updates()
    assert update.message is not None and update.message.document is not None
    assert update.message.document.file_size == len(big)
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(update.message.document.file_id)
    with pytest.raises(BadRequest, match=r"(?i)wrong file_id"):
        await bot.get_file("nope")


# ------------------------------------------------------------------------------ edits


async def test_edits(tg: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_message(USER, "Queued", reply_markup=_keyboard("cancel:1"))
    with pytest.raises(BadRequest, match=r"(?i)not modified"):
        await bot.edit_message_text(
            "Queued", USER, message.message_id, reply_markup=_keyboard("cancel:1")
        )
    edited = await bot.edit_message_text(
        "Running 10%", USER, message.message_id, reply_markup=_keyboard("cancel:1")
    )
    assert isinstance(edited, type(message)) and edited.edit_date is not None
    # Without reply_markup the keyboard goes away, so the same text is still a modification.
    plain = await bot.edit_message_text("Running 10%", USER, message.message_id)
    assert not isinstance(plain, bool) and plain.reply_markup is None
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("x", USER, 9999)
    with_markup = await bot.edit_message_reply_markup(
        USER, message.message_id, reply_markup=_keyboard("retry:1")
    )
    assert not isinstance(with_markup, bool) and with_markup.reply_markup == _keyboard("retry:1")
    with pytest.raises(BadRequest, match=r"(?i)not modified"):
        await bot.edit_message_reply_markup(
            USER, message.message_id, reply_markup=_keyboard("retry:1")
        )
    sent = tg.sent_messages(USER)[-1]
    assert [h.get("text") for h in sent.history] == ["Queued", "Running 10%", "Running 10%"]

    photo = await bot.send_photo(USER, _png(40, 40), caption="preview")
    recaptioned = await bot.edit_message_caption(USER, photo.message_id, caption="final")
    assert not isinstance(recaptioned, bool) and recaptioned.caption == "final"
    with pytest.raises(BadRequest, match=r"(?i)there is no text in the message to edit"):
        await bot.edit_message_text("x", USER, photo.message_id)
    swapped = await bot.edit_message_media(
        InputMediaPhoto(_png(80, 60), caption="step 20"), USER, photo.message_id
    )
    assert not isinstance(swapped, bool)
    assert (swapped.photo[-1].width, swapped.photo[-1].height) == (80, 60)
    assert swapped.caption == "step 20"
    assert tg.sent_messages(USER)[-1].photo_bytes == _png(80, 60)

    user_update = tg.inject_message(USER, USER, "mine")
    with pytest.raises(BadRequest, match=r"(?i)message can't be edited"):
        await bot.edit_message_text("x", USER, user_update["message"]["message_id"])
    assert await bot.delete_message(USER, photo.message_id)
    assert tg.sent_messages(USER)[-1].deleted
    with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
        await bot.delete_message(USER, photo.message_id)


# ------------------------------------------------------------------------------ failures


async def test_flood_control_raises_retry_after(tg: FakeTelegram, bot: Bot) -> None:
    tg.flood(1, retry_after=3, method="sendMessage")
    with pytest.raises(RetryAfter) as excinfo:
        await bot.send_message(USER, "hi")
    assert _seconds(excinfo.value.retry_after) == 3
    assert tg.calls[-1].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }
    await bot.send_message(USER, "hi again")  # the switch is used up
    tg.flood(2, retry_after=1, chat_id=GROUP)
    await bot.send_message(USER, "other chat unaffected")
    for _ in range(2):
        with pytest.raises(RetryAfter):
            await bot.send_message(GROUP, "group")
    await bot.send_message(GROUP, "group ok")


async def test_blocked_vanished_migrated(tg: FakeTelegram, bot: Bot) -> None:
    tg.block_user(USER)
    with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
        await bot.send_message(USER, "hi")
    with pytest.raises(Forbidden):
        await bot.send_photo(USER, _png(10, 10))
    tg.unblock_user(USER)
    await bot.send_message(USER, "hi")

    tg.vanish_chat(555)
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(555, "hi")

    tg.inject_message(GROUP, USER, "/imagine x", chat_type="group", chat_title="Artists")
    new_id = tg.migrate_chat(GROUP)
    with pytest.raises(ChatMigrated) as excinfo:
        await bot.send_message(GROUP, "hi")
    assert excinfo.value.new_chat_id == new_id
    moved = await bot.send_message(new_id, "hi")
    assert moved.chat.type == "supergroup" and moved.chat.title == "Artists"
    chat = await bot.get_chat(new_id)
    assert chat.title == "Artists"


async def test_server_errors(tg: FakeTelegram, bot: Bot) -> None:
    tg.server_error(1, 500, method="sendMessage")
    with pytest.raises(NetworkError) as excinfo:
        await bot.send_message(USER, "hi")
    assert type(excinfo.value) is NetworkError
    tg.server_error(1, 502)
    with pytest.raises(NetworkError, match=r"(?i)Bad Gateway"):
        await bot.send_chat_action(USER, "upload_photo")
    assert await bot.send_chat_action(USER, "upload_photo")
    assert (await bot.send_message(USER, "recovered")).text == "recovered"


# ---------------------------------------------------------------- callbacks, photos in


async def test_callback_query_handler(tg: FakeTelegram) -> None:
    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer("Cancelled")
        await query.edit_message_text(f"cancelled {query.data}")

    async with running_app(tg, CallbackQueryHandler(on_button)) as app:
        message = await app.bot.send_message(USER, "Running", reply_markup=_keyboard("cancel:7"))
        with pytest.raises(ValueError, match=r"(?i)no inline button"):
            tg.inject_callback_query(USER, USER, message.message_id, "cancel:8")
        update = tg.inject_callback_query(USER, USER, message.message_id, "cancel:7")
        answer = await tg.wait_for(method="answerCallbackQuery")
        await tg.wait_for(method="editMessageText")
    assert answer.params["callback_query_id"] == update["callback_query"]["id"]
    assert answer.params["text"] == "Cancelled"
    assert tg.sent_messages(USER)[-1].text == "cancelled cancel:7"
    # A query can be answered once.
    async with Bot(DEFAULT_TOKEN, base_url=tg.base_url) as bot:
        with pytest.raises(BadRequest, match=r"(?i)query is too old"):
            await bot.answer_callback_query(update["callback_query"]["id"])


async def test_injected_photo_reply_downloads_original(tg: FakeTelegram, bot: Bot) -> None:
    prompt = await bot.send_message(USER, "Reply with an image for img2img")
    jpeg = _jpeg(900, 600)
    tg.inject_message(
        USER,
        USER,
        photo_bytes=jpeg,
        caption="/img2img more blue",
        reply_to_message_id=prompt.message_id,
    )
    (update,) = await bot.get_updates()
    message = update.message
    assert message is not None
    assert message.caption == "/img2img more blue"
    assert message.caption_entities[0].type == "bot_command"
    assert message.reply_to_message is not None
    assert message.reply_to_message.text == "Reply with an image for img2img"
    assert message.reply_to_message.from_user is not None
    assert message.reply_to_message.from_user.id == bot.id
    sizes = message.photo
    assert [max(p.width, p.height) for p in sizes] == [90, 320, 800, 900]
    file = await bot.get_file(sizes[-1].file_id)
    assert bytes(await file.download_as_bytearray()) == jpeg
    small = await (await bot.get_file(sizes[0].file_id)).download_as_bytearray()
    with Image.open(io.BytesIO(bytes(small))) as image:
        assert image.size == (sizes[0].width, sizes[0].height)


# ------------------------------------------------------------------------------ webhook


async def test_webhook_delivery_and_conflict(tg: FakeTelegram, bot: Bot) -> None:
    received: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()
    fail_first = [True]

    async def hook(request: web.Request) -> web.Response:
        if fail_first[0]:
            fail_first[0] = False
            return web.Response(status=500)
        received.put_nowait(
            (request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json())
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}/hook"
        assert await bot.set_webhook(url, secret_token="s3cret-token")
        injected = tg.inject_message(USER, USER, "via webhook")
        secret, payload = await asyncio.wait_for(received.get(), 5)
        assert secret == "s3cret-token"
        assert payload == injected
        assert Update.de_json(payload, bot).message.text == "via webhook"  # type: ignore[union-attr]
        info = await bot.get_webhook_info()
        assert info.url == url and info.pending_update_count == 0
        assert (
            info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"
        )
        with pytest.raises(Conflict, match=r"(?i)webhook is active"):
            await bot.get_updates()
        with pytest.raises(BadRequest, match=r"(?i)secret token"):
            await bot.set_webhook(url, secret_token="bad token!")
        assert await bot.delete_webhook()
        tg.inject_message(USER, USER, "via polling")
        updates = await bot.get_updates()
        assert [u.message.text for u in updates if u.message] == ["via polling"]
        assert (await bot.get_webhook_info()).url == ""
    finally:
        await runner.cleanup()


async def test_second_poller_conflicts(tg: FakeTelegram, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await tg.wait_for(method="getMe")
    await asyncio.sleep(0.05)
    async with Bot(DEFAULT_TOKEN, base_url=tg.base_url) as other:
        assert await other.get_updates(timeout=0) == ()
    with pytest.raises(Conflict, match=r"(?i)terminated by other getUpdates request"):
        await asyncio.wait_for(first, 2)


# ------------------------------------------------------------------------------ subprocess mode


async def test_subprocess_mode_control_api() -> None:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.telegram",
        "--port",
        "0",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        assert int(url.rsplit(":", 1)[1]) > 0
        async with FakeTelegramRemote(url) as remote:
            photo = _png(120, 80)
            update = await remote.inject_message(USER, USER, caption="look", photo_bytes=photo)
            assert update["update_id"] == 1
            async with Bot(
                DEFAULT_TOKEN, base_url=f"{url}/bot", base_file_url=f"{url}/file/bot"
            ) as bot:
                (got,) = await bot.get_updates(timeout=1)
                assert got.message is not None and got.message.caption == "look"
                file = await bot.get_file(got.message.photo[-1].file_id)
                assert bytes(await file.download_as_bytearray()) == photo
                await remote.call("flood", n=1, retry_after=2, method="sendMessage")
                with pytest.raises(RetryAfter):
                    await bot.send_message(USER, "hi")
                await bot.send_photo(USER, photo, caption="result")
            call = await remote.wait_for(method="sendPhoto", timeout=2)
            assert call["params"]["caption"] == "result"
            assert call["files"]["photo"]["size"] == len(photo)
            assert [c["status"] for c in await remote.calls_of("sendMessage")] == [429]
            (sent,) = await remote.sent_messages(USER)
            assert sent["message"]["caption"] == "result"
            with pytest.raises(TimeoutError):
                await remote.wait_for(method="sendDocument", timeout=0.1)
            with pytest.raises(ValueError, match=r"(?i)unknown control method"):
                await remote.call("stop")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) is not None
