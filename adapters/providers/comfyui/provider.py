"""The operator's own GPUs running ComfyUI: workflows (``workflows.py``) on a pool of
instances (``adapters/providers/gpupool.py``, the same pool as AUTOMATIC1111's).

Notes on the protocol: shared/api/providers.md, "Self-hosted: ComfyUI". A job is one
prompt: the workflow with the command's values put in (``workflows.apply``), submitted to
``/prompt`` with this job's own ``client_id`` and followed on the websocket for that
``prompt_id`` alone; the pictures are read from ``/history`` (so cached outputs count too)
and fetched with ``/view``. What the real server does that trips clients, and what this
module does about it:

- Previews: none unless asked, so every prompt sets ``extra_data.preview_method``; the
  socket sends the ``feature_flags`` handshake, so previews come as type-4 frames carrying
  their prompt id, and only ours are shown. A type-1 frame (older servers) is taken only
  while our prompt is the one executing.
- A 400 names the reason in ``error`` (``node_errors`` is empty for an unknown node type):
  both go to the operator's log, the person gets one plain line, refunded in full.
- A partly invalid graph is queued and runs only its valid outputs: the outputs that came
  back are checked; none at all fails the job clearly.
- ``/interrupt`` without a prompt id stops whatever runs: a running prompt is interrupted
  only when ``/queue`` says it is ours; a queued one is deleted from the queue.
- An upload may be renamed on a clash: the returned name is used.
- An identical graph resubmitted is answered from the cache: the earlier outputs are in
  ``/history`` and are delivered.
- The websocket can drop: the job goes on, followed through ``/history``, delivered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from adapters.providers.comfyui.api import ComfyApi, PromptRejected, preview_of
from adapters.providers.comfyui.workflows import (
    Values,
    Workflow,
    WorkflowError,
    apply,
    check_against,
    choices,
    load_workflows,
    outputs,
)
from adapters.providers.gpupool import GpuPool, InstanceDown, Member
from bot.config import ComfyUIConfig
from bot.errors import BadInput, FailureClass, ProviderFailure
from bot.infotext import prompt_loras
from bot.locks import HeldLock, NamedLocks
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

START_PROBE_S = 10.0
MAX_PICTURES = 16  # a workflow that saves more is cut here
HISTORY_POLL_S = 1.0

Inst = Member[ComfyApi]


def stem(name: str) -> str:
    """A checkpoint file's name as people say it: no folder, no extension, lower case."""
    base = PurePosixPath(name.replace("\\", "/")).name
    for ext in (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return base.lower()


class _Follow:
    def __init__(self) -> None:
        self.done = False
        self.error: dict[str, Any] | None = None
        self.interrupted = False
        self.executing = False  # our prompt is the one running


class ComfyUIProvider(Provider):
    name = "comfyui"
    bills_when_cancelled = False

    def __init__(self, cfg: ComfyUIConfig, *, locks: NamedLocks | None = None) -> None:
        self.cfg = cfg
        self.locks = locks
        # refused at start-up with the reason (a config error), never at the first job
        self.workflows: dict[str, Workflow] = load_workflows(
            Path(cfg.workflows_dir).expanduser() if cfg.workflows_dir else None
        )
        if cfg.default_workflow.lower() not in self.workflows:
            raise WorkflowError(
                [("providers.comfyui.default_workflow", f"no workflow {cfg.default_workflow!r}")]
            )
        members = [
            Member(inst.name, ComfyApi(inst, timeout_s=cfg.request_timeout_s))
            for inst in cfg.instances
        ]
        self.pool: GpuPool[ComfyApi] = GpuPool(
            members,
            check=self._probe,
            recheck_s=cfg.recheck_s,
            recheck_max_s=cfg.recheck_max_s,
            wait_for_instance_s=cfg.wait_for_instance_s,
            hold=self._hold if locks is not None else None,
        )
        self.lists: dict[str, dict[str, list[str]]] = {}  # per instance, from /object_info
        self._caps: Capabilities | None = None
        self._said: dict[str, str] = {}
        self._lists_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_PROBE_S):
                await self.pool.recheck()
        self.pool.start()
        if self._lists_task is None:
            self._lists_task = asyncio.create_task(self._lists_loop(), name="comfyui-lists")

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
                await asyncio.gather(
                    *(self.pool.recheck_one(m) for m in self.pool.members if m.up and not m.busy)
                )
            except Exception:
                log.exception("reading the ComfyUI instances' lists failed")

    async def models_changed(self) -> None:
        """ComfyUI lists a folder's files afresh on every /object_info: read them again."""
        await asyncio.gather(*(self.pool.recheck_one(m) for m in self.pool.members))

    async def _hold(self, m: Inst) -> HeldLock | None:
        assert self.locks is not None
        return await self.locks.try_hold(f"gpu:{m.backend.url}")

    async def _probe(self, m: Inst) -> bool:
        try:
            info = await m.backend.object_info()
        except InstanceDown as exc:
            m.down_reason = f"not answering ({exc})"
            if not m.checked:
                self._say(m, f"not answering at {m.backend.url} ({exc})", logging.WARNING)
            return False
        except ProviderFailure as exc:
            m.down_reason = exc.message
            self._say(m, exc.message, logging.WARNING)
            return False
        found = choices(info)
        self.lists[m.name] = found
        self._caps = None
        problems = [
            f"{name}: {p}" for name, wf in self.workflows.items() for p in check_against(wf, info)
        ]
        line = (
            f"ComfyUI at {m.backend.url}: {len(found.get('checkpoints', []))} checkpoint(s), "
            f"{len(found.get('loras', []))} LoRA(s), {len(found.get('samplers', []))} "
            f"sampler(s); workflows {', '.join(sorted(self.workflows))}"
        )
        if problems:
            line += "; cannot run here: " + "; ".join(problems)
        self._say(m, line, logging.WARNING if problems else logging.INFO)
        return True

    def _say(self, m: Inst, line: str, level: int = logging.INFO) -> None:
        if self._said.get(m.name) != line:
            self._said[m.name] = line
            log.log(level, "instance %s: %s", m.name, line)

    # --- what the pool offers --------------------------------------------------------------

    def _listed(self, kind: str) -> dict[str, str]:
        """{stem or lower name: the name as the instances list it} over every instance."""
        out: dict[str, str] = {}
        for found in self.lists.values():
            for name in found.get(kind, []):
                out.setdefault(stem(name) if kind == "checkpoints" else name.lower(), name)
        return out

    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        checkpoints = self._listed("checkpoints")
        models = []
        for _key, full in sorted(checkpoints.items()):
            where = [n for n, f in self.lists.items() if full in f.get("checkpoints", [])]
            models.append(ModelInfo(PurePosixPath(full).stem, f"{full} on {', '.join(where)}"))
        default = ""
        if self.cfg.default_model:
            found = self.find_model(self.cfg.default_model)
            default = found.name if found else self.cfg.default_model
        elif models:
            default = models[0].name
        kinds = {wf.kind for wf in self.workflows.values()}
        self._caps = Capabilities(
            kinds=frozenset({"txt2img", "img2img"}),
            models=tuple(models),
            default_model=default,
            max_images=MAX_IMAGES_PER_JOB,
            min_size=64,
            max_size=2048,
            size_multiple=8,
            description="your own GPUs (ComfyUI workflows)",
            upscale="upscale" in kinds,
            lists={
                "workflows": tuple(sorted(self.workflows)),
                "loras": tuple(sorted(self._listed("loras").values())),
                "samplers": tuple(sorted(self._listed("samplers").values())),
                "schedulers": tuple(sorted(self._listed("schedulers").values())),
                "upscalers": tuple(sorted(self._listed("upscale_models").values())),
            },
        )
        return self._caps

    def find_model(self, name: str) -> ModelInfo | None:
        key = stem(name or "")
        return next((mi for mi in self.capabilities().models if stem(mi.name) == key), None)

    def _file_on(self, m: Inst, kind: str, name: str) -> str | None:
        """The name instance ``m`` lists for ``name`` (a checkpoint by its stem)."""
        for listed in self.lists.get(m.name, {}).get(kind, []):
            same = (
                stem(listed) == stem(name)
                if kind == "checkpoints"
                else listed.lower() == name.lower()
            )
            if same:
                return listed
        return None

    # --- refusing before charging ----------------------------------------------------------

    def workflow_for(self, kind: str, workflow: str | None, upscale: bool = False) -> Workflow:
        if workflow:
            found = self.workflows.get(workflow.lower())
            if found is None:
                raise BadInput.of(
                    "error.gpu_unknown",
                    what="workflow",
                    name=workflow,
                    near=", ".join(sorted(self.workflows)),
                )
            return found
        if upscale:
            return (
                self.workflows["upscale"] if "upscale" in self.workflows else self._none("upscale")
            )
        if kind == "img2img":
            return (
                self.workflows["img2img"] if "img2img" in self.workflows else self._none("img2img")
            )
        return self.workflows[self.cfg.default_workflow.lower()]

    @staticmethod
    def _none(kind: str) -> Workflow:
        raise BadInput(f"there is no {kind} workflow on these GPUs (see /models)")

    def check(self, params: GenerationParams, model: str, kind: str = "txt2img") -> None:
        wf = self.workflow_for(kind, params.workflow, bool(params.upscale))
        if wf.kind == "txt2img" and kind == "img2img":
            raise BadInput(f"the {wf.name} workflow takes no picture; try --workflow img2img")
        if wf.kind in ("img2img", "upscale") and kind != "img2img":
            raise BadInput(f"the {wf.name} workflow needs a picture: reply to one")
        loras = [*params.loras, *prompt_loras(params.prompt)]
        if params.loras and not wf.takes_loras:
            raise BadInput(f"the {wf.name} workflow takes no LoRAs")
        found = [f for n, f in self.lists.items() if self._has_checkpoint(n, model)]
        if not found:
            return  # nothing probed yet: checked again when the job runs
        for what, value, kind_ in (
            ("sampler", params.sampler, "samplers"),
            ("scheduler", params.scheduler, "schedulers"),
        ):
            if value and not any(
                value.lower() in (x.lower() for x in f.get(kind_, [])) for f in found
            ):
                raise self._unknown(what, value, kind_, found)
        for name, _ in loras if wf.takes_loras else []:
            if not any(self._lora_in(name, f) for f in found):
                raise self._unknown("LoRA", name, "loras", found)

    def _has_checkpoint(self, instance: str, model: str) -> bool:
        if not model:
            return True
        names = self.lists.get(instance, {}).get("checkpoints", [])
        return any(stem(n) == stem(model) for n in names)

    @staticmethod
    def _lora_in(name: str, found: dict[str, list[str]]) -> bool:
        return any(stem(x) == stem(name) for x in found.get("loras", []))

    @staticmethod
    def _unknown(what: str, value: str, kind: str, found: list[dict[str, list[str]]]) -> BadInput:
        names = sorted({x for f in found for x in f.get(kind, [])})
        return BadInput.of(
            "error.gpu_unknown", what=what, name=value, near=", ".join(names[:8]) or "none"
        )

    # --- running a job ---------------------------------------------------------------------

    async def generate(self, run: ProviderRun) -> None:
        req = run.request
        wf = self.workflow_for(req.kind, req.workflow, bool(req.upscale))
        want = stem(req.model) if req.model and "checkpoint" in wf.keys else None
        loras = [*req.loras, *prompt_loras(req.prompt)] if wf.takes_loras else []

        def fits(m: Inst) -> bool:
            if m.name not in self.lists:
                return False
            if want and not self._file_on(m, "checkpoints", req.model):
                return False
            return all(self._lora_in(n, self.lists[m.name]) for n, _ in loras)

        async def on_wait(place: int) -> None:
            if place > 1 or self.pool.waiting > 1:
                await run.progress(0.0, queue_position=place, wait_s=None)

        async def work(m: Inst) -> tuple[str, list[bytes]]:
            return m.name, await self._run_on(m, run, wf, want)

        name, pictures = await self.pool.on_some_instance(
            work, want=want, fits=fits, on_wait=on_wait, job=req.job_id
        )
        for i, data in enumerate(pictures):
            await run.image(i, ResultImage(data=data, extra={"instance": name}))

    def _values(self, req: ResolvedRequest, wf: Workflow, m: Inst, image: str | None) -> Values:
        checkpoint = self._file_on(m, "checkpoints", req.model) if req.model else None
        upscale_model = None
        if wf.kind == "upscale":
            models = self.lists.get(m.name, {}).get("upscale_models", [])
            wanted = self.cfg.upscale_model
            upscale_model = (
                next((x for x in models if x.lower() == wanted.lower()), None) if wanted else None
            )
            upscale_model = upscale_model or (models[0] if models else None)
        loras = None
        if wf.takes_loras:
            lora_files = []
            for name, weight in req.loras:
                lora_files.append((self._file_on_lora(m, name), weight))
            loras = tuple(lora_files)
        return Values(
            prompt=req.prompt if wf.kind != "upscale" else None,
            negative=req.negative if wf.kind != "upscale" else None,
            seed=req.seed,
            width=req.width,
            height=req.height,
            count=req.n if wf.kind != "upscale" else None,
            checkpoint=checkpoint,
            loras=loras,
            sampler=req.sampler,
            scheduler=req.scheduler,
            steps=req.steps,
            cfg=req.cfg,
            denoise=req.strength if wf.kind == "img2img" and req.strength is not None else None,
            image=image,
            upscale_model=upscale_model,
        )

    def _file_on_lora(self, m: Inst, name: str) -> str:
        for listed in self.lists.get(m.name, {}).get("loras", []):
            if stem(listed) == stem(name):
                return listed
        return name

    async def _run_on(
        self, m: Inst, run: ProviderRun, wf: Workflow, want: str | None
    ) -> list[bytes]:
        req = run.request
        api = m.backend
        image = None
        if wf.kind in ("img2img", "upscale"):
            if req.init_image is None:
                raise ProviderFailure(
                    FailureClass.BAD_INPUT,
                    f"the {wf.name} workflow needs a picture",
                    uncharged=True,
                )
            digest = hashlib.sha256(req.init_image).hexdigest()[:16]
            image = await api.upload(req.init_image, f"sdhost-{digest}.png")
        try:
            graph = apply(wf, self._values(req, wf, m, image))
        except ValueError as exc:
            raise ProviderFailure(FailureClass.BAD_INPUT, str(exc), uncharged=True) from None
        ws, client_id = await api.connect()
        prompt_id: str | None = None
        follow = _Follow()
        try:
            extra: dict[str, Any] = {}
            if self.cfg.preview_method and self.cfg.preview_method != "none":
                extra["preview_method"] = self.cfg.preview_method
            try:
                prompt_id = await api.submit(graph, client_id, extra)
            except PromptRejected as exc:
                log.warning(
                    "job %s: ComfyUI instance %s refused workflow %s: %s",
                    req.job_id,
                    m.name,
                    wf.name,
                    exc.for_the_log(),
                )
                raise ProviderFailure(
                    FailureClass.BAD_INPUT, exc.plainly(), uncharged=True
                ) from None
            m.current = prompt_id
            await run.submitted(
                f"{m.name}:{prompt_id}", {"instance": m.name, "prompt_id": prompt_id}
            )
            try:
                await self._follow(ws, prompt_id, run, follow)
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()
            if not follow.done:
                await self._poll_history(api, prompt_id)
        except asyncio.CancelledError:
            if prompt_id is not None and m.up:
                await self._stop(m, prompt_id)
            raise
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
        if want:
            m.loaded = want
        return await self._pictures(m, wf, prompt_id, follow, req.job_id)

    async def _follow(
        self, ws: aiohttp.ClientWebSocketResponse, prompt_id: str, run: ProviderRun, f: _Follow
    ) -> None:
        """Read the socket until our prompt is done, failed or interrupted; return early
        (``f.done`` False) if the socket drops: the caller goes on through /history."""
        fraction = 0.0
        while not f.done:
            try:
                msg = await ws.receive(timeout=30)
            except TimeoutError:
                continue  # long nodes say nothing for a while; the socket has its heartbeat
            if msg.type == aiohttp.WSMsgType.BINARY:
                found = preview_of(msg.data)
                if found is None:
                    continue
                picture, pid = found
                if pid == prompt_id or (pid is None and f.executing):
                    await run.progress(fraction, preview=picture)
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                log.info("ComfyUI socket closed while following prompt %s; going on", prompt_id)
                return
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            kind, data = event.get("type"), event.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") not in (prompt_id, None):
                continue
            if kind == "executing":
                if data.get("prompt_id") == prompt_id:
                    f.executing = data.get("node") is not None
                    if data.get("node") is None:
                        f.done = True
            elif kind == "progress" and data.get("prompt_id") == prompt_id:
                try:
                    fraction = float(data["value"]) / max(1.0, float(data["max"]))
                except (KeyError, TypeError, ValueError):
                    continue
                await run.progress(fraction)
            elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                f.done = True
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                f.error, f.done = data, True
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                f.interrupted, f.done = True, True

    async def _poll_history(self, api: ComfyApi, prompt_id: str) -> None:
        """The socket dropped: wait for the prompt in /history (the instance going away is
        ``InstanceDown``, and the job moves on)."""
        missing = 0
        while True:
            entry = await api.history(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and (status.get("completed") or status.get("status_str")):
                return
            if entry is None:
                running, pending = await api.queue()
                missing = 0 if prompt_id in running or prompt_id in pending else missing + 1
                if missing >= 2:  # neither queued, running nor done: the server restarted
                    raise InstanceDown("the prompt is gone from the server (restarted?)")
            await asyncio.sleep(HISTORY_POLL_S)

    async def _pictures(
        self, m: Inst, wf: Workflow, prompt_id: str | None, f: _Follow, job_id: int
    ) -> list[bytes]:
        assert prompt_id is not None
        entry: dict[str, Any] | None = None
        for _ in range(20):  # history is written right after the last message
            entry = await m.backend.history(prompt_id)
            if entry is not None:
                break
            await asyncio.sleep(0.1)
        status = (entry or {}).get("status") or {}
        error = f.error
        if error is None and status.get("status_str") == "error":
            for name, data in status.get("messages") or []:
                if name == "execution_error" and isinstance(data, dict):
                    error = data
        if f.interrupted or any(
            name == "execution_interrupted" for name, _ in status.get("messages") or []
        ):
            raise ProviderFailure(
                FailureClass.CANCELLED, "the job was stopped on the GPU instance", uncharged=True
            )
        if error is not None:
            log.warning(
                "job %s: ComfyUI instance %s: node %s (%s) failed: %s: %s",
                job_id,
                m.name,
                error.get("node_id"),
                error.get("node_type"),
                error.get("exception_type"),
                str(error.get("exception_message", ""))[:500],
            )
            message = str(error.get("exception_message") or "")
            if "out of memory" in message.lower():
                raise ProviderFailure(
                    FailureClass.BAD_INPUT,
                    "the GPU ran out of memory for this request: try a smaller --size or fewer "
                    "pictures (--n)",
                )
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"the {wf.name} workflow failed on the GPU at its {error.get('node_type', '?')} "
                "node (the operator's log says why)",
                uncharged=True,
            )
        produced = (entry or {}).get("outputs") or {}
        expected = outputs(wf)
        missing = [n for n in expected if n not in produced]
        if missing and len(missing) < len(expected):
            log.warning(
                "job %s: workflow %s: outputs %s did not run (the server skipped invalid ones)",
                job_id,
                wf.name,
                ", ".join(missing),
            )
        images = [
            image
            for node in expected
            for image in ((produced.get(node) or {}).get("images") or [])
            if isinstance(image, dict)
        ][:MAX_PICTURES]
        if not images:
            raise ProviderFailure(
                FailureClass.PROVIDER_ERROR,
                f"the {wf.name} workflow saved no picture",
                uncharged=True,
            )
        return [await m.backend.view(image) for image in images]

    async def _stop(self, m: Inst, prompt_id: str) -> None:
        """Cancel: delete a queued prompt; interrupt a running one only when it is ours."""
        try:
            async with asyncio.timeout(10):
                running, pending = await m.backend.queue()
                if prompt_id in pending:
                    await m.backend.delete_queued(prompt_id)
                elif prompt_id in running:
                    await m.backend.interrupt(prompt_id)
        except (TimeoutError, InstanceDown, ProviderFailure) as exc:
            log.info("instance %s: could not stop prompt %s: %s", m.name, prompt_id, exc)

    async def cancel(self, task_id: str) -> None:
        name, _, prompt_id = task_id.partition(":")
        for m in self.pool.members:
            if m.name == name and m.current == prompt_id and m.up:
                await self._stop(m, prompt_id)

    async def account_status(self) -> str | None:
        parts = []
        for d in self.pool.describe():
            state = ("busy" if d["busy"] else "idle") if d["up"] else f"down ({d['down_reason']})"
            parts.append(f"{d['name']} {state}, {d['jobs']} job(s)")
        return "; ".join(parts) or None
