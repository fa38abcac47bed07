"""One Telegram bot, several sdhost processes behind a balancer: the webhook shared.

Two Apps (each its own Database object on the same database) serve the webhook on their own
ports, with the real python-telegram-bot handling updates and the fake Bot API recording
what the bot sent. Updates are posted to the processes as Telegram (through a balancer)
would: with the secret header, sometimes twice, to either process.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from telegram import Bot
from telegram.ext import Application

from adapters.chat.telegram import TelegramAdapter
from bot.app import App
from bot.errors import UserError
from storage.models import IncomingUpdate
from tests.conftest import make_config
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ANN = 1001
BOB = 1002
SECRET = "shared-Secret_0123456789"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
incoming = IncomingUpdate.__table__


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Processes of one bot sharing a database, each with its own webhook port."""

    def __init__(self, tg: FakeTelegram, tmp_path: Path, db_url: str) -> None:
        self.tg = tg
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.apps: list[App] = []

    def config(self, name: str, **telegram: Any) -> Any:
        section = {
            "token": self.tg.token,
            "base_url": self.tg.base_url,
            "base_file_url": self.tg.base_file_url,
            "poll_timeout_s": 1,
            "per_chat_per_s": 1000.0,
            "per_group_per_min": 60000,
            "mode": "webhook",
            "webhook_listen": "127.0.0.1",
            "webhook_port": _free_port(),
            "webhook_url": "http://127.0.0.1:9/telegram",  # the balancer's (not reached)
            "webhook_secret": SECRET,
            **telegram,
        }
        config = make_config(
            self.tmp_path / name,
            self.db_url,
            telegram=section,
            providers={"demo": {"latency_s": 0.05}},
            civitai={"base_url": "http://127.0.0.1:9", "image_hosts": ["127.0.0.1"]},
        )
        config.database.auto_migrate = False
        return config

    async def start(self, name: str, **telegram: Any) -> TelegramAdapter:
        app = App(self.config(name, **telegram))
        app.add_configured_adapters()
        if self.db_url.startswith("sqlite"):
            await app.db.create_all()
        self.apps.append(app)
        await app.start()
        adapter = app.adapters["telegram"]
        assert isinstance(adapter, TelegramAdapter)
        return adapter

    async def stop(self, adapter: TelegramAdapter | None = None) -> None:
        for app in list(self.apps):
            if adapter is None or app.adapters.get("telegram") is adapter:
                self.apps.remove(app)
                await app.stop()

    async def rows(self) -> list[Any]:
        db = self.apps[0].db
        return await db.run_read(
            lambda c: c.execute(select(incoming).order_by(incoming.c.update_id)).all()
        )

    async def until(self, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = pred()
                if value:
                    return value
                await asyncio.sleep(0.02)

    def replies(self, chat: int) -> list[str]:
        return [m.text or "" for m in self.tg.sent_messages(chat) if m.text is not None]


@pytest.fixture
async def cluster(tmp_path: Path, db_url: str) -> AsyncIterator[Cluster]:
    async with FakeTelegram() as tg:
        c = Cluster(tg, tmp_path, db_url)
        try:
            yield c
        finally:
            await c.stop()


def url_of(adapter: TelegramAdapter) -> str:
    return f"http://127.0.0.1:{adapter.webhook_port}/telegram"


async def post(client: httpx.AsyncClient, adapter: TelegramAdapter, update: Any) -> int:
    got = await client.post(url_of(adapter), json=update, headers={HEADER: SECRET})
    return got.status_code


async def test_the_same_update_posted_to_both_processes_is_answered_once(
    cluster: Cluster,
) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    assert cluster.tg.calls_of("setWebhook") == []  # not set per process unless told
    update = cluster.tg.inject_message(ANN, ANN, "/credits")
    async with httpx.AsyncClient() as client:
        statuses = await asyncio.gather(post(client, a, update), post(client, b, update))
        assert statuses == [200, 200]
        await cluster.until(lambda: cluster.replies(ANN))
        await asyncio.sleep(1.0)  # both claimers had time to answer it a second time
        assert await post(client, b, update) == 200  # and a late retry of Telegram's
        await asyncio.sleep(0.5)
    assert len(cluster.replies(ANN)) == 1
    assert len(cluster.tg.calls_of("sendMessage")) == 1
    assert a.updates_handled + b.updates_handled == 1
    assert len(await cluster.rows()) == 1


async def test_a_burst_for_two_chats_across_both_processes_runs_in_order_per_chat(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[tuple[int, int, float, float]] = []  # chat, update_id, start, end
    original = Application.process_update

    async def slow_and_recorded(self: Any, update: Any) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.05)  # widen the window for an out-of-order overlap
        await original(self, update)
        handled.append((update.effective_chat.id, update.update_id, start, time.monotonic()))

    monkeypatch.setattr(Application, "process_update", slow_and_recorded)
    a = await cluster.start("a")
    b = await cluster.start("b")
    per_chat = 8
    updates = []
    for _ in range(per_chat):
        updates.append(cluster.tg.inject_message(ANN, ANN, "/credits"))
        updates.append(cluster.tg.inject_message(BOB, BOB, "/credits", first_name="Bob"))
    async with httpx.AsyncClient() as client:
        for i, update in enumerate(updates):
            assert await post(client, (a, b)[i % 2], update) == 200
    await cluster.until(lambda: len(handled) == 2 * per_chat, timeout=30)
    for chat in (ANN, BOB):
        mine = [h for h in handled if h[0] == chat]
        ids = [h[1] for h in mine]
        assert ids == sorted(ids), f"chat {chat} handled out of order: {ids}"
        for earlier, later in itertools.pairwise(mine):
            assert earlier[3] <= later[2], f"chat {chat}: two updates at once"
        await cluster.until(lambda c=chat: len(cluster.replies(c)) == per_chat)
    await cluster.until(lambda: a.updates_handled + b.updates_handled == 2 * per_chat)


async def test_a_bad_secret_is_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    a = await cluster.start("a")
    update = cluster.tg.inject_message(ANN, ANN, "/credits")
    async with httpx.AsyncClient() as client:
        for wrong in ("shared-Secret_0123456788", "", SECRET + "x"):
            got = await client.post(url_of(a), json=update, headers={HEADER: wrong})
            assert got.status_code == 403
        got = await client.post(url_of(a), json=update)
        assert got.status_code == 403
    await asyncio.sleep(0.5)
    assert await cluster.rows() == []
    assert cluster.replies(ANN) == [] and a.updates_handled == 0


async def test_an_update_of_a_process_that_died_is_handled_by_the_other(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Application.process_update
    stuck = asyncio.Event()

    async def hangs_in_a(self: Any, update: Any) -> None:
        if self is a.application:
            stuck.set()
            await asyncio.Event().wait()  # the process dies before it finishes
        await original(self, update)

    monkeypatch.setattr(Application, "process_update", hangs_in_a)
    a = await cluster.start("a", update_lease_s=1.0)
    # a killed process runs no shutdown code: it gives nothing back (only its lease lapses)
    monkeypatch.setattr(a._inbox, "release", _nothing)
    update = cluster.tg.inject_message(ANN, ANN, "/credits")
    async with httpx.AsyncClient() as client:
        assert await post(client, a, update) == 200
    async with asyncio.timeout(10):
        await stuck.wait()
    [row] = await cluster.rows()
    assert row.claimed_by == cluster.apps[0].owner and row.done_at is None
    b = await cluster.start("b", update_lease_s=1.0)
    await asyncio.sleep(0.5)
    assert cluster.replies(ANN) == []  # a's lease still holds it
    await cluster.stop(a)  # killed mid-update: nothing marks it done or gives it back
    await cluster.until(lambda: cluster.replies(ANN), timeout=10)
    # the reply goes out before the handler returns and counts it
    await cluster.until(lambda: b.updates_handled == 1, timeout=10)
    async with asyncio.timeout(5):
        while (await cluster.rows())[0].done_at is None:
            await asyncio.sleep(0.05)
    [row] = await cluster.rows()
    assert row.claimed_by == cluster.apps[0].owner  # b's
    assert len(cluster.replies(ANN)) == 1


async def _nothing() -> None:
    return None


async def test_a_process_stopping_mid_update_gives_it_back_at_once(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Application.process_update

    async def hangs_in_a(self: Any, update: Any) -> None:
        if self is a.application:
            await asyncio.Event().wait()
        await original(self, update)

    monkeypatch.setattr(Application, "process_update", hangs_in_a)
    a = await cluster.start("a", update_lease_s=60.0)
    update = cluster.tg.inject_message(ANN, ANN, "/credits")
    async with httpx.AsyncClient() as client:
        assert await post(client, a, update) == 200
    async with asyncio.timeout(10):
        while (await cluster.rows())[0].claimed_by is None:
            await asyncio.sleep(0.05)
    assert (await cluster.rows())[0].claimed_by == cluster.apps[0].owner
    b = await cluster.start("b", update_lease_s=60.0)
    await asyncio.sleep(0.6)
    assert cluster.replies(ANN) == []  # a holds it
    await cluster.stop(a)  # a clean stop: long before the 60 s lease runs out
    await cluster.until(lambda: cluster.replies(ANN), timeout=5)
    await cluster.until(lambda: b.updates_handled == 1, timeout=10)  # counted once it returns


async def test_stored_updates_are_forgotten_by_age(cluster: Cluster) -> None:
    a = await cluster.start("a")
    old = cluster.tg.inject_message(ANN, ANN, "/credits")
    fresh = cluster.tg.inject_message(BOB, BOB, "/credits")
    async with httpx.AsyncClient() as client:
        assert await post(client, a, old) == 200
        await cluster.until(lambda: cluster.replies(ANN))
        assert await post(client, a, fresh) == 200
        await cluster.until(lambda: cluster.replies(BOB))
    db = cluster.apps[0].db
    three_days = 3 * 86400.0
    await db.run_write(
        lambda c: c.execute(
            update(incoming)
            .where(incoming.c.update_id == old["update_id"])
            .values(received_at=incoming.c.received_at - three_days)
        )
    )
    inbox = cluster.apps[0].inbox(f"telegram:{cluster.tg.token.partition(':')[0]}")
    assert await inbox.forget_old() == 1
    assert [r.update_id for r in await cluster.rows()] == [fresh["update_id"]]
    # Telegram reuses ids after a quiet week: a forgotten id is a new update again
    async with httpx.AsyncClient() as client:
        assert await post(client, a, old) == 200
    await cluster.until(lambda: len(cluster.replies(ANN)) == 2)
    count = await db.run_read(
        lambda c: c.execute(select(func.count()).select_from(incoming)).scalar_one()
    )
    assert count == 2


async def test_polling_under_a_webhook_refuses_to_start_and_leaves_it(
    cluster: Cluster,
) -> None:
    balancer = "http://127.0.0.1:9/telegram"
    async with Bot(
        cluster.tg.token, base_url=cluster.tg.base_url, base_file_url=cluster.tg.base_file_url
    ) as bot:
        assert await bot.set_webhook(balancer, secret_token=SECRET)
        with pytest.raises(UserError, match="webhook is set"):
            await cluster.start("poller", mode="polling")
        assert cluster.tg.calls_of("deleteWebhook") == []
        assert cluster.tg.calls_of("getUpdates") == []
        assert (await bot.get_webhook_info()).url == balancer


async def test_webhook_processes_set_the_webhook_only_when_told(cluster: Cluster) -> None:
    await cluster.start("a")
    assert cluster.tg.calls_of("setWebhook") == []
    await cluster.start("b", set_webhook=True)
    [call] = cluster.tg.calls_of("setWebhook")
    assert call.params["url"] == "http://127.0.0.1:9/telegram"
    assert call.params["secret_token"] == SECRET


def test_the_webhook_url_and_secret_are_checked_at_config_load() -> None:
    from bot.config import TelegramConfig

    ok = TelegramConfig(
        token="1:x", mode="webhook", webhook_url="https://bot.example.net:8443/telegram/a"
    )
    assert ok.webhook_url.endswith("/a")
    TelegramConfig(token="1:x", mode="webhook", webhook_url="https://bot.example.net/t")
    for url in ("https://bot.example.net:8444/t", "http://bot.example.net/t"):
        with pytest.raises(ValueError, match=r"8443|https"):
            TelegramConfig(token="1:x", mode="webhook", webhook_url=url)
    for secret in ("bad token!", "x" * 257, "é"):
        with pytest.raises(ValueError, match="A-Z a-z 0-9 _ -"):
            TelegramConfig(token="1:x", webhook_secret=secret)
    TelegramConfig(token="1:x", webhook_secret="A-z_09" * 40)


async def test_sdhost_telegram_sets_the_webhook_once_and_deletes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    async with FakeTelegram() as tg:
        config = tmp_path / "config.toml"
        config.write_text(
            "[telegram]\n"
            f'token = "{tg.token}"\n'
            f'base_url = "{tg.base_url}"\n'
            f'base_file_url = "{tg.base_file_url}"\n'
            'mode = "webhook"\n'
            'webhook_url = "http://127.0.0.1:9/telegram/hook"\n'
            f'webhook_secret = "{SECRET}"\n'
            f'[data]\ndir = "{tmp_path / "data"}"\n',
            encoding="utf-8",
        )
        code = await asyncio.to_thread(main, ["-c", str(config), "telegram", "set-webhook"])
        assert code == 0 and "webhook set" in capsys.readouterr().out
        [call] = tg.calls_of("setWebhook")
        assert call.params["url"] == "http://127.0.0.1:9/telegram/hook"
        assert call.params["secret_token"] == SECRET
        assert "message" in call.params["allowed_updates"]
        code = await asyncio.to_thread(main, ["-c", str(config), "telegram", "delete-webhook"])
        assert code == 0 and len(tg.calls_of("deleteWebhook")) == 1
        [drop] = [c.params.get("drop_pending_updates") for c in tg.calls_of("deleteWebhook")]
        assert drop in (None, False)  # updates not yet taken stay for the poller
