"""The Discord adapter's own words, and the Chinese names of its slash commands.

Replies the core writes come from ``bot.i18n``; these are the buttons, modals and notices
only Discord has, plus what discord.py's translator shows Chinese clients in the command
picker (command names, descriptions, option names).
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.i18n import register

TEXT: dict[str, dict[str, str]] = {
    "dc.btn.reroll": {"en": "Reroll", "zh": "重画"},
    "dc.btn.vary": {"en": "Vary", "zh": "变体"},
    "dc.btn.original": {"en": "Original", "zh": "原图"},
    "dc.btn.info": {"en": "Info", "zh": "参数"},
    "dc.btn.delete": {"en": "Delete", "zh": "删除"},
    "dc.not_allowed": {
        "en": "This bot is not enabled here. Ask the server's admins.",
        "zh": "这里没有启用本机器人，请联系服务器管理员。",
    },
    "dc.nsfw_blocked": {
        "en": "Picture {k} of job #{job} was withheld: this channel is not marked NSFW.",
        "zh": "任务 #{job} 的第 {k} 张图片未发送：本频道没有标记为 NSFW。",
    },
    "dc.reencoded": {
        "en": "(picture {k} was re-encoded as JPEG to fit this server's {limit} MB upload "
        "limit; the Original button has the PNG while it fits)",
        "zh": "（第 {k} 张图片为了符合本服务器 {limit} MB 的上传限制已转为 JPEG；"
        "在大小允许时可用“原图”按钮获取 PNG）",
    },
    "dc.too_big": {
        "en": "Picture {k} of job #{job} is larger than this server's {limit} MB upload limit "
        "even as a JPEG; it is kept in the bot's store.",
        "zh": "任务 #{job} 的第 {k} 张图片即使转为 JPEG 也超过本服务器 {limit} MB 的上传限制，"
        "已保存在机器人的存储中。",
    },
    "dc.original_too_big": {
        "en": "The original PNG is {mb:.1f} MB, over this server's {limit} MB upload limit.",
        "zh": "原始 PNG 有 {mb:.1f} MB，超过了本服务器 {limit} MB 的上传限制。",
    },
    "dc.no_picture": {
        "en": "That message has no picture to remix.",
        "zh": "这条消息里没有可以重绘的图片。",
    },
    "dc.picture_gone": {
        "en": "That message or its picture is gone.",
        "zh": "这条消息或其中的图片已经不存在了。",
    },
    "dc.deleted": {"en": "Deleted.", "zh": "已删除。"},
    "dc.not_yours": {
        "en": "Only the person who asked for this picture can delete it.",
        "zh": "只有生成这张图片的人才能删除它。",
    },
    "dc.remix.title": {"en": "Remix this picture", "zh": "重绘这张图片"},
    "dc.remix.prompt": {"en": "What should it become?", "zh": "要变成什么样？"},
    "dc.remix.strength": {"en": "Strength 0-1 (how much may change)", "zh": "强度 0-1（改动程度）"},
    "dc.batch.title": {"en": "Batch: one prompt per line", "zh": "批量：每行一个提示词"},
    "dc.batch.prompts": {"en": "Prompts (at most 10 lines)", "zh": "提示词（最多 10 行）"},
}

register(TEXT)

# What Chinese clients see in the command picker: names, descriptions, option names.
ZH: dict[str, str] = {
    "imagine": "画图",
    "Make pictures from a prompt": "根据提示词生成图片",
    "img2img": "图生图",
    "Redraw a picture": "重绘一张图片",
    "batch": "批量",
    "Several prompts at once, one per line": "批量生成，每行一个提示词",
    "credits": "积分",
    "Your balance and the prices": "查看积分余额和价格",
    "jobs": "任务",
    "Your recent jobs": "最近的任务",
    "job": "任务详情",
    "One job in detail": "查看一个任务的详情",
    "cancel": "取消",
    "Cancel a job": "取消任务",
    "retry": "重试",
    "Run a failed job again": "重新运行失败的任务",
    "models": "模型",
    "Providers, models and prices": "服务商、模型和价格",
    "settings": "设置",
    "Your defaults: model, aspect, negative prompt": "个人默认值：模型、宽高比、反向提示词",
    "lang": "语言",
    "Reply language": "回复语言",
    "help": "帮助",
    "What this bot does": "使用说明",
    "grant": "发放积分",
    "Give or take credits (admins)": "发放或扣除积分（管理员）",
    "ban": "封禁",
    "Stop someone using the bot (admins)": "禁止某人使用本机器人（管理员）",
    "unban": "解封",
    "Let someone use the bot again (admins)": "允许某人重新使用本机器人（管理员）",
    "stats": "统计",
    "Queue, jobs and credits of the last day (admins)": "队列、任务和最近一天的积分（管理员）",
    "Remix": "重绘",
    "civitai": "civitai",
    "Look up Civitai models and images": "查询 Civitai 的模型和图片",
    "models QUERY, model ID, images, image ID, use ID or hash HASH": (
        "models 关键词、model 编号、images、image 编号、use 编号 或 hash 哈希"
    ),
    "query": "查询",
    "prompt": "提示词",
    "What to draw; flags like --ar 16:9 work too": "要画的内容；也可以写 --ar 16:9 等参数",
    "negative": "反向提示词",
    "What to leave out": "不想要的内容",
    "aspect": "宽高比",
    "Aspect ratio": "宽高比",
    "seed": "种子",
    "Seed (-1: random)": "种子（-1 为随机）",
    "steps": "步数",
    "Sampling steps": "采样步数",
    "cfg": "cfg",
    "Prompt guidance (CFG)": "提示词引导强度（CFG）",
    "count": "数量",
    "Pictures, 1-4": "图片数量，1-4",
    "model": "模型",
    "Model (see /models)": "模型（见 /models）",
    "provider": "服务商",
    "Provider": "服务商",
    "image": "图片",
    "The picture to redraw": "要重绘的图片",
    "image2": "图片2",
    "image3": "图片3",
    "image4": "图片4",
    "Another picture, for models that take several (FLUX.2)": (
        "另一张图片，供可接受多张图片的模型使用（FLUX.2）"
    ),
    "strength": "强度",
    "How much may change, 0-1": "允许改动的程度，0-1",
    "id": "编号",
    "Job number": "任务编号",
    "language": "语言",
    "clear": "清除",
    "Forget all your defaults": "清除所有个人默认值",
    "user": "用户",
    "Who": "谁",
    "amount": "数量",
    "Credits (negative takes back)": "积分（负数为扣除）",
    "note": "备注",
    "Why": "原因",
}


class Translator(app_commands.Translator):
    """Chinese names and descriptions for Chinese Discord clients; English elsewhere."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale in (discord.Locale.chinese, discord.Locale.taiwan_chinese):
            return ZH.get(string.message)
        return None
