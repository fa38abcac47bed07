"""Discord delivery (issue 13, items 5 to 8): what the fake Discord received.

* A rejected interaction token is tried once at most; later edits and pictures go the
  channel way with the bot's token.
* A picture posted in the channel names its (clipped) prompt.
* No payload the bot sends lets a mention ping anyone (``allowed_mentions`` with
  ``parse: []``, Discord's Allowed Mentions object, resources/message.mdx); the channel
  fallback pings only the requester.
* Original follows the channel's NSFW policy: a spoiler where the picture was one, nothing
  under ``block``; the requester gets it in the channel, anyone else privately.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.status import outcome_text
from bot.chat import ReplyTo
from storage import repos
from tests.chat_helpers import decoded
from tests.fakes.discord_api import (
    NSFW_CHANNEL_ID,
    OWNER_ID,
    ROLE_ARTIST_ID,
    USER_ID,
    FakeDiscord,
)
from tests.test_discord import Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeDiscord() as dc:
        e = Env(dc, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


MESSAGE_CALLS = r"^/webhooks/\d+/[^/]+(/messages/[^/]+)?$|^/channels/\d+/messages(/\d+)?$"


def written(env: Env) -> list[Any]:
    """Every call that created or edited a message (follow-ups, edits, channel posts)."""
    return [c for c in env.dc.calls(path_regex=MESSAGE_CALLS) if c.method in ("POST", "PATCH")]


async def test_a_rejected_token_is_tried_once_then_the_channel_is_used(env: Env) -> None:
    await env.start(latency_s=4.0, progress_edit_s=0.2)
    dc = env.dc
    prompt = "a lighthouse on a cliff at dusk, " + "waves breaking below, " * 8
    inter = dc.slash("imagine", {"prompt": prompt})
    await env.until(lambda: "#1" in env.status_text(inter["token"]))
    dc.expire_token(inter["token"])  # long before its 15 minutes: Discord may do that
    msg = (await env.until(env.pictures))[0]
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))
    rejected = [c for c in dc.calls() if c.status == 401]
    assert len(rejected) <= 1, [(c.method, c.path) for c in rejected]
    # progress went on with the bot's token, edits of the status message in the channel
    status_id = env.status(inter["token"])["id"]
    assert dc.calls("PATCH", rf"^/channels/\d+/messages/{status_id}$", ok=True)
    # the picture, posted in the channel, says whose and what it is
    assert msg["content"].startswith(f"<@{USER_ID}> #1 · 1/1 · seed ")
    line = msg["content"].split(" · ", 3)[3]
    assert line.startswith("a lighthouse on a cliff at dusk, waves") and line.endswith("…")
    assert 90 <= len(line) <= 101
    assert env.files(msg)


async def test_no_mention_in_a_prompt_pings_anyone(env: Env) -> None:
    await env.start(latency_s=0.5)
    dc = env.dc
    pings = f"@everyone @here <@&{ROLE_ARTIST_ID}> <@{OWNER_ID}> a fox"
    fresh = dc.slash("imagine", {"prompt": pings, "negative": f"@everyone <@&{ROLE_ARTIST_ID}>"})
    await env.until(lambda: "succeeded" in env.status_text(fresh["token"]))
    await env.until(lambda: len(env.pictures()) == 1)
    late = dc.slash("imagine", {"prompt": pings})
    await env.until(lambda: "#2" in env.status_text(late["token"]))
    dc.expire_token(late["token"])  # its picture goes to the channel, with a mention
    await env.until(lambda: len(env.pictures()) == 2)
    await env.until(lambda: "succeeded" in env.status_text(late["token"]))

    info = dc.button(int(env.pictures()[0]["id"]), "sd:i:1:0")  # the prompt, privately
    await env.until(lambda: dc.interaction(info["token"])["response_type"])
    calls = written(env) + dc.calls("POST", r"/callback$")
    assert len(calls) >= 6 and any(pings in str(c.json) for c in calls)
    for call in calls:
        body = call.json or {}
        if body.get("type") in (4, 7):  # an interaction callback with a message
            body = body["data"]
        elif "type" in body:
            continue  # a deferral: no message of its own
        allowed = body.get("allowed_mentions")
        assert allowed is not None and allowed.get("parse") == [], (call.path, call.json)
        assert allowed.get("roles", []) == [] and allowed.get("replied_user") in (None, False)
        users = [str(u) for u in allowed.get("users", [])]
        assert users in ([], [str(USER_ID)]), (call.path, allowed)
    for message in env.messages():
        assert not message["mention_everyone"] and not message["mention_roles"], message
        assert [u["id"] for u in message["mentions"]] in ([], [str(USER_ID)]), message
    mentioned = [m for m in env.pictures() if m["mentions"]]
    assert len(mentioned) == 1 and mentioned[0]["content"].startswith(f"<@{USER_ID}> #2")


def original_answer(env: Env, token: str) -> dict[str, Any]:
    mid = env.dc.interaction(token)["original_message_id"]
    return env.dc.message(int(mid)) if mid else {}


async def test_original_is_a_spoiler_where_the_picture_was_one(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.slash("imagine", {"prompt": "demo:nsfw a figure"})
    msg = (await env.until(env.pictures))[0]
    assert next(iter(env.files(msg))).startswith("SPOILER_")

    mine = dc.button(int(msg["id"]), "sd:o:1:0")
    answer = await env.until(lambda: original_answer(env, mine["token"]).get("attachments"))
    [(name, data)] = env.dc.message_files(int(original_answer(env, mine["token"])["id"])).items()
    assert name == "SPOILER_sdhost-1-1.png" and decoded(data).format == "PNG"
    assert answer and not original_answer(env, mine["token"])["flags"] & 64  # in the channel

    theirs = dc.button(int(msg["id"]), "sd:o:1:0", user=OWNER_ID)
    await env.until(lambda: original_answer(env, theirs["token"]).get("attachments"))
    other = original_answer(env, theirs["token"])
    assert other["flags"] & 64, "someone else's original comes privately"
    assert next(iter(env.dc.message_files(int(other["id"])))).startswith("SPOILER_")

    # in an NSFW channel the same picture and its original are shown as they are
    dc.slash("imagine", {"prompt": "demo:nsfw a figure"}, channel_id=NSFW_CHANNEL_ID)
    nsfw = (await env.until(lambda: env.pictures(NSFW_CHANNEL_ID)))[0]
    plain = dc.button(int(nsfw["id"]), "sd:o:2:0")
    await env.until(lambda: original_answer(env, plain["token"]).get("attachments"))
    files = env.dc.message_files(int(original_answer(env, plain["token"])["id"]))
    assert list(files) == ["sdhost-2-1.png"]


async def test_original_is_withheld_under_block(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.slash("imagine", {"prompt": "demo:nsfw a figure"})
    msg = (await env.until(env.pictures))[0]
    await env.stop()
    await env.start(nsfw="block")  # the server's policy is stricter now
    pressed = dc.button(int(msg["id"]), "sd:o:1:0")
    await env.until(lambda: "withheld" in original_answer(env, pressed["token"]).get("content", ""))
    answer = original_answer(env, pressed["token"])
    assert not answer["attachments"]
    assert re.search(r"Picture 1 of job #1 was withheld", answer["content"])


async def test_the_pictures_of_a_job_go_in_one_message(env: Env) -> None:
    await env.start(latency_s=0.3)
    dc = env.dc
    inter = dc.slash("imagine", {"prompt": "four lanterns", "count": 4})
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))
    await env.until(env.pictures)
    [msg] = env.pictures()
    assert sorted(env.files(msg)) == [f"sdhost-1-{k}.png" for k in (1, 2, 3, 4)]
    rows = [[c["custom_id"] for c in row["components"]] for row in msg["components"]]
    assert rows == [[f"sd:{a}:1:{i}" for a in "rvoid"] for i in range(4)]
    # one follow-up with the pictures (the other is the job's status message)
    followups = dc.calls("POST", r"^/webhooks/\d+/[^/]+$")
    assert len([c for c in followups if c.uploads]) == 1 and len(followups) == 2


async def test_an_event_in_the_old_reply_to_form_is_still_delivered(env: Env) -> None:
    """The previous version stored Discord's ``reply_to`` as a dict where "message" was the
    bot's status message (Telegram's "message" is the person's), "channel" the chat and
    "token"/"app"/"token_until" the interaction: such a row, written as it was, still edits
    that status message and follows up on that interaction (issue 13, typed reply target)."""
    await env.start()
    dc = env.dc
    app = env.app
    assert app is not None
    inter = dc.slash("imagine", {"prompt": "a lighthouse"})
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))
    status = int(env.status(inter["token"])["id"])
    stored = ReplyTo.from_json((await app.db.run_read(repos.get_job, 1)).reply_to)
    assert stored.response is not None and stored.status_message == status
    old_reply_to = {
        "platform": "discord",
        "channel": stored.chat,
        "guild": stored.community,
        "user": int(stored.person or 0),
        "app": stored.response.app,
        "token": stored.response.token,
        "token_until": stored.response.until,
        "message": status,
        "limit": stored.upload_limit,
        "nsfw_ok": False,
        "lang": "en",
    }
    payload = {
        "reply_to": old_reply_to,
        "status": "failed",
        "refunded": 0,
        "balance": 19,
        "images": 0,
        "n": 1,
        "batch_id": None,
        "batch_index": None,
        "prompt": "a lighthouse",
        "elapsed": 1.0,
        "failure": "provider_error",
        "message": "the old row",
    }
    expected = outcome_text("failed", 1, payload, "en")

    def write(conn: Any) -> None:
        event = {"job_id": 1, "platform": "discord", "audience": None, "kind": "failed"}
        repos.add_events(conn, [{**event, "payload": payload, "created_at": 0.0}])

    await app.db.run_write(write)
    app.deliverer.wake()
    await env.until(lambda: env.status_text(inter["token"]) == expected)  # the status message
    follow_ups = dc.interaction(inter["token"])["followup_message_ids"]
    await env.until(
        lambda: any(dc.message(int(mid)).get("content") == expected for mid in follow_ups)
    )
