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
    # Self-hosted backends (AUTOMATIC1111 and its forks): LoRAs as (name, weight) beside any
    # <lora:NAME:W> typed in the prompt, the VAE, the sampler's noise schedule, a hires-fix
    # second pass, and an upscale of the input picture by this factor (the Upscale button).
    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None
    scheduler: str | None = None
    hires: bool = False
    upscale: float | None = None
    workflow: str | None = None  # a ComfyUI workflow by name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "loras" in values:  # stored as JSON lists
            values["loras"] = tuple((str(n), float(w)) for n, w in values["loras"] or ())
        return cls(**values)

    def with_(self, **changes: Any) -> GenerationParams:
        return replace(self, **changes)
