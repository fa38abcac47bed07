"""A fake of the core's side of a provider run (``bot.providers.ProviderRun``).

``Recorder(request)`` writes down what a provider tells the core: every submitted task
(``submissions``), the progress reported (``fractions``; a place in the provider's own
queue in ``queue``), what the provider billed (``costs``) and the pictures delivered
(``images``). A run resumed after a restart is built with the stored ``task_id`` and
``state`` and the pictures the core kept before the restart (``images=``), or with
``recorder.resumed()``. To act when a task is submitted, pass ``on_submitted`` (called
with the task id) or wait on ``task_known``; ``restart_after_submissions=N`` raises
``Restart`` from the N-th ``submitted`` call, as if the process died right after storing
the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bot.providers import ResolvedRequest, ResultImage


class Restart(BaseException):
    """Stands in for the process dying right after a task was stored."""


class Recorder:
    """A ProviderRun that writes down what the provider told the core."""

    def __init__(
        self,
        request: ResolvedRequest,
        *,
        task_id: str | None = None,
        state: dict[str, Any] | None = None,
        images: dict[int, ResultImage] | None = None,
        on_submitted: Callable[[str], Any] | None = None,
        restart_after_submissions: int | None = None,
    ) -> None:
        self.request = request
        self.task_id = task_id
        self.state: dict[str, Any] = dict(state or {})
        # the pictures the core has: those kept before a restart, then those delivered
        self.images: dict[int, ResultImage] = dict(images or {})
        self.submissions: list[tuple[str, dict[str, Any]]] = []
        self.fractions: list[float] = []
        self.queue: list[tuple[int, float | None]] = []  # (queue position, expected wait)
        self.costs: list[tuple[float, str]] = []
        self.previews: list[bytes] = []  # live previews, in order
        self.task_known = asyncio.Event()  # set on the first ``submitted``
        self.on_submitted = on_submitted
        self.restart_after_submissions = restart_after_submissions

    async def submitted(self, task_id: str, state: dict[str, Any] | None = None) -> None:
        self.task_id = task_id
        self.state = dict(state or {})
        self.submissions.append((task_id, self.state))
        self.task_known.set()
        if self.on_submitted is not None:
            self.on_submitted(task_id)
        if self.restart_after_submissions == len(self.submissions):
            raise Restart

    async def progress(
        self,
        fraction: float,
        *,
        queue_position: int | None = None,
        wait_s: float | None = None,
        preview: bytes | None = None,
    ) -> None:
        self.fractions.append(fraction)
        if preview is not None:
            self.previews.append(preview)
        if queue_position is not None:
            self.queue.append((queue_position, wait_s))

    async def image(self, index: int, result: ResultImage) -> None:
        self.images[index] = result

    def has_image(self, index: int) -> bool:
        return index in self.images

    def cost(self, amount: float, unit: str) -> None:
        self.costs.append((amount, unit))

    def resumed(self) -> Recorder:
        """The same job after a restart: the stored task and the pictures already kept."""
        return Recorder(self.request, task_id=self.task_id, state=self.state, images=self.images)
