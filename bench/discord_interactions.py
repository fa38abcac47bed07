"""Interactions per second through the Discord adapter, against the fake Discord in a subprocess.

    python bench/discord_interactions.py [--credits 600] [--imagine 200]

The fake (REST, gateway, CDN) runs in its own process; sdhost runs here with SQLite and the
demo provider at zero latency, logged in with discord.py. Slash commands are injected through
the fake's control API as fast as it takes them (each one is dispatched over the gateway at
once), and the clock runs until the adapter has answered every one (deferred, handled, the
original response edited) and, for /imagine, until every picture was posted.
Not part of CI: timings on a shared 2-core machine are noisy.
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

from adapters.chat.discord import DiscordAdapter
from bench.chat_common import sent_pictures, start_fake
from bot.app import App
from bot.config import Config
from tests.fakes.discord_api import DEFAULT_TOKEN, FakeDiscordRemote

ROOT = Path(__file__).resolve().parents[1]


def config(tmp: Path, url: str) -> Config:
    return Config.model_validate(
        {
            "data": {"dir": str(tmp / "data")},
            "credits": {"starting_grant": 100_000},
            "queue": {"max_queued_per_user": 1000, "max_running_per_user": 8},
            "providers": {"demo": {"latency_s": 0.0, "concurrency": 8}},
            "discord": {
                "token": DEFAULT_TOKEN,
                "api_base_url": f"{url}/api/v10",
                "gateway_url": url.replace("http://", "ws://") + "/",
            },
            "logging": {"level": "ERROR"},
        }
    )


async def scenario(name: str, n: int, options: dict[str, Any] | None) -> dict[str, Any]:
    command = "imagine" if options else "credits"
    proc, url = await start_fake("tests.fakes.discord_api")
    try:
        async with FakeDiscordRemote(url) as fake:
            with tempfile.TemporaryDirectory() as tmp:
                app = App(config(Path(tmp), url))
                app.add_configured_adapters()
                adapter = app.adapters["discord"]
                assert isinstance(adapter, DiscordAdapter)
                adapter.client._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
                await app.start()
                try:
                    t0 = time.perf_counter()
                    sem = asyncio.Semaphore(16)

                    async def one(i: int) -> None:
                        async with sem:
                            await fake.slash(command, dict(options or {}))

                    await asyncio.gather(*(one(i) for i in range(n)))
                    injected = time.perf_counter() - t0
                    while adapter.interactions_handled < n:
                        await asyncio.sleep(0.01)
                    handled = time.perf_counter() - t0
                    delivered = None
                    if options:
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
        "n": n,
        "injected_s": injected,
        "handled_s": handled,
        "per_s": n / handled,
        "delivered_s": delivered,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--credits", type=int, default=600)
    parser.add_argument("--imagine", type=int, default=200)
    args = parser.parse_args()
    rows = [
        await scenario("/credits", args.credits, None),
        await scenario("/imagine 256x256", args.imagine, {"prompt": "bench --size 256x256"}),
    ]
    table = Table(title="Discord adapter against the fake Discord (SQLite, demo provider)")
    for col in (
        "scenario",
        "interactions",
        "injected in s",
        "answered in s",
        "per s",
        "pictures in s",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(
            r["scenario"],
            str(r["n"]),
            f"{r['injected_s']:.2f}",
            f"{r['handled_s']:.2f}",
            f"{r['per_s']:.0f}",
            f"{r['delivered_s']:.2f}" if r["delivered_s"] is not None else "-",
        )
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
