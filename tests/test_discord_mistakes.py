"""Mistakes on Discord are private and speak Discord.

A typo'd flag, an option out of range, a blank prompt, a file that is not a picture or is
too big: each is answered only to the person who made it (an ephemeral reply, flags 64, as
the interaction's first response) and nothing is posted for the channel; the answer names
the option or box field the person filled in, not the console flag. Accepted jobs are still
acknowledged at once (Discord's 3 s) and posted for all. Also: the prompt options and the
boxes' text inputs carry a ``max_length`` (what the fake received when the bot synced).
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from PIL import Image

from tests.fakes.discord_api import CHANNEL_ID, USER_ID, FakeDiscord
from tests.test_discord import Env, env

__all__ = ["env"]  # the fixture, used by name

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EPHEMERAL = 64
CB_MESSAGE, CB_DEFERRED, CB_MODAL = 4, 5, 9


def png(width: int = 320, height: int = 240) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def noisy_png(side: int = 400) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 90).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def stale(dc: FakeDiscord, name: str, option: str) -> None:
    """As if the person's client held a definition without the option's range (an older
    one): the value reaches the bot unchecked, as ``count:9`` did."""
    [command] = [c for c in dc.commands[None] if c["name"] == name and c["type"] == 1]
    for definition in command["options"]:
        if definition["name"] == option:
            definition.pop("min_value", None)
            definition.pop("max_value", None)


def bot_posts(e: Env) -> list[dict[str, Any]]:
    """What the bot posted that the whole channel sees."""
    return [
        m
        for m in e.dc.channel_messages(CHANNEL_ID, include_ephemeral=False)
        if int(m["author"]["id"]) == e.dc.bot_user_id
    ]


async def first_response(e: Env, token: str) -> Any:
    await e.until(lambda: e.dc.interaction(token)["response_type"])
    callbacks = [c for c in e.dc.interaction_responses(token) if c.path.endswith("/callback")]
    return callbacks[0].json


async def open_box(e: Env, opened: dict[str, Any]) -> str:
    await e.until(lambda: e.dc.interaction(opened["token"])["modal"])
    return str(e.dc.interaction(opened["token"])["modal"]["custom_id"])


async def remix_submit(e: Env, fields: dict[str, str]) -> dict[str, Any]:
    posted = e.dc.post_user_message(CHANNEL_ID, "look", attachments={"cat.png": png()})
    opened = e.dc.message_command("Remix", int(posted["id"]))
    return e.dc.modal_submit(await open_box(e, opened), fields)


async def batch_submit(e: Env, prompts: str) -> dict[str, Any]:
    return e.dc.modal_submit(await open_box(e, e.dc.slash("batch")), {"prompts": prompts})


def imagine(**options: Any) -> Callable[[Env], Awaitable[dict[str, Any]]]:
    async def run(e: Env) -> dict[str, Any]:
        for name in options:
            if name in ("count", "seed", "cfg", "steps"):
                stale(e.dc, "imagine", name)
        return e.dc.slash("imagine", options)

    return run


def img2img(
    prompt: str = "a sketch", uploads: dict[str, Any] | None = None, **options: Any
) -> Callable[[Env], Awaitable[dict[str, Any]]]:
    async def run(e: Env) -> dict[str, Any]:
        if "strength" in options:
            stale(e.dc, "img2img", "strength")
        files = uploads if uploads is not None else {"image": ("in.png", png())}
        return e.dc.slash("img2img", {"prompt": prompt, **options}, attachments=files)

    return run


def remix(fields: dict[str, str]) -> Callable[[Env], Awaitable[dict[str, Any]]]:
    async def run(e: Env) -> dict[str, Any]:
        return await remix_submit(e, fields)

    return run


def batch(prompts: str) -> Callable[[Env], Awaitable[dict[str, Any]]]:
    async def run(e: Env) -> dict[str, Any]:
        return await batch_submit(e, prompts)

    return run


# (what the person did, words the private answer must have, words it must not have)
BAD_INPUTS: list[tuple[str, Callable[[Env], Awaitable[dict[str, Any]]], list[str], list[str]]] = [
    ("unknown flag", imagine(prompt="a cat --nope 3"), ["unknown flag --nope"], []),
    ("bad --ar in the prompt", imagine(prompt="a cat --ar 9:1"), ["--ar", "9:1"], []),
    ("bad --steps in the prompt", imagine(prompt="a cat --steps 9000"), ["--steps"], []),
    ("count:9", imagine(prompt="a cat", count=9), ["`count`", "1..4"], ["--n"]),
    ("seed:-7", imagine(prompt="a cat", seed=-7), ["`seed`"], ["--seed"]),
    ("cfg:99", imagine(prompt="a cat", cfg=99.0), ["`cfg`", "0..30"], ["--cfg"]),
    ("blank prompt", imagine(prompt="   "), ["`prompt` option is empty"], ["/imagine"]),
    ("only flags", imagine(prompt="--ar 16:9"), ["`prompt` option is empty"], ["/imagine"]),
    ("twice", imagine(prompt="a cat --ar 1:1", aspect="16:9"), ["twice"], []),
    ("unknown model", imagine(prompt="a cat", model="nosuch"), ["unknown model 'nosuch'"], []),
    (
        "not a picture",
        img2img(uploads={"image": ("notes.txt", b"just some words, no picture")}),
        ["`image`", "not a picture"],
        [],
    ),
    ("too big", img2img(uploads={"image": ("big.png", noisy_png())}), ["`image`", "MB"], []),
    ("strength:1.5", img2img(strength=1.5), ["`strength`", "0..1"], ["--strength"]),
    ("blank img2img prompt", img2img(prompt="  "), ["`prompt` option is empty"], ["URL"]),
    (
        "image2 not a picture",
        img2img(
            uploads={"image": ("in.png", png()), "image2": ("doc.pdf", b"%PDF-1.4 not a picture")}
        ),
        ["`image2`"],
        [],
    ),
    (
        "Remix strength",
        remix({"prompt": "as a watercolor", "strength": "lots"}),
        ["Strength 0-1", "Remix box", "0..1"],
        ["--strength"],
    ),
    (
        "blank Remix prompt",
        remix({"prompt": "   ", "strength": "0.5"}),
        ["What should it become?", "is empty"],
        ["/img2img", "URL"],
    ),
    ("blank batch", batch("  \n  "), ["Batch box is empty"], ["/batch"]),
    ("batch --n", batch("a red fox | a blue whale --n 3"), ["task 2", "--n"], []),
    ("batch model", batch("a red fox --model nosuch"), ["unknown model 'nosuch'"], []),
]


async def test_bad_inputs_are_answered_privately_and_nothing_is_posted(env: Env) -> None:
    await env.start()
    assert env.app is not None
    env.app.config.images.max_input_bytes = 200_000  # "too big" sends about 480 KB
    assert len(noisy_png()) > 200_000
    balance = await env.balance()
    for what, act, must, must_not in BAD_INPUTS:
        sent = await act(env)
        first = await first_response(env, sent["token"])
        assert first["type"] == CB_MESSAGE, (what, first)
        assert first["data"]["flags"] & EPHEMERAL, (what, first)
        text = first["data"]["content"]
        for words in must:
            assert words in text, (what, text)
        for words in must_not:
            assert words not in text, (what, text)
        assert bot_posts(env) == [], (what, bot_posts(env))
    assert await env.balance() == balance
    assert env.provider is not None and env.provider.init_images == []


async def test_mistakes_are_said_in_the_persons_language(env: Env) -> None:
    await env.start()
    stale(env.dc, "imagine", "count")
    sent = env.dc.slash("imagine", {"prompt": "一只猫", "count": 9}, locale="zh-CN")
    first = await first_response(env, sent["token"])
    assert first["data"]["flags"] & EPHEMERAL
    assert "数量" in first["data"]["content"] and "1..4" in first["data"]["content"]
    sent = env.dc.slash(
        "img2img",
        {"prompt": "素描"},
        attachments={"image": ("notes.txt", b"no picture here")},
        locale="zh-CN",
    )
    first = await first_response(env, sent["token"])
    assert first["data"]["flags"] & EPHEMERAL
    assert "“图片（image）”里的文件不是图片" in first["data"]["content"]


async def test_an_accepted_job_is_still_posted_for_all(env: Env) -> None:
    await env.start()
    sent = env.dc.slash("imagine", {"prompt": "a lighthouse", "count": 2, "cfg": 6.5})
    first = await first_response(env, sent["token"])
    # deferred privately (the core may still refuse it); once accepted, the job's status
    # message is a public follow-up and its pictures follow in the channel
    assert first["type"] == CB_DEFERRED and first["data"]["flags"] & EPHEMERAL
    await env.until(lambda: any(m.get("attachments") for m in bot_posts(env)))
    await env.until(lambda: "succeeded" in env.status_text(sent["token"]))
    [job] = await env.app.jobs.jobs(_user(), limit=5)  # type: ignore[union-attr]
    assert job.params["n"] == 2 and job.params["cfg"] == 6.5
    assert job.params["prompt"] == "a lighthouse"


def _user() -> Any:
    from bot.chat import UserRef

    return UserRef("discord", str(USER_ID))


def _walk(node: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        out.append(node)
        for value in node.values():
            out.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_walk(value))
    return out


async def test_prompts_have_a_max_length_that_fits_discord_and_the_providers(env: Env) -> None:
    await env.start()
    commands = {c["name"]: c for c in env.dc.registered_commands() if c["type"] == 1}

    def option(command: str, name: str) -> dict[str, Any]:
        return next(o for o in commands[command]["options"] if o["name"] == name)

    assert option("imagine", "prompt")["max_length"] == 2000
    assert option("imagine", "negative")["max_length"] == 1000
    assert option("img2img", "prompt")["max_length"] == 2000
    assert option("settings", "negative")["max_length"] == 500
    for command in commands.values():  # Discord's 6000 characters for one command's options
        total = sum(o.get("max_length", 0) for o in command.get("options", []))
        assert total <= 6000, command["name"]
    with pytest.raises(ValueError, match="length"):  # the client refuses longer
        env.dc.slash("imagine", {"prompt": "x" * 2001})

    posted = env.dc.post_user_message(CHANNEL_ID, "look", attachments={"cat.png": png()})
    opened = env.dc.message_command("Remix", int(posted["id"]))
    await open_box(env, opened)
    remix_inputs = {
        c["custom_id"]: c
        for c in _walk(env.dc.interaction(opened["token"])["modal"])
        if c.get("type") == 4
    }
    assert remix_inputs["prompt"]["max_length"] == 2000
    assert remix_inputs["strength"]["max_length"] == 5
    opened = env.dc.slash("batch")
    await open_box(env, opened)
    [batch_input] = [
        c for c in _walk(env.dc.interaction(opened["token"])["modal"]) if c.get("type") == 4
    ]
    assert batch_input["max_length"] == 4000


async def test_remix_on_a_picture_over_the_limit_is_refused_before_the_box(env: Env) -> None:
    await env.start()
    assert env.app is not None
    env.app.config.images.max_input_bytes = 200_000
    posted = env.dc.post_user_message(CHANNEL_ID, "big", attachments={"big.png": noisy_png()})
    opened = env.dc.message_command("Remix", int(posted["id"]))
    first = await first_response(env, opened["token"])
    assert first["type"] == CB_MESSAGE and first["data"]["flags"] & EPHEMERAL
    assert "MB" in first["data"]["content"]
    assert not env.dc.interaction(opened["token"])["modal"]
    assert bot_posts(env) == []


async def test_an_upload_is_acknowledged_before_it_is_downloaded(env: Env) -> None:
    """Checking first must not cost the 3 s: only what Discord says about an upload (type,
    size) is checked before the acknowledgement; the download comes after it."""
    await env.start()
    sent = env.dc.slash("img2img", {"prompt": "a sketch"}, attachments={"image": ("in.png", png())})
    await env.until(lambda: env.dc.cdn_fetches)
    [callback] = [
        c for c in env.dc.interaction_responses(sent["token"]) if c.path.endswith("/callback")
    ]
    assert callback.json["type"] == CB_DEFERRED
    assert callback.time < env.dc.cdn_fetches[0].time
    await env.until(lambda: any(m.get("attachments") for m in bot_posts(env)))
