"""ComfyUI workflows: the shipped graphs, the operator's own, and how a request's values are
put into a graph. Pure code: no HTTP here (the provider submits what ``apply`` returns).

A workflow is a graph in ComfyUI's API format (``{"3": {"class_type": "KSampler",
"inputs": {...}, "_meta": {"title": ...}}, ...}``; in the UI: "Save (API Format)"). Which node
input takes which of the command's values is found once, at load:

- Titles first. A node whose ``_meta.title`` starts with ``sdhost:`` takes the values named
  after the colon, comma-separated (``sdhost:seed,steps,cfg,denoise`` on a sampler). Each key
  fills the input of that name on that node; the keys whose input is named otherwise:
  ``prompt``/``negative`` -> ``text`` (also ``text_g``/``text_l`` where present),
  ``size`` -> ``width`` and ``height``, ``count`` -> ``batch_size`` (or ``amount``, as on
  RepeatLatentBatch), ``checkpoint`` -> ``ckpt_name``, ``sampler`` -> ``sampler_name``,
  ``seed`` -> ``seed`` (or ``noise_seed``), ``image`` -> ``image`` (LoadImage),
  ``upscale_model`` -> ``model_name``, ``lora`` -> ``lora_name`` (with ``strength_model`` and
  ``strength_clip``). An unknown key, or a node without the input its key fills, refuses the
  workflow.
- A graph with no ``sdhost:`` title at all is mapped by node type, as in ComfyUI's default
  graph: the only CheckpointLoaderSimple (checkpoint), the only KSampler (seed, steps, cfg,
  sampler, scheduler, denoise), the only EmptyLatentImage (size, count), the only LoadImage
  (image), the only LoraLoader (lora), the only UpscaleModelLoader (upscale model); the
  prompt and negative are the CLIPTextEncode nodes that every KSampler's ``positive`` and
  ``negative`` inputs lead back to (through conditioning nodes in between). A type present
  more than once is left unmapped (keeps its own values). A graph with any ``sdhost:`` title
  is mapped by its titles only.

The kind: a shipped workflow's is its name. An operator's file may state it in a top-level
``"sdhost": {"kind": "img2img"}`` entry (removed before the graph is sent); otherwise it is
img2img if it maps an image and a prompt, upscale if it maps an image and no prompt, else
txt2img. txt2img and img2img need a mapped prompt, img2img and upscale a mapped image: a
workflow that lacks them is refused at start-up with the reason.

LoRAs (``Values.loras``, in order): the first goes into the mapped LoraLoader (several
mapped loaders take one each, in node id order); more are chained as new LoraLoader nodes
after it, its consumers rewired to the end of the chain. With no mapped LoraLoader the chain
goes after the CheckpointLoaderSimple, every consumer of its MODEL and CLIP rewired. With a
mapped LoraLoader and no LoRA given (an empty tuple), the loader is bypassed (its consumers
take its inputs) so the graph still runs; ``loras=None`` leaves the graph's LoRAs as they are.

Outputs: the SaveImage nodes (PreviewImage nodes when there is none), in node id order
(numerically: "9" before "10"); each node's pictures in the order it reports them. A graph
that saves nothing is refused at load.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bot.config import ConfigError

KINDS = ("txt2img", "img2img", "upscale")
PREFIX = "sdhost:"

# title key -> the inputs it fills: all of those present (at least one must be); "size"
# fills width and height, both required
_FILLS: dict[str, tuple[str, ...]] = {
    "prompt": ("text", "text_g", "text_l"),
    "negative": ("text", "text_g", "text_l"),
    "seed": ("seed", "noise_seed"),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "denoise": ("denoise",),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
    "size": ("width", "height"),
    "count": ("batch_size", "amount"),
    "checkpoint": ("ckpt_name",),
    "lora": ("lora_name",),
    "image": ("image",),
    "upscale_model": ("model_name",),
}
KEYS = tuple(_FILLS)

# class_type fallback for graphs without sdhost: titles: type -> keys (only when the type
# occurs once in the graph)
_BY_TYPE: dict[str, tuple[str, ...]] = {
    "CheckpointLoaderSimple": ("checkpoint",),
    "KSampler": ("seed", "steps", "cfg", "sampler", "scheduler", "denoise"),
    "EmptyLatentImage": ("size", "count"),
    "LoadImage": ("image",),
    "LoraLoader": ("lora",),
    "UpscaleModelLoader": ("upscale_model",),
}
_TEXT_ENCODERS = ("CLIPTextEncode", "CLIPTextEncodeSDXL")
_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_SAVERS = ("SaveImage",)
_PREVIEWS = ("PreviewImage",)
# output index -> the input a bypassed LoRA loader passes it from
_LORA_PASS = {0: "model", 1: "clip"}


class WorkflowError(ConfigError):
    """Workflows that cannot be used, each with its file and the reason."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"workflow {src}: {why}" for src, why in self.problems))


@dataclass(frozen=True, slots=True)
class Slot:
    """One node input that takes one of the command's values."""

    node: str
    input: str


@dataclass(frozen=True)
class Workflow:
    name: str  # the file name without .json, lower case
    kind: str  # txt2img | img2img | upscale
    graph: dict[str, Any]  # API format, as loaded (never changed: apply copies it)
    # key (KEYS) -> the inputs it fills, in node id order
    mapping: dict[str, tuple[Slot, ...]]
    source: str  # the file's path, or "shipped:NAME"
    shipped: bool = False

    @property
    def keys(self) -> frozenset[str]:
        """The command values this workflow takes."""
        return frozenset(self.mapping)

    @property
    def takes_loras(self) -> bool:
        """--lora can be used: a mapped LoRA loader, or a CheckpointLoaderSimple to chain
        LoraLoader nodes after."""
        return bool(self.mapping.get("lora")) or _lora_anchor(self.graph, self.mapping) is not None


@dataclass(frozen=True, slots=True)
class Values:
    """A request's values; ``None`` keeps the workflow's own."""

    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None  # batch size
    checkpoint: str | None = None  # the file name as the instance lists it
    # (name, weight) in order; () bypasses mapped LoRA loaders; None leaves them as they are
    loras: tuple[tuple[str, float], ...] | None = None
    sampler: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    denoise: float | None = None
    image: str | None = None  # the uploaded name (with "subfolder/" if the upload had one)
    upscale_model: str | None = None


# -- loading --------------------------------------------------------------------------------


def load_workflows(workflows_dir: Path | None) -> dict[str, Workflow]:
    """The shipped workflows, then every ``*.json`` in ``workflows_dir`` (its name: the file
    name without ``.json``, lower case; it replaces a shipped one of that name). Every file
    that cannot be used is reported in one ``WorkflowError``."""
    found: dict[str, Workflow] = {}
    problems: list[tuple[str, str]] = []
    for item in sorted(resources.files(__package__).joinpath("shipped").iterdir(), key=str):
        if item.name.endswith(".json"):
            name = item.name[: -len(".json")].lower()
            try:
                found[name] = parse_workflow(
                    name, json.loads(item.read_text(encoding="utf-8")), f"shipped:{name}", name
                )
            except WorkflowError as exc:  # a packaging bug, but say so plainly
                problems.extend(exc.problems)
    if workflows_dir is not None:
        if not workflows_dir.is_dir():
            raise WorkflowError([(str(workflows_dir), "workflows_dir is not a directory")])
        for path in sorted(workflows_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append((str(path), f"cannot be read as JSON: {exc}"))
                continue
            try:
                found[path.stem.lower()] = parse_workflow(path.stem.lower(), data, str(path))
            except WorkflowError as exc:
                problems.extend(exc.problems)
    if problems:
        raise WorkflowError(problems)
    return found


def parse_workflow(name: str, data: Any, source: str, kind: str | None = None) -> Workflow:
    """One workflow from its parsed JSON. ``kind`` is given for the shipped ones; for the
    operator's it comes from the file's ``"sdhost": {"kind": ...}`` entry or the mapping."""

    def fail(reason: str) -> WorkflowError:
        return WorkflowError([(source, reason)])

    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise fail(
            "this is the UI format (a 'nodes' list), not the API format: in ComfyUI "
            "save it with 'Save (API Format)' (Workflow menu > Export (API))"
        )
    if isinstance(data, dict) and set(data) == {"prompt"} and isinstance(data["prompt"], dict):
        raise fail("this is a /prompt request body: save only the graph (its 'prompt' value)")
    if not isinstance(data, dict) or not data:
        raise fail("not an API-format graph (a JSON object of nodes by id)")
    graph = dict(data)
    hint = graph.pop("sdhost", None)
    if hint is not None and (not isinstance(hint, dict) or "class_type" in hint):
        raise fail('the "sdhost" entry must be an object like {"kind": "img2img"}')
    if kind is None and hint is not None:
        kind = str(hint.get("kind") or "") or None
        if kind is not None and kind not in KINDS:
            raise fail(f'unknown kind {kind!r} in the "sdhost" entry (one of {", ".join(KINDS)})')
    for nid, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise fail(
                f"node {nid!r} has no class_type: not an API-format graph; in ComfyUI save it "
                "with 'Save (API Format)'"
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise fail(f"node {nid} ({node['class_type']}): 'inputs' is not an object")
    for nid, node in graph.items():
        for inp, value in node.get("inputs", {}).items():
            if _is_link(value) and value[0] not in graph:
                raise fail(
                    f"node {nid} input {inp!r} links to node {value[0]!r}, which is not there"
                )
    graph = copy.deepcopy(graph)
    try:
        mapping = _map(graph)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if kind is None:
        if "image" in mapping:
            kind = "img2img" if "prompt" in mapping else "upscale"
        else:
            kind = "txt2img"
    if kind in ("txt2img", "img2img") and "prompt" not in mapping:
        raise fail(
            f"a {kind} workflow must take the prompt, and this one maps none: title the "
            "positive CLIPTextEncode node 'sdhost:prompt' (no node is titled so, and no "
            "KSampler's positive input leads back to a CLIPTextEncode)"
        )
    if kind in ("img2img", "upscale") and "image" not in mapping:
        raise fail(f"an {kind} workflow must take the picture: title its LoadImage 'sdhost:image'")
    for slot in mapping.get("lora", ()):
        if not _is_link(graph[slot.node]["inputs"].get("model")):
            raise fail(
                f"node {slot.node} ({graph[slot.node]['class_type']}) takes the LoRA but has "
                "no linked 'model' input to pass through when no LoRA is given"
            )
    if not _output_nodes(graph):
        raise fail("it saves no picture: add a SaveImage node")
    return Workflow(
        name=name,
        kind=kind,
        graph=graph,
        mapping=mapping,
        source=source,
        shipped=source.startswith("shipped:"),
    )


def _map(graph: dict[str, Any]) -> dict[str, tuple[Slot, ...]]:
    titled: dict[str, list[str]] = {}
    for nid, node in graph.items():
        named = _title_keys(node)
        if named is not None:
            titled[nid] = named
    found: dict[str, list[Slot]] = {}
    if titled:
        for nid in sorted(titled, key=node_order):
            node = graph[nid]
            for key in titled[nid]:
                if key not in _FILLS:
                    raise ValueError(
                        f"node {nid} ({node['class_type']}) title {_title(node)!r}: unknown key "
                        f"{key!r} (known: {', '.join(KEYS)})"
                    )
                found.setdefault(key, []).extend(_slots(nid, node, key))
    else:
        for cls, keys in _BY_TYPE.items():
            ids = [nid for nid, node in graph.items() if node["class_type"] == cls]
            if len(ids) != 1:
                continue
            for key in keys:
                try:
                    found.setdefault(key, []).extend(_slots(ids[0], graph[ids[0]], key))
                except ValueError:
                    continue  # an input converted away: that value is not taken
        positive, negative = _prompt_nodes(graph)
        for key, ids in (("prompt", positive), ("negative", negative)):
            for nid in ids:
                found.setdefault(key, []).extend(_slots(nid, graph[nid], key))
    return {key: tuple(slots) for key, slots in found.items() if slots}


def _title(node: Mapping[str, Any]) -> str:
    meta = node.get("_meta")
    return str(meta.get("title") or "") if isinstance(meta, dict) else ""


def _title_keys(node: Mapping[str, Any]) -> list[str] | None:
    title = _title(node).strip()
    if not title.lower().startswith(PREFIX):
        return None
    keys = [k.strip().lower() for k in title[len(PREFIX) :].split(",")]
    return [k for k in keys if k]


def _slots(nid: str, node: Mapping[str, Any], key: str) -> list[Slot]:
    inputs = node.get("inputs", {})
    names = _FILLS[key]
    have = [n for n in names if n in inputs]
    if (key == "size" and len(have) != 2) or not have:
        want = " and ".join(names) if key == "size" else " or ".join(names)
        raise ValueError(f"node {nid} ({node['class_type']}) takes {key!r} but has no input {want}")
    return [Slot(nid, n) for n in have]


def _prompt_nodes(graph: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The text encoders the samplers' positive and negative inputs lead back to; one that
    both lead to is neither."""
    sides: dict[str, set[str]] = {"positive": set(), "negative": set()}
    for node in graph.values():
        if node["class_type"] not in _SAMPLERS:
            continue
        for side, found in sides.items():
            found |= _upstream_encoders(graph, node["inputs"].get(side))
    both = sides["positive"] & sides["negative"]
    return (
        sorted(sides["positive"] - both, key=node_order),
        sorted(sides["negative"] - both, key=node_order),
    )


def _upstream_encoders(graph: dict[str, Any], start: Any) -> set[str]:
    found: set[str] = set()
    seen: set[str] = set()
    todo = [start[0]] if _is_link(start) else []
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        node = graph[nid]
        if node["class_type"] in _TEXT_ENCODERS:
            found.add(nid)
            continue
        if node["class_type"] in _SAMPLERS:
            continue
        todo.extend(v[0] for v in node.get("inputs", {}).values() if _is_link(v))
    return found


# -- applying a request ---------------------------------------------------------------------


def apply(workflow: Workflow, values: Values) -> dict[str, Any]:
    """A new graph with the request's values put in; ``workflow.graph`` is left unchanged.

    Values the workflow does not map are ignored (an upscale takes the picture, the size and
    the upscale model; its LoRAs are ignored). LoRAs given to a workflow that has no place
    for them (``not workflow.takes_loras``) raise ``ValueError``: check before accepting."""
    graph = copy.deepcopy(workflow.graph)
    scalar = {
        "prompt": values.prompt,
        "negative": values.negative,
        "seed": values.seed,
        "steps": values.steps,
        "cfg": values.cfg,
        "denoise": values.denoise,
        "sampler": values.sampler,
        "scheduler": values.scheduler,
        "count": values.count,
        "checkpoint": values.checkpoint,
        "image": values.image,
        "upscale_model": values.upscale_model,
    }
    for key, value in scalar.items():
        if value is None:
            continue
        for slot in workflow.mapping.get(key, ()):
            graph[slot.node]["inputs"][slot.input] = value
    for slot in workflow.mapping.get("size", ()):
        value = values.width if slot.input == "width" else values.height
        if value is not None:
            graph[slot.node]["inputs"][slot.input] = value
    if values.loras is not None and workflow.kind != "upscale":
        _apply_loras(graph, workflow.mapping, values.loras)
    return graph


def _apply_loras(
    graph: dict[str, Any],
    mapping: dict[str, tuple[Slot, ...]],
    loras: tuple[tuple[str, float], ...],
) -> None:
    loaders = list(dict.fromkeys(slot.node for slot in mapping.get("lora", ())))
    for nid, (name, weight) in zip(loaders, loras, strict=False):
        inputs = graph[nid]["inputs"]
        inputs["lora_name"] = name
        for strength in ("strength_model", "strength_clip"):
            if strength in inputs or graph[nid]["class_type"] == "LoraLoader":
                inputs[strength] = weight
    for nid in loaders[len(loras) :]:
        _bypass(graph, nid)
    extra = loras[len(loaders) :]
    if not extra:
        return
    anchor = loaders[-1] if loaders else _lora_anchor(graph, mapping)
    if anchor is None:
        raise ValueError("this workflow has no CheckpointLoaderSimple to put LoRAs after")
    _chain(graph, anchor, extra)


def _lora_anchor(graph: dict[str, Any], mapping: dict[str, tuple[Slot, ...]]) -> str | None:
    """The checkpoint loader a LoRA chain goes after: the mapped one if it is a
    CheckpointLoaderSimple, else the graph's only CheckpointLoaderSimple."""
    for slot in mapping.get("checkpoint", ()):
        if graph[slot.node]["class_type"] == "CheckpointLoaderSimple":
            return slot.node
    ids = [nid for nid, n in graph.items() if n["class_type"] == "CheckpointLoaderSimple"]
    return ids[0] if len(ids) == 1 else None


def _outputs_of(graph: dict[str, Any], nid: str) -> list[tuple[str, str, int]]:
    """(consumer node, input, output index) for every link from ``nid``."""
    return [
        (cid, inp, value[1])
        for cid, node in graph.items()
        for inp, value in node.get("inputs", {}).items()
        if _is_link(value) and value[0] == nid
    ]


def _chain(graph: dict[str, Any], anchor: str, loras: tuple[tuple[str, float], ...]) -> None:
    """LoraLoader nodes after ``anchor`` (whose outputs 0 and 1 are MODEL and CLIP), its
    consumers of those rewired to the end of the chain."""
    only_model = graph[anchor]["class_type"] == "LoraLoaderModelOnly"
    cls = "LoraLoaderModelOnly" if only_model else "LoraLoader"
    consumers = [c for c in _outputs_of(graph, anchor) if c[2] in (0, 1)]
    prev = anchor
    next_id = max((_leading_int(nid) for nid in graph), default=0) + 1
    for i, (name, weight) in enumerate(loras, start=1):
        while str(next_id) in graph:
            next_id += 1
        nid = str(next_id)
        inputs: dict[str, Any] = {"model": [prev, 0], "lora_name": name, "strength_model": weight}
        if not only_model:
            inputs.update(clip=[prev, 1], strength_clip=weight)
        graph[nid] = {"class_type": cls, "inputs": inputs, "_meta": {"title": f"LoRA {i} (sdhost)"}}
        prev = nid
    for cid, inp, index in consumers:
        graph[cid]["inputs"][inp] = [prev, index]


def _bypass(graph: dict[str, Any], nid: str) -> None:
    """Remove a LoRA loader, its consumers taking what it was given."""
    node = graph.pop(nid)
    for cid, inp, index in _outputs_of(graph, nid):
        source = node["inputs"].get(_LORA_PASS.get(index, ""))
        if not _is_link(source):
            raise ValueError(f"cannot bypass node {nid}: its output {index} has no input to pass")
        graph[cid]["inputs"][inp] = list(source)


# -- outputs, instances ---------------------------------------------------------------------


def outputs(workflow: Workflow) -> list[str]:
    """The ids of the nodes whose pictures are delivered, in delivery order."""
    return _output_nodes(workflow.graph)


def _output_nodes(graph: Mapping[str, Any]) -> list[str]:
    for kinds in (_SAVERS, _PREVIEWS):
        ids = [nid for nid, node in graph.items() if node["class_type"] in kinds]
        if ids:
            return sorted(ids, key=node_order)
    return []


def node_order(nid: str) -> tuple[int, tuple[int, ...], str]:
    """Numeric node id order ("9" < "10"; "5:2" subgraph ids by their parts); ids that are
    not numbers after all of those, by text."""
    parts = nid.split(":")
    if all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), "")
    return (1, (), nid)


def check_against(workflow: Workflow, object_info: Mapping[str, Any]) -> list[str]:
    """What of ``workflow`` one instance cannot run (its ``/object_info`` answer): node
    types it lacks, mapped inputs its node types do not have."""
    problems: list[str] = []
    for nid in sorted(workflow.graph, key=node_order):
        cls = workflow.graph[nid]["class_type"]
        if cls not in object_info:
            problems.append(
                f"workflow {workflow.name!r} node {nid}: no node type {cls!r} on this instance "
                "(a custom node not installed?)"
            )
    for key, slots in workflow.mapping.items():
        for slot in slots:
            cls = workflow.graph[slot.node]["class_type"]
            if cls in object_info and slot.input not in _input_names(object_info[cls]):
                problems.append(
                    f"workflow {workflow.name!r} node {slot.node} ({cls}): no input "
                    f"{slot.input!r} (for {key}) on this instance"
                )
    if workflow.takes_loras and "LoraLoader" not in object_info:
        problems.append(f"workflow {workflow.name!r}: no LoraLoader node type, --lora cannot work")
    return problems


def _input_names(info: Any) -> set[str]:
    spec = info.get("input", {}) if isinstance(info, dict) else {}
    return {name for part in ("required", "optional") for name in (spec.get(part) or {})}


def choices(object_info: Mapping[str, Any]) -> dict[str, list[str]]:
    """The checkpoints, LoRAs, samplers, schedulers and upscale models an instance has, from
    its ``/object_info`` (either COMBO form); a list the instance lacks is empty."""
    return {
        "checkpoints": combo(object_info, "CheckpointLoaderSimple", "ckpt_name"),
        "loras": combo(object_info, "LoraLoader", "lora_name"),
        "samplers": combo(object_info, "KSampler", "sampler_name"),
        "schedulers": combo(object_info, "KSampler", "scheduler"),
        "upscale_models": combo(object_info, "UpscaleModelLoader", "model_name"),
    }


def combo(object_info: Mapping[str, Any], cls: str, name: str) -> list[str]:
    """The options of one COMBO input: ``[[...], {opts}]`` or ``["COMBO", {"options": [...]}]``."""
    info = object_info.get(cls)
    spec = info.get("input", {}) if isinstance(info, dict) else {}
    for part in ("required", "optional"):
        entry = (spec.get(part) or {}).get(name)
        if not isinstance(entry, list) or not entry:
            continue
        if isinstance(entry[0], list):
            return [str(x) for x in entry[0]]
        if entry[0] == "COMBO" and len(entry) > 1 and isinstance(entry[1], dict):
            return [str(x) for x in entry[1].get("options") or []]
    return []


# -- helpers --------------------------------------------------------------------------------


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _leading_int(nid: str) -> int:
    match = re.match(r"\d+", nid)
    return int(match.group()) if match else 0


def iter_links(graph: Mapping[str, Any]) -> Iterator[tuple[str, str, str, int]]:
    """(node, input, source node, source output) for every link in ``graph``."""
    for nid, node in graph.items():
        for inp, value in node.get("inputs", {}).items():
            if _is_link(value):
                yield nid, inp, value[0], value[1]
