"""The protocol every image provider implements.

A provider gets a ``ProviderRun``: the resolved request plus three callbacks into the core.
It must call ``submitted`` as soon as the remote side has a task id (the core stores it, so
a restart resumes polling that task instead of paying for a new one), may call ``progress``
as often as it likes (the core throttles), and calls ``image`` for every result the moment
it has the bytes (provider URLs expire; the person sees each picture as soon as it exists).
Failures are raised as ``bot.errors.ProviderFailure`` with a class the refund policy knows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from bot.params import GenerationParams


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    description: str = ""
    kinds: frozenset[str] = frozenset({"txt2img", "img2img"})
    # Where this model's limits differ from its provider's (0: the provider's, or none).
    # The router refuses or fits requests to them before anything is charged.
    max_prompt: int = 0  # characters (some services cut longer prompts silently)
    max_negative: int = 0
    min_side: int = 0
    max_side: int = 0
    min_pixels: int = 0  # width * height
    max_pixels: int = 0
    max_aspect: float = 0.0  # long side / short side
    # Input pictures one img2img request may carry (FLUX.2 and Kontext take several: an
    # album); the router refuses more before anything is charged.
    max_inputs: int = 1


@dataclass(frozen=True, slots=True)
class Capabilities:
    kinds: frozenset[str]  # subset of {"txt2img", "img2img"}
    models: tuple[ModelInfo, ...]
    default_model: str
    max_images: int = 4  # per job
    min_size: int = 64
    max_size: int = 2048
    size_multiple: int = 8
    is_demo: bool = False
    description: str = ""
    # It can enlarge a finished picture (GenerationParams.upscale: the Upscale button).
    upscale: bool = False
    # Named things besides models that requests may pick, for /models and autocomplete:
    # {"loras": (...), "samplers": (...), "schedulers": (...), "vaes": (...)}.
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResolvedRequest:
    """Everything a provider needs, with every default already filled in by the core."""

    job_id: int
    kind: str  # txt2img | img2img (a batch task is a txt2img request)
    prompt: str
    negative: str
    width: int
    height: int
    seed: int
    n: int
    model: str
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    strength: float | None = None
    init_image: bytes | None = None  # PNG, already validated and re-encoded
    # The chat the job came from may see NSFW pictures (its policy is "allow"); providers
    # that filter at the source (AI Horde's nsfw/censor_nsfw) follow it.
    nsfw_ok: bool = False
    # Every input picture in order (a reply to an album, /img2img a.png b.png), for models
    # whose ModelInfo.max_inputs allows several; the first is init_image.
    init_images: tuple[bytes, ...] = ()
    # Inpaint (a mask: white = redraw) and outpaint (pixels to add: top, bottom, left,
    # right), for providers that have them; no chat action fills these yet.
    mask: bytes | None = None
    expand: tuple[int, int, int, int] | None = None
    # Self-hosted backends (see GenerationParams): LoRAs, VAE, noise schedule, hires fix,
    # and an upscale factor for the input picture (img2img only).
    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None
    scheduler: str | None = None
    hires: bool = False
    upscale: float | None = None
    workflow: str | None = None  # a ComfyUI workflow by name


@dataclass(slots=True)
class ResultImage:
    """One finished picture: a Pillow image, or encoded bytes as the provider served them."""

    image: Image.Image | None = None
    data: bytes | None = None
    seed: int | None = None
    nsfw: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderRun(Protocol):
    request: ResolvedRequest
    task_id: str | None  # set when resuming a task submitted before a restart
    state: dict[str, Any]  # what the provider stored with ``submitted``

    async def submitted(self, task_id: str, state: dict[str, Any] | None = None) -> None: ...

    async def progress(
        self,
        fraction: float,
        *,
        queue_position: int | None = None,
        wait_s: float | None = None,
        preview: bytes | None = None,
    ) -> None:
        """``queue_position``/``wait_s``: the job waits in the provider's own queue (AI
        Horde), at that place, expected to start in about that many seconds. ``preview``:
        the picture as it develops (any format Pillow reads), shown in the chat's status."""

    async def image(self, index: int, result: ResultImage) -> None: ...

    def has_image(self, index: int) -> bool: ...

    def cost(self, amount: float, unit: str) -> None:
        """What the provider billed for a task of this job (4.0 "credits", 12 "kudos"):
        added up and recorded with the job for the operator's /stats."""
        ...


QUEUED = "queued"


def queued_stage(position: int, wait_s: float | None) -> str:
    """The job's stage while it waits in a provider's queue: ``queued:POSITION:SECONDS``
    (the stage column holds 32 characters; ``bot.i18n.term`` says it in words)."""
    wait = "" if wait_s is None else str(max(0, round(wait_s)))
    return f"{QUEUED}:{max(0, int(position))}:{wait}"[:32]


class Provider(ABC):
    name: str
    # Whether a task cancelled while it runs may still have cost the operator money. True
    # (the default) for hosted services that may bill a task they started: a cancel then
    # follows config ``credits.refunds``. False for backends that bill nothing for a picture
    # they did not finish: every picture not made is refunded in full on a cancel.
    bills_when_cancelled: bool = True

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    async def generate(self, run: ProviderRun) -> None:
        """Produce ``run.request.n`` images through ``run.image``; raise ProviderFailure."""

    def find_model(self, name: str) -> ModelInfo | None:
        """The model ``name`` means, or None. The default matches a listed name exactly;
        providers whose models go by several names (a title, a hash, a Civitai name)
        override it. The router calls it before anything is charged."""
        return next((mi for mi in self.capabilities().models if mi.name == name), None)

    def check(  # noqa: B027
        self, params: GenerationParams, model: str, kind: str = "txt2img"
    ) -> None:
        """Optional: refuse (raise ``bot.errors.BadInput``) a ``kind`` (txt2img, img2img)
        request this provider would not render as asked (an unknown sampler or LoRA),
        before anything is charged."""

    async def start(self) -> None:  # noqa: B027
        """Optional: called once before the first job (look at the backends, start upkeep)."""

    async def models_changed(self) -> None:  # noqa: B027
        """Optional: new model files may have arrived (a Civitai download); look again."""

    async def cancel(self, task_id: str) -> None:  # noqa: B027 - optional for providers
        """Best effort: tell the remote side to stop. The core has already stopped waiting."""

    async def aclose(self) -> None:  # noqa: B027
        pass

    async def account_status(self) -> str | None:
        """Optional: a short line on the operator's account (e.g. the balance left), for
        /stats; None when the provider has nothing to say. Must be quick and never raise."""
        return None
