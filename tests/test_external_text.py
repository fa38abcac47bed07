"""Text from Civitai (and any service) is shown as text: no control characters, bidi
overrides or markup reach a terminal, a chat or a log line, however the server words it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.civitai.api.client import CivitaiClient
from bot.commands import Incoming
from bot.errors import FailureClass, ProviderFailure
from bot.text import clean, clip, unusable_char
from tests.conftest import REPLY, user
from tests.fakes.civitai import FakeCivitai

ROOT = Path(__file__).resolve().parents[1]
FORGED = "ERROR sdhost: forged"
MARKUP = "[bold red]x[/]"
BAD = ("\x1b", "\u202e", "\u2066", "\x85", "\x00", "\u200b")


def poison(fake: FakeCivitai) -> None:
    """A model name and an image's prompt, username and URL that try everything."""
    model = fake.catalogue.models[4201]
    model.name = f"Photon\n{FORGED}\x1b[31m {MARKUP}\u202eRealism\u2066"
    model.creator = "alice"
    image = next(i for i in fake.catalogue.images if i.id == 90013)
    assert image.meta is not None
    image.meta["prompt"] = f"a red fox\n{FORGED}\x1b[2J {MARKUP} in \u202esnow\x85\u200b"
    image.username = "mallory\u202e\n" + FORGED
    real_url = fake._image_url
    fake._image_url = lambda im: real_url(im) + "\n" + FORGED  # type: ignore[method-assign,assignment]


@pytest.fixture
async def civitai() -> AsyncIterator[FakeCivitai]:
    async with FakeCivitai() as fake:
        poison(fake)
        yield fake


def test_clean_keeps_text_and_drops_what_forges_it() -> None:
    assert clean("plain [text] 中文 👩‍👩‍👧 ok") == "plain [text] 中文 👩‍👩‍👧 ok"
    assert clean("a\x1b[31mb\u202ec\u2066d\x00e\x85f\r\ng\u2028h") == "a[31mbcde\nf\ng\nh"
    assert clean("one\ntwo\tthree", multiline=False) == "one two three"
    assert clean("lone \udcff surrogate") == "lone  surrogate"
    assert unusable_char("fine\ttext\n") is None and unusable_char("a\x00") == "\x00"


def test_provider_error_messages_are_one_clean_line() -> None:
    err = ProviderFailure(FailureClass.REFUSED, f"no\n{FORGED}\x1b[31m\u202e")
    assert err.message == f"no {FORGED}[31m" and str(err) == err.message


async def test_the_client_cleans_every_text_field_as_it_comes_in(civitai: FakeCivitai) -> None:
    client = CivitaiClient(base_url=civitai.base_url)
    try:
        model = await client.model(4201)
        image = await client.image(90013, nsfw=31)
    finally:
        await client.aclose()
    assert model.name == f"Photon {FORGED}[31m {MARKUP}Realism"
    assert image.meta is not None
    prompt = image.meta["prompt"]
    assert prompt == f"a red fox\n{FORGED}[2J {MARKUP} in snow\n"  # a prompt keeps its lines
    assert image.username == f"mallory {FORGED}"  # a name is one line
    assert image.url is not None and "\n" not in image.url
    assert model.raw["name"] == civitai.catalogue.models[4201].name  # raw: as it came


async def test_no_log_line_can_be_forged_by_civitai_text(
    app_factory, civitai: FakeCivitai, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory(civitai={"base_url": civitai.base_url})
    caplog.set_level(logging.DEBUG)
    for text in ("/civitai image 90013", "/civitai model 4201", "/civitai images --model 4201"):
        reply = await app.commands.handle(Incoming(user(), text, dict(REPLY), nsfw_ok=True))
        assert not reply.error, reply.text
        assert not any(c in reply.text for c in BAD), repr(reply.text)
    messages = [r.getMessage() for r in caplog.records]
    assert any("no picture for" in m for m in messages)  # the poisoned URL was logged
    for message in messages:
        assert "\n" + FORGED not in message, message
        assert not any(c in message for c in BAD), repr(message)


async def test_the_console_shows_civitai_text_literally_and_nothing_else(
    civitai: FakeCivitai, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n[civitai]\nbase_url = "{civitai.base_url}"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1"}
    env.pop("SDHOST_DATABASE__URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        "-v",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    stdin = b"/civitai model 4201\n/civitai image 90013\n/civitai use 90013\n"
    out_b, err_b = await asyncio.wait_for(proc.communicate(stdin), 90)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    assert not any(c in out + err for c in BAD), repr(out)
    assert f"Photon {FORGED}[31m {MARKUP}Realism" in out  # brackets shown as typed
    for line in (out + err).splitlines():
        assert not line.startswith(FORGED), line
    assert "done: job #1 succeeded" in out, out


def test_the_model_table_shows_names_as_text_not_rich_markup(tmp_path: Path) -> None:
    """``sdhost models scan`` prints a rich table of names that come from file names and
    Civitai: a name holding rich markup is shown as those characters, not as styling."""
    import subprocess

    folder = tmp_path / "data" / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "a [red]alert \x1b[31mmodel.safetensors").write_bytes(b"\0" * 64)  # no / in a name
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n', encoding="utf-8")
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    env.pop("SDHOST_DATABASE__URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "models", "scan", "--no-enrich"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "a [red]alert [31mmodel" in out.stdout, out.stdout
    assert "\x1b" not in out.stdout


@given(st.text(max_size=50), st.integers(min_value=1, max_value=60))
def test_clip_keeps_short_text_and_marks_a_cut(text: str, limit: int) -> None:
    out = clip(text, limit)
    assert len(out) <= limit
    assert out == text if len(text) <= limit else out == text[: limit - 1] + "…"
