"""What the live-preview tests share: a provider that shows its picture as it develops.

``PreviewDemo`` is the demo provider with a script: before it draws, it reports the
previews ``script(prompt)`` gives, one every ``gap_s``, each with its progress (as a
self-hosted GPU's ``current_image`` would come), then waits for ``hold`` if set, then draws.
Each platform's tests import this, never each other.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from PIL import Image

from adapters.providers.demo import DemoProvider
from bot.config import DemoProviderConfig
from bot.providers import ProviderRun

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)


def square_png(color: tuple[int, int, int], side: int = 1024) -> bytes:
    """A large preview, as AUTOMATIC1111 sends one (PNG, base64-decoded)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, "PNG")
    return buf.getvalue()


def shades(n: int, base: tuple[int, int, int] = RED) -> list[bytes]:
    """``n`` distinct previews (each a little lighter)."""
    return [square_png((base[0], min(255, base[1] + 9 * i), base[2])) for i in range(n)]


def color_of(data: bytes) -> tuple[int, int, int]:
    img = Image.open(io.BytesIO(data))
    img.load()
    r, g, b = img.convert("RGB").getpixel((img.width // 2, img.height // 2))  # type: ignore[misc]
    return int(r), int(g), int(b)


def near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


class PreviewDemo(DemoProvider):
    """The demo provider reporting previews before it draws (see the module docstring)."""

    def __init__(
        self,
        script: Callable[[str], list[bytes]],
        *,
        gap_s: float = 0.05,
        config: DemoProviderConfig | None = None,
    ) -> None:
        super().__init__(config or DemoProviderConfig(latency_s=0.0))
        self.script = script
        self.gap_s = gap_s
        self.hold: asyncio.Event | None = None
        self.reported = 0  # previews handed to the core
        self.all_reported = asyncio.Event()

    async def generate(self, run: ProviderRun) -> None:
        if run.task_id is None:
            await run.submitted("preview-demo")
        previews = self.script(run.request.prompt)
        for i, picture in enumerate(previews):
            await run.progress((i + 1) / (len(previews) + 1), preview=picture)
            self.reported += 1
            await asyncio.sleep(self.gap_s)
        self.all_reported.set()
        if self.hold is not None:
            await self.hold.wait()
        await super().generate(run)
