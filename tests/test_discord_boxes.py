"""Discord boxes (modals) per person: every Remix or /batch box opened has its own identity.

Two people with boxes open at once each get their own result and pay for their own: the
bot gives each box a ``custom_id`` of its own and the fake Discord sends that id back with
the submit, as Discord does (see ``tests/fakes/discord_api.py``, ``modal_submit``).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from bot.chat import UserRef
from tests.fakes.discord_api import CHANNEL_ID, OWNER_ID, USER_ID
from tests.test_discord import Env, env

__all__ = ["env"]  # the fixture, used by name

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALICE, BOB = USER_ID, OWNER_ID


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


async def jobs_of(e: Env, uid: int) -> list[Any]:
    assert e.app is not None
    return await e.app.jobs.jobs(UserRef("discord", str(uid)), limit=20)


def box_of(e: Env, opened: dict[str, Any]) -> str:
    modal = e.dc.interaction(opened["token"])["modal"]
    assert modal, "the box was opened"
    return str(modal["custom_id"])


def followup_pictures(e: Env, submitted: dict[str, Any]) -> list[dict[str, Any]]:
    ids = e.dc.interaction(submitted["token"])["followup_message_ids"]
    return [m for m in (e.dc.message(int(i)) for i in ids) if m.get("attachments")]


async def test_two_remix_boxes_open_at_once_each_get_their_own_picture(env: Env) -> None:
    await env.start()
    dc = env.dc
    before = {ALICE: await env.balance(ALICE), BOB: await env.balance(BOB)}
    wide = dc.post_user_message(CHANNEL_ID, "A", attachments={"wide.png": png(640, 480)})
    tall = dc.post_user_message(
        CHANNEL_ID, "B", attachments={"tall.png": png(300, 600)}, author=BOB
    )
    opened_a = dc.message_command("Remix", int(wide["id"]), user=ALICE)
    opened_b = dc.message_command("Remix", int(tall["id"]), user=BOB)
    await env.until(lambda: dc.interaction(opened_a["token"])["modal"])
    await env.until(lambda: dc.interaction(opened_b["token"])["modal"])
    box_a, box_b = box_of(env, opened_a), box_of(env, opened_b)
    assert box_a != box_b
    assert box_a.endswith(opened_a["id"]) and box_b.endswith(opened_b["id"])

    sent_a = dc.modal_submit(box_a, {"prompt": "alice's fox", "strength": "0.4"}, user=ALICE)
    await env.until(lambda: followup_pictures(env, sent_a))
    sent_b = dc.modal_submit(box_b, {"prompt": "bob's owl", "strength": "0.5"}, user=BOB)
    await env.until(lambda: followup_pictures(env, sent_b))

    [job_a], [job_b] = await jobs_of(env, ALICE), await jobs_of(env, BOB)
    assert job_a.params["prompt"] == "alice's fox" and job_a.kind == "img2img"
    assert job_b.params["prompt"] == "bob's owl" and job_b.kind == "img2img"
    # each made from the picture of the message that person opened the box on
    assert job_a.params["width"] > job_a.params["height"], "alice's picture is wide"
    assert job_b.params["width"] < job_b.params["height"], "bob's picture is tall"
    assert job_a.params["strength"] == 0.4 and job_b.params["strength"] == 0.5
    # each charged once, for their own job
    assert before[ALICE] - await env.balance(ALICE) == job_a.cost > 0
    assert before[BOB] - await env.balance(BOB) == job_b.cost > 0


async def test_two_batch_boxes_open_at_once_each_get_their_own_batch(env: Env) -> None:
    await env.start()
    dc = env.dc
    before = {ALICE: await env.balance(ALICE), BOB: await env.balance(BOB)}
    opened_a = dc.slash("batch", user=ALICE)
    opened_b = dc.slash("batch", user=BOB)
    await env.until(lambda: dc.interaction(opened_a["token"])["modal"])
    await env.until(lambda: dc.interaction(opened_b["token"])["modal"])
    box_a, box_b = box_of(env, opened_a), box_of(env, opened_b)
    assert box_a != box_b

    sent_a = dc.modal_submit(box_a, {"prompts": "a red apple\na green pear"}, user=ALICE)
    sent_b = dc.modal_submit(box_b, {"prompts": "a blue plum"}, user=BOB)
    await env.until(lambda: sum(len(m["attachments"]) for m in followup_pictures(env, sent_a)) == 2)
    await env.until(lambda: followup_pictures(env, sent_b))

    prompts_a = sorted(j.params["prompt"] for j in await jobs_of(env, ALICE))
    prompts_b = sorted(j.params["prompt"] for j in await jobs_of(env, BOB))
    assert prompts_a == ["a green pear", "a red apple"]
    assert prompts_b == ["a blue plum"]
    assert before[ALICE] - await env.balance(ALICE) == 2
    assert before[BOB] - await env.balance(BOB) == 1


async def test_one_person_may_have_two_boxes_open(env: Env) -> None:
    await env.start()
    dc = env.dc
    first = dc.slash("batch")
    second = dc.slash("batch")
    await env.until(lambda: dc.interaction(first["token"])["modal"])
    await env.until(lambda: dc.interaction(second["token"])["modal"])
    sent_2 = dc.modal_submit(box_of(env, second), {"prompts": "a second thought"})
    sent_1 = dc.modal_submit(box_of(env, first), {"prompts": "a first thought"})
    await env.until(lambda: followup_pictures(env, sent_1) and followup_pictures(env, sent_2))
    prompts = sorted(j.params["prompt"] for j in await jobs_of(env, ALICE))
    assert prompts == ["a first thought", "a second thought"]


async def test_a_box_from_before_a_restart_asks_to_be_opened_again(env: Env) -> None:
    await env.start()
    dc = env.dc
    opened = dc.slash("batch")
    await env.until(lambda: dc.interaction(opened["token"])["modal"])
    box = box_of(env, opened)
    await env.stop()
    await env.start()  # a new process: the box is no longer in memory
    sent = dc.modal_submit(box, {"prompts": "a late fox"})
    await env.until(lambda: dc.interaction(sent["token"])["response_type"])
    [first] = [c for c in dc.interaction_responses(sent["token"]) if c.path.endswith("/callback")]
    assert first.json["data"]["flags"] & 64
    assert "open it again" in first.json["data"]["content"]
    assert await jobs_of(env, ALICE) == []
    # and a box this process opened is answered by that box alone
    fresh = dc.slash("batch")
    await env.until(lambda: dc.interaction(fresh["token"])["modal"])
    sent = dc.modal_submit(box_of(env, fresh), {"prompts": "a fresh fox"})
    await env.until(lambda: followup_pictures(env, sent))
    assert len([c for c in dc.interaction_responses(sent["token"]) if "callback" in c.path]) == 1
