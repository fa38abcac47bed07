"""Updates per second through the Telegram adapter, against the fake Bot API in a subprocess.

    python bench/telegram_updates.py [--updates 2000] [--chats 200] [--imagine 600]

The fake runs in its own process (as Telegram would be elsewhere); sdhost runs here with
SQLite and the demo provider at zero latency, polling the fake with python-telegram-bot.
Updates are queued in the fake first, then the clock runs from the first getUpdates until
the adapter has handled every one of them (a handled command has had its reply sent).

It prints, per scenario, updates handled per second and, for /imagine, how long until every
picture was in its chat. "unpaced" lifts sdhost's own flood pacing to see the adapter's
ceiling; "paced" keeps Telegram's limits (30 messages/s overall), which is what a real bot
would see. Not part of CI: timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from adapters.chat.telegram import TelegramAdapter
from bench.chat_common import sent_pictures, start_fake
from bot.app import App
from bot.config import Config
from tests.fakes.telegram import DEFAULT_TOKEN, FakeTelegramRemote


def config(tmp: Path, url: str, *, paced: bool) -> Config:
    telegram: dict[str, Any] = {
        "token": DEFAULT_TOKEN,
        "base_url": f"{url}/bot",
        "base_file_url": f"{url}/file/bot",
        "poll_timeout_s": 1,
        "progress_edit_s": 2.0,
        "concurrent_updates": 64,
    }
    if not paced:
        telegram.update(per_chat_per_s=1e6, per_group_per_min=1e8, overall_per_s=1e6)
    return Config.model_validate(
        {
            "data": {"dir": str(tmp / "data")},
            "credits": {"starting_grant": 100_000},
            "queue": {"max_queued_per_user": 1000, "max_running_per_user": 8},
            "providers": {"demo": {"latency_s": 0.0, "concurrency": 8}},
            "telegram": telegram,
            "logging": {"level": "ERROR"},
        }
    )


async def scenario(
    name: str, command: str, n: int, chats: int, *, paced: bool, pictures: bool
) -> dict[str, Any]:
    proc, url = await start_fake("tests.fakes.telegram")
    try:
        async with FakeTelegramRemote(url) as fake:
            for i in range(n):
                chat = 10_000 + i % chats
                await fake.inject_message(chat, chat, f"{command} {i}" if pictures else command)
            with tempfile.TemporaryDirectory() as tmp:
                app = App(config(Path(tmp), url, paced=paced))
                app.add_configured_adapters()
                adapter = app.adapters["telegram"]
                assert isinstance(adapter, TelegramAdapter)
                t0 = time.perf_counter()
                await app.start()
                try:
                    while adapter.updates_handled < n:
                        await asyncio.sleep(0.01)
                    handled = time.perf_counter() - t0
                    delivered = None
                    if pictures:
                        while await sent_pictures(app) < n:
                            await asyncio.sleep(0.05)
                        delivered = time.perf_counter() - t0
                finally:
                    await app.stop()
    finally:
        proc.terminate()
        await proc.wait()
    return {
        "scenario": name,
        "updates": n,
        "chats": chats,
        "handled_s": handled,
        "per_s": n / handled,
        "delivered_s": delivered,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--imagine", type=int, default=600)
    args = parser.parse_args()
    rows = [
        await scenario(
            "/credits, unpaced", "/credits", args.updates, args.chats, paced=False, pictures=False
        ),
        await scenario(
            "/imagine, unpaced",
            "/imagine --size 256x256 bench",
            args.imagine,
            args.chats,
            paced=False,
            pictures=True,
        ),
        await scenario(
            "/credits, paced (30 msg/s)",
            "/credits",
            min(args.updates, 600),
            args.chats,
            paced=True,
            pictures=False,
        ),
    ]
    table = Table(title="Telegram adapter against the fake Bot API (SQLite, demo provider)")
    for col in ("scenario", "updates", "chats", "handled in s", "updates/s", "all pictures in s"):
        table.add_column(col, justify="right" if col != "scenario" else "left")
    for r in rows:
        table.add_row(
            r["scenario"],
            str(r["updates"]),
            str(r["chats"]),
            f"{r['handled_s']:.2f}",
            f"{r['per_s']:.0f}",
            f"{r['delivered_s']:.2f}" if r["delivered_s"] is not None else "-",
        )
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
