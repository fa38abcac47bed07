"""Admin commands every chat platform shares: /grant, /ban, /unban, /stats."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update

from bot.chat import UserRef
from bot.commands import Incoming, Reply
from storage import repos
from storage.models import Job, LedgerEntry, User
from tests.conftest import REPLY

BOSS = UserRef("test", "1", "@boss")
ANN = UserRef("test", "42", "@Ann")
BOB = UserRef("test", "43", "@bob")


async def say(app, text: str, who: UserRef = BOSS, **kw: Any) -> Reply:
    kw.setdefault("is_admin", who == BOSS)
    return await app.commands.handle(Incoming(user=who, text=text, reply_to=REPLY, **kw))


async def ledger(app, who: UserRef) -> list[tuple[str, int, str | None, str]]:
    async with app.db.session() as s:
        rows = await s.execute(
            select(LedgerEntry.reason, LedgerEntry.delta, LedgerEntry.key, LedgerEntry.note)
            .join(User, User.id == LedgerEntry.user_id)
            .where(User.platform == who.platform, User.platform_user_id == who.id)
            .order_by(LedgerEntry.id)
        )
        return [tuple(r) for r in rows.all()]


async def people(app) -> int:
    async with app.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(User)))


async def ledger_matches_balances(app) -> None:
    def check(conn) -> None:
        for uid, balance in conn.execute(select(User.id, User.balance)).all():
            assert balance == repos.ledger_sum(conn, uid) and balance >= 0

    await app.db.run_read(check)


async def test_grant_by_name_id_and_platform_id_once_per_message(app_factory) -> None:
    app = await app_factory()
    await app.jobs.user(ANN)
    await app.jobs.user(BOB)

    r = await say(app, "/grant @ann 5 for the contest", message_key="m1")
    assert (r.error, r.text) == (False, "granted 5 credits to @Ann: balance 25")
    assert await app.jobs.balance(ANN) == 25
    # the same message again (a platform retry): nothing more
    r = await say(app, "/grant @ann 5 for the contest", message_key="m1")
    assert not r.error and await app.jobs.balance(ANN) == 25
    assert await ledger(app, ANN) == [
        ("grant", 20, "start:test:42", "starting grant"),
        ("grant", 5, "grant:m1", "for the contest"),
    ]

    r = await say(app, "/grant 42 3", message_key="m2")
    assert r.text == "granted 3 credits to @Ann: balance 28"
    r = await say(app, "/grant test:43 +2", message_key="m3")
    assert r.text == "granted 2 credits to @bob: balance 22"
    assert await app.jobs.balance(BOB) == 22

    r = await say(app, "/grant @ANN -8 oops", message_key="m4")
    assert r.text == "took 8 credits from @Ann: balance 20"
    assert (await ledger(app, ANN))[-1] == ("debit", -8, "grant:m4", "oops")
    r = await say(app, "/grant @ANN -8 oops", message_key="m4")
    assert not r.error and await app.jobs.balance(ANN) == 20

    # someone the bot has not seen yet, named by platform:id, starts with the grant on top
    before = await people(app)
    r = await say(app, "/grant telegram:777 5", message_key="m5")
    assert r.text == "granted 5 credits to telegram:777: balance 25"
    assert await app.jobs.balance(UserRef("telegram", "777")) == 25
    assert await people(app) == before + 1
    # without a message key every command grants (the console has none)
    await say(app, "/grant @bob 1")
    await say(app, "/grant @bob 1")
    assert await app.jobs.balance(BOB) == 24
    await ledger_matches_balances(app)


async def test_grant_never_goes_below_zero_and_bad_targets_cost_nothing(app_factory) -> None:
    app = await app_factory()
    await app.jobs.user(ANN)
    r = await say(app, "/grant @ann -21", message_key="k1")
    assert r.error and r.text == "test:42 has 20 credits; cannot take 21"
    r = await say(app, "/grant @ann -21", message_key="k2", lang="zh-hans")
    assert r.error and r.text == "test:42 只有 20 积分，扣不了 21 积分"
    r = await say(app, "/grant @ann -20", message_key="k3")
    assert r.text == "took 20 credits from @Ann: balance 0"
    assert await app.jobs.balance(ANN) == 0
    r = await say(app, "/grant @ann -20", message_key="k3")  # the same message: done already
    assert (r.error, r.text) == (False, "took 20 credits from @Ann: balance 0")

    before = await people(app)
    r = await say(app, "/grant @nobody 5")
    assert r.error and r.text == (
        "nobody called @nobody has used this bot here; give their numeric id instead"
    )
    for bad in ("/grant", "/grant @ann", "/grant @ann five", "/grant @ann 1.5", "/grant 5 @ann"):
        r = await say(app, bad)
        assert r.error and r.text.startswith("usage: /grant @name|ID|platform:ID N"), bad
    r = await say(app, "/grant @ann 99999999999")
    assert r.error and r.text.startswith("usage: /grant")
    r = await say(app, "/grant @ann", lang="zh")
    assert r.text.startswith("用法：/grant @用户名|ID|平台:ID 数量 [备注]")
    r = await say(app, "/ban bob")  # not a number, not @name, not platform:id, unknown
    assert r.error and "nobody called bob" in r.text
    assert await people(app) == before
    assert await app.jobs.balance(ANN) == 0
    await ledger_matches_balances(app)


async def test_a_name_two_people_share_is_not_guessed(app_factory) -> None:
    app = await app_factory()
    await app.jobs.user(UserRef("test", "50", "@twin"))
    await app.jobs.user(UserRef("test", "51", "@Twin"))
    await app.jobs.user(UserRef("other", "52", "@solo"))
    r = await say(app, "/grant @twin 5")
    assert (
        r.error and r.text == "several people here are called @twin; give their numeric id instead"
    )
    # names are looked up on the admin's own platform only
    r = await say(app, "/grant @solo 5")
    assert r.error and "nobody called @solo" in r.text
    assert await app.jobs.find_user("other", "@SOLO") == UserRef("other", "52", "@solo")
    assert await app.jobs.find_user("other", "test:50") == UserRef("test", "50", "@twin")
    assert await app.jobs.find_user("test", "999") is None
    assert await app.jobs.balance(UserRef("test", "50")) == 20


async def test_ban_blocks_imagine_with_the_translated_refusal_and_unban_restores(
    app_factory,
) -> None:
    app = await app_factory()
    await app.scheduler.stop()  # queued jobs stay queued: a ban leaves them alone
    r = await say(app, "/imagine a cat --size 64x64", ANN)
    assert r.receipt is not None

    r = await say(app, "/ban @ann")
    assert not r.error and r.text == (
        "banned @Ann: they can no longer use the bot; jobs already queued are left alone "
        "(/cancel ID stops one)"
    )
    r = await say(app, "/imagine a dog --size 64x64", ANN)
    assert r.error and r.text == (
        "you are not allowed to use this bot; ask an admin if this is a mistake"
    )
    r = await say(app, "/batch a | b", ANN, lang="zh-CN")
    assert r.error and r.text == "你已被禁止使用这个机器人；如果弄错了，请联系管理员"
    assert await app.jobs.balance(ANN) == 19
    async with app.db.session() as s:
        statuses = (await s.scalars(select(Job.status).order_by(Job.id))).all()
    assert statuses == ["queued"]

    r = await say(app, "/unban 42", lang="zh")
    assert r.text == "已解除对 @Ann 的禁止，对方可以重新使用机器人"
    r = await say(app, "/imagine a dog --size 64x64", ANN)
    assert not r.error and r.receipt is not None and await app.jobs.balance(ANN) == 18


async def test_a_ban_holds_for_every_command_button_and_extension(app_factory) -> None:
    from bot.results import Results
    from tests.fakes.civitai import FakeCivitai

    async with FakeCivitai() as civitai:
        app = await app_factory(civitai={"base_url": civitai.base_url})
        await app.scheduler.stop()
        r = await say(app, "/imagine a cat --size 64x64", ANN)
        assert r.receipt is not None
        assert not (await say(app, "/ban @ann")).error
        refusal = "you are not allowed to use this bot; ask an admin if this is a mistake"
        for text in (
            "/civitai models --type LORA",
            "/civitai image 90013",
            "/civitai use 90013",
            "/help",
            "/credits",
            "/jobs",
            "/job 1",
            "/settings model demo",
            "/lang zh",
            "/img2img https://example.com/a.png a dog",
        ):
            r = await say(app, text, ANN)
            assert (r.error, r.text) == (True, refusal), text
        r = await say(app, "/civitai models", ANN, lang="zh")
        assert r.text == "你已被禁止使用这个机器人；如果弄错了，请联系管理员"
        # not one request reached Civitai (nor any picture host), nothing changed
        assert civitai.calls == []
        assert await app.jobs.settings(ANN) == {} and await app.jobs.user_lang(ANN) is None
        # the buttons under a picture ask the same question first
        results = Results(app.jobs)
        for attempt in (
            results.picture(1, 0, by=ANN),
            results.reroll(ANN, 1, 0, REPLY),
            results.vary(ANN, 1, 0, REPLY),
        ):
            try:
                await attempt
            except Exception as exc:
                assert str(exc) == refusal
            else:
                raise AssertionError("a banned person's button worked")
        # an admin still can (and may lift it); then the same commands work again
        assert not (await say(app, "/civitai models --type LORA")).error
        assert civitai.calls
        assert not (await say(app, "/unban @ann")).error
        assert not (await say(app, "/civitai models --type LORA", ANN)).error


async def test_non_admins_are_refused_and_learn_nothing(app_factory) -> None:
    app = await app_factory()
    await app.jobs.user(BOB)
    before = await people(app)
    for text in ("/grant @ann 100", "/grant @nobody 5", "/grant", "/ban @bob", "/unban @bob"):
        cmd = text.split()[0]
        r = await say(app, text, ANN, message_key=f"x{text}")
        assert r.error and r.text == f"only admins can use {cmd}", text
    r = await say(app, "/stats", ANN)
    assert r.error and r.text == "only admins can use /stats"
    r = await say(app, "/stats", ANN, lang="zh-hans")
    assert r.error and r.text == "只有管理员才能使用 /stats"
    # nothing was created, granted or banned (Ann herself was never even stored)
    assert await people(app) == before
    assert await app.jobs.user_lang(ANN) is None
    assert not (await app.jobs.user(BOB)).banned
    assert await app.jobs.balance(BOB) == 20

    r = await say(app, "/help", ANN)
    assert "/grant" not in r.text and "/stats" not in r.text and "Admin" not in r.text
    r = await say(app, "/help")
    assert "\nAdmin commands:\n  /grant @name|ID N [note] — " in r.text
    assert "  /ban @name|ID — " in r.text and "  /stats — " in r.text
    r = await say(app, "/help", lang="zh")
    assert "\n管理员命令：\n  /grant @用户名|ID 数量 [备注] — 发放积分" in r.text


async def test_stats_counts_the_queue_the_last_day_and_people(app_factory) -> None:
    app = await app_factory()
    adapter = app.adapters["test"]
    await say(app, "/imagine a cat --size 64x64 --n 2", ANN)  # 2 charged, succeeds
    await say(app, "/imagine demo:fail --size 64x64", ANN)  # 1 charged, refunded (txt2img)
    await say(app, "/batch ok --size 64x64 | demo:fail --size 64x64", BOB)  # 2, none back
    await adapter.wait_for(
        lambda: len(adapter.of_kind("finished")) + len(adapter.of_kind("failed")) == 4
    )
    await app.scheduler.stop()
    await say(app, "/imagine still waiting --size 64x64", BOB)  # 1 charged, stays queued

    # a job from two days ago, with its charge, is outside the window
    old = await say(app, "/imagine from the past --size 64x64", ANN)
    old_id = old.receipt.job_ids[0]
    long_ago = time.time() - 2 * 86400
    async with app.db.session(write=True) as s:
        await s.execute(update(Job).where(Job.id == old_id).values(created_at=long_ago))
        await s.execute(
            update(LedgerEntry).where(LedgerEntry.job_id == old_id).values(created_at=long_ago)
        )

    s = await app.jobs.stats()
    assert (s.queued, s.running, s.people) == (2, 0, 2)
    assert s.jobs_by_status == {"succeeded": 2, "failed": 2, "queued": 1}
    assert (s.charged, s.refunded, s.spent) == (6, 1, 5)

    r = await say(app, "/stats")
    assert not r.error
    assert r.text.splitlines() == [
        "queue: 2 queued, 0 running",
        "last 24 h: 5 jobs — 1 queued, 2 succeeded, 2 failed",
        "credits spent in the last 24 h: 5 (6 charged, 1 refunded)",
        "people: 2",
    ]
    r = await say(app, "/stats", lang="zh-hans")
    assert r.text.splitlines() == [
        "队列：排队中 2 个，运行中 0 个",
        "最近 24 小时：5 个任务（排队中 1，已完成 2，失败 2）",
        "最近 24 小时消耗积分：5（扣除 6，退还 1）",
        "用户数：2",
    ]
    # /stats itself costs nothing and stores no one
    assert await people(app) == 2 and await app.jobs.balance(ANN) == 20 - 2 - 1 + 1 - 1
