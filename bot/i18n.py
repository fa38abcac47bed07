"""What the bot says, in English and Simplified Chinese.

Every text a person reads from the shared core lives in ``CATALOG`` under a key, with one
``str.format`` template per language; ``t(lang, key, **kw)`` fills one in. Adapters add
their own keys with ``register``. A ``Message`` is English text that remembers its key, so
code that returns plain strings (notes on a receipt, the answer to a cancel) keeps
working while the commands can still say it in the person's language.
"""

from __future__ import annotations

import string
from typing import Any

from bot.chat_texts import CHAT

LANGS = ("en", "zh")
DEFAULT_LANG = "en"

# Names people type after /lang besides the codes themselves.
_LANG_NAMES = {
    "english": "en",
    "英语": "en",
    "英文": "en",
    "chinese": "zh",
    "中文": "zh",
    "简体中文": "zh",
    "汉语": "zh",
}


def normalize(code: str | None) -> str | None:
    """A supported language for a platform's language code (``zh-hans``, ``en_US``...)."""
    if not code:
        return None
    primary = code.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in LANGS else None


def parse_lang(text: str) -> str | None:
    """A language as a person names it after /lang: a code or a name; None if unknown."""
    word = text.strip().lower()
    return _LANG_NAMES.get(word) or normalize(word)


def pick(*candidates: str | None) -> str:
    """The first candidate that is a supported language, else the default."""
    for code in candidates:
        lang = normalize(code)
        if lang is not None:
            return lang
    return DEFAULT_LANG


CATALOG: dict[str, dict[str, str]] = {
    # --- words -----------------------------------------------------------------------------
    "status.queued": {"en": "queued", "zh": "排队中"},
    "status.running": {"en": "running", "zh": "运行中"},
    "status.succeeded": {"en": "succeeded", "zh": "已完成"},
    "status.failed": {"en": "failed", "zh": "失败"},
    "status.cancelled": {"en": "cancelled", "zh": "已取消"},
    "status.quarantined": {"en": "quarantined", "zh": "已隔离"},
    "stage.received": {"en": "received", "zh": "已接收"},
    "stage.submitted": {"en": "submitted", "zh": "已提交"},
    "stage.generating": {"en": "generating", "zh": "生成中"},
    "stage.done": {"en": "done", "zh": "完成"},
    "stage.queued": {
        "en": "in the provider's queue (position {position}{wait})",
        "zh": "在提供方队列中（第 {position} 位{wait}）",
    },
    "stage.queued_wait": {"en": ", about {seconds} s", "zh": "，约 {seconds} 秒"},
    "kind.txt2img": {"en": "txt2img", "zh": "文生图"},
    "kind.img2img": {"en": "img2img", "zh": "图生图"},
    "kind.batch": {"en": "batch", "zh": "批量任务"},
    "failure.bad_input": {"en": "bad_input", "zh": "请求无效"},
    "failure.refused": {"en": "refused", "zh": "被服务商拒绝"},
    "failure.provider_error": {"en": "provider_error", "zh": "服务商出错"},
    "failure.timeout": {"en": "timeout", "zh": "超时"},
    "failure.cancelled": {"en": "cancelled", "zh": "已取消"},
    "failure.crash": {"en": "crash", "zh": "程序内部错误"},
    "reason.charge": {"en": "charge", "zh": "扣除"},
    "reason.refund": {"en": "refund", "zh": "退还"},
    "reason.grant": {"en": "grant", "zh": "发放"},
    "reason.debit": {"en": "debit", "zh": "扣回"},
    "past.succeeded": {"en": "finished", "zh": "完成"},
    "past.failed": {"en": "failed", "zh": "失败"},
    "past.cancelled": {"en": "been cancelled", "zh": "被取消"},
    "past.quarantined": {"en": "been stopped (quarantined)", "zh": "被停止（已隔离）"},
    "n.tasks": {"en": "{n} tasks", "zh": "{n} 个任务"},
    "n.tasks.one": {"en": "{n} task", "zh": "{n} 个任务"},
    "n.images": {"en": "{n} images", "zh": "{n} 张图"},
    "n.images.one": {"en": "{n} image", "zh": "{n} 张图"},
    "list.sep": {"en": ", ", "zh": "，"},
    "count.status": {"en": "{n} {status}", "zh": "{status} {n}"},
    # --- receipts and notes ----------------------------------------------------------------
    "receipt.duplicate": {
        "en": "already queued (same message): ",
        "zh": "这条消息已经排过队了：",
    },
    "receipt.again_job": {
        "en": "this message was already handled: job #{id} · {status}",
        "zh": "这条消息已经处理过了：任务 #{id} · {status}",
    },
    "receipt.again_batch": {
        "en": "this message was already handled: batch #{batch_id} (jobs {span}): {states}",
        "zh": "这条消息已经处理过了：批量任务 #{batch_id}（任务 {span}）：{states}",
    },
    "receipt.batch": {
        "en": "batch #{batch_id}: {tasks} queued (jobs {span}) · next in queue at "
        "position {position} · cost {cost} · balance {balance}",
        "zh": "批量任务 #{batch_id}：{tasks}已排队（任务 {span}）· 最靠前的排在第 {position} 位"
        " · 花费 {cost} 积分 · 余额 {balance}",
    },
    "receipt.job": {
        "en": "job #{id} queued · position {position} · {provider}:{model} "
        "{width}x{height}{count} · seed {seed} · cost {cost} · balance {balance}",
        "zh": "任务 #{id} 已排队 · 排在第 {position} 位 · {provider}:{model} "
        "{width}x{height}{count} · 种子 {seed} · 花费 {cost} 积分 · 余额 {balance}",
    },
    "note.embedded": {
        "en": "the picture carries its parameters: {prompt}, seed {seed}",
        "zh": "这张图自带生成参数：{prompt}，种子 {seed}",
    },
    "note.retry_of": {"en": "retry of job #{job_id}", "zh": "重试任务 #{job_id}"},
    "note.defaults": {"en": "your defaults: {items}", "zh": "用了你的默认设置：{items}"},
    "note.default.model": {"en": "model {value}", "zh": "模型 {value}"},
    "note.default.aspect": {"en": "aspect {value}", "zh": "宽高比 {value}"},
    "note.default.negative": {"en": "negative {value}", "zh": "反向提示词 {value}"},
    # --- /jobs and /job --------------------------------------------------------------------
    "jobs.none": {
        "en": "no jobs yet; try /imagine a lighthouse at dusk",
        "zh": "还没有任务，试试 /imagine 黄昏时的灯塔",
    },
    "job.line": {
        "en": "#{id} {status}{extra} · {kind} · {prompt} · cost {cost}",
        "zh": "#{id} {status}{extra} · {kind} · {prompt} · 花费 {cost} 积分",
    },
    "job.head": {
        "en": "job #{id}: {status} ({progress}%, {stage}) · {kind} on {provider}:{model}",
        "zh": "任务 #{id}：{status}（{progress}%，{stage}）· {kind} · {provider}:{model}",
    },
    "job.cost": {
        "en": "cost {cost} · attempts {attempts}",
        "zh": "花费 {cost} 积分 · 尝试 {attempts} 次",
    },
    "job.note": {"en": "note", "zh": "备注"},
    "job.error": {"en": "{failure}: {error}", "zh": "{failure}：{error}"},
    "job.batch": {"en": "batch #{batch_id}: {counts}", "zh": "批量任务 #{batch_id}：{counts}"},
    "job.image": {
        "en": "image {number}: {path} ({width}x{height}, seed {seed})",
        "zh": "图 {number}：{path}（{width}x{height}，种子 {seed}）",
    },
    "job.image_here": {
        "en": "image {number}: {width}x{height}, seed {seed}",
        "zh": "图 {number}：{width}x{height}，种子 {seed}",
    },
    "job.ledger": {"en": "ledger: {reason} {delta}", "zh": "积分记录：{reason} {delta}"},
    "job.took": {"en": "took {seconds:.1f}s", "zh": "用时 {seconds:.1f} 秒"},
    "job.waiting": {
        "en": "waiting for {seconds:.0f}s · position {position} in the queue",
        "zh": "已等待 {seconds:.0f} 秒 · 排在第 {position} 位",
    },
    # --- status of a job in progress, a batch, one picture ----------------------------------
    "status.head": {"en": "{where}: {status} · {stage}", "zh": "{where}：{status} · {stage}"},
    "status.details": {
        "en": "{route} · {size} · seed {seed} · cost {cost}",
        "zh": "{route} · {size} · 种子 {seed} · 花费 {cost} 积分",
    },
    "status.position": {"en": "position {position} in the queue", "zh": "排在第 {position} 位"},
    "batch.status": {
        "en": "batch #{batch_id}: {done}/{size} done · {running} running · {queued} queued"
        " · {failed} failed",
        "zh": "批量任务 #{batch_id}：已完成 {done}/{size} · 运行中 {running} · 排队中 {queued}"
        " · 失败 {failed}",
    },
    "batch.cancelled": {"en": " · {cancelled} cancelled", "zh": " · 已取消 {cancelled}"},
    "info.prompt": {"en": "prompt: {prompt}", "zh": "提示词：{prompt}"},
    "info.negative": {"en": "negative: {negative}", "zh": "反向提示词：{negative}"},
    "info.seed_size": {
        "en": "seed {seed} · {width}x{height}",
        "zh": "种子 {seed} · {width}x{height}",
    },
    "info.steps": {"en": "steps {steps}", "zh": "步数 {steps}"},
    "info.cfg": {"en": "cfg {cfg}", "zh": "CFG {cfg}"},
    "info.sampler": {"en": "sampler {sampler}", "zh": "采样器 {sampler}"},
    "info.strength": {"en": "strength {strength}", "zh": "重绘幅度 {strength}"},
    "info.model": {
        "en": "model {model} · provider {provider}",
        "zh": "模型 {model} · 服务商 {provider}",
    },
    "info.job": {
        "en": "job #{job_id}, image {number}/{count} · cost {cost}",
        "zh": "任务 #{job_id} 的第 {number}/{count} 张 · 花费 {cost} 积分",
    },
    # --- what happened to a job (delivered events) -----------------------------------------
    "outcome.where": {"en": "job #{job_id}", "zh": "任务 #{job_id}"},
    "outcome.where_batch": {
        "en": "job #{job_id} (batch #{batch_id} task {task})",
        "zh": "任务 #{job_id}（批量任务 #{batch_id} 第 {task} 项）",
    },
    "outcome.finished": {
        "en": "{where} succeeded · {images} · {elapsed}s{refund} · balance {balance}",
        "zh": "{where} 已完成 · {images} · 用时 {elapsed} 秒{refund} · 余额 {balance}",
    },
    "outcome.refund_part": {"en": " · refunded {refunded}", "zh": " · 退还 {refunded} 积分"},
    "outcome.cancelled": {
        "en": "{where} · refunded {refunded} · balance {balance}",
        "zh": "{where} 已取消 · 退还 {refunded} 积分 · 余额 {balance}",
    },
    "outcome.failed": {
        "en": "{where} {failure}: {message} · {refund} · balance {balance}",
        "zh": "{where} 失败（{failure}）：{message} · {refund} · 余额 {balance}",
    },
    "outcome.refunded": {"en": "refunded {refunded}", "zh": "退还 {refunded} 积分"},
    "outcome.not_refunded": {"en": "not refunded", "zh": "不退还积分"},
    # --- /credits, /models, /help ----------------------------------------------------------
    "credits": {
        "en": "you have {balance} credits · txt2img {txt2img} per picture, "
        "img2img {img2img} per picture, batch {batch} per task",
        "zh": "你有 {balance} 积分 · 文生图每张 {txt2img} 积分，"
        "图生图每张 {img2img} 积分，批量任务每项 {batch} 积分",
    },
    "models.provider": {
        "en": "{name}{default}: {description} · txt2img {txt2img}, img2img {img2img} "
        "credits per picture · up to {max_images} per job, {max_size}px",
        "zh": "{name}{default}：{description} · 每张图：文生图 {txt2img} 积分，"
        "图生图 {img2img} 积分 · 每个任务最多 {max_images} 张，最大 {max_size}px",
    },
    "models.default": {"en": " (default)", "zh": "（默认）"},
    "models.none": {"en": "no providers are configured", "zh": "还没有配置任何服务商"},
    "models.unknown": {
        "en": "no provider is called {name}; configured: {known}",
        "zh": "没有名为 {name} 的服务商；已配置：{known}",
    },
    # Capabilities.lists of a provider (its own GPUs): what --lora, --sampler, ... may name.
    "models.list": {"en": "  {kind} ({count}): {names}", "zh": "  {kind}（{count} 个）：{names}"},
    "models.list.loras": {"en": "LoRAs (--lora)", "zh": "LoRA（--lora）"},
    "models.list.samplers": {"en": "samplers (--sampler)", "zh": "采样器（--sampler）"},
    "models.list.schedulers": {"en": "schedulers (--scheduler)", "zh": "调度器（--scheduler）"},
    "models.list.vaes": {"en": "VAEs (--vae)", "zh": "VAE（--vae）"},
    "models.list.workflows": {"en": "workflows (--workflow)", "zh": "工作流（--workflow）"},
    "models.list.upscalers": {"en": "upscalers (Upscale)", "zh": "放大模型（放大按钮）"},
    "models.more": {"en": "and {n} more", "zh": "等，另有 {n} 个"},
    "models.detail": {
        "en": "/models {name} lists them all",
        "zh": "发送 /models {name} 查看完整列表",
    },
    "help.intro": {
        "en": "sdhost makes pictures from prompts. Commands:",
        "zh": "sdhost 根据提示词生成图片。命令：",
    },
    "help.a1111": {
        "en": "You can also paste an A1111/Civitai parameter block after /imagine.",
        "zh": "也可以在 /imagine 后面粘贴 A1111/Civitai 的参数块。",
    },
    "help.balance": {"en": "You have {balance} credits.", "zh": "你有 {balance} 积分。"},
    "help.admin": {"en": "Admin commands:", "zh": "管理员命令："},
    "usage.imagine": {"en": "imagine PROMPT [flags]", "zh": "imagine 提示词 [参数]"},
    "usage.img2img": {
        "en": "img2img PATH_OR_URL PROMPT [--strength 0..1]",
        "zh": "img2img 路径或网址 提示词 [--strength 0..1]",
    },
    "usage.upscale": {
        "en": "upscale [JOB [PICTURE]] [--scale 1.5..4] (or reply to a picture)",
        "zh": "upscale [任务编号 [图片序号]] [--scale 1.5..4]（或回复一张图片）",
    },
    "usage.batch": {"en": "batch PROMPT | PROMPT | …", "zh": "batch 提示词 | 提示词 | …"},
    "usage.credits": {"en": "credits", "zh": "credits"},
    "usage.jobs": {"en": "jobs", "zh": "jobs"},
    "usage.job": {"en": "job ID", "zh": "job 编号"},
    "usage.cancel": {"en": "cancel ID", "zh": "cancel 编号"},
    "usage.retry": {"en": "retry ID", "zh": "retry 编号"},
    "usage.models": {"en": "models", "zh": "models"},
    "usage.lang": {"en": "lang [en|zh|auto]", "zh": "lang [en|zh|auto]"},
    "usage.settings": {
        "en": "settings [model|aspect|negative VALUE|off]",
        "zh": "settings [model|aspect|negative 值|off]",
    },
    "usage.help": {"en": "help", "zh": "help"},
    "usage.grant": {"en": "grant @name|ID N [note]", "zh": "grant @用户名|ID 数量 [备注]"},
    "usage.ban": {"en": "ban @name|ID", "zh": "ban @用户名|ID"},
    "usage.unban": {"en": "unban @name|ID", "zh": "unban @用户名|ID"},
    "usage.stats": {"en": "stats", "zh": "stats"},
    "help.imagine": {
        "en": "make pictures from a prompt (also /draw)",
        "zh": "根据提示词生成图片（也可以用 /draw）",
    },
    "help.img2img": {
        "en": "redraw a picture (or reply to one)",
        "zh": "重绘一张图片（也可以直接回复图片）",
    },
    "help.upscale": {
        "en": "enlarge one of this bot's pictures (×2 unless --scale; the price of an "
        "img2img; only pictures from providers that can upscale)",
        "zh": "放大本机器人画的一张图片（默认 ×2，可用 --scale；按图生图计费；"
        "只适用于能放大的服务商画的图片）",
    },
    "help.batch": {
        "en": "up to 10 prompts at once (one per line, or PROMPT --n K)",
        "zh": "一次最多 10 个提示词（每行一个，或者 提示词 --n K）",
    },
    "help.credits": {"en": "your balance", "zh": "查看积分余额"},
    "help.jobs": {"en": "your recent jobs", "zh": "最近的任务"},
    "help.job": {"en": "one job in detail", "zh": "查看一个任务的详情"},
    "help.cancel": {
        "en": "cancel a job (queued jobs are refunded)",
        "zh": "取消任务（还在排队的任务会退还积分）",
    },
    "help.retry": {
        "en": "run a failed or cancelled job again (charged again)",
        "zh": "重新运行失败或已取消的任务（会再次扣积分）",
    },
    "help.models": {"en": "providers, models and prices", "zh": "服务商、模型和价格"},
    "help.lang": {
        "en": "reply in English or 简体中文 (auto: your app's language)",
        "zh": "用 English 或简体中文回复（auto：跟随应用的语言）",
    },
    "help.help": {"en": "this text", "zh": "显示这段帮助"},
    "help.settings": {
        "en": "your own default model, aspect ratio and negative prompt "
        "(/settings clear forgets them)",
        "zh": "设置你自己的默认模型、宽高比和反向提示词（/settings clear 全部清除）",
    },
    "help.grant": {
        "en": "give credits (a negative N takes them back)",
        "zh": "发放积分（数量为负数时扣回）",
    },
    "help.ban": {"en": "stop someone from queuing jobs", "zh": "禁止某人提交任务"},
    "help.unban": {"en": "lift a ban", "zh": "解除禁止"},
    "help.stats": {
        "en": "queue, the last 24 h, credits spent, people",
        "zh": "队列、最近 24 小时的任务、积分消耗、用户数",
    },
    # --- /lang -----------------------------------------------------------------------------
    "lang.name.en": {"en": "English", "zh": "英语"},
    "lang.name.zh": {"en": "Simplified Chinese", "zh": "简体中文"},
    "lang.source.set": {"en": "set with /lang", "zh": "用 /lang 设定"},
    "lang.source.auto": {"en": "your app's language", "zh": "跟随应用的语言"},
    "lang.source.default": {"en": "the default", "zh": "默认"},
    "lang.current": {
        "en": "language: {name} ({source}). Choices: /lang en — English, "
        "/lang zh — 简体中文, /lang auto — follow your app's language",
        "zh": "当前语言：{name}（{source}）。可选：/lang en — English，"
        "/lang zh — 简体中文，/lang auto — 跟随应用的语言",
    },
    "lang.set": {
        "en": "OK, I will reply in English from now on.",
        "zh": "好的，之后我会用简体中文回复你。",
    },
    "lang.auto": {
        "en": "OK, I will follow your app's language (now: {name}).",
        "zh": "好的，之后跟随你的应用语言（当前：{name}）。",
    },
    # --- /settings -------------------------------------------------------------------------
    "settings.name.model": {"en": "model", "zh": "模型"},
    "settings.name.aspect": {"en": "aspect ratio", "zh": "宽高比"},
    "settings.name.negative": {"en": "negative prompt", "zh": "反向提示词"},
    "settings.none": {
        "en": "you have no defaults of your own: commands use the bot's.",
        "zh": "你还没有自己的默认设置：命令会用机器人的默认值。",
    },
    "settings.head": {
        "en": "your defaults, used when a command does not give that flag:",
        "zh": "你的默认设置（命令里没写对应参数时使用）：",
    },
    "settings.line": {"en": "  {name}: {value}", "zh": "  {name}：{value}"},
    "settings.how": {
        "en": "Set one with /settings model NAME (see /models), /settings aspect W:H or "
        "/settings negative TEXT; /settings model off clears one, /settings clear all.",
        "zh": "设置方法：/settings model 模型名（见 /models）、/settings aspect 宽:高、"
        "/settings negative 文字；/settings model off 清除一项，/settings clear 全部清除。",
    },
    "settings.set": {
        "en": "OK, your default {name} is now {value}.",
        "zh": "好的，你的默认{name}现在是 {value}。",
    },
    "settings.unset": {
        "en": "OK, you no longer have a default {name}.",
        "zh": "好的，已清除你的默认{name}。",
    },
    "settings.cleared": {
        "en": "OK, all your defaults are cleared.",
        "zh": "好的，你的默认设置已全部清除。",
    },
    # --- cancel ----------------------------------------------------------------------------
    "cancel.done": {
        "en": "job #{job_id} cancelled; {refunded} credits refunded",
        "zh": "任务 #{job_id} 已取消，退还 {refunded} 积分",
    },
    "cancel.running": {
        "en": "cancelling job #{job_id}; {note}",
        "zh": "正在取消任务 #{job_id}；{note}",
    },
    "cancel.note.refunded": {
        "en": "pictures it has not made yet are refunded",
        "zh": "还没生成的图片会退还积分",
    },
    "cancel.note.kept": {
        "en": "it has already reached the provider, so it is not refunded "
        "(the refund policy for {kind} jobs)",
        "zh": "它已经交给服务商处理，按{kind}任务的退款规则不退还积分",
    },
    # why a job cancelled while running gets its credits back, or not (JobService.cancel)
    "cancel.note.refunded_unbilled": {
        "en": "the pictures it has not made are refunded in full: "
        "the {provider} backend bills nothing for an unfinished picture",
        "zh": "还没生成的图片全额退还积分：{provider} 后端不会为没完成的图片收费",
    },
    "cancel.note.refunded_unsubmitted": {
        "en": "it is refunded in full: it has not reached {provider} yet",
        "zh": "全额退还积分：它还没有交给 {provider}",
    },
    "cancel.note.refunded_policy": {
        "en": "the pictures it has not made are refunded: "
        "config credits.refunds.{kind} refunds a cancel",
        "zh": "还没生成的图片会退还积分：配置 credits.refunds.{kind} 规定取消要退款",
    },
    "cancel.note.kept_billed": {
        "en": "not refunded: the hosted provider {provider} may already have billed it; "
        "see config credits.refunds.{kind}",
        "zh": "不退还积分：托管服务商 {provider} 可能已经为它计费；见配置 credits.refunds.{kind}",
    },
    # --- admin -----------------------------------------------------------------------------
    "admin.granted": {
        "en": "granted {amount} credits to {user}: balance {balance}",
        "zh": "已给 {user} 发放 {amount} 积分，余额 {balance}",
    },
    "admin.took": {
        "en": "took {amount} credits from {user}: balance {balance}",
        "zh": "已从 {user} 扣回 {amount} 积分，余额 {balance}",
    },
    "admin.banned": {
        "en": "banned {user}: they can no longer use the bot; jobs already queued are left "
        "alone (/cancel ID stops one)",
        "zh": "已禁止 {user}：对方不能再使用机器人；"
        "已经在排队的任务不受影响（可以用 /cancel 编号 取消）",
    },
    "admin.unbanned": {
        "en": "unbanned {user}: they can use the bot again",
        "zh": "已解除对 {user} 的禁止，对方可以重新使用机器人",
    },
    "stats.queue": {
        "en": "queue: {queued} queued, {running} running",
        "zh": "队列：排队中 {queued} 个，运行中 {running} 个",
    },
    "stats.jobs": {
        "en": "last 24 h: {total} jobs{detail}",
        "zh": "最近 24 小时：{total} 个任务{detail}",
    },
    "stats.jobs_detail": {"en": " — {list}", "zh": "（{list}）"},
    "stats.credits": {
        "en": "credits spent in the last 24 h: {spent} ({charged} charged, {refunded} refunded)",
        "zh": "最近 24 小时消耗积分：{spent}（扣除 {charged}，退还 {refunded}）",
    },
    "stats.people": {"en": "people: {people}", "zh": "用户数：{people}"},
    "stats.provider_spend": {
        "en": "{provider} billed in the last 24 h: {amount} {unit}",
        "zh": "最近 24 小时 {provider} 计费：{amount} {unit}",
    },
    "stats.account": {"en": "{provider} account: {status}", "zh": "{provider} 账户：{status}"},
    # --- errors ----------------------------------------------------------------------------
    "error.internal": {
        "en": "something went wrong on our side (ref {ref}); /jobs and /credits show "
        "what happened to your request",
        "zh": "我们这边出了点问题（编号 {ref}）；"
        "用 /jobs 和 /credits 可以查看你的请求处理得怎么样了",
    },
    "error.not_a_command": {
        "en": "commands start with /, for example /imagine a lighthouse at dusk; /help lists them",
        "zh": "命令以 / 开头，例如 /imagine 黄昏时的灯塔；/help 可以查看所有命令",
    },
    "error.unknown_command": {
        "en": "unknown command /{name}; /help lists the commands",
        "zh": "没有 /{name} 这个命令；/help 可以查看所有命令",
    },
    "error.job_number": {
        "en": "/{cmd} needs a job number, e.g. /{cmd} 12 (see /jobs)",
        "zh": "/{cmd} 需要任务编号，例如 /{cmd} 12（编号见 /jobs）",
    },
    "error.img2img_needs_picture": {
        "en": "img2img needs a picture: reply to one with /img2img PROMPT, or give a path "
        "or URL first, e.g. /img2img https://example.com/cat.png a watercolor cat",
        "zh": "图生图需要一张图片：回复一张图片并发送 /img2img 提示词，或者先给出路径或网址，"
        "例如 /img2img https://example.com/cat.png 水彩画风格的猫",
    },
    "error.img2img_needs_picture_short": {
        "en": "img2img needs a picture: reply to one, attach one, or give a path or URL",
        "zh": "图生图需要一张图片：回复一张图片、附上一张图片，或者给出路径或网址",
    },
    "error.img2img_empty_prompt": {
        "en": "the prompt is empty: say what the picture should become, "
        "e.g. /img2img URL a watercolor painting",
        "zh": "提示词是空的：说说这张图要变成什么样，例如 /img2img 网址 水彩画",
    },
    "error.not_enough_credits": {
        "en": "not enough credits: this costs {cost} and you have {balance}. "
        "Ask an admin for more, or ask for fewer pictures (--n 1)",
        "zh": "积分不足：这次需要 {cost} 积分，你只有 {balance} 积分。"
        "可以找管理员要一些积分，或者少生成几张（--n 1）",
    },
    "error.no_credits": {
        "en": "not enough credits: this costs {cost} and you have {balance}. Credits are "
        "given by this bot's admins (with /grant): ask one of them for some",
        "zh": "积分不足：这次需要 {cost} 积分，你只有 {balance} 积分。"
        "积分由本机器人的管理员发放（/grant）：请找管理员要一些",
    },
    "error.free_limit": {
        "en": "that is {limit} lookups in a minute, the most allowed; try again in {seconds} s",
        "zh": "一分钟内已查询 {limit} 次，已达上限；请 {seconds} 秒后再试",
    },
    "error.queue_limit": {
        "en": "you have {active} jobs waiting or running and the limit is {limit}; "
        "wait for some to finish or /cancel one",
        "zh": "你已经有 {active} 个任务在排队或运行，上限是 {limit} 个；"
        "请等一些任务完成，或者用 /cancel 取消一个",
    },
    "error.banned": {
        "en": "you are not allowed to use this bot; ask an admin if this is a mistake",
        "zh": "你已被禁止使用这个机器人；如果弄错了，请联系管理员",
    },
    "error.no_job": {"en": "no job #{job_id}", "zh": "没有任务 #{job_id}"},
    "error.no_job_of_yours": {
        "en": "no job #{job_id} of yours; /jobs lists them",
        "zh": "你没有任务 #{job_id}；/jobs 可以查看你的任务",
    },
    "error.already_finished": {
        "en": "job #{job_id} has already {past}",
        "zh": "任务 #{job_id} 已经{past}了",
    },
    "error.retry_only_failed": {
        "en": "job #{job_id} is {status}; only failed or cancelled jobs can be retried",
        "zh": "任务 #{job_id} 的状态是“{status}”；只有失败或已取消的任务才能重试",
    },
    "error.cannot_take": {
        "en": "{user} has {balance} credits; cannot take {amount}",
        "zh": "{user} 只有 {balance} 积分，扣不了 {amount} 积分",
    },
    "error.negative_balance": {"en": "a balance cannot be negative", "zh": "余额不能是负数"},
    "error.admin_only": {"en": "only admins can use /{cmd}", "zh": "只有管理员才能使用 /{cmd}"},
    "error.grant_usage": {
        "en": "usage: /grant @name|ID|platform:ID N [note], e.g. /grant @ann 50 "
        "(a negative N takes credits back)",
        "zh": "用法：/grant @用户名|ID|平台:ID 数量 [备注]，例如 /grant @ann 50"
        "（数量为负数时扣回积分）",
    },
    "error.target_usage": {
        "en": "usage: /{cmd} @name|ID|platform:ID, e.g. /{cmd} @ann",
        "zh": "用法：/{cmd} @用户名|ID|平台:ID，例如 /{cmd} @ann",
    },
    "error.unknown_person": {
        "en": "nobody called {target} has used this bot here; give their numeric id instead",
        "zh": "这里没有叫 {target} 的人用过这个机器人；请改用对方的数字 ID",
    },
    "error.ambiguous_person": {
        "en": "several people here are called {target}; give their numeric id instead",
        "zh": "这里有好几个人叫 {target}；请改用对方的数字 ID",
    },
    "error.lang_unknown": {
        "en": "unknown language {code}; choose /lang en, /lang zh or /lang auto",
        "zh": "不支持 {code} 这种语言；可以选 /lang en、/lang zh 或 /lang auto",
    },
    "error.settings_key": {
        "en": "unknown setting {setting}: choose model, aspect or negative, "
        "e.g. /settings aspect 16:9 (/settings shows yours)",
        "zh": "没有 {setting} 这个设置项：可以设置 model、aspect 或 negative，"
        "例如 /settings aspect 16:9（/settings 查看你的设置）",
    },
    "error.settings_value": {
        "en": "give a value: /settings {setting} VALUE, or /settings {setting} off to clear it",
        "zh": "请给出值：/settings {setting} 值，或者用 /settings {setting} off 清除",
    },
    "error.settings_model": {
        "en": "cannot make {model} your default model: {reason}",
        "zh": "不能把 {model} 设为默认模型：{reason}",
    },
    "note.inputs_fitted": {
        "en": "{model} takes {limit} input picture(s): used the first {limit} of the "
        "album's {count} (the one replied to first)",
        "zh": "{model} 接受 {limit} 张输入图片：用了相册 {count} 张中的前 {limit} 张"
        "（回复的那张在前）",
    },
    "note.album_unknown": {
        "en": "that album is not known to me (sent before a restart, or not shown to me): "
        "used the picture replied to alone",
        "zh": "我不认识这个相册（重启前发送的，或我没看到）：只用了回复的那张图片",
    },
    "error.model_inputs": {
        "en": "{model} takes at most {limit} input picture(s) and you gave {count}; "
        "models that take several: {several} (choose one with --model)",
        "zh": "{model} 最多接受 {limit} 张输入图片，你给了 {count} 张；"
        "可接受多张图片的模型：{several}（用 --model 选择）",
    },
    "error.gpu_unknown": {
        "en": "no GPU instance has the {what} {name!r}; some it has: {near} (see /models)",
        "zh": "没有 GPU 实例有 {what} {name!r}；可用的有：{near}（见 /models）",
    },
    "error.no_upscale": {
        "en": "{provider} cannot upscale pictures; upscaling works on pictures from your "
        "own GPUs (see /models)",
        "zh": "{provider} 不能放大图片；放大只适用于你自己的 GPU 生成的图片（见 /models）",
    },
    "error.upscale_needs_picture": {
        "en": "upscale needs one of this bot's pictures: press Upscale under it, reply to it "
        "with /upscale, or give its job and number: /upscale JOB [PICTURE] [--scale 2]",
        "zh": "放大需要本机器人画的一张图片：点图片下面的“放大”按钮，或者回复它发送 /upscale，"
        "或者给出任务编号和图片序号：/upscale 任务编号 [图片序号] [--scale 2]",
    },
    "error.upscale_factor": {
        "en": "--scale must be a number from {low} to {high}, e.g. --scale 2",
        "zh": "--scale 必须是 {low} 到 {high} 之间的数字，例如 --scale 2",
    },
    "error.upscale_too_big": {
        "en": "upscaled ×{factor} this picture would be {width}×{height}; upscales go up to "
        "{limit} pixels on the long side: use a smaller --scale",
        "zh": "这张图片放大 ×{factor} 后是 {width}×{height}；放大后长边最多 {limit} 像素："
        "请用更小的 --scale",
    },
    "error.upscale_nsfw": {
        "en": "this picture is marked NSFW and this chat does not show such pictures openly, "
        "so it is not upscaled here",
        "zh": "这张图片被标记为 NSFW，本聊天不公开显示这类图片，所以不在这里放大",
    },
    "note.upscale": {
        "en": "upscale ×{factor} of job #{job} picture {k}",
        "zh": "任务 #{job} 第 {k} 张图片放大 ×{factor}",
    },
    "error.model_prompt_long": {
        "en": "{model} takes prompts of at most {limit} characters (yours has {length}); "
        "it would cut the rest silently, so shorten it",
        "zh": "{model} 的提示词最多 {limit} 个字符（你的有 {length} 个），"
        "超出部分会被悄悄截掉，请缩短",
    },
    "error.model_negative_long": {
        "en": "{model} takes negative prompts of at most {limit} characters (yours has "
        "{length}); it would cut the rest silently, so shorten it",
        "zh": "{model} 的反向提示词最多 {limit} 个字符（你的有 {length} 个），"
        "超出部分会被悄悄截掉，请缩短",
    },
    "error.model_size": {
        "en": "{model} makes pictures of {low} to {high} megapixels with sides at most "
        "{aspect}:1; {width}x{height} is outside that, try another --size or --ar",
        "zh": "{model} 生成的图片在 {low} 到 {high} 百万像素之间、长短边之比不超过 {aspect}:1；"
        "{width}x{height} 不符合，请换一个 --size 或 --ar",
    },
    "error.settings_aspect": {
        "en": "a default aspect ratio is W:H between 1:4 and 4:1, e.g. /settings aspect 16:9 "
        "(got {value})",
        "zh": "默认宽高比要写成 宽:高，在 1:4 到 4:1 之间，例如 /settings aspect 16:9"
        "（你写的是 {value}）",
    },
    "error.file_missing": {"en": "no such file: {path}", "zh": "没有这个文件：{path}"},
    "error.file_denied": {
        "en": "permission denied: {path} cannot be read",
        "zh": "没有权限：无法读取 {path}",
    },
    "error.file_is_directory": {
        "en": "{path} is a directory, not a picture file",
        "zh": "{path} 是一个文件夹，不是图片文件",
    },
    "error.file_not_regular": {
        "en": "{path} is not a regular file (a device, a pipe or a socket); give a picture file",
        "zh": "{path} 不是普通文件（是设备、管道或套接字）；请给出一个图片文件",
    },
    "error.file_too_big": {
        "en": "{path} is too big: the limit is {limit}",
        "zh": "{path} 太大了：上限是 {limit}",
    },
    "error.file_unreadable": {
        "en": "cannot read {path}: {reason}",
        "zh": "无法读取 {path}：{reason}",
    },
    "error.image_short": {
        "en": "the image is cut short: its header says {width}x{height} pixels, but its data "
        "holds only about {rows} of the {height} rows",
        "zh": "图片不完整：文件头写的是 {width}x{height} 像素，但数据只有大约 {rows} 行"
        "（共 {height} 行）",
    },
    "error.unusable_text": {
        "en": "the text holds a character sdhost cannot take ({char}: a control character, "
        "or bytes that were not UTF-8); remove it and send it again",
        "zh": "文字里有无法处理的字符（{char}：控制字符，或不是 UTF-8 的字节）；删掉后再发一次",
    },
    "error.seed_range": {
        "en": "the seed must be a whole number 0..{max}",
        "zh": "种子必须是 0..{max} 之间的整数",
    },
    "error.steps_range": {"en": "steps must be 1..150", "zh": "步数必须在 1..150 之间"},
    "error.n_range": {
        "en": "the number of pictures must be 1..{max}",
        "zh": "图片数量必须在 1..{max} 之间",
    },
    "error.number_range": {
        "en": "a setting of this request is out of range",
        "zh": "这个请求的某个参数超出了范围",
    },
    "error.settings_negative_long": {
        "en": "a default negative prompt can be at most {limit} characters; yours has {length}",
        "zh": "默认反向提示词最多 {limit} 个字符，你的有 {length} 个",
    },
}


CATALOG.update(CHAT)  # the chat platforms' words are the core's too (see bot.chat_texts)

# The core's own keys (extensions' keys come with ``register``).
CORE_KEYS = frozenset(CATALOG)


def placeholders(template: str) -> set[str]:
    """The field names a ``str.format`` template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def t(lang: str, key: str, **kw: Any) -> str:
    """The text for ``key`` in ``lang`` (English when that language lacks it).

    An unknown key raises KeyError. ``Message`` values are rendered in the same language.
    """
    entry = CATALOG[key]
    template = entry.get(lang) or entry[DEFAULT_LANG]
    values = {k: v.render(lang) if isinstance(v, Message) else v for k, v in kw.items()}
    return template.format(**values)


def tn(lang: str, key: str, n: int, **kw: Any) -> str:
    """Like ``t`` with a count: ``key + ".one"`` when ``n`` is 1 and such a key exists."""
    one = f"{key}.one"
    return t(lang, one if n == 1 and one in CATALOG else key, n=n, **kw)


def register(messages: dict[str, dict[str, str]]) -> None:
    """Add an adapter's own texts. Each needs English; languages must use the same fields.

    Registering a key again with the same texts is fine; with different texts it is an
    error (two modules would fight over what the bot says).
    """
    for key, texts in messages.items():
        existing = CATALOG.get(key)
        if existing is not None:
            if existing != texts:
                raise ValueError(f"i18n key {key!r} is already registered with other texts")
            continue
        if DEFAULT_LANG not in texts:
            raise ValueError(f"i18n key {key!r} has no {DEFAULT_LANG!r} text")
        unknown = set(texts) - set(LANGS)
        if unknown:
            raise ValueError(f"i18n key {key!r}: unsupported languages {sorted(unknown)}")
        fields = placeholders(texts[DEFAULT_LANG])
        for lang, text in texts.items():
            if placeholders(text) != fields:
                raise ValueError(f"i18n key {key!r}: {lang!r} uses other fields than English")
    for key, texts in messages.items():
        CATALOG.setdefault(key, dict(texts))


class Message(str):
    """English text that remembers its catalog key and values, to be said in any language.

    It is a ``str`` (the English text), so callers that only print it need not know.
    """

    key: str
    kw: dict[str, Any]

    def __new__(cls, key: str, **kw: Any) -> Message:
        obj = super().__new__(cls, t(DEFAULT_LANG, key, **kw))
        obj.key = key
        obj.kw = kw
        return obj

    def render(self, lang: str) -> str:
        return t(lang, self.key, **self.kw)

    def __reduce__(self) -> Any:
        return (_message, (self.key, self.kw))


def _message(key: str, kw: dict[str, Any]) -> Message:
    return Message(key, **kw)


def term(group: str, value: Any) -> str:
    """A word from a group (``status``, ``stage``...): a ``Message`` when the catalog has
    it, otherwise the value as it is."""
    if group == "stage" and isinstance(value, str) and value.startswith("queued:"):
        return _queued(value)
    key = f"{group}.{value}"
    return Message(key) if key in CATALOG else str(value)


def _queued(value: str) -> str:
    """``queued:POSITION:SECONDS`` (see ``bot.providers.queued_stage``) in words."""
    _, position, seconds = [*value.split(":"), "", ""][:3]
    wait: str = Message("stage.queued_wait", seconds=seconds) if seconds else ""
    return Message("stage.queued", position=position or "?", wait=wait)


def render(text: str, lang: str) -> str:
    """``text`` in ``lang`` if it is a ``Message``; other strings as they are."""
    return text.render(lang) if isinstance(text, Message) else str(text)
