"""What the chat platforms say beyond the core's replies: buttons, uploads, notices, menus.

Part of the core catalogue (``bot.i18n`` merges it), so every text exists whichever platforms
a process runs: a Discord-only process once failed on a key defined in the Telegram module.
Keys ``tg.*`` and ``dc.*`` are words one platform's client shows; ``chat.*`` are shared.
"""

from __future__ import annotations

CHAT: dict[str, dict[str, str]] = {
    "tg.working": {"en": "⏳ working on it…", "zh": "⏳ 处理中…"},
    "chat.preview": {
        "en": "👀 job #{job} as it develops (the pictures follow)",
        "zh": "👀 任务 #{job} 的实时预览（完成后发送图片）",
    },
    "tg.btn.reroll": {"en": "🔁 Reroll", "zh": "🔁 重画"},
    "tg.btn.vary": {"en": "🎨 Vary", "zh": "🎨 变体"},
    "tg.btn.original": {"en": "📄 Original", "zh": "📄 原图"},
    "tg.btn.info": {"en": "ℹ️ Info", "zh": "ℹ️ 参数"},
    "tg.btn.upscale": {"en": "🔍 Upscale ×2", "zh": "🔍 放大 ×2"},
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
    "tg.cmd.upscale": {
        "en": "enlarge one of my pictures (reply to it)",
        "zh": "放大我画的图片（回复一张图片使用）",
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
    # /start and /help, written for each platform (``Incoming.texts`` picks them)
    "chat.welcome.telegram": {
        "en": "👋 Hi! I draw pictures from what you write.\n"
        "Try: /imagine a red fox in the snow\n"
        "Or send me a photo with what it should become as its caption.\n"
        "You have {balance} credits. /help shows everything.",
        "zh": "👋 你好！我可以根据文字画图。\n"
        "试试：/imagine 雪地里的一只红狐狸\n"
        "或者发一张照片，把想要的效果写在图片说明里。\n"
        "你有 {balance} 积分。/help 查看全部用法。",
    },
    "chat.help.telegram": {
        "en": "What I do:\n"
        "/imagine PROMPT — pictures from a prompt, e.g. /imagine a lighthouse at dusk --ar 16:9\n"
        "/img2img PROMPT — reply with it to a photo to redraw that photo, or send a photo "
        "with the prompt as its caption; a reply to an album uses all its pictures\n"
        "/batch — several prompts at once: one prompt per line under the command\n"
        "Under each picture: 🔁 Reroll (same prompt, new seed), 🎨 Vary (a variation of it), "
        "📄 Original (the PNG file, with its parameters), ℹ️ Info (how it was made), and "
        "🔍 Upscale ×2 under pictures from providers that can enlarge them (also /upscale "
        "in reply to one, --scale 1.5 to 4). Reroll, Vary and Upscale cost like a new "
        "picture.\n"
        "Options go after the prompt: --ar 16:9 (shape), --n 2 (1-4 pictures), --seed 7, "
        "--no what to leave out, --model NAME (see /models), --strength 0.5 (how much "
        "/img2img may change).\n"
        "On the operator's own GPUs also: --lora NAME:0.8 (repeat for more, or <lora:NAME:0.8> "
        "in the prompt), --sampler, --scheduler karras, --vae NAME, --hires; /models lists "
        "what they have.\n"
        "/credits — your balance and the prices · /jobs — your recent jobs · /cancel ID · "
        "/retry ID\n"
        "/models — what can draw · /settings — your default model, shape, negative prompt · "
        "/lang en or zh — the language I answer in\n"
        "In groups I answer commands and replies to my pictures.",
        "zh": "我能做什么：\n"
        "/imagine 提示词 — 根据提示词画图，例如 /imagine 黄昏的灯塔 --ar 16:9\n"
        "/img2img 提示词 — 回复一张照片发送，即可重绘这张照片；也可以发照片时把提示词写在"
        "图片说明里；回复相册时会用上相册里的所有图片\n"
        "/batch — 一次多个提示词：命令下面每行写一个\n"
        "每张图片下面的按钮：🔁 重画（同样的提示词，新的种子）、🎨 变体（在这张图上变化）、"
        "📄 原图（PNG 文件，内含生成参数）、ℹ️ 参数（怎么画出来的），能放大图片的服务商画的"
        "图片下面还有 🔍 放大 ×2（也可以回复图片发送 /upscale，--scale 1.5 到 4）。"
        "重画、变体和放大按新图片计费。\n"
        "参数写在提示词后面：--ar 16:9（宽高比）、--n 2（1-4 张）、--seed 7、--no 不想要的内容、"
        "--model 模型名（见 /models）、--strength 0.5（图生图的改动程度）。\n"
        "在运营者自己的 GPU 上还可以用：--lora 名称:0.8（可重复，或在提示词里写 <lora:名称:0.8>）、"
        "--sampler、--scheduler karras、--vae 名称、--hires（高清修复）；/models 会列出可用的。\n"
        "/credits — 积分余额和价格 · /jobs — 最近的任务 · /cancel 编号 · /retry 编号\n"
        "/models — 可用的模型 · /settings — 个人默认模型、宽高比、反向提示词 · "
        "/lang en 或 zh — 回复语言\n"
        "在群组里，我只回应命令和对我图片的回复。",
    },
    "chat.help.discord": {
        "en": "What I do:\n"
        "/imagine — pictures from the prompt option; aspect, count (1-4), seed, negative, "
        "model and the others are optional (lora, vae, scheduler and hires: for the "
        "operator's own GPUs, completed from what they have)\n"
        "/img2img — redraw the picture in the image option (image2-image4 add more, for "
        "models that take several); strength says how much may change\n"
        "/batch — opens a box: several prompts, one per line\n"
        "Remix — on any message with a picture, open the message's Apps menu (right-click "
        "or long-press › Apps › Remix) and say what it should become\n"
        "Under each picture: Reroll (same prompt, new seed), Vary (a variation of it), "
        "Original (the PNG file, with its parameters), Info (how it was made), and Delete "
        "for the person who asked; Upscale ×2 under pictures from providers that can "
        "enlarge them. Reroll, Vary and Upscale cost like a new picture.\n"
        "/credits — your balance and the prices · /jobs — your recent jobs · /job · "
        "/cancel · /retry (each takes the job number)\n"
        "/models — what can draw · /settings — your defaults · /lang — the language I "
        "answer in",
        "zh": "我能做什么：\n"
        "/imagine — 根据 prompt 选项画图；宽高比、数量（1-4）、种子、反向提示词、模型等选项"
        "都可以不填（lora、vae、调度器和高清修复用于运营者自己的 GPU，会按其已有内容自动补全）\n"
        "/img2img — 重绘 image 选项里的图片（image2-image4 可以再加图片，供能接受多张图片的"
        "模型使用）；strength 决定改动程度\n"
        "/batch — 打开一个输入框：多个提示词，每行一个\n"
        "重绘（Remix）— 在任何带图片的消息上打开消息的“应用”菜单（右键或长按 › 应用 › 重绘），"
        "说说要变成什么样\n"
        "每张图片下面的按钮：重画（同样的提示词，新的种子）、变体（在这张图上变化）、"
        "原图（PNG 文件，内含生成参数）、参数（怎么画出来的），以及提问者可用的删除；"
        "能放大图片的服务商画的图片下面还有“放大 ×2”。重画、变体和放大按新图片计费。\n"
        "/credits — 积分余额和价格 · /jobs — 最近的任务 · /job · /cancel · /retry"
        "（都需要任务编号）\n"
        "/models — 可用的模型 · /settings — 个人默认值 · /lang — 回复语言",
    },
    "tg.original_withheld_blur": {
        "en": "This picture is marked NSFW and this chat hides such pictures behind a "
        "spoiler; a file cannot be hidden, so its original PNG is not posted here.",
        "zh": "这张图片被标记为 NSFW，本聊天会把这类图片遮挡起来；文件无法遮挡，所以不在这里"
        "发送原始 PNG。",
    },
    "tg.original_withheld_block": {
        "en": "This picture is marked NSFW and this chat does not allow NSFW pictures: its "
        "original PNG is withheld.",
        "zh": "这张图片被标记为 NSFW，本聊天不允许 NSFW 图片：原始 PNG 不会发送。",
    },
    "tg.original_not_yours": {
        "en": "Only the person who asked for this picture can get its original here; "
        "Info shows how it was made.",
        "zh": "在这里只有生成这张图片的人才能获取原图；“参数”按钮可以查看它是怎么画出来的。",
    },
    "dc.btn.reroll": {"en": "Reroll", "zh": "重画"},
    "dc.btn.vary": {"en": "Vary", "zh": "变体"},
    "dc.btn.original": {"en": "Original", "zh": "原图"},
    "dc.btn.info": {"en": "Info", "zh": "参数"},
    "dc.btn.delete": {"en": "Delete", "zh": "删除"},
    "dc.btn.upscale": {"en": "Upscale ×2", "zh": "放大 ×2"},
    "dc.not_allowed": {
        "en": "This bot is not enabled here. Ask the server's admins.",
        "zh": "这里没有启用本机器人，请联系服务器管理员。",
    },
    # said only to the person once the core accepted their job; the job itself is posted
    # in the channel (a public follow-up, its status message)
    "dc.accepted": {
        "en": "✓ Accepted: your job is posted in the channel, its pictures will follow there.",
        "zh": "✓ 已受理：任务已发到频道，图片也会发在那里。",
    },
    "dc.status_failed": {
        "en": "Could not post in this channel, so nothing was queued or charged. Try again.",
        "zh": "无法在此频道发帖，因此没有排队，也没有扣积分。请再试一次。",
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
    # Mistakes in options and box fields, named as the person sees them (issue 13).
    "dc.opt.count": {
        "en": "The `count` option takes 1..{max} pictures (you gave {value}).",
        "zh": "“数量”（count）选项只能是 1..{max} 张（你填的是 {value}）。",
    },
    "dc.opt.seed": {
        "en": "The `seed` option needs a whole number 0..4294967295, or -1 for random "
        "(you gave {value}).",
        "zh": "“种子”（seed）选项需要 0..4294967295 之间的整数，-1 表示随机（你填的是 {value}）。",
    },
    "dc.opt.steps": {
        "en": "The `steps` option needs a whole number 1..150 (you gave {value}).",
        "zh": "“步数”（steps）选项需要 1..150 之间的整数（你填的是 {value}）。",
    },
    "dc.opt.cfg": {
        "en": "The `cfg` option needs a number 0..30, e.g. 7.5 (you gave {value}).",
        "zh": "“cfg”选项需要 0..30 之间的数字，例如 7.5（你填的是 {value}）。",
    },
    "dc.opt.aspect": {
        "en": "The `aspect` option needs W:H between 1:4 and 4:1, e.g. 16:9 (you gave {value}).",
        "zh": "“宽高比”（aspect）选项需要 1:4 到 4:1 之间的比例，例如 16:9（你填的是 {value}）。",
    },
    "dc.opt.strength": {
        "en": "The `strength` option needs a number 0..1, e.g. 0.6 (you gave {value}).",
        "zh": "“强度”（strength）选项需要 0..1 之间的数字，例如 0.6（你填的是 {value}）。",
    },
    "dc.opt.bad": {
        "en": "The `{option}` option: {error}",
        "zh": "“{option}”选项有误：{error}",
    },
    "dc.opt.lora_twice": {
        "en": "The `lora` option names {name} twice; keep one.",
        "zh": "“LoRA”（lora）选项里 {name} 出现了两次；请只保留一个。",
    },
    "dc.opt.prompt_empty": {
        "en": "The `prompt` option is empty: type what you want to see, e.g. a lighthouse at dusk.",
        "zh": "“提示词”（prompt）选项是空的：写下你想看到的内容，例如 黄昏时的灯塔。",
    },
    "dc.opt.not_picture": {
        "en": "The file in `{option}` is not a picture ({kind}); attach a PNG, JPEG or WebP.",
        "zh": "“{option}”里的文件不是图片（{kind}）；请上传 PNG、JPEG 或 WebP 图片。",
    },
    "dc.opt.too_big": {
        "en": "The picture in `{option}` is {mb:.1f} MB; the limit here is {limit:.0f} MB.",
        "zh": "“{option}”里的图片有 {mb:.1f} MB，本机器人的上限是 {limit:.0f} MB。",
    },
    "dc.remix.prompt_empty": {
        "en": "The “{field}” field of the Remix box is empty: type what the picture should "
        "become, e.g. as a watercolor.",
        "zh": "重绘框里的“{field}”是空的：写下图片要变成什么样，例如 水彩画风格。",
    },
    "dc.remix.strength_bad": {
        "en": "The “{field}” field of the Remix box needs a number 0..1, e.g. 0.6 "
        "(you gave {value}).",
        "zh": "重绘框里的“{field}”需要 0..1 之间的数字，例如 0.6（你填的是 {value}）。",
    },
    "dc.box.expired": {
        "en": "This box was open too long, or the bot restarted meanwhile: please open it again.",
        "zh": "这个输入框打开太久了，或者机器人期间重启过：请重新打开。",
    },
    "dc.batch.empty": {
        "en": "The “{field}” field of the Batch box is empty: type one prompt per line.",
        "zh": "批量框里的“{field}”是空的：每行写一个提示词。",
    },
}

# What Chinese Discord clients see in the command picker: names, descriptions, option names.
COMMAND_NAMES_ZH: dict[str, str] = {
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
    "sampler": "采样器",
    "Sampler (your own GPUs list theirs)": "采样器（自有 GPU 会列出可用的）",
    "lora": "lora",
    "LoRAs: name or name:weight, several comma-separated": (
        "LoRA：名称 或 名称:权重，多个用逗号分隔"
    ),
    "vae": "vae",
    "VAE (your own GPUs)": "VAE（自有 GPU）",
    "scheduler": "调度器",
    "Noise schedule, e.g. karras (your own GPUs)": "噪声调度，例如 karras（自有 GPU）",
    "hires": "高清修复",
    "Hires fix: a second pass that enlarges and sharpens": "高清修复：再放大并细化一遍",
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
