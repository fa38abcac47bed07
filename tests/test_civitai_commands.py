"""/civitai in chat, against the fake Civitai: lookups, the NSFW rule, and starting a job
from an image's settings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.civitai.client import CivitaiClient
from bot.commands import Incoming
from tests.conftest import REPLY, user
from tests.fakes.civitai import FakeCivitai


@pytest.fixture
async def civitai() -> AsyncIterator[FakeCivitai]:
    async with FakeCivitai() as fake:
        yield fake


async def ask(app: Any, text: str, *, nsfw_ok: bool = False, key: str | None = None) -> Any:
    return await app.commands.handle(
        Incoming(user(), text, dict(REPLY), nsfw_ok=nsfw_ok, message_key=key)
    )


async def levels_of(civitai: FakeCivitai, ids: list[int]) -> set[int]:
    client = CivitaiClient(base_url=civitai.base_url)
    try:
        return {(await client.image(i, nsfw=31)).level or 0 for i in ids}
    finally:
        await client.aclose()


async def test_lookups(app_factory, civitai: FakeCivitai, tmp_path: Path) -> None:
    app = await app_factory(civitai={"base_url": civitai.base_url})
    models = await ask(app, "/civitai models --type LORA")
    assert not models.error and "Anime Lines" in models.text and "Photon" not in models.text
    model = await ask(app, "/civitai model 4201")
    assert "Photon Realism" in model.text and "version" in model.text and "MB" in model.text
    found = await ask(app, "/civitai hash 0A8D22B278")
    assert "Photon Realism" in found.text
    image = await ask(app, "/civitai image 90013")
    assert "a red fox in snow" in image.text and "Seed: 730091" in image.text
    bad = await ask(app, "/civitai frobnicate")
    assert bad.error and "/civitai models" in bad.text
    missing = await ask(app, "/civitai model 999999")
    assert missing.error and "Traceback" not in missing.text


async def test_a_chat_not_allowed_nsfw_only_gets_pg(app_factory, civitai: FakeCivitai) -> None:
    app = await app_factory(civitai={"base_url": civitai.base_url})
    safe = await ask(app, "/civitai images --nsfw")
    ids = [int(i) for i in re.findall(r"^#(\d+) ", safe.text, re.M)]
    assert ids and await levels_of(civitai, ids) == {1}
    anything = await ask(app, "/civitai images --nsfw --sort Newest", nsfw_ok=True)
    ids = [int(i) for i in re.findall(r"^#(\d+) ", anything.text, re.M)]
    assert ids


async def test_use_starts_a_job_with_the_images_settings(app_factory, civitai) -> None:
    app = await app_factory(civitai={"base_url": civitai.base_url})
    reply = await ask(app, "/civitai use 90013", key="m1")
    assert reply.receipt is not None and reply.receipt.cost == 1
    view = await app.jobs.job(None, reply.receipt.job_ids[0])
    assert view.params["prompt"].startswith("a red fox in snow")
    assert view.params["seed"] == 730091
    again = await ask(app, "/civitai use 90013", key="m1")
    assert again.receipt is not None and again.receipt.duplicate  # one message, one charge
    assert await app.jobs.balance(user()) == 19
