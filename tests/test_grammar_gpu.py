"""The request vocabulary for self-hosted GPUs: --lora, --vae, --scheduler, --hires, the
A1111 block keys that set them, the infotext delivered pictures carry, and /models listing
what a provider's GPUs have (``Capabilities.lists``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adapters.providers.demo import DemoProvider
from bot.commands import Incoming, Reply
from bot.config import DemoProviderConfig
from bot.errors import BadInput
from bot.grammar import (
    FLAGS,
    REPEATABLE_FLAGS,
    format_flags,
    help_flags,
    parse_batch,
    parse_command,
    parse_generation,
    prompt_loras,
    read_flag,
)
from bot.infotext import format_infotext, parse_infotext
from bot.params import GenerationParams
from bot.providers import Capabilities, ModelInfo
from tests.conftest import REPLY, user
from tests.test_grammar import _name, _valid_params

P = GenerationParams


def bad(text: str) -> str:
    with pytest.raises(BadInput) as info:
        parse_generation(text)
    assert "\n" not in info.value.message
    return info.value.message


# --- --lora -----------------------------------------------------------------------------------


def test_lora_repeats_keeps_the_order_and_reads_weights() -> None:
    params = parse_generation(
        'a fox --lora film_grain --lora "detail tweaker:0.7" --lora=neg:-1.5 --lora w:0,8 '
        "--lora plus:+2"
    )
    assert params.loras == (
        ("film_grain", 1.0),
        ("detail tweaker", 0.7),
        ("neg", -1.5),
        ("w", 0.8),
        ("plus", 2.0),
    )
    assert params.prompt == "a fox"


def test_lora_name_with_a_colon_needs_its_weight() -> None:
    assert parse_generation('x --lora "style:v2:1"').loras == (("style:v2", 1.0),)
    assert parse_generation("x --lora a::0.5").loras == (("a:", 0.5),)
    assert "NAME:WEIGHT" in bad("x --lora a:1e3")  # not a weight as people type them
    message = bad("x --lora style:v2")
    assert "NAME:WEIGHT" in message and "NAME:1" in message and "'style:v2'" in message


@pytest.mark.parametrize("value", ["a:4.5", "a:-4.01", "a:99999999999999999"])
def test_lora_weight_out_of_range_says_the_range(value: str) -> None:
    message = bad(f"x --lora {value}")
    assert "-4..4" in message and message.startswith("--lora")


@pytest.mark.parametrize("text", ["x --lora", "x --lora --seed 3", "x --lora :0.5", 'x --lora ""'])
def test_lora_needs_a_name(text: str) -> None:
    assert "--lora needs NAME" in bad(text)


def test_the_same_lora_twice_is_an_error() -> None:
    assert bad("x --lora a:0.5 --lora a:0.8") == "--lora a is given twice; keep one"
    message = bad("x <lora:a:0.3> --lora a")
    assert "both in the prompt" in message and "keep one" in message
    # other flags still refuse a second time
    assert "given twice" in bad("x --vae a --vae b")
    assert "given twice" in bad("x --scheduler a --scheduler b")
    assert "given twice" in bad("x --hires --hires=on")


def test_lora_tags_stay_in_the_prompt() -> None:
    params = parse_generation("a cat <lora:film:0.6> on a rug --lora other")
    assert params.prompt == "a cat <lora:film:0.6> on a rug"
    assert params.loras == (("other", 1.0),)


def test_prompt_loras_reads_tags_as_a1111_does() -> None:
    prompt = (
        "a <lora:film grain:0.6>, <lora:plain>, <LORA:upper:1>, <lora:te:unet=0.2:te=0.3>, "
        "<lora:two:0.4:0.9>, <lyco:ly:1>, <hypernet:h:1>, <lora:odd:abc>, <lora::1>, <lora:neg:-1>"
    )
    assert prompt_loras(prompt) == [
        ("film grain", 0.6),
        ("plain", 1.0),
        ("te", 0.3),
        ("two", 0.4),
        ("odd", 1.0),
        ("neg", -1.0),
    ]
    assert prompt_loras("no tags <here> at all") == []


# --- --vae, --scheduler, --hires --------------------------------------------------------------


@pytest.mark.parametrize("vae", ["sdxl_vae.safetensors", "Automatic", "None"])
def test_vae_names_are_kept_as_typed(vae: str) -> None:
    assert parse_generation(f"x --vae {vae}").vae == vae


@pytest.mark.parametrize("scheduler", ["karras", "Karras", "sgm_uniform", "Align Your Steps"])
def test_scheduler_names_are_kept_as_typed(scheduler: str) -> None:
    assert parse_generation(f'x --scheduler "{scheduler}"').scheduler == scheduler


def test_hires_takes_no_value_and_the_next_word_stays_in_the_prompt() -> None:
    assert parse_generation("a cat --hires sharp eyes") == P(prompt="a cat sharp eyes", hires=True)
    assert parse_generation("a cat --hires") == P(prompt="a cat", hires=True)
    assert parse_generation('a --hires "on" b') == P(prompt='a "on" b', hires=True)
    assert parse_generation("a --hires --seed 3") == P(prompt="a", hires=True, seed=3)
    for on in ("on", "true", "YES", "1"):
        assert parse_generation(f"a --hires={on}").hires is True
    for off in ("off", "false", "no", "0"):
        params = parse_generation(f"a --hires={off} b")
        assert params == P(prompt="a b")
    assert "--hires=off" in bad("a --hires=maybe")
    assert "--hires=off" in bad("a --hires=")


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(whitelist_categories=("L", "N", "P")), min_size=1, max_size=12))
def test_hires_never_swallows_the_word_after_it(word: str) -> None:
    try:
        alone = parse_generation(f"a {word}")
    except BadInput:
        return
    assume(not word.startswith(("--", "—", "–", "\\")) and word[0] not in "\"'“‘„«”")
    params = parse_generation(f"a --hires {word}")
    assert params == alone.with_(hires=True)


def test_help_lists_the_new_flags_in_both_languages() -> None:
    for lang in ("en", "zh"):
        lines = help_flags(lang).splitlines()
        for flag in FLAGS + REPEATABLE_FLAGS:
            assert sum(line.startswith(f"  --{flag} ") for line in lines) == 1, (lang, flag)
        assert all(len(line) <= 90 for line in lines)
    zh = help_flags("zh")
    assert "高清修复" in zh and "调度" in zh and "权重" in zh


def test_read_flag_reads_the_new_flags() -> None:
    assert read_flag("lora", "a b:0.5") == ("a b", 0.5)
    assert read_flag("hires", "") is True and read_flag("hires", "off") is False
    assert read_flag("vae", " x.pt ") == "x.pt"
    with pytest.raises(BadInput):
        read_flag("scheduler", " ")


def test_unknown_flag_hint_knows_the_new_ones() -> None:
    assert "did you mean --lora?" in bad("x --loras a")
    assert "did you mean --scheduler?" in bad("x --sheduler karras")
    assert "--hires" in bad("x --zzz 1")


def test_batch_copies_the_loras_to_every_task() -> None:
    tasks = parse_batch("a fox --lora a:0.5 --hires --n 2 --seed 1")
    assert [(t.loras, t.hires, t.seed) for t in tasks] == [
        ((("a", 0.5),), True, 1),
        ((("a", 0.5),), True, 2),
    ]


# --- round trips ------------------------------------------------------------------------------

_lora_name = st.lists(
    st.one_of(
        st.text(
            st.characters(whitelist_categories=("L", "N"), whitelist_characters="+-_.()'\":<>"),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from(["--x", "DPM++", ":", "a:1", "\\--y", "—no", "0.5", "--hires"]),
    ),
    min_size=1,
    max_size=3,
).map(" ".join)
_weight = st.one_of(
    st.sampled_from([1.0, 0.0, -1.0, 0.8, 4.0, -4.0, 0.05]),
    st.floats(-4, 4, allow_nan=False),
)


@st.composite
def _gpu_params(draw: st.DrawFn) -> GenerationParams:
    base = draw(_valid_params())
    names = draw(st.lists(_lora_name, max_size=4, unique=True))
    return base.with_(
        loras=tuple((n, draw(_weight)) for n in names),
        vae=draw(st.none() | _name),
        scheduler=draw(st.none() | _name),
        workflow=draw(st.none() | _name),
        hires=draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(_gpu_params())
def test_format_flags_round_trips_the_gpu_fields(params: GenerationParams) -> None:
    assume(not prompt_loras(params.prompt))
    text = format_flags(params)
    assert parse_generation(text, max_n=4) == params
    # and as a command: what Remix and the buttons send
    cmd = parse_command("/imagine " + text)
    assert parse_generation(cmd.rest, max_n=4) == params


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_lora_name, _weight), min_size=1, max_size=5))
def test_each_lora_value_reads_back_with_read_flag(loras: list[tuple[str, float]]) -> None:
    from bot.grammar import format_lora

    for name, weight in loras:
        assert read_flag("lora", format_lora(name, weight)) == (name, weight)


_hostile_gpu = st.lists(
    st.sampled_from(
        [
            "--lora",
            "--hires",
            "--hires=",
            "--vae",
            "--scheduler",
            ":",
            "::",
            "<lora:",
            ">",
            "a",
            "0.5",
            "-5",
            " ",
            "\n",
            '"',
            "=off",
            "Steps: 2,",
            "Hires upscale: 2",
            "Negative prompt:",
        ]
    ),
    max_size=20,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_hostile_gpu)
def test_the_new_flags_only_ever_raise_bad_input(text: str) -> None:
    for parse in (
        lambda t: parse_generation(t),
        lambda t: parse_generation(t, allow_empty_prompt=True),
        parse_batch,
    ):
        try:
            assert parse(text)
        except BadInput as err:
            assert err.message and "\n" not in err.message


# --- pasted blocks and the infotext we write --------------------------------------------------

BLOCK = (
    "a castle <lora:film:0.6>\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, "
    "Size: 512x768, Model hash: 0123abcdef, VAE: sdxl_vae.safetensors, "
    'Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "film: a1b2c3"'
)


def test_a_pasted_block_sets_vae_scheduler_hires_and_the_model_hash() -> None:
    params = parse_generation(BLOCK)
    assert params == P(
        prompt="a castle <lora:film:0.6>",
        negative="blurry",
        steps=20,
        sampler="DPM++ 2M",
        scheduler="Karras",
        cfg=7.0,
        seed=5,
        width=512,
        height=768,
        model="0123abcdef",  # no Model key: the hash names it
        vae="sdxl_vae.safetensors",
        strength=0.4,
        hires=True,
    )
    assert prompt_loras(params.prompt) == [("film", 0.6)]  # Lora hashes set no loras


def test_flags_after_a_block_override_its_new_keys() -> None:
    params = parse_generation(
        BLOCK + " --hires=off --vae None --scheduler sgm_uniform --model sdxl --lora x:0.2"
    )
    assert (params.hires, params.vae, params.scheduler, params.model) == (
        False,
        "None",
        "sgm_uniform",
        "sdxl",
    )
    assert params.loras == (("x", 0.2),)
    assert "both in the prompt" in bad(BLOCK + " --lora film")


def test_the_model_key_wins_over_the_hash() -> None:
    block = "a\nSteps: 3, Model hash: abc123, Model: juggernautXL"
    assert parse_generation(block).model == "juggernautXL"
    assert parse_infotext(block) is not None
    assert parse_infotext(block).model == "juggernautXL"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "key", ["Hires upscale: 1.5", "Hires steps: 10", "Hires resize: 1024x1024"]
)
def test_any_hires_key_turns_hires_on(key: str) -> None:
    assert parse_generation(f"a\nSteps: 3, {key}").hires is True
    assert parse_generation("a\nSteps: 3").hires is False


def test_infotext_writes_the_new_keys_as_a1111_does() -> None:
    params = P(
        prompt="a fox",
        sampler="Euler a",
        scheduler="Karras",
        vae="sdxl_vae.safetensors",
        hires=True,
        loras=(("film grain", 0.6), ("detail", 1.0)),
    )
    text = format_infotext(params, width=512, height=512, seed=3, model="sdxl")
    assert text == (
        "a fox <lora:film grain:0.6> <lora:detail:1>\n"
        "Sampler: Euler a, Schedule type: Karras, Seed: 3, Size: 512x512, Model: sdxl, "
        "VAE: sdxl_vae.safetensors, Hires upscale: 2"
    )
    # a caller that knows the factor it used says so; other extras follow
    text = format_infotext(
        params, width=8, height=8, seed=1, model=None, extra={"Hires upscale": "1.5", "x": "y"}
    )
    assert text.endswith("VAE: sdxl_vae.safetensors, Hires upscale: 1.5, x: y")
    plain = format_infotext(P(prompt="a"), width=8, height=8, seed=1, model=None)
    assert plain == "a\nSeed: 1, Size: 8x8"


_tag_name = (
    st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-. "), min_size=1)
    .map(str.strip)
    .filter(bool)
)
_key_value = (
    st.text(
        st.characters(whitelist_categories=("L", "N"), whitelist_characters='_-., :"'),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_tag_name, st.floats(-4, 4, allow_nan=False)),
        max_size=3,
        unique_by=lambda x: x[0],
    ),
    st.none() | _key_value,
    st.none() | _key_value,
    st.booleans(),
)
def test_infotext_round_trips_the_new_keys(
    loras: list[tuple[str, float]], vae: str | None, scheduler: str | None, hires: bool
) -> None:
    params = P(
        prompt="a fox", steps=20, loras=tuple(loras), vae=vae, scheduler=scheduler, hires=hires
    )
    text = format_infotext(params, width=512, height=512, seed=3, model="m")
    back = parse_generation(text)
    assert (back.vae, back.scheduler, back.hires) == (vae, scheduler, hires)
    assert back.loras == ()  # the LoRAs came back as tags in the prompt
    got = prompt_loras(back.prompt)
    assert [n for n, _ in got] == [n for n, _ in loras]
    assert all(math.isclose(a, b) for (_, a), (_, b) in zip(got, loras, strict=True))
    embedded = parse_infotext(text)
    assert embedded is not None and (embedded.vae, embedded.scheduler, embedded.hires) == (
        vae,
        scheduler,
        hires,
    )


# --- /models ----------------------------------------------------------------------------------

LORAS = tuple(f"lora_{i:02d}" for i in range(30))


class GpuDemo(DemoProvider):
    """The demo provider dressed as a self-hosted GPU: a checkpoint with its Civitai name,
    and the lists an A1111 pool fills."""

    name = "gpu"

    def __init__(self, lists: dict[str, tuple[str, ...]]) -> None:
        super().__init__(DemoProviderConfig(latency_s=0.0))
        self.lists = lists

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(
            super().capabilities(),
            models=(ModelInfo("juggernautXL", "Juggernaut XL v9 · SDXL 1.0"),),
            default_model="juggernautXL",
            description="my GPUs",
            lists=self.lists,
        )


async def ask(app: Any, text: str, lang: str = "en") -> Reply:
    return await app.commands.handle(Incoming(user=user(), text=text, reply_to=REPLY, lang=lang))


async def test_models_lists_what_the_gpus_have(app_factory: Any) -> None:
    gpu = GpuDemo(
        {
            "loras": LORAS,
            "samplers": ("Euler a", "DPM++ 2M"),
            "schedulers": ("Automatic", "Karras"),
            "vaes": ("sdxl_vae.safetensors", "x" * 300),
        }
    )
    demo = DemoProvider(DemoProviderConfig(latency_s=0.0))
    app = await app_factory(provider_objs={"demo": demo, "gpu": gpu})
    reply = await ask(app, "/models")
    lines = reply.text.splitlines()
    assert "  gpu:juggernautXL * — Juggernaut XL v9 · SDXL 1.0" in lines
    [loras] = [line for line in lines if line.startswith("  LoRAs")]
    assert loras.startswith("  LoRAs (--lora) (30): lora_00, lora_01, ")
    assert loras.endswith("and 22 more") and len(loras) < 220
    assert "  samplers (--sampler) (2): Euler a, DPM++ 2M" in lines
    assert "  schedulers (--scheduler) (2): Automatic, Karras" in lines
    [vaes] = [line for line in lines if line.startswith("  VAEs")]
    assert vaes.startswith("  VAEs (--vae) (2): sdxl_vae.safetensors, xxx") and "…" in vaes
    assert len(vaes) < 120  # a long name is clipped
    assert "  /models gpu lists them all" in lines
    # the demo fills no lists: nothing about them under it
    demo_part = reply.text.split("\ngpu")[0]
    assert "LoRAs" not in demo_part and "samplers" not in demo_part

    # one provider in full
    detail = (await ask(app, "/models gpu")).text
    assert not detail.startswith("demo") and "lora_29" in detail and "more" not in detail
    assert "lists them all" not in detail

    # refreshed when they change: the lists are asked for on every /models
    gpu.lists = {"loras": ("brand_new",)}
    lines = (await ask(app, "/models")).text.splitlines()
    assert "  LoRAs (--lora) (1): brand_new" in lines and not any("samplers" in x for x in lines)

    zh = (await ask(app, "/models gpu", lang="zh")).text
    assert "LoRA（--lora）（1 个）：brand_new" in zh

    unknown = await ask(app, "/models nosuch")
    assert unknown.error and "nosuch" in unknown.text and "demo, gpu" in unknown.text
