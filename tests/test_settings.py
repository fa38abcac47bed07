"""Personal defaults: /settings stores a model, an aspect ratio and a negative prompt per
person, and every generation command uses them where the text did not say otherwise."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from bot.chat import UserRef
from bot.commands import Incoming, Reply, format_settings
from bot.errors import BadInput
from bot.jobs import JobView
from storage.migrate import upgrade
from storage.models import User
from tests.conftest import REPLY, empty_database

ANN = UserRef("test", "42", "@ann")
BOB = UserRef("test", "43", "@bob")

HOW = (
    "Set one with /settings model NAME (see /models), /settings aspect W:H or "
    "/settings negative TEXT; /settings model off clears one, /settings clear all."
)


async def say(app, text: str, who: UserRef = ANN, **kw: Any) -> Reply:
    return await app.commands.handle(Incoming(user=who, text=text, reply_to=REPLY, **kw))


async def ok(app, text: str, who: UserRef = ANN, **kw: Any) -> Reply:
    r = await say(app, text, who, **kw)
    assert not r.error, r.text
    return r


async def stored(app, who: UserRef = ANN) -> Any:
    """The users.settings column as stored (None when SQL NULL or no such person)."""
    async with app.db.session() as s:
        return await s.scalar(
            select(User.settings).where(
                User.platform == who.platform, User.platform_user_id == who.id
            )
        )


async def is_sql_null(app, who: UserRef = ANN) -> bool:
    async with app.db.session() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(User)
            .where(
                User.platform == who.platform,
                User.platform_user_id == who.id,
                User.settings.is_(None),
            )
        )
    return n == 1


async def people(app) -> int:
    async with app.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(User)))


async def job_of(app, r: Reply, k: int = 0) -> JobView:
    assert r.receipt is not None, r.text
    return await app.jobs.job(None, r.receipt.job_ids[k])


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# --- /settings itself -------------------------------------------------------------------------


async def test_set_show_and_clear_each_key(app_factory) -> None:
    app = await app_factory()
    r = await ok(app, "/settings")
    assert r.text == "you have no defaults of your own: commands use the bot's.\n" + HOW
    assert await people(app) == 0  # looking stores no one

    r = await ok(app, "/settings model mono")
    assert r.text == "OK, your default model is now demo:mono."
    assert await stored(app) == {"model": "demo:mono"}
    r = await ok(app, "/settings aspect 016:09")  # stored as --ar reads it
    assert r.text == "OK, your default aspect ratio is now 16:9."
    r = await ok(app, "/settings negative   blurry,  text\n  lowres ")
    assert r.text == "OK, your default negative prompt is now blurry, text lowres."
    assert await stored(app) == {
        "model": "demo:mono",
        "aspect": "16:9",
        "negative": "blurry, text lowres",
    }
    assert await app.jobs.settings(ANN) == await stored(app)
    r = await ok(app, "/settings")
    assert r.text.splitlines() == [
        "your defaults, used when a command does not give that flag:",
        "  model: demo:mono",
        "  aspect ratio: 16:9",
        "  negative prompt: blurry, text lowres",
        HOW,
    ]

    # the flag names work as setting names, and so do quoted values
    r = await ok(app, '/settings --ar "3:2"')
    assert r.text == "OK, your default aspect ratio is now 3:2."
    r = await ok(app, "/settings no 'watermark'")
    assert (await stored(app))["negative"] == "watermark"
    # a provider name is a default too (its default model), kept as the provider
    r = await ok(app, "/settings model demo")
    assert r.text == "OK, your default model is now demo."
    r = await ok(app, "/settings model demo:shapes")
    assert (await stored(app))["model"] == "demo:shapes"

    r = await ok(app, "/settings aspect off")
    assert r.text == "OK, you no longer have a default aspect ratio."
    assert await stored(app) == {"model": "demo:shapes", "negative": "watermark"}
    r = await ok(app, "/settings aspect OFF")  # clearing what is not set: fine, no change
    assert await stored(app) == {"model": "demo:shapes", "negative": "watermark"}
    await ok(app, "/settings model off")
    await ok(app, "/settings negative off")
    assert await stored(app) is None and await is_sql_null(app)  # none left: NULL again

    await ok(app, "/settings model mono")
    await ok(app, "/settings aspect 2:3")
    r = await ok(app, "/settings clear")
    assert r.text == "OK, all your defaults are cleared."
    assert await app.jobs.settings(ANN) == {} and await is_sql_null(app)
    r = await ok(app, "/settings")
    assert r.text.startswith("you have no defaults of your own")
    assert await app.jobs.balance(ANN) == 20  # /settings costs nothing


async def test_bad_values_are_refused_and_nothing_is_stored(app_factory) -> None:
    app = await app_factory()
    await ok(app, "/settings model mono")
    await ok(app, "/settings aspect 16:9")
    before = await stored(app)

    r = await say(app, "/settings model nope")
    assert r.error and r.text == (
        "cannot make nope your default model: unknown model 'nope' for demo; "
        "available: shapes, mono (see /models)"
    )
    r = await say(app, "/settings model elsewhere:thing")
    assert r.error and "unknown model 'elsewhere:thing' for demo" in r.text
    for bad in ("9:1", "16x9", "16:9 --seed 3", "wide", "0:1", "--size"):
        r = await say(app, f"/settings aspect {bad}")
        assert r.error and r.text.startswith(
            "a default aspect ratio is W:H between 1:4 and 4:1, e.g. /settings aspect 16:9"
        ), bad
    r = await say(app, "/settings negative " + "x" * 501)
    assert r.error and r.text == (
        "a default negative prompt can be at most 500 characters; yours has 501"
    )
    r = await say(app, "/settings colour red")
    assert r.error and r.text.startswith("unknown setting colour: choose model, aspect or negative")
    r = await say(app, "/settings model")
    assert r.error and r.text == (
        "give a value: /settings model VALUE, or /settings model off to clear it"
    )
    r = await say(app, "/settings clear everything")
    assert r.error and r.text.startswith("unknown setting clear")
    assert await stored(app) == before

    # a person's first /settings with a bad value does not even create them
    r = await say(app, "/settings model nope", BOB)
    assert r.error and await people(app) == 1
    with pytest.raises(BadInput, match="unknown setting seed"):
        await app.jobs.set_setting(ANN, "seed", "3")
    with pytest.raises(BadInput, match="cannot make x your default model"):
        await app.jobs.set_setting(ANN, "model", "x")
    assert await app.jobs.set_setting(BOB, "model", None) == {} and await people(app) == 1
    # 500 characters exactly is fine
    assert (await app.jobs.set_setting(ANN, "negative", "y" * 500))["negative"] == "y" * 500


async def test_concurrent_changes_of_different_keys_all_survive(app_factory) -> None:
    app = await app_factory()
    await app.jobs.user(ANN)
    await asyncio.gather(
        app.jobs.set_setting(ANN, "model", "mono"),
        app.jobs.set_setting(ANN, "aspect", "4:3"),
        app.jobs.set_setting(ANN, "negative", "fog"),
    )
    assert await stored(app) == {"model": "demo:mono", "aspect": "4:3", "negative": "fog"}


# --- defaults at work -------------------------------------------------------------------------


async def test_defaults_apply_to_imagine_and_batch(app_factory) -> None:
    app = await app_factory()
    await ok(app, "/settings model mono")
    await ok(app, "/settings aspect 16:9")
    await ok(app, "/settings negative blurry, text")

    r = await ok(app, "/imagine a fox in snow --seed 7")
    lines = r.text.splitlines()
    assert lines[0].startswith("job #1 queued · position ") and "demo:mono 1024x576" in lines[0]
    assert lines[1:] == ["your defaults: model demo:mono, aspect 16:9, negative 'blurry, text'"]
    v = await job_of(app, r)
    assert (v.provider, v.model) == ("demo", "mono")
    assert (v.params["width"], v.params["height"], v.params["aspect"]) == (1024, 576, "16:9")
    assert (v.params["prompt"], v.params["negative"]) == ("a fox in snow", "blurry, text")

    r = await ok(app, "/batch a red fox | a blue whale")
    assert r.text.endswith("\nyour defaults: model demo:mono, aspect 16:9, negative 'blurry, text'")
    for k in range(2):
        v = await job_of(app, r, k)
        assert (v.model, v.params["width"], v.params["height"]) == ("mono", 1024, 576)
        assert v.params["negative"] == "blurry, text"

    # someone else keeps the bot's own defaults, and their receipt has no note
    r = await ok(app, "/imagine a fox", BOB)
    assert "\n" not in r.text and "demo:shapes 1024x1024" in r.text
    v = await job_of(app, r)
    assert (v.model, v.params["negative"], v.params["aspect"]) == ("shapes", "", None)

    # a provider as the default model: its default model
    await ok(app, "/settings model demo")
    await ok(app, "/settings negative off")
    r = await ok(app, "/imagine a fox")
    assert r.text.splitlines()[1] == "your defaults: model demo, aspect 16:9"
    assert (await job_of(app, r)).model == "shapes"


async def test_flags_in_the_command_override_the_defaults(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()
    await ok(app, "/settings model mono")
    await ok(app, "/settings aspect 16:9")
    await ok(app, "/settings negative blurry")

    r = await ok(app, "/imagine a fox --model shapes")
    assert r.text.splitlines()[1] == "your defaults: aspect 16:9, negative 'blurry'"
    v = await job_of(app, r)
    assert (v.model, v.params["width"], v.params["height"]) == ("shapes", 1024, 576)

    r = await ok(app, "/imagine a fox --provider demo")  # a provider says where: no default
    assert (await job_of(app, r)).model == "shapes"

    r = await ok(app, "/imagine a fox --ar 1:1")
    v = await job_of(app, r)
    assert (v.model, v.params["width"], v.params["height"]) == ("mono", 1024, 1024)
    assert r.text.splitlines()[1] == "your defaults: model demo:mono, negative 'blurry'"

    r = await ok(app, "/imagine a fox --size 512x256")
    v = await job_of(app, r)
    assert (v.params["width"], v.params["height"], v.params["aspect"]) == (512, 256, None)

    r = await ok(app, "/imagine a fox --no fog")
    assert (await job_of(app, r)).params["negative"] == "fog"
    assert r.text.splitlines()[1] == "your defaults: model demo:mono, aspect 16:9"

    r = await ok(app, "/imagine a fox --model demo:shapes --size 64x64 --no fog")
    assert len(r.text.splitlines()) == 1  # nothing of the defaults used: no note
    v = await job_of(app, r)
    assert (v.model, v.params["width"], v.params["negative"]) == ("shapes", 64, "fog")

    # a pasted A1111 block says size and negative itself
    block = "a castle\nNegative prompt: lowres\nSteps: 20, Seed: 1, Size: 832x1216"
    r = await ok(app, f"/imagine {block}")
    v = await job_of(app, r)
    assert (v.model, v.params["width"], v.params["height"]) == ("mono", 832, 1216)
    assert v.params["negative"] == "lowres"

    # batch tasks each keep what they say
    r = await ok(app, "/batch a --ar 1:1 | b --model shapes | c")
    views = [await job_of(app, r, k) for k in range(3)]
    assert [(v.model, v.params["width"], v.params["height"]) for v in views] == [
        ("mono", 1024, 1024),
        ("shapes", 1024, 576),
        ("mono", 1024, 576),
    ]


async def test_img2img_keeps_the_pictures_size_but_takes_model_and_negative(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()
    await ok(app, "/settings model mono")
    await ok(app, "/settings aspect 1:4")
    await ok(app, "/settings negative blurry")

    r = await ok(app, "/img2img make it blue", image=png(320, 192))
    v = await job_of(app, r)
    assert v.kind == "img2img" and v.model == "mono"
    assert (v.params["width"], v.params["height"], v.params["aspect"]) == (320, 192, None)
    assert v.params["negative"] == "blurry"
    assert r.text.splitlines()[-1] == "your defaults: model demo:mono, negative 'blurry'"

    # the picture's shape holds even with an aspect default; a typed --ar still counts
    r = await ok(app, "/img2img make it blue --ar 16:9 --model shapes", image=png(320, 192))
    v = await job_of(app, r)
    assert (v.model, v.params["width"], v.params["height"]) == ("shapes", 1024, 576)


async def test_generation_reads_the_defaults_with_the_language(app_factory, monkeypatch) -> None:
    """``handle`` reads the language and the defaults together; no second read per command."""
    app = await app_factory()
    await app.scheduler.stop()
    await ok(app, "/settings aspect 16:9")

    async def no_second_read(ref: UserRef) -> dict[str, str]:
        raise AssertionError("defaults read twice")

    monkeypatch.setattr(app.jobs, "settings", no_second_read)
    r = await ok(app, "/imagine a fox")
    assert (await job_of(app, r)).params["height"] == 576


async def test_replies_in_chinese(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()
    zh = {"lang": "zh-hans"}
    r = await ok(app, "/settings", **zh)
    assert r.lang == "zh" and r.text.splitlines()[0] == (
        "你还没有自己的默认设置：命令会用机器人的默认值。"
    )
    r = await ok(app, "/settings aspect 16:9", **zh)
    assert r.text == "好的，你的默认宽高比现在是 16:9。"
    r = await ok(app, "/settings model mono", **zh)
    assert r.text == "好的，你的默认模型现在是 demo:mono。"
    r = await ok(app, "/settings", **zh)
    assert r.text.splitlines()[:3] == [
        "你的默认设置（命令里没写对应参数时使用）：",
        "  模型：demo:mono",
        "  宽高比：16:9",
    ]
    r = await say(app, "/settings model nope", **zh)
    assert r.error and r.text.startswith("不能把 nope 设为默认模型：unknown model 'nope'")
    r = await say(app, "/settings aspect 9:1", **zh)
    assert r.error and r.text.startswith("默认宽高比要写成 宽:高，在 1:4 到 4:1 之间")
    r = await say(app, "/settings size 5", **zh)
    assert r.error and r.text.startswith("没有 size 这个设置项")
    r = await ok(app, "/imagine 一只狐狸 --no 雾", **zh)
    assert r.text.splitlines()[1] == "用了你的默认设置：模型 demo:mono，宽高比 16:9"
    r = await ok(app, "/settings model off", **zh)
    assert r.text == "好的，已清除你的默认模型。"
    r = await ok(app, "/settings clear", **zh)
    assert r.text == "好的，你的默认设置已全部清除。"


async def test_help_lists_settings(app_factory) -> None:
    app = await app_factory()
    lines = (await ok(app, "/help")).text.splitlines()
    at = lines.index(
        "  /settings [model|aspect|negative VALUE|off] — your own default model, aspect "
        "ratio and negative prompt (/settings clear forgets them)"
    )
    assert lines[at - 1].startswith("  /lang ") and lines[at + 1].startswith("  /help ")
    zh = (await ok(app, "/help", lang="zh")).text
    assert "  /settings [model|aspect|negative 值|off] — 设置你自己的默认模型" in zh


def test_format_settings_shows_keys_in_order() -> None:
    text = format_settings({"negative": "fog", "model": "demo:mono"})
    assert text.splitlines()[1:3] == ["  model: demo:mono", "  negative prompt: fog"]


# --- the schema -------------------------------------------------------------------------------


async def test_people_from_before_the_migration_have_no_defaults(db_url, app_factory) -> None:
    await empty_database(db_url)
    await upgrade(db_url, "0001")
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:  # a person stored by the 0001 schema
            await conn.execute(
                insert(User.__table__).values(
                    platform="test",
                    platform_user_id="42",
                    name="@ann",
                    balance=0,
                    banned=False,
                    locale="zh",
                    last_served_at=0.0,
                    created_at=0.0,
                )
            )
    finally:
        await engine.dispose()
    app = await app_factory(migrate=True)  # upgrades at start, as a real start does
    assert await stored(app) is None and await is_sql_null(app)
    assert await app.jobs.user_prefs(ANN) == ("zh", {})
    r = await ok(app, "/settings aspect 4:3")
    assert r.lang == "zh" and await stored(app) == {"aspect": "4:3"}
