"""What a chat can do with a finished picture: find it again, reroll it, vary it, upscale it.

Chat buttons carry only ``job id`` and ``picture index`` (Telegram allows 64 bytes of
callback data, Discord 100 characters of custom id); everything else is read back from the
database and the file store here, so a button keeps working after any restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot import i18n
from bot.chat import ReplyTo, UserRef
from bot.errors import BadInput, NotFound, UserError
from bot.jobs import STORE_DOWN, JobService, JobView, Receipt, load_more_inputs
from bot.params import GenerationParams
from storage import repos
from storage.files import StorageError

VARY_STRENGTH = 0.55
UPSCALE_FACTOR = 2.0  # the Upscale button's, and /upscale's without --scale


@dataclass(frozen=True, slots=True)
class Picture:
    job: JobView
    image: dict[str, Any]  # idx, sha256, width, height, seed, path

    @property
    def sha256(self) -> str:
        return str(self.image["sha256"])


class Results:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def picture(self, job_id: int, idx: int, *, by: UserRef | None = None) -> Picture:
        """Any finished picture, by job and index (pictures are shared in chats, so no owner
        check: whoever sees one may reroll or vary it, at their own cost), for ``by`` unless
        they are banned."""
        if by is not None:
            await self.jobs.check_not_banned(by)
        try:
            view = await self.jobs.job(None, job_id)
        except NotFound:
            raise NotFound(f"picture {idx + 1} of job #{job_id} no longer exists") from None
        for image in view.images:
            if image["idx"] == idx:
                return Picture(view, image)
        raise NotFound(f"picture {idx + 1} of job #{job_id} no longer exists")

    async def picture_bytes(self, picture: Picture) -> bytes:
        try:
            return await self.stored_picture(picture.sha256)
        except FileNotFoundError:
            raise NotFound(
                f"the file of job #{picture.job.id} picture {picture.image['idx'] + 1} is gone "
                "from this bot's storage"
            ) from None
        except StorageError as exc:
            raise UserError(
                f"the picture store cannot give job #{picture.job.id} picture "
                f"{picture.image['idx'] + 1} right now; try again later"
            ) from exc

    async def stored_picture(self, sha256: str) -> bytes:
        """A finished picture's bytes from the store, whichever it is (a folder here, a
        bucket shared by every process): what chats deliver and send as the Original.
        ``FileNotFoundError`` if it is gone; ``StorageError`` (``StorageUnavailable``) if
        the store cannot give it now."""
        return await asyncio.to_thread(self.jobs.files.get, sha256)

    async def reroll(
        self,
        ref: UserRef,
        job_id: int,
        idx: int,
        reply_to: ReplyTo | Mapping[str, Any],
        *,
        idem_key: str | None = None,
        on_accept: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> Receipt:
        """The same request with a new seed: one picture, charged like a command
        (``on_accept``: see ``JobService.submit``)."""
        picture = await self.picture(job_id, idx, by=ref)
        params = GenerationParams.from_dict(picture.job.params).with_(seed=None, n=1)
        job = await self.jobs.db.run_read(repos.get_job, job_id)
        init = None
        try:
            if job is not None and job.input_sha256:
                init = await asyncio.to_thread(
                    self.jobs.files.get, job.input_sha256, kind="inputs", ext="png"
                )
            more = await load_more_inputs(self.jobs.files, job.params) if job and init else []
        except StorageError as exc:
            raise UserError(STORE_DOWN) from exc
        kind = "img2img" if init is not None else "txt2img"
        return await self.jobs.submit(
            ref,
            kind,
            [params],
            reply_to,
            init_image=init,
            more_images=more,
            init_size=(picture.image["width"], picture.image["height"]) if init else None,
            idem_key=idem_key,
            notes=(f"reroll of job #{job_id} picture {idx + 1}",),
            on_accept=on_accept,
        )

    async def vary(
        self,
        ref: UserRef,
        job_id: int,
        idx: int,
        reply_to: ReplyTo | Mapping[str, Any],
        *,
        idem_key: str | None = None,
        strength: float | None = None,
        prompt: str | None = None,
        on_accept: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> Receipt:
        """img2img of the picture itself, with its prompt (or a new one) and a new seed."""
        picture = await self.picture(job_id, idx, by=ref)
        data = await self.picture_bytes(picture)
        old = GenerationParams.from_dict(picture.job.params)
        params = old.with_(
            prompt=prompt or old.prompt,
            seed=None,
            n=1,
            width=None,
            height=None,
            aspect=None,
            strength=strength if strength is not None else old.strength or VARY_STRENGTH,
        )
        return await self.jobs.submit(
            ref,
            "img2img",
            [params],
            reply_to,
            init_image=data,
            init_size=(picture.image["width"], picture.image["height"]),
            idem_key=idem_key,
            notes=(f"variation of job #{job_id} picture {idx + 1}",),
            on_accept=on_accept,
        )

    def can_upscale(self, model: str) -> bool:
        """Whether pictures of a job whose ``model`` is this (``provider:model`` as delivery
        payloads carry it, or a bare provider name) can be upscaled on the same provider:
        chats show the Upscale button only then."""
        provider = self.jobs.router.providers.get(model.partition(":")[0])
        return provider is not None and provider.capabilities().upscale

    async def upscale(
        self,
        ref: UserRef,
        job_id: int,
        idx: int,
        reply_to: ReplyTo | Mapping[str, Any],
        *,
        idem_key: str | None = None,
        on_accept: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        factor: float = UPSCALE_FACTOR,
    ) -> Receipt:
        """The picture enlarged ``factor`` times by the provider that made it, with the same
        model: an img2img job of the picture itself (``GenerationParams.upscale``), one
        picture, its prompt and seed kept (they go into the new picture's parameters), at the
        picture's size times ``factor`` (the router's rule, ``bot.routing.upscale_size``).
        Charged like an img2img on that provider, refunded like any job. A provider that
        cannot upscale, a factor out of range or a result too large are refused by the
        router before anything is charged."""
        picture = await self.picture(job_id, idx, by=ref)
        provider = picture.job.provider
        if not self.can_upscale(provider):  # before the file is even read
            raise BadInput.of("error.no_upscale", provider=provider)
        if await self.is_nsfw(picture) and not ReplyTo.from_json(reply_to).nsfw_ok:
            # the same picture, larger: it must not come back plain where it was spoilered
            # or withheld (the provider need not flag it again)
            raise BadInput.of("error.upscale_nsfw")
        data = await self.picture_bytes(picture)
        old = GenerationParams.from_dict(picture.job.params)
        params = old.with_(
            provider=provider,
            model=picture.job.model or old.model,
            seed=picture.image.get("seed", old.seed),
            n=1,
            width=None,
            height=None,
            aspect=None,
            strength=None,  # the provider's own for an upscale, not the job's img2img one
            hires=False,
            upscale=factor,
        )
        return await self.jobs.submit(
            ref,
            "img2img",
            [params],
            reply_to,
            init_image=data,
            init_size=(int(picture.image["width"]), int(picture.image["height"])),
            idem_key=idem_key,
            notes=(i18n.Message("note.upscale", factor=f"{factor:g}", job=job_id, k=idx + 1),),
            on_accept=on_accept,
        )

    async def is_nsfw(self, picture: Picture) -> bool:
        """Whether the provider flagged the picture NSFW (as said when it was delivered), so
        what is done with it again (the Original button) follows the chat's policy."""
        return await self.jobs.db.run_read(
            repos.picture_flagged_nsfw, picture.job.id, int(picture.image["idx"])
        )

    async def batch_counts(self, batch_id: int) -> dict[str, int]:
        return await self.jobs.db.run_read(repos.batch_counts, batch_id)
