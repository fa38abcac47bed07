"""Replies in English and Simplified Chinese: the catalog, /lang, and what people read."""

from __future__ import annotations

import pickle
import re
import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from bot import i18n
from bot.chat import UserRef
from bot.commands import (
    Commands,
    Incoming,
    format_batch_status,
    format_image_info,
    format_job,
    format_job_line,
    format_outcome,
    format_receipt,
    format_status,
    progress_bar,
)
from bot.errors import BadInput, InsufficientCredits, LimitReached, NotFound, UserError
from bot.grammar import FLAGS, HELP_FLAGS, HELP_FLAGS_ZH, format_flags, help_flags
from bot.i18n import CATALOG, CORE_KEYS, LANGS, Message, normalize, placeholders, t
from bot.jobs import JobTicket, JobView, Receipt
from bot.params import GenerationParams
from storage.models import Job, User
from tests.conftest import REPLY, user

# --- the catalog ----------------------------------------------------------------------------


def test_every_core_key_has_both_languages_with_the_same_fields() -> None:
    assert len(CORE_KEYS) > 100
    for key in CORE_KEYS:
        texts = CATALOG[key]
        assert set(texts) == set(LANGS), key
        assert all(texts[lang].strip() for lang in LANGS), key
        assert placeholders(texts["zh"]) == placeholders(texts["en"]), key


def test_every_registered_key_has_english_and_the_same_fields() -> None:
    for key, texts in CATALOG.items():
        assert "en" in texts and set(texts) <= set(LANGS), key
        for text in texts.values():
            assert placeholders(text) == placeholders(texts["en"]), key


def test_chinese_texts_are_written_and_keep_the_terms() -> None:
    # only bare command names are the same in both languages
    same = {k for k in CORE_KEYS if CATALOG[k]["en"] == CATALOG[k]["zh"]}
    assert same == {f"usage.{c}" for c in ("credits", "help", "jobs", "lang", "models", "stats")}
    assert "积分" in t("zh", "credits", balance=1, txt2img=1, img2img=2, batch=1)
    assert "积分" in t("zh", "error.not_enough_credits", cost=2, balance=1)
    assert t("zh", "n.tasks", n=2) == "2 个任务" and t("zh", "kind.batch") == "批量任务"
    assert t("zh", "status.running") == "运行中" and "任务" in t("zh", "outcome.where", job_id=1)
    assert "提示词" in t("zh", "help.imagine") and "提示词" in t("zh", "usage.imagine")


@pytest.mark.parametrize(
    ("code", "want"),
    [
        ("zh", "zh"),
        ("zh-hans", "zh"),
        ("zh-CN", "zh"),
        ("zh_TW", "zh"),
        ("zh-hant", "zh"),
        ("ZH-Hans-CN", "zh"),
        ("en", "en"),
        ("en-US", "en"),
        ("en-GB", "en"),
        (" en_gb ", "en"),
        ("fr", None),
        ("de-DE", None),
        ("zhx", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize(code: str | None, want: str | None) -> None:
    assert normalize(code) == want


def test_pick_and_parse_lang() -> None:
    assert i18n.pick(None, "fr", "zh-CN") == "zh"
    assert i18n.pick("en", "zh") == "en"
    assert i18n.pick(None, None) == "en"
    assert i18n.parse_lang("中文") == "zh" and i18n.parse_lang("English") == "en"
    assert i18n.parse_lang("zh-TW") == "zh" and i18n.parse_lang("klingon") is None


def test_t_falls_back_to_english_and_unknown_keys_raise(monkeypatch) -> None:
    monkeypatch.setattr(i18n, "CATALOG", dict(CATALOG))
    i18n.register({"test.only_en": {"en": "hello {who}"}})
    assert t("zh", "test.only_en", who="ann") == "hello ann"
    assert t("fr", "credits", balance=3, txt2img=1, img2img=2, batch=1).startswith(
        "you have 3 credits"
    )
    with pytest.raises(KeyError):
        t("en", "no.such.key")


def test_register(monkeypatch) -> None:
    monkeypatch.setattr(i18n, "CATALOG", dict(CATALOG))
    texts = {"en": "{n} stickers", "zh": "{n} 张贴纸"}
    i18n.register({"test.stickers": texts})
    i18n.register({"test.stickers": dict(texts)})  # the same again: fine
    assert t("zh", "test.stickers", n=3) == "3 张贴纸"
    with pytest.raises(ValueError, match="already registered"):
        i18n.register({"test.stickers": {"en": "{n} other", "zh": "{n} 别的"}})
    with pytest.raises(ValueError, match="already registered"):
        i18n.register({"credits": {"en": "x", "zh": "y"}})
    with pytest.raises(ValueError, match="no 'en'"):
        i18n.register({"test.zh_only": {"zh": "只有中文"}})
    with pytest.raises(ValueError, match="other fields"):
        i18n.register({"test.fields": {"en": "{a}", "zh": "{b}"}})
    with pytest.raises(ValueError, match="unsupported"):
        i18n.register({"test.fr": {"en": "x", "fr": "x"}})
    # a failed registration adds nothing, not even its good keys
    with pytest.raises(ValueError):
        i18n.register({"test.good": {"en": "g"}, "test.bad": {"zh": "b"}})
    assert "test.good" not in i18n.CATALOG


def test_message_is_english_text_that_can_be_said_in_chinese() -> None:
    m = Message("cancel.running", job_id=4, note=Message("cancel.note.refunded"))
    assert m == "cancelling job #4; pictures it has not made yet are refunded"
    assert isinstance(m, str) and m.startswith("cancelling")
    assert m.render("zh") == "正在取消任务 #4；还没生成的图片会退还积分"
    assert i18n.render(m, "zh") == m.render("zh") and i18n.render("plain", "zh") == "plain"
    again = pickle.loads(pickle.dumps(m))
    assert again == m and again.render("zh") == m.render("zh")
    assert i18n.term("status", "running").render("zh") == "运行中"
    assert i18n.term("status", "weird") == "weird"


# --- English stays exactly as it was ----------------------------------------------------------


def test_english_errors_are_unchanged() -> None:
    err = InsufficientCredits.of("error.not_enough_credits", cost=3, balance=1)
    assert str(err) == (
        "not enough credits: this costs 3 and you have 1. "
        "Ask an admin for more, or ask for fewer pictures (--n 1)"
    )
    assert err.render("en") == str(err) and err.key == "error.not_enough_credits"
    assert err.render("zh") == (
        "积分不足：这次需要 3 积分，你只有 1 积分。可以找管理员要一些积分，或者少生成几张（--n 1）"
    )
    limit = LimitReached.of("error.queue_limit", active=5, limit=5)
    assert str(limit) == (
        "you have 5 jobs waiting or running and the limit is 5; "
        "wait for some to finish or /cancel one"
    )
    assert str(NotFound.of("error.no_job_of_yours", job_id=9)) == (
        "no job #9 of yours; /jobs lists them"
    )
    done = UserError.of("error.already_finished", job_id=2, past=i18n.term("past", "cancelled"))
    assert str(done) == "job #2 has already been cancelled"
    assert done.render("zh") == "任务 #2 已经被取消了"
    assert str(BadInput.of("error.job_number", cmd="cancel")) == (
        "/cancel needs a job number, e.g. /cancel 12 (see /jobs)"
    )
    # errors without a key stay English in every language
    plain = BadInput("unknown flag --sed — did you mean --seed?")
    assert plain.render("zh") == str(plain) and plain.key is None


def _ticket(i: int, pos: int, n: int = 1) -> JobTicket:
    return JobTicket(i, "demo", "shapes", 1024, 576, n, 7, n, pos)


def test_receipts_in_english_are_unchanged_and_chinese_is_complete() -> None:
    one = Receipt("txt2img", (_ticket(1, 1, 2),), None, 2, 18)
    assert format_receipt(one) == (
        "job #1 queued · position 1 · demo:shapes 1024x576 ×2 · seed 7 · cost 2 · balance 18"
    )
    assert format_receipt(one, "zh") == (
        "任务 #1 已排队 · 排在第 1 位 · demo:shapes 1024x576 ×2 · 种子 7 · 花费 2 积分 · 余额 18"
    )
    batch = Receipt("batch", tuple(_ticket(10 + k, 3 - k) for k in range(3)), 4, 3, 17)
    assert format_receipt(batch) == (
        "batch #4: 3 tasks queued (jobs #10–#12) · next in queue at position 1 · cost 3 "
        "· balance 17"
    )
    assert format_receipt(batch, "zh") == (
        "批量任务 #4：3 个任务已排队（任务 #10–#12）· 最靠前的排在第 1 位 · 花费 3 积分 · 余额 17"
    )
    single = Receipt("batch", (_ticket(10, 2),), 5, 1, 16, duplicate=True)
    # the same message again: its jobs as they are now (issue 13)
    assert (
        format_receipt(single) == "this message was already handled: batch #5 (jobs #10): 1 queued"
    )
    assert format_receipt(single, "zh").startswith("这条消息已经处理过了：批量任务 #5")
    again = Receipt("txt2img", (replace(_ticket(3, 0), status="succeeded"),), None, 1, 16, True)
    assert format_receipt(again) == "this message was already handled: job #3 · succeeded"
    assert "position" not in format_receipt(again) and "queued" not in format_receipt(again)
    noted = Receipt(
        "txt2img",
        (_ticket(2, 1),),
        None,
        1,
        15,
        notes=(Message("note.retry_of", job_id=1), "a plain note"),
    )
    assert format_receipt(noted).endswith("\nretry of job #1\na plain note")
    assert format_receipt(noted, "zh").endswith("\n重试任务 #1\na plain note")


# The console's outcome lines and /job as they were written before the catalog existed.
def _old_outcome(kind: str, job_id: int, p: dict[str, Any]) -> str:
    batch = p.get("batch_id")
    if batch is not None:
        where = f"job #{job_id} (batch #{batch} task {int(p.get('batch_index') or 0) + 1})"
    else:
        where = f"job #{job_id}"
    if kind == "finished":
        refund = f" · refunded {p['refunded']}" if p.get("refunded") else ""
        return (
            f"{where} succeeded · {p['images']} image{'s' if p['images'] != 1 else ''} · "
            f"{p['elapsed']}s{refund} · balance {p['balance']}"
        )
    if kind == "cancelled":
        return f"{where} · refunded {p['refunded']} · balance {p['balance']}"
    refund = f"refunded {p['refunded']}" if p.get("refunded") else "not refunded"
    return f"{where} {p.get('failure')}: {p.get('message')} · {refund} · balance {p['balance']}"


def _old_job(v: JobView) -> str:
    params = GenerationParams.from_dict(v.params)
    lines = [
        f"job #{v.id}: {v.status} ({v.progress}%, {v.stage}) · {v.kind} on {v.provider}:{v.model}",
        f"  {format_flags(params)}",
        f"  cost {v.cost} · attempts {v.attempts}",
    ]
    if v.error:
        lines.append(f"  {v.failure or 'note'}: {v.error}")
    if v.batch_counts:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(v.batch_counts.items()))
        lines.append(f"  batch #{v.batch_id}: {counts}")
    for im in v.images:
        lines.append(
            f"  image {im['idx'] + 1}: {im['path']} ({im['width']}x{im['height']}, "
            f"seed {im['seed']})"
        )
    for reason, delta in v.ledger:
        lines.append(f"  ledger: {reason} {delta:+d}")
    if v.finished_at and v.started_at:
        lines.append(f"  took {v.finished_at - v.started_at:.1f}s")
    return "\n".join(lines)


PAYLOADS = [
    ("finished", {"images": 2, "elapsed": 1.5, "refunded": 0, "balance": 18, "batch_id": None}),
    (
        "finished",
        {
            "images": 1,
            "elapsed": 0.25,
            "refunded": 1,
            "balance": 9,
            "batch_id": 3,
            "batch_index": 1,
        },
    ),
    ("finished", {"images": 0, "elapsed": 2, "refunded": 0, "balance": 0, "batch_id": None}),
    ("cancelled", {"refunded": 3, "balance": 20, "batch_id": None}),
    (
        "failed",
        {
            "failure": "refused",
            "message": "content refused",
            "refunded": 1,
            "balance": 20,
            "batch_id": None,
        },
    ),
    (
        "failed",
        {
            "failure": "provider_error",
            "message": "503",
            "refunded": 0,
            "balance": 19,
            "batch_id": 7,
            "batch_index": 0,
        },
    ),
]


@pytest.mark.parametrize(("kind", "payload"), PAYLOADS)
def test_outcomes_in_english_are_what_the_console_always_printed(kind, payload) -> None:
    assert format_outcome(kind, 12, payload) == _old_outcome(kind, 12, payload)
    zh = format_outcome(kind, 12, payload, "zh")
    assert zh.startswith("任务 #12") and f"余额 {payload['balance']}" in zh


def test_outcomes_in_chinese() -> None:
    assert format_outcome("finished", 3, PAYLOADS[1][1], "zh") == (
        "任务 #3（批量任务 #3 第 2 项） 已完成 · 1 张图 · 用时 0.25 秒 · 退还 1 积分 · 余额 9"
    )
    assert format_outcome("failed", 5, PAYLOADS[4][1], "zh") == (
        "任务 #5 失败（被服务商拒绝）：content refused · 退还 1 积分 · 余额 20"
    )
    assert format_outcome("cancelled", 5, PAYLOADS[3][1], "zh") == (
        "任务 #5 已取消 · 退还 3 积分 · 余额 20"
    )
    with pytest.raises(ValueError):
        format_outcome("image", 5, {}, "en")


def _view(**kw: Any) -> JobView:
    base: dict[str, Any] = {
        "id": 7,
        "user_id": 1,
        "kind": "txt2img",
        "status": "succeeded",
        "progress": 100,
        "stage": "done",
        "provider": "demo",
        "model": "shapes",
        "params": GenerationParams(
            prompt="a red fox in snow",
            negative="blurry",
            width=512,
            height=512,
            seed=41,
            n=2,
            steps=20,
            cfg=7.5,
            sampler="Euler a",
        ).to_dict(),
        "cost": 2,
        "attempts": 1,
        "failure": None,
        "error": None,
        "batch_id": None,
        "created_at": 100.0,
        "started_at": 101.0,
        "finished_at": 103.5,
    }
    base.update(kw)
    return JobView(**base)


def test_job_views_in_english_are_unchanged_and_chinese_translates_the_words() -> None:
    images = [
        {"idx": 0, "sha256": "a", "width": 512, "height": 512, "seed": 41, "path": "/d/a.png"},
        {"idx": 1, "sha256": "b", "width": 512, "height": 512, "seed": 42, "path": "/d/b.png"},
    ]
    views = [
        _view(images=images, ledger=[("charge", -2), ("refund", 1)]),
        _view(
            status="failed",
            failure="refused",
            error="nope",
            batch_id=3,
            batch_counts={"succeeded": 2, "failed": 1},
            kind="batch",
        ),
        _view(
            status="running",
            progress=40,
            stage="generating",
            finished_at=None,
            error="slow provider",
        ),
    ]
    for v in views:
        assert format_job(v, paths=True) == _old_job(v)
    zh = format_job(views[1], "zh")
    assert zh.splitlines()[0] == "任务 #7：失败（100%，完成）· 批量任务 · demo:shapes"
    assert "  被服务商拒绝：nope" in zh and "  批量任务 #3：失败 1，已完成 2" in zh
    assert "积分记录：扣除 -2" in format_job(views[0], "zh")
    assert "用时 2.5 秒" in format_job(views[0], "zh")
    queued = _view(
        status="queued",
        progress=10,
        stage="received",
        started_at=None,
        finished_at=None,
        created_at=time.time() - 5,
        position=3,
    )
    assert re.search(r"waiting for \d+s · position 3 in the queue$", format_job(queued))
    assert re.search(r"已等待 \d+ 秒 · 排在第 3 位$", format_job(queued, "zh"))
    line = format_job_line(views[2])
    assert line == "#7 running 40% · txt2img · 'a red fox in snow' · cost 2"
    assert format_job_line(views[2], "zh") == (
        "#7 运行中 40% · 文生图 · 'a red fox in snow' · 花费 2 积分"
    )


def test_status_batch_and_image_info() -> None:
    running = _view(status="running", progress=30, stage="generating", finished_at=None)
    assert format_status(running) == (
        "job #7: running · generating\n▰▰▰▱▱▱▱▱▱▱ 30%\ndemo:shapes · 512x512 ×2 · seed 41 · cost 2"
    )
    assert format_status(running, "zh") == (
        "任务 #7：运行中 · 生成中\n▰▰▰▱▱▱▱▱▱▱ 30%\ndemo:shapes · 512x512 ×2 · 种子 41 · 花费 2 积分"
    )
    queued = _view(
        status="queued", progress=10, stage="received", position=4, batch_id=2, batch_index=1
    )
    text = format_status(queued)
    assert text.startswith("job #7 (batch #2 task 2): queued · received")
    assert text.endswith("position 4 in the queue")
    assert format_status(queued, "zh").endswith("排在第 4 位")
    assert progress_bar(0) == "▱" * 10 + " 0%" and progress_bar(100) == "▰" * 10 + " 100%"
    assert progress_bar(99).startswith("▰" * 9 + "▱")

    counts = {"succeeded": 4, "running": 2, "queued": 4}
    assert format_batch_status(3, counts, 10) == (
        "batch #3: 4/10 done · 2 running · 4 queued · 0 failed"
    )
    assert format_batch_status(
        3, {**counts, "failed": 1, "quarantined": 1, "cancelled": 2}, 14, "zh"
    ) == ("批量任务 #3：已完成 4/14 · 运行中 2 · 排队中 4 · 失败 2 · 已取消 2")

    image = {"idx": 1, "sha256": "b", "width": 512, "height": 512, "seed": 42, "path": "/x"}
    assert format_image_info(_view(), image) == (
        "prompt: a red fox in snow\nnegative: blurry\n"
        "seed 42 · 512x512 · steps 20 · cfg 7.5 · sampler Euler a\n"
        "model shapes · provider demo\njob #7, image 2/2 · cost 2"
    )
    assert format_image_info(_view(), image, "zh") == (
        "提示词：a red fox in snow\n反向提示词：blurry\n"
        "种子 42 · 512x512 · 步数 20 · CFG 7.5 · 采样器 Euler a\n"
        "模型 shapes · 服务商 demo\n任务 #7 的第 2/2 张 · 花费 2 积分"
    )


def test_flag_help_in_chinese_lists_every_flag() -> None:
    assert help_flags() == HELP_FLAGS and help_flags("en") == HELP_FLAGS
    assert help_flags("zh") == HELP_FLAGS_ZH != HELP_FLAGS
    lines = HELP_FLAGS_ZH.splitlines()
    for flag in FLAGS:
        assert sum(line.startswith(f"  --{flag} ") for line in lines) == 1, flag
    assert len(lines) == len(HELP_FLAGS.splitlines())


# --- through the commands, on a real database -------------------------------------------------


def msg(text: str, who: UserRef | None = None, **kw: Any) -> Incoming:
    return Incoming(user=who or user("ann"), text=text, reply_to=REPLY, **kw)


async def stored_locale(app, who: UserRef) -> str | None:
    async with app.db.session() as s:
        return await s.scalar(
            select(User.locale).where(
                User.platform == who.platform, User.platform_user_id == who.id
            )
        )


async def test_lang_sets_clears_and_persists(app_factory) -> None:
    app = await app_factory()
    ann = user("ann")
    r = await app.commands.handle(msg("/lang"))
    assert not r.error and r.lang == "en"
    assert r.text.startswith("language: English (the default). Choices: /lang en")
    r = await app.commands.handle(msg("/lang", lang="zh-hans"))
    assert r.lang == "zh" and r.text.startswith("当前语言：简体中文（跟随应用的语言）。")

    r = await app.commands.handle(msg("/lang zh", lang="en-US"))
    assert (r.text, r.lang, r.error) == ("好的，之后我会用简体中文回复你。", "zh", False)
    assert await stored_locale(app, ann) == "zh"
    assert await app.jobs.user_lang(ann) == "zh"

    # a new Commands (another process, a restart) reads the choice back; it beats the app's
    fresh = Commands(app.config, app.jobs)
    r = await fresh.handle(msg("/credits", lang="en-US"))
    assert r.lang == "zh"
    assert r.text == ("你有 20 积分 · 文生图每张 1 积分，图生图每张 2 积分，批量任务每项 1 积分")
    r = await fresh.handle(msg("/lang"))
    assert r.text.startswith("当前语言：简体中文（用 /lang 设定）")

    r = await fresh.handle(msg("/language en", lang="zh-CN"))
    assert (r.text, r.lang) == ("OK, I will reply in English from now on.", "en")
    assert await stored_locale(app, ann) == "en"
    r = await fresh.handle(msg("/credits", lang="zh-CN"))
    assert r.lang == "en" and r.text.startswith("you have 20 credits · txt2img 1 per picture")

    r = await fresh.handle(msg("/lang auto", lang="zh-CN"))
    assert (r.text, r.lang) == ("好的，之后跟随你的应用语言（当前：简体中文）。", "zh")
    assert await stored_locale(app, ann) is None and await app.jobs.user_lang(ann) is None
    r = await fresh.handle(msg("/credits", lang="en-GB"))
    assert r.lang == "en"

    r = await fresh.handle(msg("/lang klingon"))
    assert r.error and r.text == "unknown language klingon; choose /lang en, /lang zh or /lang auto"
    r = await fresh.handle(msg("/lang klingon", lang="zh"))
    assert r.error and r.text.startswith("不支持 klingon 这种语言")
    r = await fresh.handle(msg("/lang 中文"))
    assert r.lang == "zh" and await stored_locale(app, ann) == "zh"
    # /lang costs nothing
    assert await app.jobs.balance(ann) == 20


async def test_the_platform_locale_is_the_last_fallback(app_factory) -> None:
    app = await app_factory()
    bob = UserRef("test", "bob", "bob", locale="zh_TW")
    r = await app.commands.handle(msg("/credits", bob))
    assert r.lang == "zh" and r.text.startswith("你有 20 积分")
    r = await app.commands.handle(msg("/credits", bob, lang="en"))
    assert r.lang == "en"
    r = await app.commands.handle(msg("/credits", UserRef("test", "cy", "cy", locale="fr")))
    assert r.lang == "en"


async def test_receipt_help_jobs_and_cancel_in_chinese(app_factory) -> None:
    app = await app_factory()
    await app.scheduler.stop()  # jobs stay queued, so cancel and retry are predictable
    zh = {"lang": "zh-hans"}
    r = await app.commands.handle(msg("/imagine a cat --size 64x64 --seed 5", **zh))
    assert not r.error and r.receipt is not None and r.lang == "zh"
    assert re.fullmatch(
        r"任务 #1 已排队 · 排在第 1 位 · demo:shapes 64x64 · 种子 5 · 花费 1 积分 · 余额 19", r.text
    )
    r = await app.commands.handle(msg("/batch a cat --size 64x64 | a dog --size 64x64", **zh))
    assert r.text.startswith("批量任务 #1：2 个任务已排队（任务 #2–#3）")
    r = await app.commands.handle(msg("/jobs", **zh))
    assert r.text.splitlines()[-1] == "#1 排队中 · 文生图 · 'a cat' · 花费 1 积分"
    r = await app.commands.handle(msg("/job 2", **zh))
    assert r.text.startswith("任务 #2：排队中（10%，已接收）· 批量任务 · demo:shapes")
    assert "批量任务 #1：排队中 2" in r.text and "积分记录：扣除 -1" in r.text

    r = await app.commands.handle(msg("/cancel 1", **zh))
    assert r.text == "任务 #1 已取消，退还 1 积分"
    r = await app.commands.handle(msg("/cancel 1", **zh))
    assert r.error and r.text == "任务 #1 已经被取消了"
    r = await app.commands.handle(msg("/retry 1", **zh))
    assert r.receipt is not None and r.text.endswith("\n重试任务 #1")
    r = await app.commands.handle(msg("/retry 2", **zh))
    assert r.error and r.text == "任务 #2 的状态是“排队中”；只有失败或已取消的任务才能重试"
    r = await app.commands.handle(msg("/retry 2"))
    assert r.text == "job #2 is queued; only failed or cancelled jobs can be retried"
    assert await app.jobs.balance(user("ann")) == 20 - 1 - 2 + 1 - 1

    r = await app.commands.handle(msg("/help", **zh))
    assert r.text.startswith("sdhost 根据提示词生成图片。命令：\n  /imagine 提示词 [参数] — ")
    assert "  /lang [en|zh|auto] — " in r.text and HELP_FLAGS_ZH in r.text
    assert r.text.endswith("你有 17 积分。") and "/grant" not in r.text
    r = await app.commands.handle(msg("/help"))
    assert "  /lang [en|zh|auto] — reply in English or 简体中文" in r.text
    assert HELP_FLAGS in r.text and r.text.endswith("You have 17 credits.")
    r = await app.commands.handle(msg("/models", **zh))
    assert r.text.startswith("demo（默认）：") and "每个任务最多 4 张" in r.text


async def test_errors_in_chinese(app_factory, monkeypatch) -> None:
    app = await app_factory(credits={"starting_grant": 1}, queue={"max_queued_per_user": 1})
    await app.scheduler.stop()
    zh = {"lang": "zh-CN"}

    async def say(text: str, **kw: Any) -> str:
        r = await app.commands.handle(msg(text, **{**zh, **kw}))
        assert r.error and r.lang == "zh", r.text
        return r.text

    assert await say("/imagine a cat --n 3 --size 64x64") == (
        "积分不足：这次需要 3 积分，你只有 1 积分。可以找管理员要一些积分，或者少生成几张（--n 1）"
    )
    r = await app.commands.handle(msg("/imagine a cat --n 3 --size 64x64"))
    assert r.text.startswith("not enough credits: this costs 3 and you have 1.")
    assert await say("hello") == "命令以 / 开头，例如 /imagine 黄昏时的灯塔；/help 可以查看所有命令"
    assert await say("/frobnicate") == "没有 /frobnicate 这个命令；/help 可以查看所有命令"
    assert await say("/job abc") == "/job 需要任务编号，例如 /job 12（编号见 /jobs）"
    assert await say("/job 99") == "你没有任务 #99；/jobs 可以查看你的任务"
    assert (await say("/img2img a watercolor cat")).startswith("图生图需要一张图片：回复一张图片")
    # flag errors from the grammar stay English
    assert "did you mean --seed" in await say("/imagine a cat --sed 4")

    ok = await app.commands.handle(msg("/imagine a cat --size 64x64", **zh))
    assert not ok.error
    await app.jobs.grant(user("ann"), 5, note="test")
    assert await say("/imagine a dog --size 64x64") == (
        "你已经有 1 个任务在排队或运行，上限是 1 个；请等一些任务完成，或者用 /cancel 取消一个"
    )

    async def broken(ref: UserRef) -> int:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(app.jobs, "balance", broken)
    text = await say("/credits")
    assert re.fullmatch(
        r"我们这边出了点问题（编号 [0-9a-f]{8}）；"
        r"用 /jobs 和 /credits 可以查看你的请求处理得怎么样了",
        text,
    )
    r = await app.commands.handle(msg("/credits"))
    assert r.text.startswith("something went wrong on our side (ref ")
    async with app.db.session() as s:
        assert len((await s.scalars(select(Job.id))).all()) == 1
