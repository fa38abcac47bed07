"""/help on Discord is written for Discord: slash commands, options, Remix, the buttons; not
the console's `/img2img PATH_OR_URL` (issue 13, item 13)."""

from __future__ import annotations

import pytest

from tests.test_discord import Env, env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_help_speaks_discord(env: Env) -> None:  # noqa: F811
    await env.start()
    inter = env.dc.slash("help")
    text = await env.until(lambda: env.original_text(inter["token"]))
    assert "Remix" in text and "image option" in text
    assert "PATH_OR_URL" not in text and "PROMPT | PROMPT" not in text
    zh = env.dc.slash("help", locale="zh-CN")
    assert "重绘" in await env.until(lambda: env.original_text(zh["token"]))
