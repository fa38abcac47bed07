"""``ReplyTo``: the typed reply target, its stored form, and every older stored form.

Rows written by the previous version (a dict whose keys meant different things per adapter)
must keep working after an upgrade, without a migration.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis
from hypothesis import strategies as st

from bot.chat import ReplyTo, ResponseToken, audience_of, outbox_address
from bot.commands import Incoming
from tests.conftest import user

ids = st.integers(min_value=-(2**62), max_value=2**62)
maybe_id = st.none() | ids
text = st.none() | st.text(min_size=1, max_size=12)

reply_tos = st.builds(
    ReplyTo,
    platform=st.sampled_from(["telegram", "discord", "console", ""]),
    chat=st.none() | ids | st.text(min_size=1, max_size=12),
    person=text,
    source_message=maybe_id,
    status_message=maybe_id,
    thread=maybe_id,
    lang=text,
    nsfw_ok=st.booleans(),
    shown=text,
    response=st.none()
    | st.builds(
        ResponseToken, app=ids, token=st.text(min_size=1, max_size=20), until=st.floats(0, 2e9)
    ),
    community=maybe_id,
    upload_limit=maybe_id,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(reply_tos)
def test_round_trip_through_stored_json(r: ReplyTo) -> None:
    stored = json.loads(json.dumps(r.to_json()))
    assert ReplyTo.from_json(stored) == r
    assert audience_of(stored) == audience_of(r)


def test_old_telegram_form() -> None:
    """Telegram stored the person's message as "message" and the status as "status"."""
    old = {
        "platform": "telegram",
        "chat": -100123,
        "thread": 7,
        "lang": "zh-hans",
        "message": 41,
        "status": 42,
        "nsfw_ok": True,
        "shown": "abc",
    }
    r = ReplyTo.from_json(old)
    assert r == ReplyTo(
        platform="telegram",
        chat=-100123,
        thread=7,
        lang="zh-hans",
        source_message=41,
        status_message=42,
        nsfw_ok=True,
        shown="abc",
    )
    assert audience_of(r) == audience_of(old) == "telegram:-100123"


def test_old_discord_form() -> None:
    """Discord stored its status message as "message", the channel as "channel"."""
    old = {
        "platform": "discord",
        "channel": 555,
        "guild": 9,
        "user": 77,
        "app": 1234,
        "token": "tok",
        "token_until": 1700000000.5,
        "message": 888,
        "limit": 10485760,
        "nsfw_ok": False,
        "lang": "en",
    }
    r = ReplyTo.from_json(old)
    assert r.status_message == 888 and r.source_message is None
    assert r.chat == 555 and r.person == "77" and r.community == 9
    assert r.response == ResponseToken(1234, "tok", 1700000000.5)
    assert r.upload_limit == 10485760 and r.lang == "en" and not r.nsfw_ok
    # no status message opened yet: "message" is None
    assert ReplyTo.from_json({**old, "message": None}).status_message is None


def test_old_console_form_and_empty() -> None:
    assert ReplyTo.from_json({"platform": "console", "chat": "bob"}) == ReplyTo("console", "bob")
    assert ReplyTo.from_json({}) == ReplyTo()
    assert ReplyTo.from_json(None) == ReplyTo()
    assert audience_of(ReplyTo()) is None


def test_outbox_address_of_typed_and_stored_forms() -> None:
    r = ReplyTo("console", "bob")
    assert outbox_address(r) == {"platform": "console", "audience": "console:bob"}
    assert outbox_address(r.to_json()) == outbox_address(r)
    assert outbox_address({}) == {"platform": "", "audience": None}


def test_response_token_freshness() -> None:
    tok = ResponseToken(1, "t", until=100.0)
    assert tok.fresh(99.0) and not tok.fresh(100.0)
    assert not ResponseToken(1, "", until=100.0).fresh(0.0)


old_telegram = st.fixed_dictionaries(
    {"platform": st.just("telegram"), "chat": ids},
    optional={
        "thread": ids,
        "lang": st.sampled_from(["en", "zh-hans"]),
        "message": ids,
        "status": ids,
        "nsfw_ok": st.booleans(),
        "shown": st.text(min_size=1, max_size=8),
    },
)
old_discord = st.fixed_dictionaries(
    {
        "platform": st.just("discord"),
        "channel": ids,
        "guild": st.none() | ids,
        "user": ids,
        "app": ids,
        "token": st.text(min_size=1, max_size=20),
        "token_until": st.floats(0, 2e9),
        "message": st.none() | ids,
        "limit": ids,
        "nsfw_ok": st.booleans(),
        "lang": st.sampled_from(["en", "zh-hans"]),
    }
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(old_telegram | old_discord)
def test_an_old_form_keeps_its_meaning_once_stored_again(old: dict[str, object]) -> None:
    """Read once, stored in this version's form, read again: nothing moves."""
    r = ReplyTo.from_json(old)
    assert ReplyTo.from_json(json.loads(json.dumps(r.to_json()))) == r
    if old["platform"] == "telegram":
        assert (r.source_message, r.status_message) == (old.get("message"), old.get("status"))
    else:
        assert (r.chat, r.status_message, r.person) == (
            old["channel"],
            old["message"],
            str(old["user"]),
        )
    assert audience_of(r) == f"{old['platform']}:{r.chat}"


async def test_a_servers_default_model_applies_in_its_channels(app_factory: Any) -> None:
    """The operator's model for a Discord server (``community``), from the typed form and
    from the old stored form alike."""
    app = await app_factory(providers={"chat_models": {"discord:9": "demo:mono"}})
    for where in (
        ReplyTo(platform="discord", chat=555, community=9),
        {"platform": "discord", "channel": 555, "guild": 9},  # the old form
    ):
        reply = await app.commands.handle(Incoming(user(), "/imagine a kite", where))
        assert reply.receipt is not None and reply.receipt.jobs[0].model == "mono"
    elsewhere = ReplyTo(platform="discord", chat=555, community=10)
    reply = await app.commands.handle(Incoming(user(), "/imagine a kite", elsewhere))
    assert reply.receipt is not None and reply.receipt.jobs[0].model != "mono"
