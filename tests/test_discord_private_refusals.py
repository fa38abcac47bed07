"""What the core refuses after a Discord command was acknowledged is said privately (issue 13,
item 3): a job-starting command is deferred ephemerally; not enough credits, a ban, an upload
that does not decode edit that private response; only an accepted job is posted in the
channel, as a public follow-up that is its status message (receipt, progress, outcome).

Everything is checked on what the fake Discord holds: the messages of the channel, with
their ephemeral flag (Discord: "Interaction Response Flags", EPHEMERAL 1 << 6; a deferred
response takes the defer's flag; follow-ups after the original was edited are messages of
their own, with their own flags).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bot.chat import UserRef
from tests.chat_helpers import decoded
from tests.fakes.discord_api import CHANNEL_ID, OWNER_ID, USER_ID
from tests.test_discord import Env, env

__all__ = ["env"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EPHEMERAL = 1 << 6


def public(e: Env) -> list[dict[str, Any]]:
    """What the bot posted that the whole channel sees."""
    return [
        m
        for m in e.dc.channel_messages(CHANNEL_ID, include_ephemeral=False)
        if int(m["author"]["id"]) == e.dc.bot_user_id
    ]


def original(e: Env, token: str) -> dict[str, Any]:
    mid = e.dc.interaction(token)["original_message_id"]
    return e.dc.message(int(mid)) if mid else {}


async def refused_privately(e: Env, token: str) -> str:
    """The command's answer, once there: deferred ephemerally, edited privately, nothing
    followed. Returns its text."""
    text = await e.until(lambda: e.original_text(token))
    callback = e.dc.interaction_responses(token)[0].json
    assert callback["type"] == 5 and callback["data"]["flags"] & EPHEMERAL  # at once, private
    assert original(e, token)["flags"] & EPHEMERAL
    assert e.dc.interaction(token)["followup_message_ids"] == []
    return str(text)


def ref(user_id: int = USER_ID) -> UserRef:
    return UserRef("discord", str(user_id))


async def test_no_credits_is_refused_privately(env: Env) -> None:
    await env.start()
    assert env.app is not None
    await env.app.jobs.set_balance(ref(), 0)
    sent = env.dc.slash("imagine", {"prompt": "a lighthouse at dusk"})
    text = await refused_privately(env, sent["token"])
    assert "not enough credits" in text and "/grant" in text
    await asyncio.sleep(0.3)
    assert public(env) == [], "the channel sees nothing of a refusal"
    assert await env.app.jobs.jobs(ref(), limit=5) == []


async def test_a_banned_person_is_refused_privately(env: Env) -> None:
    await env.start()
    assert env.app is not None
    await env.app.jobs.set_balance(ref(), 20)
    await env.app.jobs.set_banned(ref(), True)
    sent = env.dc.slash("imagine", {"prompt": "a lighthouse"})
    assert "not allowed to use this bot" in await refused_privately(env, sent["token"])
    upload = env.dc.slash(
        "img2img",
        {"prompt": "a sketch"},
        attachments={"image": ("in.png", b"\x89PNG\r\n\x1a\n not read")},
    )
    assert "not allowed to use this bot" in await refused_privately(env, upload["token"])
    await asyncio.sleep(0.3)
    assert public(env) == []
    assert await env.balance() == 20


async def test_an_upload_that_does_not_decode_is_refused_privately(env: Env) -> None:
    await env.start()
    sent = env.dc.slash(
        "img2img",
        {"prompt": "a sketch"},
        attachments={"image": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)},
    )
    await refused_privately(env, sent["token"])
    await asyncio.sleep(0.3)
    assert public(env) == []
    assert await env.balance() == 20


async def test_an_accepted_job_is_posted_for_all(env: Env) -> None:
    await env.start(latency_s=0.3)
    sent = env.dc.slash("imagine", {"prompt": "a red fox in the snow", "seed": 7})
    await env.until(lambda: "succeeded" in env.status_text(sent["token"]))
    await env.until(lambda: len(public(env)) == 2)
    status, pictures = public(env)
    # privately: the response says it was accepted; publicly: the status, then the pictures
    mine = original(env, sent["token"])
    assert mine["flags"] & EPHEMERAL and "Accepted" in mine["content"]
    assert status["id"] == env.dc.interaction(sent["token"])["followup_message_ids"][0]
    assert "succeeded" in status["content"] and "#1" in status["content"]
    assert not status["attachments"] and "#1 · 1/1 · seed 7" in pictures["content"]
    [(name, data)] = env.files(pictures).items()
    assert name == "sdhost-1-1.png" and decoded(data).format == "PNG"
    # the status message went up once and was edited in place (receipt, progress, outcome)
    edits = env.dc.calls("PATCH", rf"/messages/{status['id']}$")
    assert edits and all(
        (c.json or {}).get("allowed_mentions", {}).get("parse") == [] for c in edits
    )
    assert await env.balance() == 19


async def test_two_people_at_once(env: Env) -> None:
    await env.start(latency_s=0.3)
    assert env.app is not None
    await env.app.jobs.set_balance(ref(OWNER_ID), 0)
    accepted = env.dc.slash("imagine", {"prompt": "a paper boat"})
    refused = env.dc.slash("imagine", {"prompt": "a paper plane"}, user=OWNER_ID)
    assert "not enough credits" in await refused_privately(env, refused["token"])
    await env.until(lambda: "succeeded" in env.status_text(accepted["token"]))
    await env.until(lambda: len(public(env)) == 2)
    assert all("paper plane" not in m["content"] for m in public(env))

    await env.app.jobs.set_balance(ref(OWNER_ID), 5)
    mine = env.dc.slash("imagine", {"prompt": "a blue kite", "seed": 3})
    theirs = env.dc.slash("imagine", {"prompt": "a green kite", "seed": 4}, user=OWNER_ID)
    for token in (mine["token"], theirs["token"]):
        await env.until(lambda token=token: "succeeded" in env.status_text(token))
    await env.until(lambda: len(env.pictures()) == 3)
    a, b = env.status(mine["token"]), env.status(theirs["token"])
    assert a["id"] != b["id"] and not (a["flags"] | b["flags"]) & EPHEMERAL
    # each status message is its person's job, each picture that job's
    [job_a] = re.findall(r"#(\d+)", a["content"])
    [job_b] = re.findall(r"#(\d+)", b["content"])
    assert {job_a, job_b} == {"2", "3"}, (a["content"], b["content"])
    seeds = {m["content"].split(" · ")[0]: m["content"].split(" · ")[2] for m in env.pictures()}
    assert seeds[f"#{job_a}"] == "seed 3" and seeds[f"#{job_b}"] == "seed 4"
    assert len(public(env)) == 2 * 3
    assert await env.balance() == 18 and await env.balance(OWNER_ID) == 4


async def test_reroll_is_refused_privately_and_posted_when_accepted(env: Env) -> None:
    await env.start()
    assert env.app is not None
    env.dc.slash("imagine", {"prompt": "a paper boat", "seed": 11})
    msg = (await env.until(env.pictures))[0]
    before = len(public(env))
    await env.app.jobs.set_balance(ref(), 0)
    pressed = env.dc.button(int(msg["id"]), "sd:r:1:0")
    assert "not enough credits" in await refused_privately(env, pressed["token"])
    await asyncio.sleep(0.3)
    assert len(public(env)) == before

    await env.app.jobs.set_balance(ref(), 1)
    again = env.dc.button(int(msg["id"]), "sd:r:1:0")
    await env.until(lambda: "succeeded" in env.status_text(again["token"]))
    await env.until(lambda: len(env.pictures()) == 2)
    assert original(env, again["token"])["flags"] & EPHEMERAL
    assert len(public(env)) == before + 2  # its status message and its picture


async def test_the_queue_limit_is_said_privately(env: Env) -> None:
    await env.start(latency_s=3.0)
    assert env.app is not None
    env.app.jobs.config.queue.max_queued_per_user = 1
    first = env.dc.slash("imagine", {"prompt": "a slow sunrise"})
    await env.until(lambda: "#1" in env.status_text(first["token"]))
    second = env.dc.slash("imagine", {"prompt": "a slow sunset"})
    assert "the limit is 1" in await refused_privately(env, second["token"])
    assert [m["id"] for m in public(env)] == [env.status(first["token"])["id"]]
