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

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.chat.telegram.pacing import BURST, Bucket
from tests.fakes.telegram import FakeTelegram
from tests.test_telegram import ANN, BOB, GROUP, Env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

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
    assert buttons_of(keyboard.reply_markup) == [
        [f"{a}:1:{i}" for a in "rvoi"] for i in range(4)
    ]
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


async def test_sends_to_a_group_are_evenly_paced_from_the_first_message(env: Env) -> None:
    per_min = 300  # one message every 0.2 s, so the test is quick
    interval = 60 / per_min
    await env.start(per_group_per_min=per_min)
    tg = env.tg
    for i, who in enumerate([ANN, BOB] * 3):
        tg.inject_message(GROUP, who, f"/imagine a tiny boat {i}", chat_type="group")
    await env.until(lambda: len(env.photos(GROUP)) == 6, timeout=30)
    calls = [
        c for c in tg.get_calls() if c.method in PACED and c.params.get("chat_id") == GROUP
    ]
    assert len(calls) >= 18
    weights = [len(c.params["media"]) if c.method == "sendMediaGroup" else 1 for c in calls]
    # Token-bucket conformance: between any two calls, no more went than the burst plus
    # what the rate earned in between (a little slack for the event loop).
    for i, j in itertools.combinations(range(len(calls)), 2):
        sent = sum(weights[i : j + 1])
        earned = (calls[j].time - calls[i].time) / interval
        assert sent <= BURST + earned + 1, (i, j, sent, earned)
    # and it is a rate, not a stall: the calls spread over about their count of intervals
    span = calls[-1].time - calls[0].time
    assert span <= (sum(weights) + 6) * interval
