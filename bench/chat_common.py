"""What the chat-adapter benchmarks share: a fake service in its own process, and a count
of the pictures the outbox has delivered."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bot.app import App

ROOT = Path(__file__).resolve().parents[1]


async def start_fake(module: str) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m MODULE --port 0`` (a fake in tests/fakes); returns it and its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().strip()
    if not line.startswith("READY "):
        raise RuntimeError(f"the fake did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def sent_pictures(app: App) -> int:
    def count(conn: Any) -> int:
        return int(
            conn.execute(
                text("SELECT count(*) FROM outbox WHERE kind = 'image' AND status = 'sent'")
            ).scalar_one()
        )

    return await app.db.run_read(count)
