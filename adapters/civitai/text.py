"""What the ``/civitai`` commands say, in English and Simplified Chinese (registered into the
core's catalogue, ``bot.i18n``, by adapters/civitai/commands.py).
"""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "cv.help.lookup": {
        "en": "look models and images up on Civitai; use ID draws with an image's settings",
        "zh": "在 Civitai 上查模型和图片；use 编号 用该图片的参数画图",
    },
    "cv.usage.lookup": {
        "en": "civitai models QUERY | model ID | images | image ID | use ID | hash HASH",
        "zh": "civitai models 关键词 | model 编号 | images | image 编号 | use 编号 | hash 哈希",
    },
    "cv.help.download": {
        "en": "download a model file from Civitai into the model folders, with progress here",
        "zh": "从 Civitai 下载模型文件到模型目录，进度显示在这里",
    },
    "cv.usage.download": {
        "en": "civitai download VERSION_ID|URL [--type T] [--format F] [--fp FP] [--allow-unsafe]",
        "zh": "civitai download 版本编号|链接 [--type 类型] [--format 格式] [--fp 精度]"
        " [--allow-unsafe]",
    },
    "cv.help.downloads": {
        "en": "recent downloads; pause, resume or cancel one",
        "zh": "最近的下载；暂停、继续或取消",
    },
    "cv.usage.downloads": {
        "en": "civitai downloads | pause ID | resume ID | cancel ID",
        "zh": "civitai downloads | pause 编号 | resume 编号 | cancel 编号",
    },
    "cv.dl.queued": {
        "en": "⏳ #{id} {name}: waiting to download",
        "zh": "⏳ #{id} {name}：等待下载",
    },
    "cv.dl.running": {"en": "⬇️ #{id} {name}: downloading", "zh": "⬇️ #{id} {name}：下载中"},
    "cv.dl.paused": {"en": "⏸ #{id} {name}: paused", "zh": "⏸ #{id} {name}：已暂停"},
    "cv.dl.done": {"en": "✅ #{id} {name}: downloaded", "zh": "✅ #{id} {name}：下载完成"},
    "cv.dl.failed": {"en": "⚠️ #{id} {name}: download failed", "zh": "⚠️ #{id} {name}：下载失败"},
    "cv.dl.cancelled": {
        "en": "🚫 #{id} {name}: download cancelled",
        "zh": "🚫 #{id} {name}：下载已取消",
    },
    "cv.dl.speed": {"en": "{speed}/s, {eta} left", "zh": "{speed}/秒，剩余 {eta}"},
    "cv.dl.of": {"en": "{done} of {total}", "zh": "{done} / {total}"},
    "cv.dl.sha_checked": {
        "en": "SHA256 {sha} (matches Civitai)",
        "zh": "SHA256 {sha}（与 Civitai 一致）",
    },
    "cv.dl.sha": {"en": "SHA256 {sha}", "zh": "SHA256 {sha}"},
    "cv.dl.hint_running": {
        "en": "/civitai pause {id} · /civitai cancel {id}",
        "zh": "/civitai pause {id} 暂停 · /civitai cancel {id} 取消",
    },
    "cv.dl.hint_resume": {
        "en": "/civitai resume {id} goes on from {done}",
        "zh": "/civitai resume {id} 从 {done} 处继续",
    },
    "cv.dl.moved": {
        "en": "↪️ #{id} {name}: progress is shown on a newer message",
        "zh": "↪️ #{id} {name}：进度改在较新的消息中显示",
    },
    "cv.dl.none": {"en": "no downloads yet", "zh": "还没有下载"},
    "cv.act.use": {"en": "🎨 Use these settings", "zh": "🎨 用这些参数画"},
    "cv.act.use_id": {"en": "🎨 Use #{id}", "zh": "🎨 用 #{id} 的参数画"},
    "cv.act.images": {"en": "🖼 Example images", "zh": "🖼 示例图片"},
    "cv.act.download": {"en": "⬇️ Download {name}", "zh": "⬇️ 下载 {name}"},
    "cv.use_hint": {
        "en": "/civitai use {id} draws it with these settings",
        "zh": "/civitai use {id} 用这些参数画",
    },
    "cv.images_hint": {
        "en": "/civitai image ID shows one with its settings; /civitai use ID draws it",
        "zh": "/civitai image 编号 查看参数；/civitai use 编号 用其参数画图",
    },
    "cv.dl.off": {
        "en": "model downloads are not available in this process",
        "zh": "此进程不提供模型下载",
    },
}

# Civitai's failures as a chat says them (``CivitaiError.kind``; the transport only names
# the kind, the sentence is here). The English matches the error's own line.
ERRORS = {
    "cv.err.timeout": {
        "en": "Civitai did not answer in time ({what}); try again later",
        "zh": "Civitai 没有及时回应（{what}），请稍后再试",
    },
    "cv.err.unreachable": {
        "en": "Civitai could not be reached ({what}); try again later",
        "zh": "无法连接 Civitai（{what}），请稍后再试",
    },
    "cv.err.web_page": {
        "en": "Civitai answered {what} with a web page instead of data (HTTP {status}), "
        "probably a Cloudflare check or an outage; try again later",
        "zh": "Civitai 对 {what} 返回了网页而不是数据（HTTP {status}），"
        "可能是 Cloudflare 验证或服务故障，请稍后再试",
    },
    "cv.err.rejected": {
        "en": "Civitai rejected {what}{detail}",
        "zh": "Civitai 拒绝了 {what}{detail}",
    },
    "cv.err.key_refused": {
        "en": "Civitai refused the API key for {what}; check civitai.api_key",
        "zh": "Civitai 不接受 {what} 的 API 密钥，请检查 civitai.api_key",
    },
    "cv.err.key_needed": {
        "en": "Civitai needs an API key for {what}: set civitai.api_key",
        "zh": "Civitai 需要 API 密钥才能 {what}：请设置 civitai.api_key",
    },
    "cv.err.refused": {
        "en": "Civitai refused {what}{detail}",
        "zh": "Civitai 拒绝了 {what}{detail}",
    },
    "cv.err.not_found": {
        "en": "Civitai has no {what}",
        "zh": "Civitai 上没有 {what}",
    },
    "cv.err.rate_limited": {
        "en": "Civitai is rate limiting us{retry}; try again later",
        "zh": "Civitai 正在限制请求频率{retry}，请稍后再试",
    },
    "cv.err.unavailable": {
        "en": "Civitai is unavailable (HTTP {status}{detail}); try again later",
        "zh": "Civitai 暂时不可用（HTTP {status}{detail}），请稍后再试",
    },
}
TEXT.update(ERRORS)
