"""The demo provider: procedural pictures drawn locally with Pillow. Not an AI model.

It exists so sdhost works on a fresh machine with no keys, and so tests and benchmarks can
exercise the whole core. Rendering is deterministic in (prompt, seed, size), so a task
resumed after a restart simply draws the same picture again.

Trigger words in the prompt make it misbehave on purpose, for trying out failure handling:
``demo:fail`` (provider error), ``demo:refuse`` (content refused), ``demo:crash`` (an
unexpected exception, as from a bug), ``demo:segfault`` (a real segmentation fault that
takes the whole worker process down, as a native library crashing on one input would),
``demo:slow`` (ten times the configured latency), ``demo:nsfw`` (pictures flagged NSFW, as a
provider's safety checker would, for trying out a chat's NSFW policy).
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import os
import random
import uuid

from PIL import Image

from adapters.providers.demo_art import render
from bot.config import DemoProviderConfig
from bot.errors import FailureClass, ProviderFailure
from bot.providers import Capabilities, ModelInfo, Provider, ProviderRun, ResultImage

DEMO_NOTE = "demo: draws procedural pictures with Pillow; it is a demo, not an AI model"


class DemoProvider(Provider):
    name = "demo"
    bills_when_cancelled = False  # drawn locally: nothing is ever billed

    def __init__(self, config: DemoProviderConfig) -> None:
        self.config = config
        self._rng = random.Random()

    def capabilities(self) -> Capabilities:
        return Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=(
                ModelInfo("shapes", "procedural skies and shapes (demo, not an AI model)"),
                ModelInfo("mono", "the same in black and white (demo, not an AI model)"),
            ),
            default_model="shapes",
            max_images=4,
            min_size=64,
            max_size=self.config.max_size,
            size_multiple=8,
            is_demo=True,
            description=DEMO_NOTE,
        )

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        if run.task_id is None:
            await run.submitted(f"demo-{uuid.uuid4().hex[:12]}")
        prompt = req.prompt.lower()
        latency = self.config.latency_s * (10 if "demo:slow" in prompt else 1)
        steps = 4 if latency > 0 else 0
        for i in range(steps):
            await asyncio.sleep(latency / steps)
            await run.progress((i + 1) / (steps + 1))
        if "demo:segfault" in prompt:
            _segfault()
        if "demo:crash" in prompt:
            raise RuntimeError("demo provider crashed on purpose (demo:crash)")
        if "demo:refuse" in prompt:
            raise ProviderFailure(FailureClass.REFUSED, "the demo provider refused this prompt")
        if "demo:fail" in prompt or (
            self.config.failure_rate and self._rng.random() < self.config.failure_rate
        ):
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, "the demo provider failed")
        init = None
        if (data := req.init_image) is not None:
            init = await asyncio.to_thread(lambda: Image.open(io.BytesIO(data)).copy())
        for idx in range(req.n):
            if run.has_image(idx):
                continue
            seed = req.seed + idx
            img = await asyncio.to_thread(
                render,
                req.prompt,
                seed,
                req.width,
                req.height,
                variant=1 if req.model == "mono" else 0,
                init=init,
                strength=req.strength if req.strength is not None else 0.6,
            )
            if req.model == "mono":
                img = img.convert("L").convert("RGB")
            await run.image(idx, ResultImage(image=img, seed=seed, nsfw="demo:nsfw" in prompt))


def _segfault() -> None:
    """Die of a genuine SIGSEGV (reading address 0), which faulthandler reports."""
    ctypes.string_at(0)
    os.abort()  # not reached where page 0 is unmapped, i.e. everywhere sdhost runs
