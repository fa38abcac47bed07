"""REST calls the fake Discord receives for one ``/imagine prompt count:4``.

    python bench/discord_calls.py [--latency 1.5] [--slow-latency 15]

Counts every call the fake saw from the interaction to the last picture, then to the
job's final status edit, by kind (interaction callback, edits through the interaction's
token, follow-ups, channel posts and edits with the bot's token, rejected calls). Two
runs: a fresh token, and a token the fake expires right after the receipt (a job of
``--slow-latency`` seconds, as a long queue would make it), which shows how often a dead
token is tried. sdhost runs in this process with SQLite and the demo provider; the fake
too (in-process). Deterministic apart from timing; not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from rich.console import Console
from rich.table import Table

from bot.app import App
from bot.config import Config
from tests.fakes.discord_api import CHANNEL_ID, DEFAULT_TOKEN, FakeDiscord

KINDS = [
    ("callback", "POST", r"^/interactions/\d+/[^/]+/callback$"),
    ("token edit", "PATCH", r"^/webhooks/\d+/[^/]+/messages/"),
    ("token follow-up", "POST", r"^/webhooks/\d+/[^/]+$"),
    ("token read", "GET", r"^/webhooks/\d+/[^/]+/messages/"),
    ("channel post", "POST", r"^/channels/\d+/messages$"),
    ("channel edit", "PATCH", r"^/channels/\d+/messages/\d+$"),
]


def kind_of(method: str, path: str) -> str:
    path = re.sub(r"^/api/v\d+", "", path)
    for name, m, rx in KINDS:
        if method == m and re.search(rx, path):
            return name
    return f"other {method}"


def config(tmp: Path, dc: FakeDiscord, latency: float) -> Config:
    return Config.model_validate(
        {
            "data": {"dir": str(tmp / "data")},
            "database": {"url": f"sqlite+aiosqlite:///{tmp / 'sdhost.db'}"},
            "queue": {"poll_idle_s": 0.05},
            "providers": {"demo": {"latency_s": latency}},
            "discord": {
                "token": DEFAULT_TOKEN,
                "api_base_url": dc.api_base,
                "gateway_url": dc.gateway_url,
            },
            "logging": {"level": "ERROR"},
        }
    )


async def until(pred: Any, timeout: float = 120) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := pred()):
            await asyncio.sleep(0.02)
        return value


async def scenario(latency: float, expire: bool) -> dict[str, Any]:
    async with FakeDiscord() as dc:
        with tempfile.TemporaryDirectory() as tmp:
            app = App(config(Path(tmp), dc, latency))
            app.add_configured_adapters()
            adapter = app.adapters["discord"]
            adapter.client._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
            await app.start()
            try:
                dc.reset_calls()
                t0 = time.perf_counter()
                inter = dc.slash("imagine", {"prompt": "a lighthouse at dusk", "count": 4})
                token = inter["token"]

                def original() -> str:
                    """The job's status message: the public one of the original response
                    and the first follow-up (the original is private for a job)."""
                    info = dc.interaction(token)
                    for mid in [info["original_message_id"], *info["followup_message_ids"][:1]]:
                        msg = dc.message(int(mid)) if mid else {}
                        if msg and not int(msg.get("flags") or 0) & 64:
                            return str(msg.get("content", ""))
                    return ""

                if expire:
                    await until(lambda: "#1" in original())
                    dc.expire_token(token)

                def pictures() -> int:
                    return sum(
                        len(dc.message_files(int(m["id"])))
                        for m in dc.channel_messages(CHANNEL_ID)
                        if m.get("attachments")
                    )

                await until(lambda: pictures() >= 4)
                at_pictures = len(dc.calls())
                t_pictures = time.perf_counter() - t0
                await until(lambda: "succeeded" in original())
                await asyncio.sleep(max(2.5, adapter.cfg.progress_edit_s + 0.5))  # stragglers
                calls = dc.calls()
            finally:
                await app.stop()
    kinds = Counter(kind_of(c.method, c.path) for c in calls[:at_pictures])
    return {
        "kinds": kinds,
        "to_pictures": at_pictures,
        "total": len(calls),
        "rejected": sum(1 for c in calls if c.status in (401, 404)),
        "401": sum(1 for c in calls if c.status == 401),
        "seconds": t_pictures,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.5)
    parser.add_argument("--slow-latency", type=float, default=15.0)
    args = parser.parse_args()
    runs = {
        f"fresh token, {args.latency:g} s job": await scenario(args.latency, False),
        f"token expired early, {args.slow_latency:g} s job": await scenario(
            args.slow_latency, True
        ),
    }
    table = Table(title="REST calls for one /imagine prompt count:4 (to the last picture)")
    table.add_column("calls")
    for name in runs:
        table.add_column(name, justify="right")
    names = sorted({k for r in runs.values() for k in r["kinds"]})
    for kind in names:
        table.add_row(kind, *(str(r["kinds"].get(kind, 0)) for r in runs.values()))
    table.add_row("[b]to the last picture", *(str(r["to_pictures"]) for r in runs.values()))
    table.add_row("[b]to the final status", *(str(r["total"]) for r in runs.values()))
    table.add_row("rejected 401", *(str(r["401"]) for r in runs.values()))
    table.add_row("rejected 401/404", *(str(r["rejected"]) for r in runs.values()))
    table.add_row("seconds to the last picture", *(f"{r['seconds']:.1f}" for r in runs.values()))
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
