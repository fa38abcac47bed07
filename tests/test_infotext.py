"""A1111 infotext: what we write must read back, and what A1111/Civitai write must read."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.infotext import format_infotext, parse_infotext, parse_infotext_full, quote
from bot.params import GenerationParams

CIVITAI = (
    "masterpiece, a cat\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 832x1216, "
    "Model hash: abc, Model: juggernaut, Clip skip: 2"
)


def a1111_parse(text: str) -> dict[str, str]:
    """A trimmed copy of A1111's ``parse_generation_parameters``: the reader we must satisfy."""
    re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    res: dict[str, str] = {}
    prompt = negative = ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v[:1] == '"' and v[-1:] == '"':
            v = json.loads(v)
        res[k] = v
    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    return res


# --- writing ----------------------------------------------------------------------------------


def test_format_writes_a1111_layout_in_a1111_key_order() -> None:
    params = GenerationParams(
        prompt="a lighthouse at dusk",
        negative="blurry, text",
        steps=30,
        sampler="DPM++ 2M Karras",
        cfg=7.5,
        strength=0.6,
        model="ignored: the model argument wins",
    )
    text = format_infotext(
        params, width=832, height=1216, seed=42, model="sdxl", extra={"sdhost job": "12"}
    )
    assert text == (
        "a lighthouse at dusk\n"
        "Negative prompt: blurry, text\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 832x1216, "
        "Model: sdxl, Denoising strength: 0.6, sdhost job: 12"
    )


def test_format_omits_missing_values_and_the_empty_negative_line() -> None:
    text = format_infotext(
        GenerationParams(prompt="a cat"), width=512, height=512, seed=0, model=None
    )
    assert text == "a cat\nSeed: 0, Size: 512x512"


def test_format_quotes_values_like_a1111_and_the_cases_it_misses() -> None:
    assert quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"'
    assert quote("x: y") == '"x: y"'
    assert quote("two\nlines") == '"two\\nlines"'
    assert quote('"starts quoted"') == '"\\"starts quoted\\""'
    assert quote(" padded ") == '" padded "'
    assert quote("日本語, ok") == '"日本語, ok"'  # not \\u-escaped, as A1111 writes it


def test_empty_prompt_leaves_no_blank_first_line() -> None:
    text = format_infotext(
        GenerationParams(negative="ugly"), width=64, height=64, seed=1, model="m"
    )
    assert text.startswith("Negative prompt: ugly\n")


def test_a1111_reads_what_we_write() -> None:
    params = GenerationParams(
        prompt="line one, (detail:1.2)\nline two",
        negative="blurry\nlowres",
        steps=20,
        sampler="odd, name: here",
        cfg=7.0,
    )
    text = format_infotext(params, width=768, height=512, seed=7, model="m, v2")
    seen = a1111_parse(text)
    assert seen["Prompt"] == params.prompt
    assert seen["Negative prompt"] == params.negative
    assert seen["Steps"] == "20"
    assert seen["Sampler"] == "odd, name: here"
    assert seen["CFG scale"] == "7"
    assert seen["Seed"] == "7"
    assert seen["Size"] == "768x512"
    assert seen["Model"] == "m, v2"


# --- reading ----------------------------------------------------------------------------------


def test_parse_civitai_block() -> None:
    parsed = parse_infotext_full(CIVITAI)
    assert parsed is not None
    params, kv = parsed
    assert params == GenerationParams(
        prompt="masterpiece, a cat",
        negative="blurry, lowres",
        steps=30,
        sampler="DPM++ 2M Karras",
        cfg=7.0,
        seed=1,
        width=832,
        height=1216,
        model="juggernaut",
    )
    assert kv["Model hash"] == "abc"
    assert kv["Clip skip"] == "2"
    assert kv["Size"] == "832x1216"


def test_parse_multiline_prompt_and_negative_with_quoted_values() -> None:
    text = (
        "a cat,\n(best quality:1.2),\n\nsoft light\n"
        "Negative prompt: blurry,\nlowres\n"
        'Steps: 25, Sampler: Euler a, Seed: -1, Size: 512x768, Lora hashes: "add: 7c6b, more: 12", '
        'Denoising strength: 0.45, Template: "two\\nlines"'
    )
    parsed = parse_infotext_full(text)
    assert parsed is not None
    params, kv = parsed
    assert params.prompt == "a cat,\n(best quality:1.2),\n\nsoft light"
    assert params.negative == "blurry,\nlowres"
    assert params.seed is None  # -1 means "random"
    assert params.strength == 0.45
    assert (params.width, params.height) == (512, 768)
    assert kv["Lora hashes"] == "add: 7c6b, more: 12"
    assert kv["Template"] == "two\nlines"


def test_parse_windows_newlines_and_surrounding_blank_lines() -> None:
    text = "\r\n  a cat  \r\nNegative prompt: dog\r\nSteps: 3, Seed: 4, Size: 64x64\r\n\r\n"
    params = parse_infotext(text)
    assert params is not None
    assert (params.prompt, params.negative, params.steps, params.seed) == ("a cat", "dog", 3, 4)


def test_negative_prompt_alone_is_an_infotext() -> None:
    params = parse_infotext("a cat\nNegative prompt: dogs, rain")
    assert params == GenerationParams(prompt="a cat", negative="dogs, rain")


def test_key_line_without_negative() -> None:
    params = parse_infotext("a cat\nSteps: 12, Sampler: Euler, Seed: 9")
    assert params == GenerationParams(prompt="a cat", steps=12, sampler="Euler", seed=9)


def test_plain_prompts_are_not_infotext() -> None:
    assert parse_infotext("a cat sitting on a mat") is None
    assert parse_infotext("") is None
    assert parse_infotext("   \n  ") is None
    # key: value pairs that no A1111 tool writes are prompt text, not parameters
    assert parse_infotext("anime girl\nstyle: anime, mood: dark, light: soft") is None


def test_unparseable_values_become_none_not_errors() -> None:
    params = parse_infotext("x\nSteps: many, CFG scale: nan, Seed: 1e9, Size: big, Model: ")
    assert params == GenerationParams(prompt="x")


# --- properties -------------------------------------------------------------------------------

_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
_line = (
    st.text(_CHARS, min_size=1, max_size=20)
    .map(str.strip)
    .filter(lambda s: s != "" and not s.startswith("Negative prompt:"))
)
_multiline = st.lists(_line, max_size=3).map("\n".join)
_value = st.one_of(
    st.sampled_from(["Euler a", "DPM++ 2M Karras", 'x, "y": z', '"quoted"', "a:b", "ü,日本"]),
    st.text(_CHARS, min_size=1, max_size=15).map(str.strip).filter(bool),
)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=300, deadline=None)
@given(
    prompt=_multiline,
    negative=_multiline,
    steps=st.none() | st.integers(1, 150),
    sampler=st.none() | _value,
    cfg=st.none() | _finite,
    strength=st.none() | st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    width=st.integers(1, 4096),
    height=st.integers(1, 4096),
    model=st.none() | _value,
    extra=st.dictionaries(st.sampled_from(["sdhost job", "Clip skip", "Version"]), _value),
)
def test_round_trip(
    prompt: str,
    negative: str,
    steps: int | None,
    sampler: str | None,
    cfg: float | None,
    strength: float | None,
    seed: int,
    width: int,
    height: int,
    model: str | None,
    extra: dict[str, str],
) -> None:
    params = GenerationParams(
        prompt=prompt, negative=negative, steps=steps, sampler=sampler, cfg=cfg, strength=strength
    )
    text = format_infotext(params, width=width, height=height, seed=seed, model=model, extra=extra)
    parsed = parse_infotext_full(text)
    assert parsed is not None
    back, kv = parsed
    assert back == GenerationParams(
        prompt=prompt,
        negative=negative,
        steps=steps,
        sampler=sampler,
        cfg=cfg,
        strength=strength,
        seed=seed,
        width=width,
        height=height,
        model=model,
    )
    for key, value in extra.items():
        assert kv[key] == value


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises(text: str) -> None:
    result = parse_infotext_full(text)
    assert result is None or isinstance(result[0], GenerationParams)
