"""What the ``/civitai`` commands say, in English and Simplified Chinese (registered into the
core's catalogue, ``bot.i18n``, by adapters/civitai/commands.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

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

# The model downloads' failures and refusals (adapters/civitai/download/errors.py builds
# each from its ``en`` text, stores the kind and values with the task, and a chat says it
# here in its own language).
DOWNLOAD_ERRORS = {
    "cv.err.dl_unsafe": {
        "en": "refusing to download {file} of {name}: {verdicts}. A model file that fails "
        "Civitai's scans can run code when it is loaded; an admin can still take it with "
        "--allow-unsafe",
        "zh": "拒绝下载 {name} 的 {file}：{verdicts}。未通过 Civitai 扫描的模型文件在加载时"
        "可能执行代码；管理员仍可用 --allow-unsafe 下载",
    },
    "cv.err.dl_too_big": {
        "en": "{file} of {name} is {size}, over the {limit} limit (civitai.max_download_gb)",
        "zh": "{name} 的 {file} 大小为 {size}，超过 {limit} 的上限（civitai.max_download_gb）",
    },
    "cv.err.dl_offer_too_big": {
        "en": "the file host offers {size} for {name}, over the {limit} limit "
        "(civitai.max_download_gb)",
        "zh": "文件服务器为 {name} 提供 {size}，超过 {limit} 的上限（civitai.max_download_gb）",
    },
    "cv.err.dl_no_space": {
        "en": "not enough free disk space for {name} in {folder}: it needs {needed} "
        "(with {margin} to spare), {free} is free",
        "zh": "{folder} 所在磁盘空间不足以存放 {name}：需要 {needed}（含 {margin} 余量），"
        "仅剩 {free}",
    },
    "cv.err.dl_damaged": {
        "en": "the download of {name} is damaged ({problems}); it was deleted: try again",
        "zh": "{name} 的下载已损坏（{problems}），已删除，请重试",
    },
    "cv.err.dl_sent_too_much": {
        "en": "the file host sent more than the {limit} for {name}; stopped after {bytes} "
        "bytes and deleted what came",
        "zh": "文件服务器为 {name} 发送的数据超过了 {limit}；已在 {bytes} 字节处停止并删除",
    },
    "cv.err.dl_offer_mismatch": {
        "en": "the file host offers {size} ({bytes} bytes) for {name}, which Civitai lists "
        "as {listed} bytes: refused before downloading",
        "zh": "文件服务器为 {name} 提供 {size}（{bytes} 字节），而 Civitai 列出的是 {listed} "
        "字节：下载前已拒绝",
    },
    "cv.err.dl_name_clash": {
        "en": "{path} already exists and is not {name}; move it away, or set "
        'civitai.on_name_clash = "suffix"',
        "zh": '{path} 已存在且不是 {name}；请移走它，或设置 civitai.on_name_clash = "suffix"',
    },
    "cv.err.dl_appeared": {
        "en": "{path} appeared while downloading; move it away and resume",
        "zh": "下载期间出现了 {path}；请移走它后继续下载",
    },
    "cv.err.dl_gave_up": {
        "en": "could not download {name}: {reason} ({tries} tries in a row got nowhere; "
        "resume it later)",
        "zh": "无法下载 {name}：{reason}（连续 {tries} 次尝试都没有进展，请稍后继续）",
    },
    "cv.err.dl_later": {
        "en": "could not download {name}: {reason}; try again later",
        "zh": "无法下载 {name}：{reason}，请稍后再试",
    },
    "cv.err.dl_login_key": {
        "en": "Civitai requires a login to download {name} and did not accept "
        "civitai.api_key: check the key (Civitai > Account settings > API keys)",
        "zh": "Civitai 要求登录才能下载 {name}，且不接受 civitai.api_key：请检查密钥"
        "（Civitai > Account settings > API keys）",
    },
    "cv.err.dl_login": {
        "en": "Civitai requires a login to download {name}: set civitai.api_key "
        "(or SDHOST_CIVITAI__API_KEY) to a key from Civitai > Account settings > API keys",
        "zh": "Civitai 要求登录才能下载 {name}：请把 civitai.api_key（或 "
        "SDHOST_CIVITAI__API_KEY）设为 Civitai > Account settings > API keys 中的密钥",
    },
    "cv.err.dl_disabled": {
        "en": "the creator of {name} has disabled downloads on Civitai",
        "zh": "{name} 的作者在 Civitai 上禁用了下载",
    },
    "cv.err.dl_archived": {
        "en": "Civitai archived {name}: its files are no longer available for download",
        "zh": "Civitai 已归档 {name}：其文件不再提供下载",
    },
    "cv.err.dl_early_access": {
        "en": "{name} is in Early Access on Civitai{until}: only people who bought access "
        "(with Buzz, on civitai.com, as the owner of civitai.api_key) can download it before "
        "then",
        "zh": "{name} 在 Civitai 上处于抢先体验期{until}：在此之前只有购买了访问权的人"
        "（在 civitai.com 用 Buzz 购买，且是 civitai.api_key 的所有者）才能下载",
    },
    "cv.err.dl_no_file": {
        "en": "Civitai has no downloadable file{which} for {name}",
        "zh": "Civitai 上没有 {name} 的可下载文件{which}",
    },
    "cv.err.dl_not_started": {
        "en": "Civitai could not start the download of {name} (HTTP {status}{detail})",
        "zh": "Civitai 无法开始下载 {name}（HTTP {status}{detail}）",
    },
    "cv.err.dl_quota": {
        "en": "Civitai's 24-hour download quota for this account (or address) is used "
        "up: try again tomorrow, or contact support@civitai.com",
        "zh": "此账号（或地址）在 Civitai 的 24 小时下载额度已用完：请明天再试，"
        "或联系 support@civitai.com",
    },
}
TEXT.update(DOWNLOAD_ERRORS)
# the values of those sentences that are words too (each value stored in both languages)
TEXT.update(
    {
        "cv.dl.pickle_scan": {"en": "pickle scan", "zh": "pickle 扫描"},
        "cv.dl.virus_scan": {"en": "virus scan", "zh": "病毒扫描"},
        "cv.dl.scan_says": {
            "en": 'Civitai\'s {scan} says "{verdict}"',
            "zh": "Civitai {scan}结果为“{verdict}”",
        },
        "cv.dl.scan_none": {
            "en": "Civitai's {scan} has no result",
            "zh": "Civitai {scan}没有结果",
        },
        "cv.dl.note": {"en": " ({note})", "zh": "（{note}）"},
        "cv.dl.bad_sha": {
            "en": "SHA256 {actual}… instead of Civitai's {expected}…",
            "zh": "SHA256 为 {actual}…，而 Civitai 的是 {expected}…",
        },
        "cv.dl.bad_autov2": {
            "en": "AutoV2 {actual} instead of Civitai's {expected}",
            "zh": "AutoV2 为 {actual}，而 Civitai 的是 {expected}",
        },
        "cv.dl.bad_size": {
            "en": "{size} bytes where Civitai lists {listed}",
            "zh": "{size} 字节，而 Civitai 列出的是 {listed}",
        },
    }
)
LANGS = ("en", "zh")


def said(lang: str, key: str, **kw: object) -> str:
    """``key`` of this catalogue in ``lang`` (for the values stored in every language)."""
    entry = TEXT[key]
    return (entry.get(lang) or entry["en"]).format(**kw)


def localised(kw: Mapping[str, object], lang: str) -> dict[str, object]:
    """``kw`` with each value given per language (``{"en": ..., "zh": ...}``) in ``lang``."""
    return {
        k: (v.get(lang) or v.get("en", "")) if isinstance(v, dict) else v for k, v in kw.items()
    }


class _Blank(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def say_error(stored: str | None, lang: str) -> str:
    """A download's stored ``error`` in ``lang``: the catalogue sentence for the stored kind
    and values (``{"key": ..., "kw": {...}, "en": ...}``), else the text as it is (errors
    stored before kinds were, and failures without a kind)."""
    if not stored:
        return ""
    if not stored.startswith('{"key"'):
        return stored
    try:
        data = json.loads(stored)
        key, kw = str(data["key"]), dict(data.get("kw") or {})
    except (ValueError, KeyError, TypeError):
        return stored
    entry = TEXT.get(key)
    if entry is None:
        return str(data.get("en") or stored)
    return (entry.get(lang) or entry["en"]).format_map(_Blank(localised(kw, lang)))


def store_error(kind_key: str | None, kw: Mapping[str, object], english: str) -> str:
    """What a download task keeps as its ``error``: the kind and values, so that any later
    process says it in the reader's language (plain English when there is no kind)."""
    if not kind_key:
        return english
    return json.dumps(
        {"key": kind_key, "kw": dict(kw), "en": english}, ensure_ascii=False, default=str
    )
