"""Telegram delivery (issue 13, items 10, 11, 15, 16), end to end against the fake Bot API.

* a job's pictures go as one album with one message of numbered buttons (10);
* the status message shows the job's real state once its pictures arrived, and the outcome
  the balance as it is when it is shown (11);
* sends to a group are evenly paced from the first message (15; ../shared/api/telegram.md,
  "Send rates": about 20 messages a minute per group);
* an edit identical to the last one sent to a status message is never sent, also after a
  restart (16; the fake answers 400 "message is not modified" like Telegram, per
  ../shared/api/telegram.md, "Edits").
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.telegram.pacing import BURST, Bucket
from bot.chat import UserRef
from storage import repos
from tests.fakes.telegram import FakeTelegram
from tests.test_telegram import ANN, BOB, GROUP, Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SLACK = 3
PACED = {"sendMessage", "sendPhoto", "sendDocument", "sendMediaGroup", "editMessageText"}


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeTelegram() as tg:
        e = Env(tg, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


def buttons_of(markup: dict[str, object] | None) -> list[list[str]]:
    rows = (markup or {}).get("inline_keyboard", [])
    assert isinstance(rows, list)
    return [[b["callback_data"] for b in row] for row in rows]


# --- 10: one album, one message of buttons ----------------------------------------------------


async def test_a_jobs_pictures_go_as_one_album_with_one_message_of_buttons(env: Env) -> None:
    await env.start(latency_s=0.2)
    tg = env.tg
    cmd = tg.inject_message(ANN, ANN, "/imagine a cat --n 4")
    await env.until(lambda: len(env.photos(ANN)) == 4, timeout=20)
    keyboards = await env.until(lambda: [m for m in env.sent(ANN) if m.text and m.reply_markup])
    assert tg.calls_of("sendPhoto") == []  # no picture alone, with buttons of its own
    [album] = tg.calls_of("sendMediaGroup")
    assert len(album.params["media"]) == 4
    photos = env.photos(ANN)
    assert len({p.media_group_id for p in photos}) == 1 and photos[0].media_group_id
    assert [p.caption.split(" · ")[1] for p in photos] == ["1/4", "2/4", "3/4", "4/4"]
    assert photos[0].message["reply_to_message"]["message_id"] == cmd["message"]["message_id"]
    # one message carries the buttons, one numbered row per picture, under the album
    [keyboard] = keyboards
    assert keyboard.message["reply_to_message"]["message_id"] == photos[0].message_id
    assert buttons_of(keyboard.reply_markup) == [[f"{a}:1:{i}" for a in "rvoi"] for i in range(4)]
    labels = [b["text"] for b in keyboard.reply_markup["inline_keyboard"][2]]
    assert all(label.endswith(" 3") for label in labels)


async def test_a_single_picture_keeps_its_buttons_on_the_photo(env: Env) -> None:
    await env.start()
    env.tg.inject_message(ANN, ANN, "/imagine a dog")
    [photo] = await env.until(lambda: env.photos(ANN))
    assert [b for row in buttons_of(photo.reply_markup) for b in row] == [
        "r:1:0",
        "v:1:0",
        "o:1:0",
        "i:1:0",
    ]
    assert env.tg.calls_of("sendMediaGroup") == []


# --- 15: even pacing in a group ---------------------------------------------------------------


def test_a_groups_budget_is_an_even_rate_after_a_small_burst() -> None:
    now = [0.0]
    bucket = Bucket(20 / 60, clock=lambda: now[0])  # Telegram: 20 a minute per group
    waits = [bucket.reserve() for _ in range(8)]  # eight calls at once
    assert waits == pytest.approx([0, 0, 0, 3, 6, 9, 12, 15])
    now[0] = 60.0  # a quiet minute: the burst is back, not twenty calls at once
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 3, 6])
    now[0] = 200.0
    assert bucket.reserve(4) == 0  # an album of four counts as four messages
    assert bucket.reserve() == pytest.approx(6.0)  # 4 taken, burst 3: two slots later


async def test_waiting_calls_go_in_order_and_status_edits_first() -> None:
    loop = asyncio.get_running_loop()
    bucket = Bucket(50.0, clock=loop.time)  # one every 20 ms after a burst of 3
    went: list[tuple[str, float]] = []

    async def call(name: str, urgent: bool = False) -> None:
        await bucket.acquire(urgent=urgent)
        went.append((name, loop.time()))

    sends = [asyncio.create_task(call(f"send {i}")) for i in range(6)]
    await asyncio.sleep(0)  # they are all waiting (the last three for their slots)
    assert not bucket.has_capacity()
    await asyncio.gather(*sends[:3], call("status edit", urgent=True), *sends[3:])
    names = [name for name, _ in went]
    assert names == ["send 0", "send 1", "send 2", "status edit", "send 3", "send 4", "send 5"]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(went[2:])]
    assert all(0.015 <= g <= 0.1 for g in gaps), gaps


async def test_sends_to_a_group_are_evenly_paced_from_the_first_message(env: Env) -> None:
    per_min = 200  # one message every 0.3 s, so the test is quick
    interval = 60 / per_min
    await env.start(per_group_per_min=per_min)
    tg = env.tg
    for i, who in enumerate([ANN, BOB] * 3):
        tg.inject_message(GROUP, who, f"/imagine a tiny boat {i}", chat_type="group")
    await env.until(lambda: len(env.photos(GROUP)) == 6, timeout=30)
    calls = [
        c for c in tg.get_calls() if c.api_method in PACED and c.params.get("chat_id") == GROUP
    ]
    assert len(calls) >= 18
    weights = [len(c.params["media"]) if c.api_method == "sendMediaGroup" else 1 for c in calls]
    # Token-bucket conformance: between any two calls, no more went than the burst plus
    # what the rate earned in between (some slack: the fake stamps a call when it arrives,
    # and a loaded machine delays some more than others). Before, 20 went at once.
    for i, j in itertools.combinations(range(len(calls)), 2):
        sent = sum(weights[i : j + 1])
        earned = (calls[j].time - calls[i].time) / interval
        assert sent <= BURST + earned + SLACK, (i, j, sent, earned)
    # and it is a rate, not a stall: the calls spread over about their count of intervals
    span = calls[-1].time - calls[0].time
    assert span <= (sum(weights) + 6) * interval


# --- 11: the status shows the state as it is, the balance as it is -------------------------


async def test_a_jobs_status_follows_its_pictures_in_a_busy_group(env: Env) -> None:
    # Five people in a group, their jobs finishing together, sends paced: each job's
    # pictures, buttons and outcome come one after the other, so a status message does not
    # say "queued" under pictures while other jobs' pictures go first.
    await env.start(latency_s=0.3, per_group_per_min=400)
    tg = env.tg
    people = [ANN, BOB, 1003, 1004, 1005]
    for i, who in enumerate(people):
        tg.inject_message(GROUP, who, f"/imagine a small house {i} --n 2", chat_type="group")
    await env.until(lambda: len(env.edited(GROUP, "✅")) == len(people), timeout=40)
    calls = [c for c in tg.get_calls() if c.params.get("chat_id") == GROUP and c.ok]
    status_of: dict[int, int] = {}  # status message -> job
    for c in calls:
        m = re.match(r"(?:✅ )?job #(\d+)", str(c.params.get("text", "")))
        if c.api_method == "editMessageText" and m:
            status_of[c.params["message_id"]] = int(m.group(1))

    def job_of(c: Any) -> int | None:
        if c.api_method == "sendMediaGroup":
            return int(c.params["media"][0]["caption"].split(" · ")[0][1:])
        if c.api_method == "editMessageText":
            return status_of.get(c.params["message_id"])
        markup = c.params.get("reply_markup") or {}
        rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        return int(rows[0][0]["callback_data"].split(":")[1]) if rows else None

    assert len(status_of) == len(people)
    for job in status_of.values():
        first = next(
            i for i, c in enumerate(calls) if c.api_method == "sendMediaGroup" and job_of(c) == job
        )
        done = next(
            i
            for i, c in enumerate(calls)
            if c.api_method == "editMessageText" and f"✅ job #{job} " in c.params["text"]
        )
        between = [(c.api_method, job_of(c)) for c in calls[first : done + 1]]
        assert all(j == job for _, j in between), (job, between)
        assert len(between) == 3, between  # the album, its buttons, the outcome


async def test_the_outcome_shows_the_balance_as_it_is_when_shown(env: Env) -> None:
    await env.start(latency_s=0.1)
    tg = env.tg
    assert env.app is not None and env.adapter is not None
    # the picture waits out a flood wait; meanwhile the job has finished (balance 19) and
    # the person is granted 7 more: the outcome, shown after the picture, says 26
    tg.flood(1, retry_after=1.5, method="sendPhoto", chat_id=ANN)
    tg.inject_message(ANN, ANN, "/imagine a lighthouse")
    adapter = env.adapter
    await env.until(lambda: adapter.pacer.flood_waits == 1)
    ref = UserRef("telegram", str(ANN))
    async with asyncio.timeout(10):
        while (await env.app.jobs.job(None, 1)).status != "succeeded":
            await asyncio.sleep(0.02)
    assert await env.app.jobs.grant(ref, 7) == 26
    [outcome] = await env.until(lambda: env.edited(ANN, "✅"))
    assert "balance 26" in outcome, outcome


# --- 16: no edit identical to the last one, also after a restart ---------------------------


async def test_no_status_edit_repeats_the_last_text_also_after_a_restart(env: Env) -> None:
    await env.start(latency_s=3.0, progress_edit_s=0.05)
    tg = env.tg
    tg.inject_message(ANN, ANN, "/imagine a slow cat")
    await env.until(lambda: env.edited(ANN, "%"))
    await asyncio.sleep(1.0)
    await env.stop()  # mid-job: the job goes on in the next process
    await env.start(latency_s=1.0, progress_edit_s=0.05)
    await env.until(lambda: env.edited(ANN, "✅"), timeout=30)
    await asyncio.sleep(0.3)
    edits = [c for c in tg.calls_of("editMessageText") if c.params.get("chat_id") == ANN]
    texts = [str(c.params.get("text")) for c in edits]
    assert len({c.params.get("message_id") for c in edits}) == 1
    assert any("%" in t for t in texts) and "✅" in texts[-1]
    repeats = [b for a, b in itertools.pairwise(texts) if a == b]
    assert repeats == [], texts
    # and so Telegram never had to answer "message is not modified"
    assert all(c.ok for c in edits), [c.response for c in edits if not c.ok]


# --- an outbox event stored by the previous version, in the old reply_to form ---------------


async def test_an_event_in_the_old_reply_to_form_is_still_delivered(env: Env) -> None:
    """The previous version stored ``reply_to`` as a dict where "message" was the person's
    message and "status" the bot's status message: such a row, written as it was, still
    edits that status message and answers that message (issue 13, typed reply target)."""
    await env.start(latency_s=0.1)
    tg = env.tg
    app = env.app
    assert app is not None
    update = tg.inject_message(ANN, ANN, "/imagine a lighthouse")
    asked = int(update["message"]["message_id"])
    await env.until(lambda: env.edited(ANN, "✅"))
    status = int(tg.calls_of("editMessageText")[-1].params["message_id"])
    old_reply_to = {"platform": "telegram", "chat": ANN, "message": asked, "status": status}
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

    def write(conn: Any) -> None:
        repos.add_events(
            conn,
            [
                {
                    "job_id": 1,
                    "platform": "telegram",
                    "audience": None,
                    "kind": "failed",
                    "payload": payload,
                    "created_at": 0.0,
                }
            ],
        )

    await app.db.run_write(write)
    app.deliverer.wake()
    [failed] = await env.until(
        lambda: [
            c
            for c in tg.calls_of("sendMessage")
            if c.params.get("chat_id") == ANN and "#1" in str(c.params.get("text"))
        ]
    )
    assert failed.params["reply_parameters"]["message_id"] == asked  # the person's message
    edits = await env.until(
        lambda: [
            c
            for c in tg.calls_of("editMessageText")
            if c.params.get("text") == failed.params["text"]
        ]
    )
    assert {c.params["message_id"] for c in edits} == {status}  # the status message
