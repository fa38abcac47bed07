"""Generation parameters: what a person asked for, before and after the core resolves it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MAX_BATCH_TASKS = 10
MAX_IMAGES_PER_JOB = 4


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """One generation request as parsed from chat. ``None`` means "not given, use a default".

    ``width``/``height`` come from ``--size``; ``aspect`` from ``--ar``. The core resolves
    them into a concrete size for the chosen provider before the job is queued.
    """

    prompt: str = ""
    negative: str = ""
    aspect: str | None = None  # "16:9"
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    n: int = 1
    model: str | None = None
    provider: str | None = None
    strength: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_(self, **changes: Any) -> GenerationParams:
        return replace(self, **changes)
