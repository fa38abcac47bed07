"""Hostile input to the core: numbers past any column, text that is not text, pictures that
lie about themselves, and what a chat may learn about the server. Every one must end in one
clear line (a ``UserError``), with nothing stored and nothing charged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select

from adapters.chat.telegram.adapter import _parse_data
from adapters.civitai.download.refs import parse_ref
from bot.commands import Incoming, _job_id
from bot.errors import BadInput, UserError
from bot.grammar import parse_batch, parse_generation, split_source
from bot.ids import MAX_ID, parse_id
from bot.jobs import check_values
from bot.params import GenerationParams
from storage.models import Job, LedgerEntry
from tests.conftest import REPLY, user

INTERNAL = "something went wrong on our side"


async def say(app: Any, text: str, **kw: Any) -> Any:
    return await app.commands.handle(Incoming(user=user(), text=text, reply_to=dict(REPLY), **kw))


async def nothing_charged(app: Any) -> None:
    """No job row, no ledger row but the starting grant, the balance untouched."""

    def counts(conn: Any) -> tuple[int, int]:
        jobs = conn.execute(select(func.count()).select_from(Job)).scalar_one()
        charges = conn.execute(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.reason == "charge")
        ).scalar_one()
        return jobs, charges

    assert await app.db.run_read(counts) == (0, 0)
    assert await app.jobs.balance(user()) == 20


# --- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/job 99999999999999999999",
        "/cancel 9223372036854775808",
        "/retry 9223372036854775808",
        "/job 9223372036854775807",
        "/job ²",
        "/cancel ٣",
        "/job 0",
        "/job #00000000000000000000000000001234",
        "/job 1_000",
    ],
)
async def test_job_ids_out_of_range_or_not_ascii_name_no_job(app_factory, text: str) -> None:
    app = await app_factory()
    reply = await say(app, text)
    assert reply.error, reply.text
    assert INTERNAL not in reply.text
    assert "no job" in reply.text or "needs a job number" in reply.text or "/job" in reply.text


async def test_lookups_by_id_refuse_ids_past_the_column_from_any_caller(app_factory) -> None:
    """Buttons and the operator CLI hand the core an int, not text: the core checks it too."""
    app = await app_factory()
    from bot.errors import NotFound
    from bot.results import Results

    for job_id in (MAX_ID + 1, 10**30, 0, -5):
        with pytest.raises(NotFound):
            await app.jobs.job(None, job_id)
        with pytest.raises(NotFound):
            await app.jobs.cancel(user(), job_id)
        with pytest.raises(NotFound):
            await Results(app.jobs).reroll(user(), job_id, 0, dict(REPLY))


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_no_text_makes_a_job_id_parser_raise_anything_but_user_errors(text: str) -> None:
    for candidate in (text, "#" + text, text + "9" * 20):
        try:
            job_id = _job_id(candidate, "job")
        except UserError:
            continue
        assert 0 < job_id <= MAX_ID
        assert candidate.strip().removeprefix("#").isascii()
    parsed = parse_id(text)
    assert parsed is None or 0 < parsed <= MAX_ID


_digits = st.text(alphabet="0123456789²٣", min_size=0, max_size=25)


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.sampled_from("rvoix"), _digits, _digits), st.text(max_size=30))
def test_forged_button_data_is_ignored_not_a_crash(parts: tuple[str, str, str], junk: str) -> None:
    """Telegram callback data can be forged by any client: ``a:job:idx`` with anything in it."""
    for data in (":".join(parts), junk):
        parsed = _parse_data(data)
        if parsed is not None:
            _, job_id, idx = parsed
            assert 0 < job_id <= MAX_ID and 0 <= idx < 10**9


_flags = st.sampled_from(["--seed", "--steps", "--n", "--cfg", "--strength", "--size", "--ar", ""])
_values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["4294967296", "99999999999999999999", "²", "٣", "1e999", "nan", "-0"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_flags, _values), max_size=4), st.text(max_size=20))
def test_no_flags_make_the_grammar_raise_anything_but_user_errors(
    pairs: list[tuple[str, str]], prompt: str
) -> None:
    text = "a cat " + prompt + " " + " ".join(f"{f} {v}" for f, v in pairs)
    for parse in (parse_generation, parse_batch, split_source):
        try:
            result = parse(text)  # type: ignore[operator]
        except UserError:
            continue
        for params in result if isinstance(result, list) else [result]:
            if isinstance(params, GenerationParams):
                with contextlib.suppress(UserError):  # the core's own checks: clear or pass
                    check_values(params)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_values_out_of_range_are_refused_clearly(seed: int, steps: int, cfg: float) -> None:
    params = GenerationParams(prompt="x", seed=seed, steps=steps, cfg=cfg)
    try:
        check_values(params)
    except BadInput:
        return
    assert 0 <= seed <= 4_294_967_295 and 1 <= steps <= 150


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_download_references_only_raise_user_errors(text: str) -> None:
    for candidate in (
        text,
        f"https://civitai.com/models/{text}",
        f"civitai:{text}@99999999999999999999",
    ):
        try:
            ref = parse_ref(candidate)
        except UserError:
            continue
        assert ref.version_id is None or 0 < ref.version_id <= MAX_ID


async def test_a_seed_past_the_range_from_outside_the_grammar_is_refused_before_charging(
    app_factory,
) -> None:
    app = await app_factory()
    with pytest.raises(BadInput, match="seed"):
        await app.jobs.submit(user(), "txt2img", [GenerationParams("x", seed=2**64)], REPLY)
    await nothing_charged(app)


# --- text that is not text ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/imagine a \udcff\udcfe cat",  # bytes that were not UTF-8, via surrogateescape
        "/imagine a cat\x00",
        "/imagine a \x1b[31mred\x1b[0m cat",
        "/batch a cat | a \udc80 dog",
        "/civitai search \udcff",
    ],
)
async def test_text_that_cannot_be_encoded_is_refused_before_charging(
    app_factory, text: str
) -> None:
    app = await app_factory()
    reply = await say(app, text)
    assert reply.error and "character" in reply.text, reply.text
    assert INTERNAL not in reply.text
    reply.text.encode("utf-8")  # the reply itself is printable anywhere
    await nothing_charged(app)


def _png_with_parameters(parameters: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "PNG")
    png = buf.getvalue()
    body = b"parameters\0" + parameters
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


async def test_a_prompt_carried_by_a_picture_is_checked_like_a_typed_one(app_factory) -> None:
    """The embedded A1111 parameters become the prompt: a control character there is refused
    by the core, not by the console's reader, and nothing is charged."""
    app = await app_factory()
    data = _png_with_parameters(b"a \x1b[2Jcat\nSteps: 20, Seed: 5, Size: 64x64")
    reply = await say(app, "/img2img", image=data)
    assert reply.error and "character" in reply.text, reply.text
    await nothing_charged(app)


# --- /job on a chat shows no server paths ----------------------------------------------------


async def test_job_shows_file_paths_only_where_local_paths_are_allowed(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    receipt = await say(app, "/imagine a kite --size 64x64")
    assert not receipt.error, receipt.text
    await adapter.wait_for(lambda: adapter.of_kind("finished"))
    data_dir = str(app.config.data.dir)
    chat = await say(app, "/job 1")
    assert "image 1: 64x64, seed" in chat.text, chat.text
    assert data_dir not in chat.text and ".png" not in chat.text
    console = await say(app, "/job 1", allow_local_paths=True)
    path = str(app.files.path_for(adapter.of_kind("image")[0].payload["sha256"]))
    assert path in console.text


# --- pictures that lie about themselves -----------------------------------------------------


async def test_a_picture_is_fully_decoded_before_anything_is_charged(app_factory) -> None:
    from tests.test_imaging import png_claiming_more_rows_than_it_holds, png_with_big_icc_profile

    app = await app_factory(images={"max_input_bytes": 8 * 1024 * 1024})
    short = await say(app, "/img2img a cat", image=png_claiming_more_rows_than_it_holds())
    assert short.error and "cut short" in short.text, short.text
    await nothing_charged(app)
    icc = await say(app, "/img2img a cat", image=png_with_big_icc_profile())
    assert not icc.error, icc.text
    assert icc.receipt is not None and icc.receipt.cost == 2


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), _digits, st.integers().map(str)))
def test_grant_amounts_and_discord_button_ids_only_take_plain_numbers(text: str) -> None:
    from adapters.chat.discord.buttons import ResultButton
    from bot.commands import _int

    amount = _int(text)
    assert amount is None or (text.lstrip("+-").isascii() and abs(amount) < 10**12)
    template = ResultButton.__discord_ui_compiled_template__  # type: ignore[attr-defined]
    m = template.fullmatch(f"sd:r:{text}:0")
    if m is not None:
        assert m["job"].isascii() and len(m["job"]) <= 19


_COMMANDS = st.sampled_from(
    [
        "/job ",
        "/cancel ",
        "/retry ",
        "/grant @nobody ",
        "/grant test:bob ",
        "/imagine a cat --seed ",
        "/imagine a cat --steps ",
        "/imagine a cat --n ",
        "/imagine a cat --size ",
        "/batch a cat --n ",
        "/settings aspect ",
    ]
)
_ARGS = st.one_of(
    st.text(max_size=30),
    _digits,
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.sampled_from(["9223372036854775808", "18446744073709551616", "4294967296", "²", "-1"]),
)


async def test_no_command_text_ends_in_an_internal_error(app_factory) -> None:
    """The whole path, command text to reply, on the real database: whatever follows
    /job, /cancel, /retry, /grant or a numeric flag, the answer is a reply, never the
    internal-error line. Hypothesis drives it from a thread; the app runs on this loop."""
    app = await app_factory()
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    @settings(max_examples=250, deadline=None, database=None)
    @given(_COMMANDS, _ARGS)
    def check(command: str, arg: str) -> None:
        text = command + arg
        reply = asyncio.run_coroutine_threadsafe(say(app, text, is_admin=True), loop).result(
            timeout=30
        )
        seen.append(text)
        assert INTERNAL not in reply.text, (text, reply.text)

    await asyncio.to_thread(check)
    assert len(seen) >= 100
