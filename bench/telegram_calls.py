"""Bot API calls for one ``/imagine a cat --n 4`` in a private chat, against the fake.

    python bench/telegram_calls.py [--latency 1.5] [--group]

sdhost runs here with SQLite, the demo provider (default latency) and Telegram's default
pacing, polling the in-process fake Bot API. One message is injected; the script counts
the calls the fake received from that message until the last picture is in the chat, and
until the status message shows the outcome, by method, with when each came (seconds after
the message). ``--group`` sends the command in a group instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from bot.app import App
from bot.config import Config
from tests.fakes.telegram import FakeTelegram

PERSON = 1001
GROUP = -2001
PICTURE_METHODS = ("sendPhoto", "sendDocument", "sendMediaGroup")


def config(tmp: Path, tg: FakeTelegram, latency: float) -> Config:
    return Config.model_validate(
        {
            "data": {"dir": str(tmp / "data")},
            "queue": {"poll_idle_s": 0.05},
            "providers": {"demo": {"latency_s": latency}},
            "telegram": {
                "token": tg.token,
                "base_url": tg.base_url,
                "base_file_url": tg.base_file_url,
                "poll_timeout_s": 1,
            },
            "logging": {"level": "ERROR"},
        }
    )


def pictures_in(tg: FakeTelegram, chat: int) -> int:
    return sum(1 for m in tg.sent_messages(chat) if m.photo_bytes is not None)


async def run(latency: float, chat: int) -> tuple[list[Any], float, float]:
    async with FakeTelegram() as tg:
        with tempfile.TemporaryDirectory() as tmp:
            app = App(config(Path(tmp), tg, latency))
            app.add_configured_adapters()
            await app.start()
            try:
                await tg.wait_for(method="setMyCommands", timeout=10)
                await asyncio.sleep(0.5)
                start = len(tg.get_calls())
                t0 = time.monotonic()
                kind = "group" if chat < 0 else "private"
                tg.inject_message(chat, PERSON, "/imagine a cat --n 4", chat_type=kind)
                async with asyncio.timeout(120):
                    while pictures_in(tg, chat) < 4:
                        await asyncio.sleep(0.01)
                    while not any("✅" in (m.text or "") for m in tg.sent_messages(chat) if m.text):
                        await asyncio.sleep(0.01)
                await asyncio.sleep(3.0)  # anything sent after the outcome counts too
                calls = [c for c in tg.get_calls()[start:] if c.api_method != "getUpdates"]
                first = calls[0].time if calls else 0.0
                last = max(i for i, c in enumerate(calls) if c.api_method in PICTURE_METHODS)
                return calls, last + 1, first - t0
            finally:
                await app.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=1.5)
    parser.add_argument("--group", action="store_true")
    args = parser.parse_args()
    calls, to_last_picture, _ = await run(args.latency, GROUP if args.group else PERSON)
    where = "a group" if args.group else "a private chat"
    counts = Counter(c.api_method for c in calls)
    table = Table(title=f"Bot API calls for /imagine a cat --n 4 in {where}")
    table.add_column("method")
    table.add_column("calls", justify="right")
    for method, n in sorted(counts.items()):
        table.add_row(method, str(n))
    table.add_row("total (to the outcome)", str(len(calls)))
    table.add_row("total (to the last picture)", str(to_last_picture))
    console = Console()
    console.print(table)
    t0 = calls[0].time if calls else 0.0
    for c in calls:
        extra = ""
        if c.api_method == "editMessageText":
            extra = repr(str(c.params.get("text", "")).split("\n")[0][:50])
        console.print(f"  {c.time - t0:6.2f}s  {c.api_method:<16} {c.status}  {extra}")


if __name__ == "__main__":
    asyncio.run(main())
