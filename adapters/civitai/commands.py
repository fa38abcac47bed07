"""``/civitai ...`` in every chat: look up models and images, and start a job from an image.

    /civitai models QUERY [--type LORA] [--base "SDXL 1.0"] [--sort "Most Downloaded"]
    /civitai model ID
    /civitai images [--model ID] [--version ID] [--user NAME] [--sort S] [--period P] [--nsfw]
    /civitai image ID          the picture and its generation parameters
    /civitai use ID            start a txt2img job with that image's settings (charged)
    /civitai hash HASH         which model a file hash (AutoV2 or SHA256) belongs to

What a chat may see follows its NSFW policy (``Incoming.nsfw_ok``): a chat that is not
allowed NSFW only ever gets PG results, whatever ``--nsfw`` says.
"""

from __future__ import annotations

import shlex
from typing import Any

from adapters.civitai.client import CivitaiClient, Image, Model, browsing_level
from bot.commands import Incoming, Reply, format_receipt
from bot.errors import BadInput
from bot.jobs import JobService

TOP = 5
USAGE = (
    "use /civitai models QUERY [--type T] [--base B] [--sort S], /civitai model ID, "
    "/civitai images [--model ID] [--user NAME], /civitai image ID, /civitai use ID, "
    "or /civitai hash HASH"
)
FLAGS = {"type", "base", "sort", "period", "model", "version", "user", "nsfw"}


def _split(rest: str) -> tuple[list[str], dict[str, str]]:
    """Words and ``--flag value`` pairs (``--nsfw`` takes no value)."""
    try:
        tokens = shlex.split(rest)
    except ValueError as exc:
        raise BadInput(f"/civitai: {exc} (close the quote)") from None
    words: list[str] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            name = tok[2:].lower()
            if name not in FLAGS:
                raise BadInput(f"/civitai does not know --{name}; {USAGE}")
            if name == "nsfw":
                flags[name] = "yes"
            else:
                if i + 1 >= len(tokens):
                    raise BadInput(f"--{name} needs a value")
                flags[name] = tokens[i + 1]
                i += 1
        else:
            words.append(tok)
        i += 1
    return words, flags


def _number(value: str | None, what: str) -> int:
    if value is None or not value.strip().lstrip("#").isdigit():
        raise BadInput(f"{what} needs a number, e.g. /civitai {what} 12345")
    return int(value.strip().lstrip("#"))


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class CivitaiCommands:
    def __init__(self, client: CivitaiClient, jobs: JobService) -> None:
        self.client = client
        self.jobs = jobs

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, msg: Incoming, rest: str, lang: str) -> Reply:
        words, flags = _split(rest)
        if not words:
            raise BadInput(USAGE)
        sub, args = words[0].lower(), words[1:]
        # a chat not allowed NSFW only ever sees PG, whatever was asked
        level = browsing_level(bool(msg.nsfw_ok and "nsfw" in flags))
        if sub == "models":
            return Reply(await self._models(" ".join(args), flags, level), lang=lang)
        if sub == "model":
            return Reply(await self._model(_number(args[0] if args else None, "model"), level))
        if sub == "images":
            return Reply(await self._images(flags, level), lang=lang)
        if sub == "image":
            image = await self._image(_number(args[0] if args else None, "image"), level)
            return Reply(_describe_image(image), lang=lang)
        if sub == "use":
            image = await self._image(_number(args[0] if args else None, "use"), level)
            params = image.params()
            if not params.prompt:
                raise BadInput(f"Civitai image {image.id} has no prompt to reuse")
            receipt = await self.jobs.submit(
                msg.user,
                "txt2img",
                [params.with_(model=None, provider=None)],
                msg.reply_to,
                idem_key=msg.message_key,
                notes=(f"settings of Civitai image {image.id}",),
            )
            return Reply(format_receipt(receipt, lang), receipt=receipt, lang=lang)
        if sub == "hash":
            if not args:
                raise BadInput("/civitai hash needs a file hash (AutoV2 or SHA256)")
            version = await self.client.version_by_hash(args[0])
            model = version.model.name if version.model else "?"
            kind = version.model.type if version.model else "?"
            return Reply(
                f"{args[0]} is {model} ({kind}), version {version.name} "
                f"(#{version.id}, model #{version.model_id}, {version.base_model or '?'})",
                lang=lang,
            )
        raise BadInput(f"unknown /civitai {sub}; {USAGE}")

    async def _models(self, query: str, flags: dict[str, str], level: int) -> str:
        page = await self.client.search_models(
            query or None,
            types=[flags["type"]] if "type" in flags else None,
            base_models=[flags["base"]] if "base" in flags else None,
            sort=flags.get("sort"),
            period=flags.get("period"),
            nsfw=level,
            limit=TOP,
        )
        items = page.items[:TOP]
        if not items:
            return f"no Civitai models match {query!r}" if query else "no Civitai models match"
        return "\n".join(_model_line(m) for m in items)

    async def _model(self, model_id: int, level: int) -> str:
        model = await self.client.model(model_id, nsfw=level)
        lines = [_model_line(model)]
        for version in model.model_versions[:3]:
            lines.append(f"  version {version.name} (#{version.id}, {version.base_model or '?'})")
            if version.trained_words:
                lines.append(f"    trigger words: {', '.join(version.trained_words[:10])}")
            for f in version.files[:3]:
                size = f.size_bytes
                mb = f"{size / 1024 / 1024:.0f} MB" if size else "? MB"
                lines.append(f"    file {f.name} · {f.type or '?'} · {mb}")
            shown = [im for im in version.images if (im.level or 1) & level][:2]
            for im in shown:
                lines.append(f"    example: {im.url}")
        return "\n".join(lines)

    async def _images(self, flags: dict[str, str], level: int) -> str:
        page = await self.client.images(
            model_id=int(flags["model"]) if flags.get("model", "").isdigit() else None,
            model_version_id=int(flags["version"]) if flags.get("version", "").isdigit() else None,
            username=flags.get("user"),
            sort=flags.get("sort"),
            period=flags.get("period"),
            nsfw=level,
            limit=TOP,
        )
        if not page.items:
            return "no Civitai images match"
        lines = []
        for im in page.items[:TOP]:
            prompt = im.params().prompt
            prompt = prompt if len(prompt) <= 100 else prompt[:99] + "…"
            lines.append(f"#{im.id} {im.url} · {prompt or '(no prompt)'}")
        lines.append("/civitai image ID shows one with its settings; /civitai use ID draws it")
        return "\n".join(lines)

    async def _image(self, image_id: int, level: int) -> Image:
        return await self.client.image(image_id, nsfw=level)


def _model_line(m: Model) -> str:
    version = m.latest_version
    base = version.base_model if version and version.base_model else "?"
    creator = m.creator.username if m.creator and m.creator.username else "?"
    downloads = _count(m.stats.download_count if m.stats else None)
    cover = next((im.url for im in (version.images if version else []) if im.url), "")
    line = f"#{m.id} {m.name} · {m.type or '?'} · {base} · by {creator} · {downloads} downloads"
    return f"{line}\n  {cover}" if cover else line


def _describe_image(image: Image) -> str:
    text = image.parameters_text()
    head = f"Civitai image #{image.id} {image.url or ''}".strip()
    tail = f"/civitai use {image.id} draws it with these settings"
    return "\n".join(p for p in (head, text, tail) if p)


def build(config: Any, jobs: JobService) -> CivitaiCommands:
    cfg = config.civitai
    client = CivitaiClient(cfg.api_key or None, base_url=cfg.base_url, timeout=cfg.timeout_s)
    return CivitaiCommands(client, jobs)
