"""ComfyUI workflows: the shipped graphs, the operator's own files, the mapping of a command's
values onto nodes (titles first, node types for untitled graphs), LoRA chains and bypasses,
outputs, and what an instance's /object_info offers."""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.providers.comfyui import workflows as wf
from adapters.providers.comfyui.workflows import (
    Slot,
    Values,
    Workflow,
    WorkflowError,
    apply,
    check_against,
    choices,
    load_workflows,
    outputs,
    parse_workflow,
)

ROOT = Path(__file__).resolve().parent.parent

# how many outputs each node type has (ComfyUI's RETURN_TYPES), for the link checker
OUTPUTS = {
    "CheckpointLoaderSimple": 3,
    "LoraLoader": 2,
    "LoraLoaderModelOnly": 1,
    "KSampler": 1,
    "EmptyLatentImage": 1,
    "CLIPTextEncode": 1,
    "ConditioningCombine": 1,
    "VAEDecode": 1,
    "VAEEncode": 1,
    "LoadImage": 2,
    "ImageScale": 1,
    "RepeatLatentBatch": 1,
    "UpscaleModelLoader": 1,
    "ImageUpscaleWithModel": 1,
    "SaveImage": 0,
    "PreviewImage": 0,
}


def links_ok(graph: dict[str, Any]) -> list[str]:
    """Everything wrong with a graph's wiring: links to missing nodes or outputs, cycles,
    nodes no output depends on."""
    bad: list[str] = []
    for nid, inp, src, index in wf.iter_links(graph):
        if src not in graph:
            bad.append(f"{nid}.{inp} -> missing node {src}")
        elif not 0 <= index < OUTPUTS[graph[src]["class_type"]]:
            bad.append(
                f"{nid}.{inp} -> {src}[{index}]: {graph[src]['class_type']} has no such output"
            )
    if bad:
        return bad
    upstream = {nid: {s for n, _, s, _ in wf.iter_links(graph) if n == nid} for nid in graph}
    state: dict[str, int] = {}

    def visit(nid: str) -> None:
        state[nid] = 1
        for src in upstream[nid]:
            if state.get(src) == 1:
                bad.append(f"cycle through {nid} and {src}")
            elif src not in state:
                visit(src)
        state[nid] = 2

    for nid in graph:
        if nid not in state:
            visit(nid)
    needed: set[str] = set()
    todo = [n for n, node in graph.items() if OUTPUTS[node["class_type"]] == 0]
    while todo:
        nid = todo.pop()
        if nid not in needed:
            needed.add(nid)
            todo.extend(upstream[nid])
    bad.extend(
        f"node {n} ({graph[n]['class_type']}) feeds no output" for n in graph if n not in needed
    )
    return bad


def loras_on_path(graph: dict[str, Any], nid: str, inp: str) -> list[str]:
    """The LoRA names between a node's model/clip input and the checkpoint, checkpoint first."""
    names: list[str] = []
    link = graph[nid]["inputs"][inp]
    while graph[link[0]]["class_type"] != "CheckpointLoaderSimple":
        node = graph[link[0]]
        assert node["class_type"].startswith("LoraLoader"), node
        names.append(node["inputs"]["lora_name"])
        link = node["inputs"][inp]
    return names[::-1]


def default_graph() -> dict[str, Any]:
    """ComfyUI's default graph, untitled, as 'Save (API Format)' writes it (without _meta)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1234,
                "steps": 20,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        },
    }


def default_with_lora(title: str | None = None) -> dict[str, Any]:
    graph = default_graph()
    graph["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "style.safetensors",
            "strength_model": 0.7,
            "strength_clip": 0.7,
        },
    }
    if title:
        graph["10"]["_meta"] = {"title": title}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = ["10", 1]
    graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


def write(folder: Path, name: str, data: Any) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shipped() -> dict[str, Workflow]:
    return load_workflows(None)


# -- the shipped workflows -------------------------------------------------------------------


def test_shipped_workflows_load_with_their_kind_and_mapping(shipped: dict[str, Workflow]) -> None:
    assert set(shipped) == {"txt2img", "img2img", "upscale"}
    assert {n: w.kind for n, w in shipped.items()} == {
        "txt2img": "txt2img",
        "img2img": "img2img",
        "upscale": "upscale",
    }
    assert all(w.shipped for w in shipped.values())
    assert shipped["txt2img"].mapping == {
        "seed": (Slot("3", "seed"),),
        "steps": (Slot("3", "steps"),),
        "cfg": (Slot("3", "cfg"),),
        "sampler": (Slot("3", "sampler_name"),),
        "scheduler": (Slot("3", "scheduler"),),
        "denoise": (Slot("3", "denoise"),),
        "checkpoint": (Slot("4", "ckpt_name"),),
        "size": (Slot("5", "width"), Slot("5", "height")),
        "count": (Slot("5", "batch_size"),),
        "prompt": (Slot("6", "text"),),
        "negative": (Slot("7", "text"),),
    }
    assert shipped["img2img"].keys == shipped["txt2img"].keys | {"image"}
    assert shipped["upscale"].keys == {"image", "upscale_model", "size"}
    for w in shipped.values():
        assert links_ok(w.graph) == []
        assert [w.graph[n]["inputs"]["filename_prefix"] for n in outputs(w)] == ["sdhost"]
    assert shipped["txt2img"].takes_loras and shipped["img2img"].takes_loras
    assert not shipped["upscale"].takes_loras


def test_shipped_graphs_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = project["tool"]["setuptools"]["package-data"]["adapters"]
    files = {p.name for g in globs for p in (ROOT / "adapters").glob(g)}
    assert files == {"txt2img.json", "img2img.json", "upscale.json"}


EVERYTHING = Values(
    prompt="a red fox in snow",
    negative="lowres",
    seed=424242,
    width=832,
    height=1216,
    count=3,
    checkpoint="sdxl/juggernaut.safetensors",
    loras=(),
    sampler="dpmpp_2m",
    scheduler="karras",
    steps=30,
    cfg=5.5,
    denoise=0.45,
    image="upload (1).png",
    upscale_model="RealESRGAN_x4plus.pth",
)


def test_apply_puts_every_value_where_it_belongs_in_txt2img(shipped: dict[str, Workflow]) -> None:
    graph = apply(shipped["txt2img"], EVERYTHING)
    assert graph["3"]["inputs"] == {
        "seed": 424242,
        "steps": 30,
        "cfg": 5.5,
        "sampler_name": "dpmpp_2m",
        "scheduler": "karras",
        "denoise": 0.45,
        "model": ["4", 0],
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": ["5", 0],
    }
    assert graph["4"]["inputs"] == {"ckpt_name": "sdxl/juggernaut.safetensors"}
    assert graph["5"]["inputs"] == {"width": 832, "height": 1216, "batch_size": 3}
    assert graph["6"]["inputs"] == {"text": "a red fox in snow", "clip": ["4", 1]}
    assert graph["7"]["inputs"] == {"text": "lowres", "clip": ["4", 1]}
    assert set(graph) == set(shipped["txt2img"].graph)


def test_apply_puts_every_value_where_it_belongs_in_img2img(shipped: dict[str, Workflow]) -> None:
    graph = apply(shipped["img2img"], EVERYTHING)
    assert graph["10"]["inputs"] == {"image": "upload (1).png"}
    assert graph["11"]["inputs"]["width"] == 832 and graph["11"]["inputs"]["height"] == 1216
    assert graph["11"]["inputs"]["image"] == ["10", 0]
    assert graph["13"]["inputs"] == {"samples": ["12", 0], "amount": 3}
    assert graph["3"]["inputs"]["denoise"] == 0.45
    assert graph["3"]["inputs"]["latent_image"] == ["13", 0]
    assert graph["6"]["inputs"]["text"] == "a red fox in snow"
    assert graph["7"]["inputs"]["text"] == "lowres"
    assert graph["4"]["inputs"]["ckpt_name"] == "sdxl/juggernaut.safetensors"


def test_apply_upscale_takes_the_picture_size_and_model_only(shipped: dict[str, Workflow]) -> None:
    before = copy.deepcopy(shipped["upscale"].graph)
    graph = apply(shipped["upscale"], replace(EVERYTHING, loras=(("x", 1.0),)))
    assert graph["1"]["inputs"] == {"image": "upload (1).png"}
    assert graph["2"]["inputs"] == {"model_name": "RealESRGAN_x4plus.pth"}
    assert graph["4"]["inputs"] == {
        "image": ["3", 0],
        "upscale_method": "lanczos",
        "width": 832,
        "height": 1216,
        "crop": "disabled",
    }
    assert set(graph) == set(before)  # no LoRA chain, no prompt anywhere
    # without a size the model's own factor stands (ImageScale 0 x 0 passes the picture on)
    kept = apply(shipped["upscale"], Values(image="a.png"))
    assert (kept["4"]["inputs"]["width"], kept["4"]["inputs"]["height"]) == (0, 0)


def test_apply_leaves_the_workflow_unchanged_and_keeps_what_was_not_given(
    shipped: dict[str, Workflow],
) -> None:
    for workflow in shipped.values():
        before = copy.deepcopy(workflow.graph)
        apply(workflow, EVERYTHING)
        apply(
            workflow, Values(loras=(("a", 0.5), ("b", 0.6))) if workflow.takes_loras else Values()
        )
        assert workflow.graph == before
    # only the seed given: the graph is the workflow's own but for the seed
    graph = apply(shipped["txt2img"], Values(seed=7))
    expected = copy.deepcopy(shipped["txt2img"].graph)
    expected["3"]["inputs"]["seed"] = 7
    assert graph == expected
    assert apply(shipped["txt2img"], Values()) == shipped["txt2img"].graph


def test_only_width_keeps_the_workflows_height(shipped: dict[str, Workflow]) -> None:
    graph = apply(shipped["txt2img"], Values(width=768))
    assert graph["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}


# -- LoRAs: chains and bypasses keep the graph wired -----------------------------------------


def test_loras_chain_after_the_checkpoint_loader_of_a_shipped_graph(
    shipped: dict[str, Workflow],
) -> None:
    graph = apply(shipped["txt2img"], Values(loras=(("detail", 0.8), ("style", 0.5))))
    new = sorted(set(graph) - set(shipped["txt2img"].graph), key=wf.node_order)
    assert new == ["10", "11"]  # fresh ids after the highest
    assert graph["10"]["class_type"] == "LoraLoader"
    assert graph["10"]["inputs"] == {
        "model": ["4", 0],
        "clip": ["4", 1],
        "lora_name": "detail",
        "strength_model": 0.8,
        "strength_clip": 0.8,
    }
    assert graph["11"]["inputs"]["model"] == ["10", 0] and graph["11"]["inputs"]["clip"] == [
        "10",
        1,
    ]
    assert graph["3"]["inputs"]["model"] == ["11", 0]
    assert graph["6"]["inputs"]["clip"] == ["11", 1] and graph["7"]["inputs"]["clip"] == ["11", 1]
    assert graph["8"]["inputs"]["vae"] == ["4", 2]  # the VAE stays the checkpoint's
    assert links_ok(graph) == []


def test_a_titled_lora_loader_takes_the_first_lora_and_more_chain_after_it() -> None:
    # titled graph: only what is titled is mapped, so title the prompt too
    graph = default_with_lora("sdhost:lora")
    graph["6"]["_meta"] = {"title": "sdhost:prompt"}
    workflow = parse_workflow("mine", graph, "mine.json")
    assert workflow.mapping["lora"] == (Slot("10", "lora_name"),)
    out = apply(workflow, Values(loras=(("a", 0.9), ("b", 0.4), ("c", 1.1))))
    assert out["10"]["inputs"]["lora_name"] == "a"
    assert out["10"]["inputs"]["strength_model"] == 0.9 == out["10"]["inputs"]["strength_clip"]
    assert loras_on_path(out, "3", "model") == ["a", "b", "c"]
    assert loras_on_path(out, "6", "clip") == ["a", "b", "c"]
    assert loras_on_path(out, "7", "clip") == ["a", "b", "c"]
    assert links_ok(out) == []


def test_a_mapped_lora_loader_is_bypassed_without_a_lora_and_kept_with_none() -> None:
    workflow = parse_workflow("d", default_with_lora(), "d.json")  # untitled: by node type
    assert workflow.mapping["lora"] == (Slot("10", "lora_name"),)
    out = apply(workflow, Values(loras=()))
    assert "10" not in out
    assert out["3"]["inputs"]["model"] == ["4", 0]
    assert out["6"]["inputs"]["clip"] == ["4", 1] and out["7"]["inputs"]["clip"] == ["4", 1]
    assert links_ok(out) == []
    assert apply(workflow, Values(loras=None)) == workflow.graph


def test_loras_where_there_is_no_place_for_them_are_refused() -> None:
    graph = default_graph()
    graph["4"]["class_type"] = "CheckpointLoader"  # not the simple loader: no anchor
    graph["4"]["inputs"]["config_name"] = "v1.yaml"
    workflow = parse_workflow("odd", graph, "odd.json")
    assert not workflow.takes_loras
    with pytest.raises(ValueError, match="LoRA"):
        apply(workflow, Values(loras=(("a", 1.0),)))
    assert apply(workflow, Values(loras=()))["4"]["class_type"] == "CheckpointLoader"


def _graphs_for_property() -> dict[str, Workflow]:
    titled = default_with_lora("sdhost:lora")
    titled["6"]["_meta"] = {"title": "sdhost:prompt"}
    titled["3"]["_meta"] = {"title": "sdhost:seed,steps,cfg,denoise"}
    return {
        **load_workflows(None),
        "untitled": parse_workflow("untitled", default_graph(), "untitled.json"),
        "untitled+lora": parse_workflow("ul", default_with_lora(), "ul.json"),
        "titled+lora": parse_workflow("tl", titled, "tl.json"),
    }


PROPERTY_WORKFLOWS = _graphs_for_property()
lora_names = st.text("abcdefghij_-.", min_size=1, max_size=12)
weights = st.floats(-2, 2, allow_nan=False).map(lambda w: round(w, 2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(PROPERTY_WORKFLOWS)),
    loras=st.lists(st.tuples(lora_names, weights), min_size=0, max_size=4).map(tuple),
    seed=st.integers(0, 2**64 - 1),
    steps=st.none() | st.integers(1, 150),
    cfg=st.none() | st.floats(0, 30, allow_nan=False),
    size=st.none() | st.tuples(st.integers(64, 2048), st.integers(64, 2048)),
    count=st.none() | st.integers(1, 8),
    prompt=st.text(max_size=40),
    denoise=st.none() | st.floats(0, 1),
)
def test_any_values_and_loras_give_a_wired_graph(
    name: str,
    loras: tuple[tuple[str, float], ...],
    seed: int,
    steps: int | None,
    cfg: float | None,
    size: tuple[int, int] | None,
    count: int | None,
    prompt: str,
    denoise: float | None,
) -> None:
    workflow = PROPERTY_WORKFLOWS[name]
    before = copy.deepcopy(workflow.graph)
    values = Values(
        prompt=prompt,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=size[0] if size else None,
        height=size[1] if size else None,
        count=count,
        denoise=denoise,
        loras=loras,
        image="in.png",
    )
    graph = apply(workflow, values)
    assert links_ok(graph) == []
    assert workflow.graph == before
    assert outputs(workflow) == [n for n in outputs(workflow) if n in graph]
    for slot in workflow.mapping.get("seed", ()):
        assert graph[slot.node]["inputs"][slot.input] == seed  # the seed is always set
    for slot in workflow.mapping.get("prompt", ()):
        assert graph[slot.node]["inputs"][slot.input] == prompt
    if workflow.kind == "upscale":
        assert not any(n["class_type"].startswith("LoraLoader") for n in graph.values())
        return
    names = [n for n, _ in loras]
    samplers = [n for n, node in graph.items() if node["class_type"] == "KSampler"]
    encoders = [n for n, node in graph.items() if node["class_type"] == "CLIPTextEncode"]
    for nid in samplers:
        assert loras_on_path(graph, nid, "model") == names
    for nid in encoders:
        assert loras_on_path(graph, nid, "clip") == names
    loaders = [node for node in graph.values() if node["class_type"] == "LoraLoader"]
    assert sorted(
        (n["inputs"]["lora_name"], n["inputs"]["strength_model"]) for n in loaders
    ) == sorted(loras)


# -- the operator's workflows -----------------------------------------------------------------


def test_multi_key_titles_fill_each_named_input(tmp_path: Path) -> None:
    graph = default_graph()
    graph["3"]["_meta"] = {"title": "sdhost:seed, steps,cfg,denoise"}
    graph["6"]["_meta"] = {"title": "sdhost:prompt"}
    graph["7"]["_meta"] = {"title": "sdhost:negative"}
    graph["5"]["_meta"] = {"title": "sdhost:size,count"}
    graph["4"]["_meta"] = {"title": "Load Checkpoint"}  # an ordinary title: not mapped
    write(tmp_path, "My_Flow", graph)
    workflow = load_workflows(tmp_path)["my_flow"]
    assert workflow.kind == "txt2img" and not workflow.shipped
    assert workflow.source == str(tmp_path / "My_Flow.json")
    assert workflow.keys == {
        "seed",
        "steps",
        "cfg",
        "denoise",
        "prompt",
        "negative",
        "size",
        "count",
    }
    out = apply(
        workflow,
        Values(seed=9, steps=11, cfg=3.5, denoise=0.8, sampler="ddim", checkpoint="other.ckpt"),
    )
    assert {k: out["3"]["inputs"][k] for k in ("seed", "steps", "cfg", "denoise")} == {
        "seed": 9,
        "steps": 11,
        "cfg": 3.5,
        "denoise": 0.8,
    }
    # not titled, so not taken: titles are the whole mapping of a titled graph
    assert out["3"]["inputs"]["sampler_name"] == "euler"
    assert out["4"]["inputs"]["ckpt_name"] == "sd15.safetensors"


def test_an_untitled_default_graph_is_mapped_by_node_type_through_the_sampler_links() -> None:
    graph = default_graph()
    # the negative encoder has the lower id, and the positive goes through a combine node:
    # only the sampler's links tell which is which
    graph["6"]["inputs"]["text"], graph["7"]["inputs"]["text"] = "blurry", "a cat"
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["12", 0], ["6", 0]
    graph["11"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "sunset", "clip": ["4", 1]}}
    graph["12"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["7", 0], "conditioning_2": ["11", 0]},
    }
    workflow = parse_workflow("plain", graph, "plain.json")
    assert workflow.kind == "txt2img"
    assert workflow.mapping["prompt"] == (Slot("7", "text"), Slot("11", "text"))
    assert workflow.mapping["negative"] == (Slot("6", "text"),)
    assert workflow.mapping["checkpoint"] == (Slot("4", "ckpt_name"),)
    assert workflow.mapping["size"] == (Slot("5", "width"), Slot("5", "height"))
    assert workflow.mapping["count"] == (Slot("5", "batch_size"),)
    out = apply(
        workflow, Values(prompt="a dog", negative="ugly", seed=3, checkpoint="x.safetensors")
    )
    assert out["7"]["inputs"]["text"] == "a dog" and out["11"]["inputs"]["text"] == "a dog"
    assert out["6"]["inputs"]["text"] == "ugly"
    assert out["3"]["inputs"]["seed"] == 3
    assert out["4"]["inputs"]["ckpt_name"] == "x.safetensors"


def test_a_txt2img_workflow_mapping_no_prompt_is_refused_with_the_reason(tmp_path: Path) -> None:
    graph = default_graph()
    graph["3"]["_meta"] = {"title": "sdhost:seed"}  # titled, but the prompt is not
    path = write(tmp_path, "noprompt", graph)
    with pytest.raises(WorkflowError) as caught:
        load_workflows(tmp_path)
    assert caught.value.problems[0][0] == str(path)
    assert "maps none" in caught.value.problems[0][1] and "sdhost:prompt" in str(caught.value)
    # untitled, the sampler's positive input leads to no text encoder
    graph = default_graph()
    graph["3"]["inputs"]["positive"] = ["7", 0]
    with pytest.raises(WorkflowError, match="prompt"):
        parse_workflow("both", graph, "both.json")


def test_a_ui_format_file_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path, "ui", {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": []}
    )
    with pytest.raises(WorkflowError, match=r"Save \(API Format\)"):
        load_workflows(tmp_path)
    (tmp_path / "ui.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(WorkflowError, match="JSON"):
        load_workflows(tmp_path)
    with pytest.raises(WorkflowError, match="class_type"):
        parse_workflow("x", {"3": {"inputs": {}}}, "x.json")


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a", {"nodes": [], "links": []})
    write(tmp_path, "b", {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}})
    write(tmp_path, "good", default_graph())
    with pytest.raises(WorkflowError) as caught:
        load_workflows(tmp_path)
    assert [Path(src).name for src, _ in caught.value.problems] == ["a.json", "b.json"]


def test_an_upscale_workflow_needs_only_an_image(tmp_path: Path) -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "up", "images": ["3", 0]}},
    }
    write(tmp_path, "Upscale", graph)  # replaces the shipped one
    loaded = load_workflows(tmp_path)
    workflow = loaded["upscale"]
    assert workflow.kind == "upscale" and not workflow.shipped
    assert workflow.keys == {"image", "upscale_model"}
    out = apply(workflow, Values(image="mine.png", upscale_model="2x.pth", prompt="ignored"))
    assert (
        out["1"]["inputs"]["image"] == "mine.png" and out["2"]["inputs"]["model_name"] == "2x.pth"
    )
    assert loaded["txt2img"].shipped


def test_a_kind_hint_is_checked_and_removed_from_the_graph() -> None:
    graph: dict[str, Any] = {"sdhost": {"kind": "img2img"}, **default_graph()}
    with pytest.raises(WorkflowError, match="img2img workflow must take the picture"):
        parse_workflow("h", graph, "h.json")
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "x.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    del graph["5"]
    workflow = parse_workflow("h", graph, "h.json")
    assert workflow.kind == "img2img" and "sdhost" not in workflow.graph
    assert "sdhost" not in apply(workflow, Values(image="u.png"))
    # without the hint the kind follows from the mapping: an image and a prompt
    del graph["sdhost"]
    assert parse_workflow("h", graph, "h.json").kind == "img2img"
    with pytest.raises(WorkflowError, match="unknown kind"):
        parse_workflow("h", {**graph, "sdhost": {"kind": "video"}}, "h.json")


def test_unknown_title_keys_and_missing_inputs_are_refused() -> None:
    graph = default_graph()
    graph["3"]["_meta"] = {"title": "sdhost:seed,stepz"}
    with pytest.raises(WorkflowError, match="unknown key 'stepz'"):
        parse_workflow("t", graph, "t.json")
    graph["3"]["_meta"] = {"title": "sdhost:prompt"}
    with pytest.raises(WorkflowError, match="no input text"):
        parse_workflow("t", graph, "t.json")


def test_a_workflow_that_saves_nothing_is_refused() -> None:
    graph = default_graph()
    del graph["9"]
    with pytest.raises(WorkflowError, match="saves no picture"):
        parse_workflow("n", graph, "n.json")


# -- outputs, instances ---------------------------------------------------------------------


def test_outputs_are_the_save_nodes_in_numeric_id_order() -> None:
    graph = default_graph()
    for nid in ("10", "2", "100"):
        graph[nid] = {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": nid, "images": ["8", 0]},
        }
    graph["50"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    assert outputs(parse_workflow("o", graph, "o.json")) == ["2", "9", "10", "100"]
    # previews are delivered only when nothing is saved
    graph = default_graph()
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    assert outputs(parse_workflow("p", graph, "p.json")) == ["9"]
    assert wf.node_order("5:12") > wf.node_order("5:3") > wf.node_order("5")


OBJECT_INFO_OLD = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["sd15.safetensors", "sdxl/base.safetensors"]]}}
    },
    "LoraLoader": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "clip": ["CLIP"],
                "lora_name": [["detail.safetensors"], {"tooltip": "x"}],
                "strength_model": ["FLOAT", {"default": 1.0}],
                "strength_clip": ["FLOAT", {"default": 1.0}],
            }
        }
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {}],
                "steps": ["INT", {}],
                "cfg": ["FLOAT", {}],
                "sampler_name": [["euler", "dpmpp_2m"]],
                "scheduler": [["normal", "karras"]],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {}],
            }
        }
    },
}
OBJECT_INFO_NEW = {
    "CheckpointLoaderSimple": {
        "input": {
            "required": {"ckpt_name": ["COMBO", {"options": ["flux.safetensors"], "tooltip": "t"}]}
        }
    },
    "KSampler": {
        "input": {
            "required": {
                "sampler_name": ["COMBO", {"options": ["euler"]}],
                "scheduler": ["COMBO", {"options": ["simple", "beta"]}],
            }
        }
    },
    "UpscaleModelLoader": {
        "input": {"required": {"model_name": ["COMBO", {"options": ["4x-UltraSharp.pth"]}]}}
    },
}


def test_choices_read_both_combo_forms() -> None:
    assert choices(OBJECT_INFO_OLD) == {
        "checkpoints": ["sd15.safetensors", "sdxl/base.safetensors"],
        "loras": ["detail.safetensors"],
        "samplers": ["euler", "dpmpp_2m"],
        "schedulers": ["normal", "karras"],
        "upscale_models": [],
    }
    assert choices(OBJECT_INFO_NEW) == {
        "checkpoints": ["flux.safetensors"],
        "loras": [],
        "samplers": ["euler"],
        "schedulers": ["simple", "beta"],
        "upscale_models": ["4x-UltraSharp.pth"],
    }
    assert choices({}) == {
        k: [] for k in ("checkpoints", "loras", "samplers", "schedulers", "upscale_models")
    }


def test_check_against_names_missing_node_types_and_inputs(shipped: dict[str, Workflow]) -> None:
    problems = check_against(shipped["txt2img"], OBJECT_INFO_OLD)
    assert any("'EmptyLatentImage'" in p and "node 5" in p for p in problems)
    assert any("'CLIPTextEncode'" in p for p in problems)
    assert not any("KSampler" in p for p in problems)
    info = copy.deepcopy(OBJECT_INFO_OLD)
    del info["KSampler"]["input"]["required"]["denoise"]
    problems = check_against(shipped["txt2img"], info)
    assert any("node 3 (KSampler): no input 'denoise'" in p for p in problems)
    info.pop("LoraLoader")
    assert any("LoraLoader" in p for p in check_against(shipped["txt2img"], info))
