"""The operator's own GPUs: AUTOMATIC1111, Forge and SD.Next web UIs (``--api``), pooled.

Notes on the protocol: shared/api/providers.md, "Self-hosted: AUTOMATIC1111 / Forge /
reForge / SD.Next". How the pool lends instances: ``adapters/providers/gpupool.py``.

One job at a time per instance; each picture of a job is one request (``n_iter`` 1), so
each is delivered the moment it exists and a job that moves to another instance (its
instance died) only makes the pictures still missing. What the web UI does that trips a
client, and what this module does about it:

- An unknown checkpoint in ``override_settings`` is ignored (the loaded one renders) and an
  unknown sampler silently becomes "DPM++ 2M" (1.9+): ``check`` refuses both against the
  instances' own lists before anything is charged, and after each picture the model the
  answer's ``info`` names is compared with the one asked for.
- Older Forge ignores ``override_settings``' checkpoint: Forge switches through
  ``/options`` (we hold the instance alone, so no other job is affected), and an instance
  seen to render another checkpoint than asked is switched that way from then on.
- ``/interrupt`` makes the running request return 200 with a partial picture: a job we
  interrupted, or one interrupted on the instance itself, is never delivered.
- ``override_settings_restore_afterwards`` restores the option but keeps the weights: what
  is loaded is tracked from ``sd_checkpoint_hash`` and each answer's ``sd_model_hash``.
- img2img without a size renders 512x512: the size is always sent.
- 401 has no ``WWW-Authenticate``: credentials are sent up front (``api.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from adapters.providers.a1111.api import InstanceApi, RouteMissing
from adapters.providers.a1111.catalog import (
    LOADED,
    Checkpoint,
    InstanceInfo,
    Registered,
    close_names,
    norm,
)
from adapters.providers.gpupool import GpuPool, InstanceDown, Member
from bot.config import A1111Config
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.infotext import prompt_loras
from bot.locks import HeldLock, NamedLocks
from bot.model_registry import ModelRegistry
from bot.params import MAX_IMAGES_PER_JOB, GenerationParams
from bot.providers import (
    Capabilities,
    ModelInfo,
    Provider,
    ProviderRun,
    ResolvedRequest,
    ResultImage,
)

log = logging.getLogger(__name__)

_UPSCALERS = ("R-ESRGAN 4x+", "ESRGAN_4x", "R-ESRGAN 4x+ Anime6B", "Lanczos")
_HIRES_UPSCALERS = ("Latent", "R-ESRGAN 4x+", "Lanczos")
START_PROBE_S = 10.0  # how long start-up waits for the first look at every instance


@dataclass
class _Watch:
    interrupted: bool = False  # seen on the instance's /progress
    we_interrupted: bool = False


Inst = Member[InstanceApi]


class A1111Provider(Provider):
    name = "a1111"
    bills_when_cancelled = False  # the operator's own GPU: nothing is billed

    def __init__(
        self,
        cfg: A1111Config,
        *,
        registry: ModelRegistry | None = None,
        locks: NamedLocks | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.locks = locks
        self.infos: dict[str, InstanceInfo] = {}
        members = [
            Member(inst.name, InstanceApi(inst, timeout_s=cfg.request_timeout_s))
            for inst in cfg.instances
        ]
        self.pool: GpuPool[InstanceApi] = GpuPool(
            members,
            check=self._probe,
            recheck_s=cfg.recheck_s,
            recheck_max_s=cfg.recheck_max_s,
            wait_for_instance_s=cfg.wait_for_instance_s,
            hold=self._hold if locks is not None else None,
        )
        self._registered: dict[str, Registered] = {}  # checkpoint key -> registry entry
        self._caps: Capabilities | None = None
        self._described: dict[str, str] = {}  # last probe line logged per instance
        self._lists_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Look at every instance once (one log line each), then keep the lists fresh."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_PROBE_S):
                await self._read_registry()
                await self.pool.recheck()
        self.pool.start()
        if self._lists_task is None:
            self._lists_task = asyncio.create_task(self._lists_loop(), name="a1111-lists")

    async def aclose(self) -> None:
        if self._lists_task is not None:
            self._lists_task.cancel()
            await asyncio.gather(self._lists_task, return_exceptions=True)
            self._lists_task = None
        await self.pool.aclose()
        for m in self.pool.members:
            await m.backend.aclose()

    async def _lists_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lists_ttl_s)
            try:
                await self._read_registry()
                await asyncio.gather(
                    *(self.pool.recheck_one(m) for m in self.pool.members if m.up and not m.busy)
                )
            except Exception:
                log.exception("reading the GPU instances' lists failed")

    async def models_changed(self) -> None:
        """New model files may be in the instances' folders: ask each to look again
        (``/refresh-checkpoints``, ``-loras``, ``-vae``), then read its lists. A refresh
        waits behind the job an instance is running."""
        await self._read_registry()
        if not any(m.up for m in self.pool.members):  # not looked at yet (the CLI)
            await self.pool.recheck()

        async def one(m: Inst) -> None:
            info = self.infos.get(m.name)
            vae_route = "refresh-vaes" if info and info.flavour == "sdnext" else "refresh-vae"
            for route in ("refresh-checkpoints", "refresh-loras", vae_route):
                try:
                    await m.backend.post(route, timeout_s=120)
                except RouteMissing:
                    pass
                except (InstanceDown, ProviderFailure) as exc:
                    log.info("instance %s: %s failed: %s", m.name, route, exc)
                    return
            await self.pool.recheck_one(m)

        await asyncio.gather(*(one(m) for m in self.pool.members if m.up))

    async def _read_registry(self) -> None:
        if self.registry is None:
            return
        try:
            rows = await self.registry.models("checkpoint")
        except Exception:
            log.debug("model registry unavailable", exc_info=True)
            return
        self._registry_rows = [
            Registered(r.sha256, r.name, r.version_name, r.base_model, r.file_name) for r in rows
        ]
        self._match_registry()

    def _match_registry(self) -> None:
        rows: list[Registered] = getattr(self, "_registry_rows", [])
        if not rows:
            return
        by_sha = {r.sha256.lower(): r for r in rows}
        by_file = {norm(r.file_name): r for r in rows if r.file_name}
        found: dict[str, Registered] = {}
        for info in self.infos.values():
            for cp in info.checkpoints.values():
                r = (by_sha.get(cp.sha256 or "") if cp.sha256 else None) or by_file.get(
                    norm(cp.filename or cp.name)
                )
                if r is not None:
                    found[cp.key] = r
        if found != self._registered:
            self._registered = found
            self._caps = None

    async def _hold(self, m: Inst) -> HeldLock | None:
        """The instance's lock across sdhost processes, named by its URL (two processes may
        call one instance by different names)."""
        assert self.locks is not None
        return await self.locks.try_hold(f"gpu:{m.backend.url}")

    # --- probing ---------------------------------------------------------------------------

    async def _probe(self, m: Inst) -> bool:
        """Is the instance there, which web UI is it, and what does it have?"""
        api = m.backend
        try:
            options = await api.get("options", timeout_s=30)
            if not isinstance(options, dict):
                raise ProviderFailure(FailureClass.PROVIDER_ERROR, "options is not an object")
            models, loras, samplers, schedulers, vaes, upscalers = await asyncio.gather(
                api.get("sd-models", timeout_s=30),
                api.get_or_none("loras"),
                api.get("samplers", timeout_s=30),
                api.get_or_none("schedulers"),
                api.get_or_none("sd-vae"),
                api.get_or_none("upscalers"),
            )
            version = await api.get_or_none("version")
        except RouteMissing as exc:
            m.down_reason = f"no /sdapi/v1/{exc} (start the web UI with --api)"
            self._say(m, m.down_reason, level=logging.WARNING)
            return False
        except InstanceDown as exc:
            m.down_reason = f"not answering ({exc})"
            if not m.checked:
                self._say(m, f"not answering at {api.url} ({exc})", level=logging.WARNING)
            return False
        except ProviderFailure as exc:
            m.down_reason = exc.message
            self._say(m, exc.message, level=logging.WARNING)
            return False
        sdnext = "sd_backend" in options or (
            isinstance(version, dict) and "next" in json.dumps(version).lower()
        )
        if isinstance(models, list) and models and isinstance(models[0], dict):
            sdnext = sdnext or ("name" in models[0] and "model_name" not in models[0])
        info = InstanceInfo.read(
            options=options,
            models=models,
            loras=loras,
            samplers=samplers,
            schedulers=schedulers,
            vaes=vaes,
            upscalers=upscalers,
            sdnext=sdnext,
        )
        if isinstance(version, dict):
            info.version = str(version.get("version") or version.get("app") or "")[:40]
        old = self.infos.get(m.name)
        if old is not None and old.switch_by_options:
            info.switch_by_options = True  # learnt: it ignores override_settings
        self.infos[m.name] = info
        m.loaded = info.loaded
        self._caps = None
        self._match_registry()
        flavour = {"a1111": "AUTOMATIC1111", "forge": "Forge", "sdnext": "SD.Next"}[info.flavour]
        how = "/options" if info.switch_by_options else "override_settings"
        self._say(
            m,
            f"{flavour}{' ' + info.version if info.version else ''} at {api.url}: "
            f"{len(info.checkpoints)} checkpoint(s), loaded {info.loaded or 'none'}; "
            f"{len(info.loras)} LoRA name(s), {len(info.samplers)} sampler name(s), "
            f"schedulers {'listed' if info.schedulers is not None else 'not available'}; "
            f"checkpoint per job through {how}",
        )
        return True

    def _say(self, m: Inst, line: str, *, level: int = logging.INFO) -> None:
        """One line per instance for what a probe found, again only when it changes."""
        if self._described.get(m.name) != line:
            self._described[m.name] = line
            log.log(level, "instance %s: %s", m.name, line)

    # --- what the pool offers --------------------------------------------------------------

    def _checkpoints(self) -> dict[str, tuple[Checkpoint, list[str]]]:
        """Every checkpoint some instance has: key -> (one listing of it, instance names)."""
        out: dict[str, tuple[Checkpoint, list[str]]] = {}
        for name, info in self.infos.items():
            for key, cp in info.checkpoints.items():
                out.setdefault(key, (cp, []))[1].append(name)
        return out

    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        models = [
            ModelInfo(LOADED, "whatever checkpoint the instance has loaded"),
        ]
        for key, (cp, where) in sorted(self._checkpoints().items()):
            reg = self._registered.get(key)
            about = []
            if reg is not None:
                about.append(reg.name + (f" ({reg.version_name})" if reg.version_name else ""))
                if reg.base_model:
                    about.append(reg.base_model)
            about.append("on " + ", ".join(where))
            models.append(ModelInfo(cp.name, "; ".join(about)))
        default = LOADED
        if self.cfg.default_model:
            found = self.find_model(self.cfg.default_model)
            default = found.name if found else self.cfg.default_model
        infos = list(self.infos.values())

        def union(attr: str) -> tuple[str, ...]:
            names: set[str] = set()
            for info in infos:
                value = getattr(info, attr)
                if isinstance(value, dict):
                    names.update(value.values())
                elif value:
                    names.update(value)
            return tuple(sorted(names))

        self._caps = Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=tuple(models),
            default_model=default,
            max_images=MAX_IMAGES_PER_JOB,
            min_size=64,
            max_size=2048,
            size_multiple=8,
            description="your own GPUs (AUTOMATIC1111 / Forge / SD.Next)",
            upscale=True,
            lists={
                "loras": union("loras"),
                "samplers": union("samplers"),
                "schedulers": union("schedulers"),
                "vaes": union("vaes"),
                "upscalers": union("upscalers"),
            },
        )
        return self._caps

    def find_model(self, name: str) -> ModelInfo | None:
        key = self._key_of(name)
        if key is None:
            return None
        for mi in self.capabilities().models:
            if (mi.name if mi.name == LOADED else norm(mi.name)) == key:
                return mi
        return None

    def _key_of(self, name: str) -> str | None:
        """The pool-wide key of the checkpoint ``name`` means (LOADED for the pseudo-model):
        a name, title, file name or hash an instance lists, or its Civitai name."""
        text = (name or "").strip()
        if not text or text.lower() == LOADED:
            return LOADED
        for info in self.infos.values():
            found = info.find(text)
            if found is not None:
                return found.key
        wanted = " ".join(text.lower().split())
        for key, reg in self._registered.items():
            full = f"{reg.name} {reg.version_name or ''}".strip().lower()
            if wanted in (reg.name.lower(), full, norm(reg.file_name)) or (
                len(wanted) >= 8 and reg.sha256.lower().startswith(wanted)
            ):
                return key
        return None

    # --- refusing before charging ----------------------------------------------------------

    def check(self, params: GenerationParams, model: str, kind: str = "txt2img") -> None:
        key = self._key_of(model)
        infos = [
            info for info in self.infos.values() if key in (None, LOADED) or key in info.checkpoints
        ]
        if not infos:
            return  # nothing probed yet: the instance checks again when the job runs
        if params.hires and params.upscale:
            raise BadInput("--hires and an upscale do not go together")
        for what, value, attr in (
            ("sampler", params.sampler, "samplers"),
            ("VAE", params.vae, "vaes"),
        ):
            if value and not any(self._sampler_or(info, attr, value) for info in infos):
                raise self._unknown(what, value, attr, infos)
        if params.scheduler and not any(
            info.schedulers is None or params.scheduler.lower() in info.schedulers for info in infos
        ):
            raise self._unknown("scheduler", params.scheduler, "schedulers", infos)
        for lora in [n for n, _ in [*params.loras, *prompt_loras(params.prompt)]]:
            if not any(lora.lower() in info.loras for info in infos):
                raise self._unknown("LoRA", lora, "loras", infos)

    @staticmethod
    def _sampler_or(info: InstanceInfo, attr: str, value: str) -> bool:
        table: dict[str, str] = getattr(info, attr)
        low = value.lower()
        if low in table:
            return True
        if attr == "samplers" and info.schedulers is not None and " " in low:
            head, _, tail = low.rpartition(" ")  # "DPM++ 2M Karras": sampler + schedule
            return head in table and tail in info.schedulers
        return False

    @staticmethod
    def _unknown(what: str, value: str, attr: str, infos: list[InstanceInfo]) -> BadInput:
        names: set[str] = set()
        for info in infos:
            table = getattr(info, attr) or {}
            names.update(table.values())
        near = ", ".join(close_names(value, names)) or "none"
        return BadInput.of("error.gpu_unknown", what=what, name=value, near=near)

    # --- running a job ---------------------------------------------------------------------

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        key = self._key_of(req.model) if req.model else LOADED
        if key is None:
            raise ProviderFailure(
                FailureClass.BAD_INPUT,
                f"no GPU instance has the checkpoint {req.model!r} any more",
                uncharged=True,
            )
        want = None if key == LOADED else key
        loras = [n.lower() for n, _ in [*req.loras, *prompt_loras(req.prompt)]]

        def fits(m: Inst) -> bool:
            info = self.infos.get(m.name)
            if info is None:
                return False
            if want is not None and want not in info.checkpoints:
                return False
            return all(n in info.loras for n in loras)

        async def on_wait(place: int) -> None:
            if place > 1 or self.pool.waiting > 1:
                await run.progress(0.0, queue_position=place, wait_s=None)

        todo = [0] if req.upscale else [i for i in range(req.n) if not run.has_image(i)]
        last = await self.pool.on_some_instance(
            lambda m: self._render_on(m, run, want, todo),
            want=want,
            fits=fits,
            on_wait=on_wait,
            job=req.job_id,
        )
        if last is not None:  # stored while the instance already renders the next job
            await run.image(*last)

    async def _render_on(
        self, m: Inst, run: ProviderRun, want: str | None, todo: list[int]
    ) -> tuple[int, ResultImage] | None:
        """Render the pictures ``todo`` on ``m``, delivering each but the last, which is
        returned: it is stored once the instance is free for the next job."""
        req = run.request
        info = self.infos[m.name]
        token = f"{m.name}:{req.job_id}:{uuid.uuid4().hex[:8]}"
        m.current = token
        noted: asyncio.Task[None] | None = None
        if run.task_id is None or not run.task_id.startswith(f"{m.name}:{req.job_id}:"):
            # written while the instance already renders (it is not on the critical path)
            noted = asyncio.create_task(run.submitted(token, {"instance": m.name}))
        # "whatever the instance has loaded" is named outright: a job without a checkpoint
        # would load the one the instance's option names, which may not be the one in memory
        cp = info.checkpoints.get(want or info.loaded or "")
        watch = _Watch()
        try:
            if cp is not None and info.switch_by_options and info.loaded != cp.key:
                await self._switch_by_options(m, info, cp)
            last: tuple[int, ResultImage] | None = None
            for i in list(todo):
                if last is not None:
                    await run.image(*last)
                last = (i, await self._one_picture(m, run, info, cp, i, watch))
                todo.remove(i)
                if noted is not None:
                    await noted
                    noted = None
            return last
        except asyncio.CancelledError:
            # the person cancelled (or the job's time ran out): stop the instance, but only
            # while it still renders this job
            if m.current == token and m.up:
                watch.we_interrupted = True
                await self._interrupt(m)
            raise
        finally:
            if noted is not None and not noted.done():
                noted.cancel()
                await asyncio.gather(noted, return_exceptions=True)

    async def _switch_by_options(self, m: Inst, info: InstanceInfo, cp: Checkpoint) -> None:
        """Load ``cp`` through /options (Forge): safe, as we hold the instance alone."""
        t = time.monotonic()
        try:
            await m.backend.post("options", {"sd_model_checkpoint": cp.title, **self._modules(cp)})
        except ProviderFailure as exc:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"GPU instance {m.name} could not load {cp.name}: {exc.message}",
            ) from None
        info.loaded = m.loaded = cp.key
        self.pool.observe(m, time.monotonic() - t, switched=True, pure_switch=True)
        log.info("instance %s: loaded %s through /options", m.name, cp.name)

    def _payload(
        self, req: ResolvedRequest, info: InstanceInfo, cp: Checkpoint | None, i: int
    ) -> tuple[str, dict[str, Any]]:
        if req.upscale:
            upscaler = self._upscaler(info, _UPSCALERS, self.cfg.upscaler)
            return "extra-single-image", {
                "image": base64.b64encode(req.init_image or b"").decode(),
                "resize_mode": 0,
                "upscaling_resize": req.upscale,
                "upscaler_1": upscaler,
            }
        prompt = req.prompt + "".join(f" <lora:{n}:{w:g}>" for n, w in req.loras)
        body: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": req.negative,
            "seed": req.seed + i,
            "width": req.width,  # always: img2img without a size renders 512x512
            "height": req.height,
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
            "override_settings_restore_afterwards": True,
        }
        if req.steps:
            body["steps"] = req.steps
        if req.cfg is not None:
            body["cfg_scale"] = req.cfg
        if req.sampler:
            sampler, scheduler = self._sampler(info, req.sampler)
            body["sampler_name"] = sampler
            if scheduler:
                body["scheduler"] = scheduler
        if req.scheduler and info.schedulers is not None:
            body["scheduler"] = info.schedulers.get(req.scheduler.lower(), req.scheduler)
        override: dict[str, Any] = {}
        if cp is not None and not info.switch_by_options:
            override["sd_model_checkpoint"] = cp.title
        if req.vae:
            override["sd_vae"] = info.vaes.get(req.vae.lower(), req.vae)
        if cp is not None and info.flavour == "forge":
            override.update(self._modules(cp))
        if override:
            body["override_settings"] = override
        if req.kind == "img2img" and req.init_image is not None:
            body["init_images"] = [base64.b64encode(req.init_image).decode()]
            body["denoising_strength"] = req.strength if req.strength is not None else 0.75
            return "img2img", body
        if req.hires:
            # --size is the picture delivered: the first pass is that divided by the scale
            # (so a pasted block of a hires picture asks for the same picture again)
            scale = self.cfg.hires_scale
            body["width"] = max(64, round(req.width / scale / 8) * 8)
            body["height"] = max(64, round(req.height / scale / 8) * 8)
            body.update(
                enable_hr=True,
                hr_scale=self.cfg.hires_scale,
                hr_upscaler=self._upscaler(info, _HIRES_UPSCALERS, self.cfg.upscaler),
                denoising_strength=self.cfg.hires_denoise,
            )
        return "txt2img", body

    def _modules(self, cp: Checkpoint) -> dict[str, Any]:
        """Forge's forge_additional_modules for ``cp`` (config ``forge_modules``), if any:
        a Flux checkpoint loaded without its text encoders and VAE does not render."""
        for name, modules in self.cfg.forge_modules.items():
            if norm(name) == cp.key:
                return {"forge_additional_modules": list(modules)}
        return {}

    @staticmethod
    def _sampler(info: InstanceInfo, name: str) -> tuple[str, str | None]:
        low = name.lower()
        if low in info.samplers or info.schedulers is None:
            return info.samplers.get(low, name), None
        head, _, tail = low.rpartition(" ")
        if head in info.samplers and tail in info.schedulers:
            return info.samplers[head], info.schedulers[tail]
        return name, None

    @staticmethod
    def _upscaler(info: InstanceInfo, preferred: tuple[str, ...], configured: str) -> str:
        have = {u.lower(): u for u in info.upscalers}
        for name in (configured, *preferred):
            if name and name.lower() in have:
                return have[name.lower()]
        if configured:
            return configured
        real = [u for u in info.upscalers if u.lower() != "none"]
        return real[0] if real else "Lanczos"

    async def _one_picture(
        self,
        m: Inst,
        run: ProviderRun,
        info: InstanceInfo,
        cp: Checkpoint | None,
        i: int,
        watch: _Watch,
    ) -> ResultImage:
        """One picture, as the instance rendered it (not yet delivered)."""
        req = run.request
        route, body = self._payload(req, info, cp, i)
        before = info.loaded
        started = time.monotonic()
        watcher = asyncio.create_task(self._watch(m, run, i, watch), name=f"a1111-watch-{m.name}")
        try:
            answer = await m.backend.post(route, body)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if watch.interrupted or watch.we_interrupted:
            raise ProviderFailure(
                FailureClass.CANCELLED,
                "the picture was stopped on the GPU instance before it was finished",
                uncharged=True,
            )
        if not isinstance(answer, dict):
            raise ProviderFailure(FailureClass.PROVIDER_ERROR, f"{m.name}: answer is not JSON")
        details = _info_of(answer)
        if route != "extra-single-image":
            rendered = _rendered_checkpoint(info, details)
            if cp is not None and rendered is not None and rendered != cp.key:
                if info.switch_by_options:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR,
                        f"GPU instance {m.name} rendered {rendered} instead of {cp.name}",
                    )
                # it ignores override_settings (older Forge): switch its own way, redo
                log.warning(
                    "instance %s ignores the checkpoint in override_settings; "
                    "switching through /options from now on",
                    m.name,
                )
                info.switch_by_options = True
                info.loaded = m.loaded = rendered
                await self._switch_by_options(m, info, cp)
                return await self._one_picture(m, run, info, cp, i, watch)
            if rendered is not None:
                info.loaded = m.loaded = rendered
            elif cp is not None:
                info.loaded = m.loaded = cp.key
        picture = _first_picture(answer, m.name)
        took = time.monotonic() - started
        switched = route != "extra-single-image" and info.loaded != before
        if switched:
            log.info(
                "instance %s: %s loaded for job %s (%.1f s)", m.name, info.loaded, req.job_id, took
            )
        self.pool.observe(m, took, switched=switched)
        seeds = details.get("all_seeds") or []
        seed = details.get("seed")
        if isinstance(seeds, list) and seeds:
            seed = seeds[0]
        return ResultImage(
            data=picture,
            seed=int(seed) if isinstance(seed, int | float) and seed >= 0 else None,
            extra={"instance": m.name, "checkpoint": info.loaded or ""},
        )

    async def _watch(self, m: Inst, run: ProviderRun, i: int, watch: _Watch) -> None:
        """Progress and the live preview while a picture renders."""
        n = max(1, run.request.n if not run.request.upscale else 1)
        last = ""
        while True:
            await asyncio.sleep(self.cfg.progress_interval_s)
            try:
                p = await m.backend.get(
                    "progress", params={"skip_current_image": "false"}, timeout_s=15
                )
            except RouteMissing:
                return
            except (InstanceDown, ProviderFailure):
                continue  # the render's own request says whether the instance is gone
            if not isinstance(p, dict):
                continue
            state = p.get("state") or {}
            if isinstance(state, dict) and state.get("interrupted"):
                watch.interrupted = True
            try:
                fraction = (i + min(max(float(p.get("progress") or 0.0), 0.0), 1.0)) / n
            except (TypeError, ValueError):
                fraction = i / n
            preview = None
            image = p.get("current_image")
            if isinstance(image, str) and image and image != last:
                last = image
                preview = _b64(image)
            await run.progress(fraction, preview=preview)

    async def _interrupt(self, m: Inst) -> None:
        """Stop what the instance renders, and wait (briefly) until it is idle again, so the
        next job lent this instance is not queued behind a dying one."""
        try:
            async with asyncio.timeout(10):
                await m.backend.post("interrupt", timeout_s=10)
                for _ in range(20):
                    p = await m.backend.get("progress", params={"skip_current_image": "true"})
                    state = (p or {}).get("state") or {}
                    if not state.get("job_count") and not (p or {}).get("progress"):
                        break
                    await asyncio.sleep(0.25)
        except (TimeoutError, InstanceDown, RouteMissing, ProviderFailure) as exc:
            log.info("instance %s: interrupt: %s", m.name, exc)

    async def cancel(self, task_id: str) -> None:
        """Interrupt the instance only while it renders this very task."""
        for m in self.pool.members:
            if m.current == task_id and m.up:
                await self._interrupt(m)

    async def account_status(self) -> str | None:
        parts = []
        for d in self.pool.describe():
            if d["up"]:
                state = "busy" if d["busy"] else "idle"
                parts.append(
                    f"{d['name']} {state}, {d['loaded'] or 'no checkpoint'} loaded, "
                    f"{d['jobs']} job(s), {d['switches']} switch(es)"
                )
            else:
                parts.append(f"{d['name']} down ({d['down_reason'] or 'not checked yet'})")
        return "; ".join(parts) or None


def _b64(text: str) -> bytes | None:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _info_of(answer: dict[str, Any]) -> dict[str, Any]:
    """``info`` is a JSON *string* in A1111's answers (an object in some forks)."""
    raw = answer.get("info")
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _rendered_checkpoint(info: InstanceInfo, details: dict[str, Any]) -> str | None:
    h = details.get("sd_model_hash")
    if isinstance(h, str) and h:
        found = info.by_hash(h)
        if found is not None:
            return found.key
    name = details.get("sd_model_name")
    if isinstance(name, str) and name:
        found = info.find(name)
        return found.key if found else norm(name)
    return None


def _first_picture(answer: dict[str, Any], instance: str) -> bytes:
    images = answer.get("images")
    text = images[0] if isinstance(images, list) and images else answer.get("image")
    data = _b64(text) if isinstance(text, str) and text else None
    if not data:
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"GPU instance {instance} returned no picture"
        )
    return data
