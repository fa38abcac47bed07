"""The command grammar: what people type on phones and desktops, and what we show them back."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.errors import BadInput
from bot.grammar import (
    EMPTY_PROMPT,
    FLAGS,
    HELP_FLAGS,
    MAX_SEED,
    Command,
    format_flags,
    parse_batch,
    parse_command,
    parse_generation,
    read_flag,
    split_source,
)
from bot.params import GenerationParams

P = GenerationParams


def bad(text: str, **kw: object) -> str:
    with pytest.raises(BadInput) as info:
        parse_generation(text, **kw)  # type: ignore[arg-type]
    return info.value.message


# --- parse_command ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/imagine@MyBot a cat --ar 16:9", Command("imagine", "a cat --ar 16:9", "MyBot")),
        ("  /IMAGINE a cat ", Command("imagine", "a cat", None)),
        ("/batch\na fox\na whale\n", Command("batch", "a fox\na whale", None)),
        ("/help", Command("help", "", None)),
        ("/jobs@", Command("jobs", "", None)),
        ("hello there  ", Command("", "hello there", None)),
        ("", Command("", "", None)),
    ],
)
def test_parse_command(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


# --- parse_generation: flags ------------------------------------------------------------------


def test_plain_prompt_collapses_whitespace() -> None:
    assert parse_generation("  a   lighthouse\n at\tdusk ") == P(prompt="a lighthouse at dusk")


def test_every_flag() -> None:
    text = (
        'a cat --ar 16:9 --seed 42 --steps 30 --cfg 7.5 --sampler "DPM++ 2M Karras" --n 3 '
        "--model sdxl --provider local --strength 0.6 --no blurry, text"
    )
    assert parse_generation(text) == P(
        prompt="a cat",
        aspect="16:9",
        seed=42,
        steps=30,
        cfg=7.5,
        sampler="DPM++ 2M Karras",
        n=3,
        model="sdxl",
        provider="local",
        strength=0.6,
        negative="blurry, text",
    )


def test_flags_among_prompt_words_and_equals_form() -> None:
    assert parse_generation("a --seed=5 red --size=512x768 fox") == P(
        prompt="a red fox", seed=5, width=512, height=768
    )


@pytest.mark.parametrize("size", ["640x480", "640X480", "640*480", "640×480"])
def test_size_separators(size: str) -> None:
    assert parse_generation(f"x --size {size}") == P(prompt="x", width=640, height=480)


def test_aliases_and_case() -> None:
    assert parse_generation("x --aspect 2:3 --count 2 --SEED 1") == P(
        prompt="x", aspect="2:3", n=2, seed=1
    )


def test_phone_dashes_and_curly_quotes() -> None:
    assert parse_generation("a cat —ar 3:2 –seed 9 —sampler “Euler a” —no dogs") == P(
        prompt="a cat", aspect="3:2", seed=9, sampler="Euler a", negative="dogs"
    )


def test_prose_dashes_stay_in_the_prompt() -> None:
    text = "a cat — sleeping —peacefully -- on a rug - really ---"
    assert parse_generation(text).prompt == text


def test_no_takes_everything_up_to_the_next_flag_and_repeats_append() -> None:
    params = parse_generation("a cat --no blurry, low quality --seed 3 --no text , watermark")
    assert params.negative == "blurry, low quality, text , watermark"
    assert params.seed == 3
    assert params.prompt == "a cat"


def test_quoted_no_value_loses_its_quotes() -> None:
    assert parse_generation('x --no "blurry, text"').negative == "blurry, text"
    assert parse_generation('x --no="a b"').negative == "a b"


def test_seed_minus_one_means_random() -> None:
    assert parse_generation("x --seed -1").seed is None


def test_number_bounds_and_decimal_comma() -> None:
    assert parse_generation(f"x --seed {MAX_SEED}").seed == MAX_SEED
    assert parse_generation("x --seed 0 --steps 1 --cfg 0 --strength 0").steps == 1
    assert parse_generation("x --steps 150 --cfg 30 --strength 1").cfg == 30.0
    assert parse_generation("x --cfg 7,5").cfg == 7.5
    assert parse_generation("x --ar 1:4").aspect == "1:4"
    assert parse_generation("x --ar 04:1").aspect == "4:1"
    assert parse_generation("x --size 64x2048").width == 64


def test_quoted_prompt_text_is_kept_and_protects_flags() -> None:
    params = parse_generation('a sign saying "OPEN --seed 5" --seed 6')
    assert params.prompt == 'a sign saying "OPEN --seed 5"'
    assert params.seed == 6


def test_apostrophes_and_unbalanced_quotes_are_literal() -> None:
    assert parse_generation("a cat's toy, rock 'n' roll").prompt == "a cat's toy, rock 'n' roll"
    params = parse_generation('an "unclosed quote --seed 4')
    assert (params.prompt, params.seed) == ('an "unclosed quote', 4)
    assert parse_generation('x --sampler "Euler').sampler == '"Euler'


def test_backslash_keeps_a_flag_word_in_the_prompt() -> None:
    assert (
        parse_generation(r"use \--ar and \\--ar and \(x\)").prompt
        == r"use --ar and \--ar and \(x\)"
    )
    assert parse_generation(r'say \"hi" --seed 1').prompt == 'say "hi"'


def test_allow_empty_prompt() -> None:
    assert parse_generation("--strength 0.3", allow_empty_prompt=True) == P(strength=0.3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a cat --sed 4",
            "unknown flag --sed — did you mean --seed? Flags: --ar --size --seed --steps --cfg "
            "--sampler --no --n --model --provider --strength",
        ),
        ("a cat —sed 4", "unknown flag --sed — did you mean --seed?"),
        ("a cat --zzzz 4", "unknown flag --zzzz. Flags:"),
        ("a cat --ar", "--ar needs W:H between 1:4 and 4:1, for example --ar 16:9"),
        ("a cat --ar 16-9", "--ar needs W:H"),
        ("a cat --ar 5:1", "--ar needs W:H"),
        ("a cat --ar 0:1", "--ar needs W:H"),
        ("a cat --size 32x32", "--size needs WxH with each side 64..2048"),
        ("a cat --size 2049x512", "--size needs WxH"),
        ("a cat --seed 4294967296", "--seed needs a whole number 0..4294967295"),
        ("a cat --seed -2", "--seed needs"),
        ("a cat --seed ٣", "--seed needs"),  # non-ASCII digits are not numbers here
        ("a cat --steps 0", "--steps needs a whole number 1..150"),
        ("a cat --steps 151", "--steps needs"),
        ("a cat --cfg 31", "--cfg needs a number 0..30"),
        ("a cat --cfg nan", "--cfg needs"),
        ("a cat --cfg 1e3", "--cfg needs"),
        ("a cat --strength 1.5", "--strength needs a number 0..1"),
        ("a cat --n 5", "--n needs a number 1..4"),
        ("a cat --n 0", "--n needs"),
        ("a cat --sampler", "--sampler needs a name"),
        ("a cat --sampler --seed 3", "--sampler needs a name"),
        ('a cat --model ""', "--model needs a name"),
        ("a cat --no", "--no needs what to leave out"),
        ("a cat --no --seed 1", "--no needs"),
        ("a cat --seed 1 --seed 2", "--seed is given twice"),
        ("a cat --ar 1:1 --aspect 1:1", "--ar is given twice (--aspect is the same flag)"),
        ("a cat --ar 1:1 --size 512x512", "use either --ar or --size, not both"),
        ("a cat --ar16:9", "cannot read '--ar16:9'"),
        ("--seed 3", EMPTY_PROMPT),
        ("   ", EMPTY_PROMPT),
    ],
)
def test_errors_say_how_to_fix(text: str, message: str) -> None:
    got = bad(text)
    assert got.startswith(message)
    assert "\n" not in got


def test_bad_value_is_echoed() -> None:
    assert "(got '16-9')" in bad("x --ar 16-9")


def test_n_limit_follows_max_n() -> None:
    assert parse_generation("x --n 8", max_n=8).n == 8
    assert "1..2" in bad("x --n 3", max_n=2)


# --- pasted A1111 / Civitai blocks ------------------------------------------------------------

CIVITAI = (
    "masterpiece, a cat\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 832x1216, "
    "Model hash: abc, Model: juggernaut, Clip skip: 2"
)


def test_pasted_block() -> None:
    assert parse_generation(CIVITAI) == P(
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


def test_flags_after_the_block_override_it() -> None:
    text = CIVITAI + " --seed 5 --ar 2:3\n--no ugly --steps 20"
    assert parse_generation(text) == P(
        prompt="masterpiece, a cat",
        negative="ugly",
        steps=20,
        sampler="DPM++ 2M Karras",
        cfg=7.0,
        seed=5,
        aspect="2:3",  # --ar replaces the block's size
        model="juggernaut",
    )


def test_block_keeps_prompt_newlines_and_em_dashes() -> None:
    text = "line one — with a dash\nline two\nNegative prompt: a\nb\nSteps: 5, Seed: 3"
    params = parse_generation(text)
    assert params.prompt == "line one — with a dash\nline two"
    assert params.negative == "a\nb"
    assert (params.steps, params.seed) == (5, 3)


def test_block_without_key_line() -> None:
    params = parse_generation("a cat\nNegative prompt: dogs --seed 2")
    assert (params.prompt, params.negative, params.seed) == ("a cat", "dogs", 2)


def test_block_values_are_checked_unless_overridden() -> None:
    text = "a cat\nSteps: 300, Seed: 1, Size: 4096x4096"
    message = bad(text)
    assert message.startswith("the pasted parameters have Steps: 300")
    assert "--steps" in message
    assert "Size: 4096x4096" in bad(text + " --steps 20")
    assert parse_generation(text + " --steps 20 --size 1024x1024") == P(
        prompt="a cat", steps=20, seed=1, width=1024, height=1024
    )


def test_block_seed_minus_one_and_flag_errors_inside_block() -> None:
    assert parse_generation("a cat\nSteps: 20, Seed: -1").seed is None
    assert bad("a cat\nSteps: 20, Seed: 1 --sed 2").startswith("unknown flag --sed")


def test_single_line_is_never_a_block() -> None:
    params = parse_generation("Negative prompt: blurry")
    assert params == P(prompt="Negative prompt: blurry")


# --- parse_batch ------------------------------------------------------------------------------


def test_batch_lines_and_pipes() -> None:
    assert parse_batch("a fox\n\n  a whale --seed 2\n") == [
        P(prompt="a fox"),
        P(prompt="a whale", seed=2),
    ]
    assert parse_batch("a fox | a whale --ar 1:1 | [cat|dog]") == [
        P(prompt="a fox"),
        P(prompt="a whale", aspect="1:1"),
        P(prompt="[cat|dog]"),
    ]


def test_batch_n_expands_with_consecutive_seeds() -> None:
    tasks = parse_batch("a fox --n 3 --seed 4294967294")
    assert [t.seed for t in tasks] == [4294967294, 4294967295, 0]
    assert all(t.n == 1 and t.prompt == "a fox" for t in tasks)
    assert parse_batch("a fox --n 2") == [P(prompt="a fox"), P(prompt="a fox")]


def batch_error(text: str, **kw: int) -> str:
    with pytest.raises(BadInput) as info:
        parse_batch(text, **kw)
    return info.value.message


def test_batch_limits() -> None:
    assert batch_error(" | ".join(["x"] * 12)) == "a batch holds at most 10 tasks; you gave 12"
    assert batch_error("x --n 12") == "a batch holds at most 10 tasks; you gave 12"
    assert batch_error("a\nb\nc\nd", max_tasks=3) == "a batch holds at most 3 tasks; you gave 4"
    assert len(parse_batch(" | ".join(["x"] * 10))) == 10


@pytest.mark.parametrize("text", ["", "   \n  ", " | | "])
def test_empty_batch(text: str) -> None:
    assert "e.g. /batch a red fox | a blue whale" in batch_error(text)


def test_batch_errors_name_the_task() -> None:
    assert batch_error("a fox\na whale --n 2").startswith("task 2: --n can only be 1")
    assert batch_error("a fox --sed 1 | a whale").startswith("task 1: unknown flag --sed")


def test_batch_with_pasted_block_is_one_task() -> None:
    assert parse_batch(CIVITAI) == [parse_generation(CIVITAI)]


# --- split_source -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://example.com/cat.png a watercolor cat",
            ("https://example.com/cat.png", "a watercolor cat"),
        ),
        ("HTTP://x.org/i?id=1\nsecond line", ("HTTP://x.org/i?id=1", "second line")),
        ("/tmp/in.png make it blue", ("/tmp/in.png", "make it blue")),
        ("./in make it blue", ("./in", "make it blue")),
        ("~/pics/a make it", ("~/pics/a", "make it")),
        ("../a.webp", ("../a.webp", "")),
        ("photo.JPEG redraw --strength 0.4", ("photo.JPEG", "redraw --strength 0.4")),
        ('"/my pics/cat.png" a cat', ("/my pics/cat.png", "a cat")),
        ("C:\\pics\\cat a cat", ("C:\\pics\\cat", "a cat")),
    ],
)
def test_split_source_finds_the_picture(text: str, expected: tuple[str, str]) -> None:
    assert split_source(text) == expected


@pytest.mark.parametrize("text", ["a watercolor cat", "", "   ", "http:// nope", "png art"])
def test_split_source_leaves_prompts_alone(text: str) -> None:
    assert split_source(text) == (None, text)


# --- format_flags -----------------------------------------------------------------------------


def test_format_flags_writes_only_what_was_asked() -> None:
    assert format_flags(P(prompt="a cat")) == "a cat"
    params = P(
        prompt="a cat",
        negative="blurry, text",
        aspect="16:9",
        seed=3,
        steps=20,
        cfg=7.0,
        sampler="DPM++ 2M Karras",
        n=2,
        model="sdxl",
        provider="local",
        strength=0.5,
    )
    assert format_flags(params) == (
        'a cat --ar 16:9 --seed 3 --steps 20 --cfg 7 --sampler "DPM++ 2M Karras" --n 2 '
        "--model sdxl --provider local --strength 0.5 --no blurry, text"
    )


def test_format_flags_prefers_the_resolved_size() -> None:
    params = P(prompt="x", aspect="16:9", width=1344, height=768)
    assert format_flags(params) == "x --size 1344x768"


def test_format_flags_escapes_what_would_reparse_differently() -> None:
    params = P(
        prompt='say --seed and "unclosed and \\--x',
        negative='"whole group"',
        sampler='a" b',
        cfg=1e-5,
    )
    text = format_flags(params)
    assert text == (
        "say \\--seed and \\\"unclosed and \\\\--x --cfg 0.00001 --sampler 'a\" b' "
        '--no \\"whole group"'
    )
    assert parse_generation(text) == params


def test_help_lists_every_flag_on_its_own_line() -> None:
    lines = HELP_FLAGS.splitlines()
    for flag in FLAGS:
        assert sum(line.startswith(f"  --{flag} ") for line in lines) == 1, flag
    assert all(len(line) <= 90 for line in lines)


# --- properties -------------------------------------------------------------------------------

_letters = st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=8)
_tricky = st.sampled_from(
    [
        "masterpiece,",
        "(best:1.2)",
        "8k",
        "猫",
        "夜の街",
        "ネオン",
        "café",
        "[cat|dog]",
        "|",
        "--seed",
        "--ar16:9",
        "—no",
        "–seed",
        "—",
        "--",
        "-1",
        "\\--ar",
        "\\\\—seed",
        "\\(x\\)",
        '"quoted',
        'words"',
        '"',
        "'n'",
        "it's",
        "“hi”",
        "«ciao»",
        '--x="a',
        'b"',
        "k=v",
        "Steps:",
        "Negative",
        "prompt:",
    ]
)
_prompt = st.lists(st.one_of(_letters, _tricky), min_size=1, max_size=8).map(" ".join)
_negative = st.one_of(st.just(""), _prompt)
_name = st.lists(
    st.one_of(
        st.text(
            st.characters(whitelist_categories=("L", "N"), whitelist_characters="+-_.()'\""),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from(["--x", "DPM++", "'q'", '"', "\\--y", "Euler"]),
    ),
    min_size=1,
    max_size=3,
).map(" ".join)


@st.composite
def _valid_params(draw: st.DrawFn) -> GenerationParams:
    aspect = width = height = None
    shape = draw(st.sampled_from(["none", "ar", "size"]))
    if shape == "ar":
        w = draw(st.integers(1, 64))
        h = draw(st.integers(max(1, -(-w // 4)), 4 * w))
        aspect = f"{w}:{h}"
    elif shape == "size":
        width = draw(st.integers(64, 2048))
        height = draw(st.integers(64, 2048))
    return GenerationParams(
        prompt=draw(_prompt),
        negative=draw(_negative),
        aspect=aspect,
        width=width,
        height=height,
        seed=draw(st.none() | st.integers(0, MAX_SEED)),
        steps=draw(st.none() | st.integers(1, 150)),
        cfg=draw(st.none() | st.floats(0, 30)),
        sampler=draw(st.none() | _name),
        n=draw(st.integers(1, 4)),
        model=draw(st.none() | _name),
        provider=draw(st.none() | _name),
        strength=draw(st.none() | st.floats(0, 1)),
    )


@settings(max_examples=300, deadline=None)
@given(_valid_params())
def test_format_flags_round_trip(params: GenerationParams) -> None:
    assert parse_generation(format_flags(params), max_n=4) == params


_fragments = st.sampled_from(
    [
        "--",
        "—",
        "–",
        "--seed",
        "--no",
        "--ar=",
        "--n",
        "—sed",
        '"',
        "'",
        "“",
        "”",
        "«",
        "\\",
        "=",
        "|",
        " ",
        "\n",
        "\r\n",
        "a",
        "1:1",
        "64x64",
        "-1",
        "9" * 30,
        "Negative prompt:",
        "Steps: 3,",
        "Seed: -1",
        "/imagine",
        "@",
        "http://",
        "x.png",
    ]
)
_hostile = st.one_of(st.text(), st.lists(_fragments, max_size=20).map("".join))


@settings(max_examples=300, deadline=None)
@given(_hostile)
def test_parsers_only_ever_raise_bad_input(text: str) -> None:
    for parse in (
        lambda t: parse_generation(t),
        lambda t: parse_generation(t, allow_empty_prompt=True, max_n=1),
        parse_batch,
    ):
        try:
            result = parse(text)
        except BadInput as err:
            assert err.message and "\n" not in err.message
        else:
            assert result
    command = parse_command(text)
    assert isinstance(command, Command) and command.name == command.name.lower()
    source, rest = split_source(text)
    assert rest == text if source is None else source and source in text


@settings(max_examples=200, deadline=None)
@given(_prompt, st.integers(1, 10))
def test_batch_n_form_makes_n_single_tasks(prompt: str, n: int) -> None:
    assume(" | " not in f" {prompt} ")  # a lone | separates batch prompts
    tasks = parse_batch(f"{format_flags(P(prompt=prompt))} --n {n} --seed 10")
    assert [t.seed for t in tasks] == list(range(10, 10 + n))
    assert {(t.prompt, t.n) for t in tasks} == {(prompt, 1)}


# --- read_flag ---------------------------------------------------------------------------------

_FIELD = {"ar": "aspect", "no": "negative"}


def _as_params_value(flag: str, params: GenerationParams) -> object:
    if flag == "size":
        return (params.width, params.height)
    return getattr(params, _FIELD.get(flag, flag))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(FLAGS),
    st.text(alphabet=st.sampled_from("0123456789.,:x-abAB+ "), min_size=0, max_size=12)
    | st.sampled_from(["16:9", "1024x768", "-1", "7.5", "0,6", "4", "5", "DPM++"]),
)
def test_read_flag_reads_a_value_as_the_flag_in_a_command_would(flag: str, value: str) -> None:
    """A form field standing for a flag (a command's option) is read by the flag's rules."""
    value = value.strip()
    assume(value and " " not in value)
    try:
        expected = _as_params_value(flag, parse_generation(f"x --{flag}={value}"))
    except BadInput:
        with pytest.raises(BadInput):
            read_flag(flag, value)
        return
    assert read_flag(flag, value) == expected


def test_read_flag_names() -> None:
    assert read_flag("count", "3") == 3 and read_flag("aspect", "16:9") == "16:9"
    assert read_flag("seed", "-1") is None
    with pytest.raises(BadInput, match="unknown flag --colour"):
        read_flag("colour", "red")
