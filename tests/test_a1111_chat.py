"""Your own GPU from a Telegram chat, end to end: python-telegram-bot against the fake Bot
API, the a1111 provider against the fake web UI. The person sees the picture develop (the
instance's live preview), then the picture with an Upscale button, and a press of it
comes back twice the size from the instance's upscaler."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.providers.a1111 import A1111Provider
from bot.config import A1111Config
from tests.fakes.a1111 import A1111Fake
from tests.fakes.telegram import FakeTelegram
from tests.test_provider_a1111 import FAST
from tests.test_telegram import ANN, Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeTelegram() as tg:
        e = Env(tg, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


def buttons(call: Any) -> list[str]:
    markup = call.params.get("reply_markup") or {}
    if isinstance(markup, str):
        import json

        markup = json.loads(markup)
    return [b.get("callback_data", "") for row in markup.get("inline_keyboard", []) for b in row]


async def test_a_gpu_job_shows_its_preview_then_the_picture_with_upscale(env: Env) -> None:
    async with A1111Fake(time_per_image_s=1.5, steps_per_image=6) as gpu:
        provider = A1111Provider(
            A1111Config.model_validate(
                {"instances": [{"name": "gpu1", "url": gpu.base_url}], **FAST}
            )
        )
        env.extra_providers = {"a1111": provider}
        config_of = env.config

        def config(**tg: Any) -> Any:
            cfg = config_of(**tg)
            cfg.images.preview_interval_s = 0.3
            return cfg

        env.config = config  # type: ignore[method-assign]
        await env.start(nsfw="allow")
        tg = env.tg
        tg.inject_message(ANN, ANN, "/imagine a red fox --model a1111:sd15 --size 512x384")
        await env.until(
            lambda: [m for m in env.photos(ANN) if not (m.caption or "").startswith("👀")]
        )
        previews = [
            c for c in tg.calls_of("sendPhoto") if str(c.params.get("caption", "")).startswith("👀")
        ]
        assert previews, "the instance's live preview never reached the chat"
        assert gpu.rendered[0]["checkpoint"].startswith("sd15")
        [picture] = [m for m in env.photos(ANN) if not (m.caption or "").startswith("👀")]
        assert Image.open(io.BytesIO(picture.photo_bytes)).size == (512, 384)
        marked = [
            c for c in tg.calls_of("sendPhoto") if any(b.startswith("u:") for b in buttons(c))
        ]
        marked += [
            c
            for c in tg.calls_of("sendMessage") + tg.calls_of("editMessageReplyMarkup")
            if any(b.startswith("u:") for b in buttons(c))
        ]
        assert marked, "no Upscale button under a picture from the GPU"
        upscale = next(b for b in buttons(marked[0]) if b.startswith("u:"))
        tg.inject_callback_query(ANN, ANN, marked[0].result["message_id"], upscale)
        await env.until(lambda: gpu.calls_of("extra-single-image"))
        await env.until(
            lambda: [
                m
                for m in env.photos(ANN)
                if m.photo_bytes and Image.open(io.BytesIO(m.photo_bytes)).size == (1024, 768)
            ]
        )
