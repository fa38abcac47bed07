"""The Telegram adapter's own words, in English and Simplified Chinese.

Everything the core says (receipts, errors, help) comes from the shared catalog in
``bot.i18n``; these are the bits only Telegram has: buttons, albums, file limits.
"""

from __future__ import annotations

from bot.i18n import register

TEXT: dict[str, dict[str, str]] = {
    "tg.working": {"en": "⏳ working on it…", "zh": "⏳ 处理中…"},
    "tg.btn.reroll": {"en": "🔁 Reroll", "zh": "🔁 重画"},
    "tg.btn.vary": {"en": "🎨 Vary", "zh": "🎨 变体"},
    "tg.btn.original": {"en": "📄 Original", "zh": "📄 原图"},
    "tg.btn.info": {"en": "ℹ️ Info", "zh": "ℹ️ 参数"},
    "tg.album_buttons": {
        "en": "Buttons for the {n} pictures above (numbered as in the album):",
        "zh": "上面 {n} 张图片的按钮（编号与相册顺序一致）：",
    },
    "tg.nsfw_blocked": {
        "en": "Picture {k} of job #{job} was withheld: this chat does not allow NSFW pictures.",
        "zh": "任务 #{job} 的第 {k} 张图片未发送：本聊天不允许 NSFW 图片。",
    },
    "tg.too_big_download": {
        "en": (
            "That file is {mb:.1f} MB; Telegram lets bots download files up to {limit} MB. "
            "Send a smaller picture (sent as a photo, Telegram compresses it for you)."
        ),
        "zh": (
            "这个文件有 {mb:.1f} MB，Telegram 只允许机器人下载不超过 {limit} MB 的文件。"
            "请发送更小的图片（以照片而非文件形式发送，Telegram 会自动压缩）。"
        ),
    },
    "tg.too_big_input": {
        "en": "That picture is {mb:.1f} MB; the limit here is {limit:.0f} MB.",
        "zh": "这张图片有 {mb:.1f} MB，本机器人的上限是 {limit:.0f} MB。",
    },
    "tg.not_a_picture": {
        "en": "That file is not a picture ({mime}); reply to a photo or an image file.",
        "zh": "这个文件不是图片（{mime}）；请回复一张照片或图片文件。",
    },
    "tg.download_failed": {
        "en": "Could not fetch that picture from Telegram; please try again in a moment.",
        "zh": "无法从 Telegram 获取这张图片，请稍后再试。",
    },
    "tg.photo_hint": {
        "en": "Reply to a picture with /img2img PROMPT to redraw it, or send it with the "
        "prompt as its caption.",
        "zh": "回复一张图片并发送 /img2img 提示词 即可重绘，或在发送图片时把提示词写在说明里。",
    },
    "tg.private": {
        "en": "This bot is private. Ask its operator to allow your Telegram id {id}.",
        "zh": "这是一个私有机器人。请让管理员把你的 Telegram ID {id} 加入允许列表。",
    },
    "tg.too_big_upload": {
        "en": "Picture {k} of job #{job} is {mb:.1f} MB, more than Telegram lets bots send "
        "({limit} MB).",
        "zh": "任务 #{job} 的第 {k} 张图片有 {mb:.1f} MB，超过了 Telegram 允许机器人发送的上限"
        "（{limit} MB）。",
    },
    "tg.original_caption": {
        "en": "#{job} picture {k}: the original PNG, with its generation parameters",
        "zh": "#{job} 第 {k} 张：原始 PNG，内含生成参数",
    },
    "tg.queued_toast": {"en": "queued", "zh": "已排队"},
    "tg.cmd.imagine": {"en": "make pictures from a prompt", "zh": "根据提示词生成图片"},
    "tg.cmd.img2img": {
        "en": "redraw a picture (reply to it)",
        "zh": "重绘图片（回复一张图片使用）",
    },
    "tg.cmd.batch": {
        "en": "several prompts at once, one per line",
        "zh": "批量生成，每行一个提示词",
    },
    "tg.cmd.credits": {"en": "your balance and prices", "zh": "查看积分余额和价格"},
    "tg.cmd.jobs": {"en": "your recent jobs", "zh": "最近的任务"},
    "tg.cmd.cancel": {"en": "cancel a job", "zh": "取消任务"},
    "tg.cmd.retry": {"en": "run a failed job again", "zh": "重试失败的任务"},
    "tg.cmd.models": {"en": "providers, models and prices", "zh": "服务商、模型和价格"},
    "tg.cmd.lang": {"en": "reply language: en or zh", "zh": "回复语言：en 或 zh"},
    "tg.cmd.settings": {
        "en": "your default model, aspect, negative prompt",
        "zh": "个人默认模型、宽高比、反向提示词",
    },
    "tg.cmd.help": {"en": "what this bot does", "zh": "使用说明"},
    "tg.cmd.civitai": {
        "en": "look up Civitai models and images, draw with their settings",
        "zh": "查找 Civitai 模型和图片，用其参数画图",
    },
}

register(TEXT)

# The commands the Telegram client lists (setMyCommands), in menu order.
MENU = (
    "imagine",
    "img2img",
    "batch",
    "credits",
    "jobs",
    "cancel",
    "retry",
    "models",
    "settings",
    "lang",
    "help",
)
EXTENSION_MENU = ("civitai",)  # listed when that extension is on
