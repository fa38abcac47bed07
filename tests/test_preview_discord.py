"""A job's live preview on Discord: an attachment of the status message, paced, then gone.

discord.py against the fake Discord (``tests.test_discord``'s ``Env``), with a provider that
reports pictures as they develop (``tests.preview_helpers``). The status message is edited
with the preview as its one attachment (a multipart PATCH: ``payload_json`` with
``attachments`` and ``files[n]``), at most once per ``[images] preview_interval_s``, never
twice with the same picture; once the pictures are posted it has no attachment left and
ends with the outcome as before; each person's preview is on their own status message.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_discord
from tests.chat_helpers import decoded
from tests.conftest import make_config
from tests.fakes.discord_api import OWNER_ID, FakeDiscord
from tests.preview_helpers import BLUE, RED, PreviewDemo, color_of, near, shades, square_png
from tests.test_discord import Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeDiscord() as dc:
        e = Env(dc, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


@pytest.fixture
def interval(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """``[images] preview_interval_s`` of the config ``Env.start`` makes: set it here."""
    setting = {"preview_interval_s": 4.0}

    def config(*args: Any, **kw: Any) -> Any:
        cfg = make_config(*args, **kw)
        cfg.images.preview_interval_s = setting["preview_interval_s"]
        return cfg

    monkeypatch.setattr(test_discord, "make_config", config)
    return setting


async def start(env: Env, provider: PreviewDemo, interval: float) -> None:
    env.extra_providers = {"demo": provider}  # in place of the plain demo
    await env.start(nsfw="allow")
    assert env.adapter is not None and env.adapter.preview_interval_s == interval


def status_edits(env: Env, message_id: int) -> list[Any]:
    """Edits of the status message, through the interaction or the channel."""
    path = rf"/messages/{message_id}$"
    return [c for c in env.dc.calls("PATCH", path, ok=True) if re.search(path, c.path)]


def with_picture(edits: list[Any]) -> list[Any]:
    return [c for c in edits if c.files]


async def finished(env: Env, token: str) -> dict[str, Any]:
    await env.until(lambda: "succeeded" in env.status_text(token))
    return env.status(token)


async def test_the_status_shows_one_small_preview_per_interval_then_none(
    env: Env, interval: dict[str, float]
) -> None:
    interval["preview_interval_s"] = 30.0
    provider = PreviewDemo(lambda prompt: shades(8), gap_s=0.05)
    await start(env, provider, interval=30.0)
    inter = env.dc.slash("imagine", {"prompt": "a red fox"})
    status = await finished(env, inter["token"])
    assert provider.reported == 8
    edits = status_edits(env, int(status["id"]))
    [shown] = with_picture(edits)  # eight previews inside one interval: one picture edit
    [part] = shown.files
    jpeg = decoded(bytes(part.data))
    assert jpeg.format == "JPEG" and jpeg.size == (512, 512)
    assert near(color_of(bytes(part.data)), RED)
    assert [a["id"] for a in shown.json["attachments"]] == [0]  # the only attachment
    assert "content" not in shown.json  # the text keeps its own pace
    # the pictures came as before, in a message of their own, and the preview went
    [picture] = env.pictures()
    assert picture["id"] != status["id"] and decoded(next(iter(env.files(picture).values())))
    assert status["attachments"] == []
    assert any(c.json.get("attachments") == [] for c in edits[edits.index(shown) + 1 :])


async def test_a_new_picture_replaces_the_last_and_the_same_is_not_sent_again(
    env: Env, interval: dict[str, float]
) -> None:
    interval["preview_interval_s"] = 0.1
    same, then = square_png(RED), square_png(BLUE)
    provider = PreviewDemo(lambda prompt: [same, same, same, then, then, then], gap_s=0.35)
    await start(env, provider, interval=0.1)
    inter = env.dc.slash("imagine", {"prompt": "a harbour"})
    status = await finished(env, inter["token"])
    pictures = with_picture(status_edits(env, int(status["id"])))
    assert [near(color_of(bytes(c.files[0].data)), RED) for c in pictures] == [True, False]
    assert near(color_of(bytes(pictures[1].files[0].data)), BLUE)
    for call in pictures:  # each edit leaves the new picture as the only attachment
        assert len(call.files) == 1 and [a["id"] for a in call.json["attachments"]] == [0]
    assert env.dc.message(int(status["id"]))["attachments"] == []


async def test_two_people_each_see_their_own_preview(env: Env, interval: dict[str, float]) -> None:
    interval["preview_interval_s"] = 0.05
    colors = {"ruby": RED, "sea": BLUE}
    provider = PreviewDemo(lambda prompt: [square_png(colors[prompt.split()[0]])], gap_s=0.2)
    await start(env, provider, interval=0.05)
    ann = env.dc.slash("imagine", {"prompt": "ruby lake"})
    bob = env.dc.slash("imagine", {"prompt": "sea lake"}, user=OWNER_ID)
    for inter, color in ((ann, RED), (bob, BLUE)):
        status = await finished(env, inter["token"])
        [shown] = with_picture(status_edits(env, int(status["id"])))
        assert near(color_of(bytes(shown.files[0].data)), color)
