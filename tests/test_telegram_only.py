"""A Telegram-only bot, exactly as the README's Telegram steps make one (issue 13).

``sdhost run`` as a subprocess with only the Telegram token and the fake's URLs configured
(no Discord section, no Discord token anywhere in its environment): /start, /help, /imagine
and the buttons under the picture are answered, as seen at the fake Bot API
(tests/fakes/telegram.py). A text defined only where another platform is loaded once broke a
Discord-only bot this way; this test runs the same check for Telegram.
"""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.i18n import t
from tests.conftest import process_env
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ANN = 1001


@asynccontextmanager
async def telegram_only(config: Path, token: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``sdhost run`` with the Telegram token as its only platform; stopped with SIGTERM,
    which must end it cleanly and without a traceback."""
    environ = process_env(SDHOST_TELEGRAM__TOKEN=token)
    for name in list(environ):
        if name.upper().startswith("SDHOST_DISCORD"):
            del environ[name]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        assert b"telegram" in line and b"discord" not in line.lower(), line
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
    stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "KeyError" not in stderr, stderr


async def until(pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = pred()
            if value:
                return value
            await asyncio.sleep(0.05)


async def test_a_telegram_only_process_answers_everything(tmp_path: Path) -> None:
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

        def texts() -> list[str]:
            return [m.text for m in tg.sent_messages(ANN) if m.text]

        async with telegram_only(cfg, tg.token):
            tg.inject_message(ANN, ANN, "/start")
            [welcome] = await until(texts)
            assert welcome == t("en", "chat.welcome.telegram", balance=20)

            tg.inject_message(ANN, ANN, "/help")
            await until(lambda: len(texts()) >= 2)
            assert texts()[1].startswith(t("en", "chat.help.telegram"))

            tg.inject_message(ANN, ANN, "/imagine a windmill --ar 3:2 --seed 5")
            photo = (await until(lambda: [m for m in tg.sent_messages(ANN) if m.photo_bytes]))[0]
            picture = Image.open(io.BytesIO(photo.photo_bytes))
            assert picture.width > picture.height
            buttons = [
                b["callback_data"] for row in photo.reply_markup["inline_keyboard"] for b in row
            ]

            info = next(b for b in buttons if b.startswith("i:"))
            tg.inject_callback_query(ANN, ANN, photo.message_id, info)
            await until(lambda: [x for x in texts() if "windmill" in x and "5" in x])

            original = next(b for b in buttons if b.startswith("o:"))
            tg.inject_callback_query(ANN, ANN, photo.message_id, original)
            doc = await until(lambda: [m for m in tg.sent_messages(ANN) if m.document_bytes])
            assert doc[0].caption == t("en", "tg.original_caption", job=1, k=1)
            assert Image.open(io.BytesIO(doc[0].document_bytes)).format == "PNG"

            answered = await until(
                lambda: (
                    tg.calls_of("answerCallbackQuery")[1:] and tg.calls_of("answerCallbackQuery")
                )
            )
            assert all(c.ok for c in answered)
