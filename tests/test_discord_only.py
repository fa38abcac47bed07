"""A Discord-only bot (issue 13, items 2 and 9a): ``sdhost run`` in a process of its own
with exactly what the README's Discord steps give (``SDHOST_DISCORD__TOKEN``, here plus the
fake's addresses) and nothing of Telegram, against the fake Discord.

Every answer must come from texts in the core catalogue, so the Original button, a
picture over the input limit as ``/img2img image:`` and the same picture in Remix all get
a clear answer; and the operator's first lines carry no voice warnings of discord.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.chat_helpers import decoded
from tests.conftest import process_env
from tests.fakes.discord_api import CHANNEL_ID, DEFAULT_TOKEN, FakeDiscord

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MiB = 1024 * 1024


def oversize_png() -> bytes:
    """A real PNG a little over 10 MiB (the default images.max_input_bytes)."""
    width, height = 2000, 1900
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    assert buf.tell() > 10 * MiB
    return buf.getvalue()


class Run:
    """What the process printed (collected as it goes, so its pipes never fill)."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()


@contextlib.asynccontextmanager
async def discord_only(tmp_path: Path, dc: FakeDiscord) -> AsyncIterator[Run]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[data]
dir = "{tmp_path / "data"}"
[providers.demo]
latency_s = 0.05
[discord]
api_base_url = "{dc.api_base}"
gateway_url = "{dc.gateway_url}"
""",
        encoding="utf-8",
    )
    env = process_env(SDHOST_DISCORD__TOKEN=DEFAULT_TOKEN)
    for key in [k for k in env if k.upper().startswith("SDHOST_TELEGRAM")]:
        del env[key]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    run = Run()

    async def drain(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into += chunk

    readers = [
        asyncio.create_task(drain(proc.stdout, run.stdout)),
        asyncio.create_task(drain(proc.stderr, run.stderr)),
    ]
    try:
        async with asyncio.timeout(60):
            while b"\n" not in run.stdout:
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
            await asyncio.gather(*readers)
    assert code == 0, run.stderr.decode(errors="replace")


async def until(pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := pred()):
            await asyncio.sleep(0.05)
        return value


def answer(dc: FakeDiscord, token: str) -> dict[str, Any]:
    """The interaction's response as it stands (deferred, then edited), or {}."""
    mid = dc.interaction(token)["original_message_id"]
    return dc.message(int(mid)) if mid else {}


def text_inputs(modal: dict[str, Any]) -> list[str]:
    """The custom ids of a modal's text inputs, in order (rows or labels around them)."""
    ids: list[str] = []
    for outer in modal.get("components", []):
        for inner in outer.get("components", []) or [outer.get("component") or {}]:
            if inner.get("type") == 4:
                ids.append(inner["custom_id"])
    return ids


async def test_a_discord_only_bot_answers_original_and_too_big_pictures(tmp_path: Path) -> None:
    big = oversize_png()
    async with FakeDiscord() as dc, discord_only(tmp_path, dc) as run:
        dc.configure(attachment_size_limit=25 * MiB)  # a boosted server takes bigger files
        assert b"discord" in run.stdout and b"telegram" not in run.stdout.lower()
        dc.slash("imagine", {"prompt": "a windmill at noon", "seed": 3})
        msg = await until(
            lambda: [m for m in dc.channel_messages(CHANNEL_ID) if m.get("attachments")]
        )

        # Original: the PNG with its caption from the core catalogue
        pressed = dc.button(int(msg[0]["id"]), "sd:o:1:0")
        got = await until(lambda: answer(dc, pressed["token"]).get("attachments"))
        original = answer(dc, pressed["token"])
        assert "#1 picture 1: the original PNG" in original["content"], original
        [(name, data)] = dc.message_files(int(original["id"])).items()
        assert name == "sdhost-1-1.png" and got
        assert "windmill" in decoded(data).info.get("parameters", "")

        # /img2img image: over the limit: a clear answer, not "something went wrong"
        sent = dc.slash(
            "img2img", {"prompt": "as a watercolor"}, attachments={"image": ("big.png", big)}
        )
        refused = await until(lambda: answer(dc, sent["token"]).get("content"))
        assert f"{len(big) / MiB:.1f} MB" in refused and "limit here is 10 MB" in refused

        # Remix of a posted picture over the limit: answered at once (before the box
        # opens), privately, not "thinking…" forever
        posted = dc.post_user_message(CHANNEL_ID, "look", attachments={"big.png": big})
        opened = dc.message_command("Remix", int(posted["id"]))
        remix = await until(lambda: answer(dc, opened["token"]).get("content"))
        assert "limit here is 10 MB" in remix, remix
        assert dc.interaction(opened["token"])["modal"] is None

    err = run.stderr.decode(errors="replace")
    assert "voice" not in err.lower(), err
    assert "KeyError" not in err and "Traceback" not in err, err
