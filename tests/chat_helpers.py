"""What the chat platforms' end-to-end tests share: a demo provider that remembers its
init images, and small picture helpers. Each platform's tests import this, never each
other, so each runs with only its own platform loaded."""

from __future__ import annotations

import io

from PIL import Image

from adapters.providers.demo import DemoProvider
from bot.config import DemoProviderConfig
from bot.providers import ProviderRun


class RecordingDemo(DemoProvider):
    """The demo provider, remembering the init image of every img2img request."""

    def __init__(self, config: DemoProviderConfig) -> None:
        super().__init__(config)
        self.init_images: list[bytes] = []

    async def generate(self, run: ProviderRun) -> None:
        if run.request.init_image is not None:
            self.init_images.append(run.request.init_image)
        await super().generate(run)


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
