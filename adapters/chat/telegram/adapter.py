"""Telegram, through python-telegram-bot: commands in, receipts, progress and pictures out.

How it keeps the core's promises on Telegram:

* Updates are taken with ``getUpdates`` and handled before they are confirmed, so a crash
  re-reads them; every command that costs credits carries the message's id as its
  idempotency key, so a re-read update is never charged twice.
* In webhook mode every process behind the balancer takes updates: each is stored once in
  the database (``bot.inbox``; a copy is ignored) and answered at once, then handled by
  whichever process claims it, in order per chat. The webhook is the bot's: set once
  (``set_webhook``), never deleted by a process that polls.
* A command that starts a job gets a status message once the core accepted it (a refusal
  is one direct reply); its id is stored with the job, so progress edits and the final
  line find it again after a restart.
* Pictures arrive through the outbox (at least once, in order). Pictures that are ready
  together go as one album, and its buttons on a message of their own; everything sent to
  a chat is paced (see ``pacing``) and flood waits delay, never drop.
* Buttons carry ``action:job:index`` (a few bytes of the 64 allowed); the rest is read back
  from the database, so they work after restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import re
import time
from typing import Any, cast

from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, TimedOut
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from adapters.chat.conversation import REMAKE_ACTIONS, picture_policy
from adapters.chat.telegram.albums import ALBUM_SETTLE_MAX_S, ALBUM_SETTLE_S, AlbumMemory, _Album
from adapters.chat.telegram.delivery import TelegramDelivery
from adapters.chat.telegram.limits import (
    ALBUM_MAX,
    LOCAL_MAX_MB,
    MAX_CAPTION,
    MAX_DOWNLOAD_MB,
    MAX_UPLOAD_MB,
    split_text,
)
from adapters.chat.telegram.menu import EXTENSION_MENU, MENU
from adapters.chat.telegram.pacing import IN_FLIGHT, Pacer, is_gone
from bot.chat import ReplyTo, UserRef
from bot.commands import Action, Incoming, Reply, format_image_info
from bot.config import TelegramConfig
from bot.errors import UserError
from bot.grammar import parse_command
from bot.host import ChatHost
from bot.i18n import Message as i18n_message
from bot.i18n import t
from bot.ids import is_digits, parse_id
from bot.inbox import Inbox
from bot.text import clip

log = logging.getLogger(__name__)


IMG2IMG = {"img2img", "i2i"}


ACTIONS = {"r": "reroll", "v": "vary", "o": "original", "i": "info", "u": "upscale"}


COMMAND_DATA = "x:"  # callback data of a button that runs a command: "x:/civitai use 1"


_CAPTION_REF = re.compile(r"^#([0-9]{1,19})(?: · ([0-9]{1,9})/[0-9]+)?")


ALLOWED_UPDATES = ["message", "callback_query"]


def _bare_bot(cfg: TelegramConfig) -> Bot:
    return Bot(cfg.token, base_url=cfg.base_url, base_file_url=cfg.base_file_url)


async def set_webhook(cfg: TelegramConfig, bot: Any = None) -> None:
    """Point the bot's webhook at ``webhook_url`` (the balancer's), with the secret: once
    for the bot, not once per process."""
    if bot is None:
        async with _bare_bot(cfg) as bare:
            await set_webhook(cfg, bare)
        return
    await bot.set_webhook(
        url=cfg.webhook_url,
        secret_token=cfg.effective_webhook_secret,
        allowed_updates=ALLOWED_UPDATES,
        max_connections=min(100, cfg.concurrent_updates),
    )


async def delete_webhook(cfg: TelegramConfig) -> None:
    """Delete the bot's webhook; updates not yet taken stay (polling reads them)."""
    async with _bare_bot(cfg) as bare:
        await bare.delete_webhook(drop_pending_updates=False)


def _chat_key(update: Update) -> str:
    """Which updates must run in order: those of one chat (or one person without a chat)."""
    if update.effective_chat is not None:
        return f"c{update.effective_chat.id}"
    if update.effective_user is not None:
        return f"u{update.effective_user.id}"
    return f"#{update.update_id}"


class TelegramAdapter(TelegramDelivery):
    platform = "telegram"
    max_group = ALBUM_MAX

    def __init__(self, app: ChatHost, cfg: TelegramConfig | None = None) -> None:
        self.app = app
        self.cfg = cfg or app.config.telegram
        self.pacer = Pacer(self.cfg)
        self.application: Application[Any, Any, Any, Any, Any, Any] = self._build()
        self.username = ""
        self.setup_delivery()
        # progress edits: the newest state per status message, at most one edit per chat
        # every progress_edit_s, keyed (chat, message)
        self.setup_conversation()
        self._tasks: list[asyncio.Task[None]] = []
        self._offset: int | None = None
        self._webhook_runner: Any = None
        self._inbox: Inbox | None = None
        self.updates_handled = 0
        self.albums = AlbumMemory()
        self.album_settle_s = ALBUM_SETTLE_S
        self._album_tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        cfg = self.cfg
        builder = (
            ApplicationBuilder()
            .token(cfg.token)
            .base_url(cfg.base_url)
            .base_file_url(cfg.base_file_url)
            .local_mode(cfg.local_mode)
            .updater(None)  # sdhost reads updates itself: confirmed only once handled
            .concurrent_updates(cfg.concurrent_updates)
            .connection_pool_size(IN_FLIGHT + 4)  # + answers and downloads
            .pool_timeout(30.0)
            .connect_timeout(10.0)
            .read_timeout(30.0)
            .write_timeout(60.0)
            .media_write_timeout(120.0)
        )
        application = builder.build()
        application.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        application.add_handler(CallbackQueryHandler(self._on_button))
        application.add_error_handler(self._on_error)
        return application

    @property
    def bot(self) -> Any:
        return self.application.bot

    async def connect(self) -> None:
        """Log in (getMe) and publish the command menu; the outbox may deliver from now on."""
        try:
            await self.application.initialize()
        except InvalidToken:
            raise UserError(
                "Telegram rejected telegram.token: copy it again from @BotFather "
                "(it looks like 123456789:AA...)"
            ) from None
        except NetworkError as exc:
            raise UserError(
                f"cannot reach Telegram at {self.cfg.base_url}: {exc.message}"
            ) from None
        self.username = self.bot.username or ""
        await self._publish_commands()

    async def listen(self) -> None:
        """Start taking updates (after the core has started)."""
        await self.application.start()
        leftovers = self.preview_ledger.open()  # before the first preview of this process
        if leftovers:
            self._tasks.append(
                asyncio.create_task(self.sweep_previews(leftovers), name="telegram-previews")
            )
        self.start_status_edits()
        if self.cfg.mode == "webhook":
            await self._start_webhook()
        else:
            await self._refuse_polling_under_a_webhook()
            self._tasks.append(asyncio.create_task(self._poll(), name="telegram-poll"))
        log.info("telegram: @%s is %s", self.username, self.cfg.mode)

    async def stop_listening(self) -> None:
        if self._album_tasks:  # albums captioned /img2img still settling: finish them
            await asyncio.wait(set(self._album_tasks), timeout=ALBUM_SETTLE_MAX_S + 5)
        await self.stop_status_edits()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._inbox is not None:  # what this process had claimed and not finished
            try:
                await self._inbox.release()
            except Exception:  # the others take it once the lease runs out
                log.warning("telegram: could not give back unhandled updates", exc_info=True)
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()
            self._webhook_runner = None
        if self._offset is not None:  # confirm what was handled, as Telegram's own
            with contextlib.suppress(Exception):  # clients do on the way out
                await self.bot.get_updates(offset=self._offset, timeout=0, limit=1)
        if self.application.running:
            await self.application.stop()

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.application.shutdown()

    async def _publish_commands(self) -> None:
        extensions = self.app.commands.extensions
        names = [*MENU, *(name for name in EXTENSION_MENU if name in extensions)]
        for lang in ("en", "zh"):
            commands = [BotCommand(name, t(lang, f"tg.cmd.{name}")) for name in names]
            try:
                await self.bot.set_my_commands(
                    commands, language_code=None if lang == "en" else lang
                )
            except Exception:
                log.warning("telegram: could not publish the command menu", exc_info=True)

    # --- receiving -----------------------------------------------------------------------

    async def _poll(self) -> None:
        backoff = 1.0
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=self._offset,
                    timeout=self.cfg.poll_timeout_s,
                    allowed_updates=ALLOWED_UPDATES,
                )
                backoff = 1.0
            except TimedOut:
                continue
            except InvalidToken:
                log.error("telegram: the token was revoked; no longer taking updates")
                return
            except Conflict:
                log.error(
                    "telegram: another process is taking this bot's updates (two sdhost "
                    "instances with one token, or a webhook is set); retrying in %.0fs",
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(60.0, backoff * 2)
                continue
            except NetworkError as exc:
                log.warning("telegram: getUpdates failed (%s); retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(60.0, backoff * 2)
                continue
            if updates:
                await self.handle_updates(updates)
                self._offset = updates[-1].update_id + 1

    async def handle_updates(self, updates: list[Update]) -> None:
        """Handle a batch: one chat's updates in order, different chats side by side."""
        by_chat: dict[int, list[Update]] = {}
        for update in updates:
            chat = update.effective_chat
            by_chat.setdefault(chat.id if chat else 0, []).append(update)

        async def run(chat_updates: list[Update]) -> None:
            for update in chat_updates:
                await self.application.process_update(update)
                self.updates_handled += 1

        await asyncio.gather(*(run(u) for u in by_chat.values()))

    async def _refuse_polling_under_a_webhook(self) -> None:
        """Polling reads the updates of a bot without a webhook only. A webhook set for the
        bot is the other processes' (behind a balancer): deleting it would take their
        updates away from them all, so this process refuses to start instead."""
        info = await self.bot.get_webhook_info()
        if info.url:
            raise UserError(
                f"telegram.mode is polling, but a webhook is set for this bot ({info.url}): "
                "other sdhost processes may be taking its updates. Set telegram.mode = "
                '"webhook" in this process too, or stop those processes and delete the '
                "webhook (`sdhost telegram delete-webhook`) to poll again"
            )

    @property
    def _source(self) -> str:
        """The inbox of this bot: updates are per bot, whatever process received them."""
        return f"telegram:{self.cfg.token.partition(':')[0]}"

    async def _start_webhook(self) -> None:
        """Take updates at the webhook: check the secret, store the update (a second copy
        is ignored) and answer at once; the inbox claimer of whichever process is free
        handles it, once, in order per chat."""
        from aiohttp import web

        url = self.cfg.webhook_url
        if not url:
            raise UserError("telegram.mode is webhook but telegram.webhook_url is empty")
        secret = self.cfg.effective_webhook_secret
        expected = secret.encode()
        inbox = self._inbox = self.app.inbox(self._source, lease_s=self.cfg.update_lease_s)

        async def receive(request: web.Request) -> web.Response:
            # constant time: how long a wrong guess takes says nothing about the secret
            given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
                return web.Response(status=403)
            try:
                data = await request.json()
                update = Update.de_json(data, self.bot)
            except Exception:
                return web.Response(status=400)
            if update is None:
                return web.Response(text="ok")
            try:
                await inbox.put(update.update_id, _chat_key(update), data)
            except Exception:
                # not stored: Telegram sends it again later (to this process or another)
                log.warning("telegram: could not store update %s", update.update_id, exc_info=True)
                return web.Response(status=503)
            return web.Response(text="ok")

        async def handle(update_id: int, raw: dict[str, Any]) -> None:
            update = Update.de_json(raw, self.bot)
            if update is not None:
                await self.application.process_update(update)
                self.updates_handled += 1

        self._tasks.append(asyncio.create_task(inbox.run(handle), name="telegram-inbox"))
        web_app = web.Application()
        web_app.router.add_post(self.cfg.webhook_path, receive)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.webhook_listen, self.cfg.webhook_port)
        await site.start()
        self._webhook_runner = runner
        if self.cfg.set_webhook:
            await set_webhook(self.cfg, self.bot)

    @property
    def webhook_port(self) -> int:
        """The port the webhook listens on (useful when configured as 0)."""
        runner = self._webhook_runner
        if runner is None:
            return 0
        for site in runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return 0

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram: handling an update failed", exc_info=context.error)

    # --- who and where -------------------------------------------------------------------

    def _user(self, tg_user: Any) -> UserRef:
        name = f"@{tg_user.username}" if tg_user.username else tg_user.full_name
        return UserRef("telegram", str(tg_user.id), name, tg_user.language_code)

    def _allowed(self, chat_id: int, user_id: int) -> bool:
        chats, users = self.cfg.allowed_chats, self.cfg.allowed_users
        if (not chats and not users) or self.is_admin(user_id):
            return True
        return chat_id in chats or user_id in users

    def _nsfw_policy(self, chat_id: int) -> str:
        return self.cfg.nsfw_chats.get(str(chat_id), self.cfg.nsfw)

    # --- messages ------------------------------------------------------------------------

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg = update.message
        if msg is None or msg.from_user is None or msg.from_user.is_bot:
            return
        chat, tg_user = msg.chat, msg.from_user
        private = chat.type == "private"
        user = self._user(tg_user)
        if not self._allowed(chat.id, tg_user.id):
            if private:
                await self._say(msg, t(await self.lang_of(user), "tg.private", id=tg_user.id))
            return
        album = self.albums.add(chat.id, msg) if self._has_picture(msg) else None
        text = msg.text or msg.caption or ""
        cmd = parse_command(text)
        if cmd.name and cmd.mention and cmd.mention.lower() != self.username.lower():
            return  # /command@SomeOtherBot
        replied = msg.reply_to_message
        if cmd.name:
            name = cmd.name
            text = f"/{name} {cmd.rest}".strip()
        elif self._has_picture(msg) and text.strip() and private:
            name, text = "img2img", f"/img2img {text}"  # a photo with its prompt as caption
        elif replied is not None and self._has_picture(replied) and text.strip():
            if not (private or self._is_own(replied)):
                return
            name, text = "img2img", f"/img2img {text}"  # "make it blue" in reply to a picture
        elif self._has_picture(msg) and private:
            if album is not None and album.hinted:
                return  # one hint per album
            if album is not None:
                album.hinted = True
            await self._say(msg, t(await self.lang_of(user), "tg.photo_hint"))
            return
        elif private and msg.document is not None and text.strip():  # a captioned PDF
            mime = msg.document.mime_type or "?"
            await self._say(msg, t(await self.lang_of(user), "tg.not_a_picture", mime=mime))
            return
        elif private and self.cfg.private_text_is_prompt and text.strip():
            name, text = "imagine", f"/imagine {text}"
        else:
            return  # groups: only commands and replies to the bot's pictures
        key = f"telegram:{chat.id}:{msg.message_id}"
        if name not in IMG2IMG:
            # one of the bot's own pictures replied to (/upscale): which job and picture
            own = replied is not None and self._is_own(replied)
            ref = self._picture_ref(replied) if replied is not None and own else None
            await self._run_command(msg, tg_user, text, key=key, replied_picture=ref)
            return
        if album is not None:
            # An album captioned /img2img: its other items come as updates of their own,
            # after this one. Wait for them off the chat's update queue, then use them all.
            album.hinted = True
            task = asyncio.create_task(self._album_img2img(msg, tg_user, text, album, key))
            self._album_tasks.add(task)
            task.add_done_callback(self._album_tasks.discard)
            return
        for given in (msg, replied):
            if given is None or self._has_picture(given):
                break
            if given.document is not None:  # a PDF, a zip: not "give a picture first"
                mime = given.document.mime_type or "?"
                await self._say(msg, t(await self.lang_of(user), "tg.not_a_picture", mime=mime))
                return
        source = msg if self._has_picture(msg) else replied
        sources: list[Message] = []
        fit_more, notes = False, cast(tuple[str, ...], ())
        if source is not None and self._has_picture(source):
            sources = [source]
            if source is replied and source.media_group_id:
                # a reply to one picture of an album: all of it, the one replied to first
                known = self.albums.get(chat.id, source.media_group_id)
                others = [m for i, m in sorted((known.items if known else {}).items())]
                others = [m for m in others if m.message_id != source.message_id]
                if others:
                    sources, fit_more = [source, *others], True
                else:
                    notes = (i18n_message("note.album_unknown"),)
        await self._img2img(msg, tg_user, text, sources, key, fit_more=fit_more, notes=notes)

    async def _album_img2img(
        self, msg: Message, tg_user: Any, text: str, album: _Album, key: str
    ) -> None:
        """/img2img captioned on an album: once no item came for ``album_settle_s`` (at
        most ALBUM_SETTLE_MAX_S), all its pictures in the album's order."""
        try:
            start = time.monotonic()
            while True:
                wait = album.last + self.album_settle_s - time.monotonic()
                if wait <= 0 or time.monotonic() - start >= ALBUM_SETTLE_MAX_S:
                    break
                await asyncio.sleep(min(wait, ALBUM_SETTLE_MAX_S))
            sources = [m for _, m in sorted(album.items.items())][:ALBUM_MAX]
            # only this item came (a group whose privacy mode hides the others): say so
            notes = (i18n_message("note.album_unknown"),) if len(sources) == 1 else ()
            await self._img2img(msg, tg_user, text, sources, key, notes=notes)
        except Exception:
            log.exception("telegram: /img2img on an album in chat %s failed", msg.chat.id)

    async def _img2img(
        self,
        msg: Message,
        tg_user: Any,
        text: str,
        sources: list[Message],
        key: str,
        *,
        fit_more: bool = False,
        notes: tuple[str, ...] = (),
    ) -> None:
        """Download the pictures (each with Telegram's and our size checks) and run it."""
        user = self._user(tg_user)
        pictures: list[bytes] = []
        if sources:
            try:
                # a banned person's picture is not even downloaded
                await self.app.jobs.check_not_banned(user)
                for source in sources:
                    pictures.append(await self._picture_of(source))
            except UserError as exc:
                await self._say(msg, exc.render(await self.lang_of(user)))
                return
        await self._run_command(
            msg,
            tg_user,
            text,
            image=pictures[0] if pictures else None,
            more_images=tuple(pictures[1:]),
            fit_more=fit_more,
            notes=notes,
            key=key,
        )

    async def _run_command(
        self,
        msg: Message,
        tg_user: Any,
        text: str,
        *,
        image: bytes | None = None,
        more_images: tuple[bytes, ...] = (),
        fit_more: bool = False,
        notes: tuple[str, ...] = (),
        key: str,
        replied_picture: tuple[int, int] | None = None,
    ) -> None:
        """Run a command ``tg_user`` gave (typed in ``msg``, or a button under ``msg``) and
        answer in reply to ``msg``: on a status message of its own when it starts something
        that reports, else with its text, pictures and buttons."""
        chat, user = msg.chat, self._user(tg_user)
        reply_to = ReplyTo(
            platform="telegram",
            chat=chat.id,
            person=str(tg_user.id),
            thread=msg.message_thread_id
            if msg.is_topic_message and msg.message_thread_id
            else None,
        )
        incoming = Incoming(
            user=user,
            text=text,
            reply_to=reply_to,
            image=image,
            more_images=more_images,
            fit_more=fit_more,
            notes=notes,
            replied_picture=replied_picture,
            message_key=key,
            is_admin=self.is_admin(tg_user.id),
            lang=tg_user.language_code,
            nsfw_ok=self._nsfw_policy(chat.id) == "allow",
            texts="telegram",
        )
        opened: dict[str, Any] = {}
        if self.app.commands.wants_status(text):
            lang = await self.lang_of(user)
            incoming.reply_to = reply_to.with_(lang=lang)
            incoming.on_accept = functools.partial(self._open_status, msg, lang, opened)
        reply = await self.app.commands.handle(incoming)
        status = opened.get("status_message")
        if status is None:  # a refusal, an answer, or the same message again: said directly
            await self._answer(msg, reply)
        elif not self.edits.is_final((chat.id, status)):
            # what it started may have ended already, its outcome shown: that stays
            await self._edit_status(chat.id, status, reply.text)

    async def _open_status(self, msg: Message, lang: str, opened: dict[str, Any]) -> dict[str, Any]:
        """The core accepted the job (``Incoming.on_accept``): its status message, once, in
        reply to ``msg``; the job carries its id from its first moment."""
        if not opened:
            status = await self._say(msg, t(lang, "tg.working"))
            if status is None:  # the chat cannot be reached: nothing is queued or charged
                raise UserError("this chat cannot be reached")
            opened.update(source_message=msg.message_id, status_message=status.message_id)
        return dict(opened)

    async def _answer(self, msg: Message, reply: Reply) -> None:
        """A reply with its pictures and buttons: one picture goes as a photo captioned with
        the text when that fits (Telegram allows 1024 characters), several as an album before
        the text; the buttons go under the last message. A picture Telegram refuses is left
        out, never the text."""
        markup = _action_markup(reply.actions)
        pictures = reply.pictures[:ALBUM_MAX]
        if len(pictures) == 1 and len(reply.text) <= MAX_CAPTION:
            if await self._send_preview(msg, [(pictures[0].data, reply.text)], markup):
                return
        elif pictures:
            await self._send_preview(msg, [(p.data, p.caption) for p in pictures], None)
        await self._say(msg, reply.text, markup=markup, link_preview=not pictures)

    async def _send_preview(
        self, msg: Message, pictures: list[tuple[bytes, str]], markup: Any
    ) -> bool:
        """One photo (with ``markup``) or an album, in reply to ``msg``; False if it failed."""
        reply = ReplyParameters(msg.message_id, allow_sending_without_reply=True)
        thread = msg.message_thread_id if msg.is_topic_message else None
        try:
            if len(pictures) == 1:
                data, caption = pictures[0]
                await self.pacer.call(
                    msg.chat.id,
                    lambda cid: self.bot.send_photo(
                        cid,
                        data,
                        caption=clip(caption, MAX_CAPTION),
                        reply_markup=markup,
                        reply_parameters=reply,
                        message_thread_id=thread,
                    ),
                )
            else:
                media = [InputMediaPhoto(d, caption=clip(c, MAX_CAPTION)) for d, c in pictures]
                await self.pacer.call(
                    msg.chat.id,
                    lambda cid: self.bot.send_media_group(
                        cid, media, reply_parameters=reply, message_thread_id=thread
                    ),
                )
        except Exception as exc:
            if not is_gone(exc):
                log.info("telegram: pictures of a reply in chat %s failed: %s", msg.chat.id, exc)
            return False
        return True

    @staticmethod
    def _has_picture(msg: Message) -> bool:
        if msg.photo:
            return True
        doc = msg.document
        return doc is not None and (doc.mime_type or "").startswith("image/")

    def _is_own(self, msg: Message) -> bool:
        return msg.from_user is not None and msg.from_user.id == self.bot.id

    async def _picture_of(self, msg: Message) -> bytes:
        """The picture a message carries: the bot's own original PNG when it is one of
        ours (Telegram's copy is a recompressed JPEG without the parameters), else the
        largest photo size or the image file, after checking Telegram's download limit."""
        if self._is_own(msg):
            ref = self._picture_ref(msg)
            if ref is not None:
                with contextlib.suppress(UserError):
                    return await self.results.picture_bytes(await self.results.picture(*ref))
        if msg.photo:
            item: Any = msg.photo[-1]
        else:
            item = msg.document
            mime = item.mime_type or ""
            if not mime.startswith("image/"):
                raise UserError.of("tg.not_a_picture", mime=mime or "?")
        size = item.file_size or 0
        limit_mb = LOCAL_MAX_MB if self.cfg.local_mode else MAX_DOWNLOAD_MB
        if size > limit_mb * 1024 * 1024:
            raise UserError.of(
                "tg.too_big_download",
                mb=size / 1024 / 1024,
                limit=limit_mb,
            )
        max_input = self.app.config.images.max_input_bytes
        if size > max_input:
            raise UserError.of(
                "tg.too_big_input",
                mb=size / 1024 / 1024,
                limit=max_input / 1024 / 1024,
            )
        try:
            file = await item.get_file()
            return bytes(await file.download_as_bytearray())
        except BadRequest as exc:
            if "too big" in exc.message.lower():
                raise UserError.of(
                    "tg.too_big_download",
                    mb=size / 1024 / 1024,
                    limit=limit_mb,
                ) from None
            raise UserError.of("tg.download_failed") from None
        except NetworkError:
            raise UserError.of("tg.download_failed") from None

    @staticmethod
    def _picture_ref(msg: Message) -> tuple[int, int] | None:
        """(job, index) of one of the bot's pictures: from its buttons, else its caption."""
        markup = msg.reply_markup
        if markup is not None:
            for row in markup.inline_keyboard:
                for button in row:
                    parsed = _parse_data(button.callback_data)
                    if parsed is not None:
                        return parsed[1], parsed[2]
        m = _CAPTION_REF.match(msg.caption or "")
        if m:
            return int(m.group(1)), int(m.group(2) or 1) - 1
        return None

    async def _say(
        self, msg: Message, text: str, *, markup: Any = None, link_preview: bool = True
    ) -> Message | None:
        """Reply in the message's chat (and topic), ``markup`` under the last part; None when
        the chat is unreachable."""
        sent: Message | None = None
        parts = split_text(text)
        for i, part in enumerate(parts):
            try:
                sent = await self.pacer.call(
                    msg.chat.id,
                    functools.partial(
                        self.bot.send_message,
                        text=part,
                        reply_parameters=ReplyParameters(
                            msg.message_id, allow_sending_without_reply=True
                        ),
                        message_thread_id=msg.message_thread_id if msg.is_topic_message else None,
                        reply_markup=markup if i == len(parts) - 1 else None,
                        link_preview_options=None
                        if link_preview
                        else LinkPreviewOptions(is_disabled=True),
                    ),
                )
            except Exception as exc:
                if not is_gone(exc):
                    log.warning("telegram: replying in chat %s failed: %s", msg.chat.id, exc)
                return None
        return sent

    # --- buttons -------------------------------------------------------------------------

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        if isinstance(query.data, str) and query.data.startswith(COMMAND_DATA):
            await self._on_command_button(query, query.data[len(COMMAND_DATA) :])
            return
        parsed = _parse_data(query.data)
        user = self._user(query.from_user)
        lang = await self.lang_of(user)
        message = query.message if isinstance(query.message, Message) else None
        if parsed is None or message is None:
            await _answer(query)
            return
        action, job_id, idx = parsed
        chat_id = message.chat.id
        if not self._allowed(chat_id, query.from_user.id):
            await _answer(query, t(lang, "tg.private", id=query.from_user.id), alert=True)
            return
        if action != "original":  # Original may still answer with an alert
            await _answer(query)  # at once: the spinner on the button stops
        try:
            if action in REMAKE_ACTIONS:
                reply_to = ReplyTo(
                    platform="telegram",
                    chat=chat_id,
                    person=str(query.from_user.id),
                    lang=lang,
                    nsfw_ok=self._nsfw_policy(chat_id) == "allow",
                    thread=message.message_thread_id
                    if message.is_topic_message and message.message_thread_id
                    else None,
                )
                text, status = await self.remake(
                    action,
                    user,
                    job_id,
                    idx,
                    reply_to,
                    lang,
                    idem_key=f"telegram:cb:{query.id}",
                    open_status=functools.partial(self._open_status, message, lang),
                )
                if status is None:  # refused, or the same press again: said directly
                    await self._say(message, text)
                elif not self.edits.is_final((chat_id, status)):
                    await self._edit_status(chat_id, status, text)
            elif action == "original":
                picture = await self.results.picture(job_id, idx, by=user)
                refusal = await self._original_refusal(picture, message, query.from_user)
                await _answer(query, t(lang, refusal) if refusal else None, alert=bool(refusal))
                if refusal is not None:
                    return
                data = await self.results.picture_bytes(picture)
                limit = (LOCAL_MAX_MB if self.cfg.local_mode else MAX_UPLOAD_MB) * 1024 * 1024
                if len(data) > limit:
                    await self._say(
                        message,
                        t(
                            lang,
                            "tg.too_big_upload",
                            k=idx + 1,
                            job=job_id,
                            mb=len(data) / 1024 / 1024,
                            limit=limit // 1024 // 1024,
                        ),
                    )
                    return
                caption = t(lang, "tg.original_caption", job=job_id, k=idx + 1)
                await self.pacer.call(
                    chat_id,
                    lambda cid: self.bot.send_document(
                        cid,
                        data,
                        filename=f"sdhost-{job_id}-{idx + 1}.png",
                        caption=caption,
                        disable_content_type_detection=True,
                        reply_parameters=ReplyParameters(
                            message.message_id, allow_sending_without_reply=True
                        ),
                        message_thread_id=message.message_thread_id
                        if message.is_topic_message
                        else None,
                    ),
                )
            else:
                picture = await self.results.picture(job_id, idx, by=user)
                await self._say(message, format_image_info(picture.job, picture.image, lang))
        except UserError as exc:
            if action == "original":
                await _answer(query)
            await self._say(message, exc.render(lang))

    async def _original_refusal(self, picture: Any, message: Message, tg_user: Any) -> str | None:
        """Why the Original button gives no file here (a catalogue key), or None.

        The chat's NSFW policy holds for the PNG too: Telegram cannot hide a document behind
        a spoiler (``has_spoiler`` exists for sendPhoto, sendVideo and sendAnimation, not
        sendDocument; /bots/api#senddocument), so a flagged picture's PNG goes only where
        NSFW is allowed. In a group only the person who asked (or an admin) gets the file:
        anyone else pressing would repost it for everybody."""
        chat_id = message.chat.id
        flagged = await self.results.is_nsfw(picture)
        policy = picture_policy(flagged, self._nsfw_policy(chat_id))
        if policy == "withhold":
            return "tg.original_withheld_block"
        if policy == "spoiler":
            return "tg.original_withheld_blur"
        if message.chat.type != "private" and not self.is_admin(tg_user.id):
            person = await self.app.jobs.user(self._user(tg_user))
            if person.id != picture.job.user_id:
                return "tg.original_not_yours"
        return None

    async def _on_command_button(self, query: Any, command: str) -> None:
        """A button that runs a command (``bot.commands.Action``), as its presser."""
        message = query.message if isinstance(query.message, Message) else None
        if message is None or not command.startswith("/"):
            await _answer(query)
            return
        if not self._allowed(message.chat.id, query.from_user.id):
            lang = await self.lang_of(self._user(query.from_user))
            await _answer(query, t(lang, "tg.private", id=query.from_user.id), alert=True)
            return
        await _answer(query)  # at once: the spinner on the button stops
        await self._run_command(message, query.from_user, command, key=f"telegram:cb:{query.id}")


def _action_markup(actions: list[Action]) -> InlineKeyboardMarkup | None:
    """Buttons that run commands, up to three a row."""
    if not actions:
        return None
    buttons = [
        InlineKeyboardButton(a.label, callback_data=COMMAND_DATA + a.command) for a in actions
    ]
    return InlineKeyboardMarkup([buttons[i : i + 3] for i in range(0, len(buttons), 3)])


def _parse_data(data: object) -> tuple[str, int, int] | None:
    if not isinstance(data, str):
        return None
    parts = data.split(":")
    if len(parts) != 3 or parts[0] not in ACTIONS:
        return None
    job_id = parse_id(parts[1])  # buttons can be forged: ASCII digits within range only
    if job_id is None or not is_digits(parts[2]) or len(parts[2]) > 9:
        return None
    return ACTIONS[parts[0]], job_id, int(parts[2])


async def _answer(query: Any, text: str | None = None, *, alert: bool = False) -> None:
    with contextlib.suppress(Exception):  # an old query (>15 min) cannot be answered: fine
        await query.answer(text=clip(text, 200) if text else None, show_alert=alert)
