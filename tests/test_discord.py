"""The Discord adapter end to end: the real discord.py client against the fake Discord.

Nothing of discord.py is mocked. Each test starts the fake (REST, gateway, CDN), an sdhost
App with the demo provider and the Discord adapter logged in to the fake, plays a person
(slash commands, the Remix context menu, modals, button clicks injected into the fake) and
checks what the fake received (messages, files, edits, follow-ups) and what the database
holds (charges).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.chat.discord import DiscordAdapter
from adapters.chat.discord.files import fit_upload
from bot.app import App
from bot.chat import UserRef
from tests.chat_helpers import RecordingDemo, decoded, png
from tests.conftest import make_config, sdhost_run
from tests.fakes.discord_api import (
    CHANNEL_ID,
    DEFAULT_TOKEN,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    OWNER_ID,
    USER_ID,
    FakeDiscord,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Env:
    def __init__(self, dc: FakeDiscord, tmp_path: Path, db_url: str) -> None:
        self.dc = dc
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.app: App | None = None
        self.adapter: DiscordAdapter | None = None
        self.provider: RecordingDemo | None = None
        self.civitai_url = "http://127.0.0.1:9"  # nothing listens: no test reaches Civitai
        self.extra_providers: dict[str, Any] = {}  # next to the demo (e.g. BFL on its fake)

    async def start(self, *, latency_s: float = 0.05, **discord: Any) -> DiscordAdapter:
        section = {
            "token": DEFAULT_TOKEN,
            "api_base_url": self.dc.api_base,
            "gateway_url": self.dc.gateway_url,
            "progress_edit_s": 0.05,
            "admin_ids": [OWNER_ID],
        }
        section.update(discord)
        civitai = {"base_url": self.civitai_url, "image_hosts": ["127.0.0.1"]}  # the fake CDN
        config = make_config(self.tmp_path, self.db_url, discord=section, civitai=civitai)
        config.providers.demo.latency_s = latency_s
        config.database.auto_migrate = False
        self.provider = RecordingDemo(config.providers.demo)
        self.app = App(config, providers={"demo": self.provider, **self.extra_providers})
        self.app.add_configured_adapters()
        adapter = self.app.adapters["discord"]
        assert isinstance(adapter, DiscordAdapter)
        adapter.client._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
        self.adapter = adapter
        if self.db_url.startswith("sqlite"):
            await self.app.db.create_all()
        await self.app.start()
        return adapter

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    def messages(self, channel: int = CHANNEL_ID) -> list[dict[str, Any]]:
        return self.dc.channel_messages(channel)

    def pictures(self, channel: int = CHANNEL_ID) -> list[dict[str, Any]]:
        return [m for m in self.messages(channel) if m.get("attachments")]

    def files(self, message: dict[str, Any]) -> dict[str, bytes]:
        return self.dc.message_files(int(message["id"]))

    async def until(self, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = pred()
                if value:
                    return value
                await asyncio.sleep(0.02)

    async def balance(self, user_id: int = USER_ID) -> int:
        assert self.app is not None
        return await self.app.jobs.balance(UserRef("discord", str(user_id)))

    def original_text(self, token: str) -> str:
        mid = self.dc.interaction(token)["original_message_id"]
        return self.dc.message(int(mid)).get("content", "") if mid else ""

    def status(self, token: str) -> dict[str, Any]:
        """What the channel sees of a command: its public response, or for an accepted job
        its status message (the public follow-up after the private, ephemeral response)."""
        info = self.dc.interaction(token)
        for mid in [info["original_message_id"], *info["followup_message_ids"][:1]]:
            msg = self.dc.message(int(mid)) if mid else {}
            if msg and not int(msg.get("flags") or 0) & 64:
                return msg
        return {}

    def status_text(self, token: str) -> str:
        return str(self.status(token).get("content", ""))


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    async with FakeDiscord() as dc:
        e = Env(dc, tmp_path, db_url)
        try:
            yield e
        finally:
            await e.stop()


def custom_ids(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message.get("components", []) for c in row["components"]]


# --- pure helpers ----------------------------------------------------------------------------


def test_fit_upload_reencodes_to_the_limit() -> None:
    big = io.BytesIO()
    Image.effect_noise((800, 800), 80).convert("RGB").save(big, "PNG")
    data = big.getvalue()
    assert fit_upload(data, len(data)) == (data, "png")
    fitted = fit_upload(data, 150_000)
    assert fitted is not None and fitted[1] == "jpg" and len(fitted[0]) <= 150_000
    assert fit_upload(data, 100) is None


# --- commands --------------------------------------------------------------------------------


async def test_imagine_answers_in_time_and_posts_the_picture(env: Env) -> None:
    await env.start()
    dc = env.dc
    names = {c["name"]: c for c in dc.registered_commands()}
    assert {"imagine", "img2img", "batch", "credits", "cancel", "settings", "Remix"} <= set(names)
    assert names["imagine"]["name_localizations"]["zh-CN"] == "画图"
    assert str(names["grant"]["default_member_permissions"]) == "8"  # administrators

    inter = dc.slash("imagine", {"prompt": "a red fox in the snow", "aspect": "16:9", "seed": 7})
    msg = (await env.until(env.pictures))[0]
    [(name, data)] = env.files(msg).items()
    img = decoded(data)
    assert name.endswith(".png") and abs(img.width / img.height - 16 / 9) < 0.02
    assert "#1 · 1/1 · seed 7" in msg["content"]
    assert custom_ids(msg) == ["sd:r:1:0", "sd:v:1:0", "sd:o:1:0", "sd:i:1:0", "sd:d:1:0"]
    # deferred at once, privately; the job's status message is a public follow-up, edited
    # with the receipt, then the outcome
    callback = dc.interaction_responses(inter["token"])[0]
    assert callback.json["type"] == 5 and callback.json["data"]["flags"] == 64
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))
    assert await env.balance() == 19


async def test_text_commands_and_flags_in_the_prompt(env: Env) -> None:
    await env.start()
    dc = env.dc
    credits = dc.slash("credits")
    await env.until(lambda: "20 credits" in env.original_text(credits["token"]))
    inter = dc.slash("imagine", {"prompt": "a windmill --ar 3:2 --seed 5", "count": 2})
    await env.until(lambda: sum(len(env.files(m)) for m in env.pictures()) == 2)
    msg = env.pictures()[0]
    img = decoded(next(iter(env.files(msg).values())))
    assert abs(img.width / img.height - 1.5) < 0.02
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))
    bad = dc.slash("imagine", {"prompt": "x --steps 9000"})
    await env.until(lambda: "steps" in env.original_text(bad["token"]))
    assert await env.balance() == 18


async def test_remix_fetches_the_message_again_and_sends_its_picture(env: Env) -> None:
    await env.start()
    dc = env.dc
    source = png(640, 480, (10, 120, 200))
    posted = dc.post_user_message(CHANNEL_ID, "look", attachments={"cat.png": source})
    opened = dc.message_command("Remix", int(posted["id"]))
    await env.until(lambda: dc.interaction(opened["token"])["modal"])
    dc.expire_attachments()  # the URLs in the interaction no longer work
    box = dc.interaction(opened["token"])["modal"]["custom_id"]  # each box has its own id
    dc.modal_submit(box, {"prompt": "as a watercolor", "strength": "0.4"})
    await env.until(lambda: [m for m in env.pictures() if m["id"] != posted["id"]])
    assert env.provider is not None and len(env.provider.init_images) == 1
    got = decoded(env.provider.init_images[0])
    assert got.size == (640, 480) and got.convert("RGB").getpixel((5, 5)) == (10, 120, 200)
    assert await env.balance() == 18


async def test_img2img_with_an_attachment(env: Env) -> None:
    await env.start()
    env.dc.slash(
        "img2img",
        {"prompt": "pencil sketch", "strength": 0.5},
        attachments={"image": ("in.png", png(300, 600, (0, 200, 0)))},
    )
    await env.until(env.pictures)
    assert env.provider is not None
    assert decoded(env.provider.init_images[0]).size == (300, 600)


async def test_batch_modal_streams_results(env: Env) -> None:
    await env.start(latency_s=0.1)
    dc = env.dc
    opened = dc.slash("batch")
    await env.until(lambda: dc.interaction(opened["token"])["modal"])
    box = dc.interaction(opened["token"])["modal"]["custom_id"]  # each box has its own id
    dc.modal_submit(box, {"prompts": "a red apple\na green pear\na blue plum"})
    await env.until(lambda: len(env.pictures()) == 3)
    contents = sorted(m["content"].split(" · ")[0] for m in env.pictures())
    assert contents == ["#1", "#2", "#3"]
    assert await env.balance() == 17


# --- buttons ---------------------------------------------------------------------------------


async def test_buttons_work_after_a_restart(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.slash("imagine", {"prompt": "a paper boat", "seed": 11})
    msg = (await env.until(env.pictures))[0]
    await env.stop()
    await env.start()  # a new process: no view in memory knows these buttons

    info = dc.button(int(msg["id"]), "sd:i:1:0")
    await env.until(lambda: dc.interaction(info["token"])["response_type"])
    reply = dc.interaction_responses(info["token"])[0].json
    assert "paper boat" in reply["data"]["content"] and reply["data"]["flags"] == 64

    dc.button(int(msg["id"]), "sd:r:1:0")
    await env.until(lambda: len(env.pictures()) == 2)
    dc.button(int(msg["id"]), "sd:v:1:0")
    await env.until(lambda: len(env.pictures()) == 3)
    assert env.provider is not None and len(env.provider.init_images) == 1
    original = dc.button(int(msg["id"]), "sd:o:1:0")
    await env.until(lambda: len(env.pictures()) == 4)
    doc = next(m for m in env.pictures() if "original PNG" in m.get("content", ""))
    data = next(iter(env.files(doc).values()))
    assert "paper boat" in decoded(data).info.get("parameters", "")
    assert dc.interaction(original["token"])["response_type"] == 5
    assert await env.balance() == 20 - 1 - 1 - 2


async def test_only_the_requester_may_delete(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.slash("imagine", {"prompt": "a secret"})
    msg = (await env.until(env.pictures))[0]
    other = dc.button(int(msg["id"]), "sd:d:1:0", user=OWNER_ID)
    await env.until(lambda: dc.interaction(other["token"])["response_type"])
    assert env.pictures(), "someone else cannot delete it"
    dc.button(int(msg["id"]), "sd:d:1:0")
    await env.until(lambda: not env.pictures())


# --- platform rules --------------------------------------------------------------------------


async def test_an_expired_token_falls_back_to_a_channel_message(env: Env) -> None:
    await env.start(latency_s=0.5)
    dc = env.dc
    inter = dc.slash("imagine", {"prompt": "a long queue"})
    await env.until(lambda: "#1" in env.status_text(inter["token"]))
    dc.expire_token(inter["token"])
    msg = (await env.until(env.pictures))[0]
    assert msg["content"].startswith(f"<@{USER_ID}>")
    assert env.files(msg)
    sent = [c for c in dc.calls() if c.method == "POST" and c.path.endswith("/messages")]
    assert sent, "posted with the bot's token"
    await env.until(lambda: "succeeded" in env.status_text(inter["token"]))


async def test_a_429_delays_but_loses_nothing(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.rate_limit_next(0.5, count=2, path_regex=r"^/webhooks/\d+/[^/]+$", method="POST")
    dc.slash("imagine", {"prompt": "a storm"})
    await env.until(env.pictures)
    await asyncio.sleep(0.3)
    assert len(env.pictures()) == 1
    limited = [c for c in dc.calls() if c.status == 429]
    assert len(limited) == 2


async def test_nsfw_pictures_are_spoilers_outside_nsfw_channels(env: Env) -> None:
    await env.start()
    dc = env.dc
    dc.slash("imagine", {"prompt": "demo:nsfw a figure"})
    dc.slash("imagine", {"prompt": "demo:nsfw a figure"}, channel_id=NSFW_CHANNEL_ID)
    safe = (await env.until(env.pictures))[0]
    nsfw = (await env.until(lambda: env.pictures(NSFW_CHANNEL_ID)))[0]
    assert next(iter(env.files(safe))).startswith("SPOILER_")
    assert not next(iter(env.files(nsfw))).startswith("SPOILER_")


async def test_pictures_over_the_upload_limit_are_reencoded(env: Env) -> None:
    env.dc.configure(attachment_size_limit=6_000)
    await env.start()
    env.dc.slash("imagine", {"prompt": "a detailed city", "aspect": "1:1"})
    msg = (await env.until(env.pictures))[0]
    [(name, data)] = env.files(msg).items()
    assert name.endswith(".jpg") and len(data) <= 6_000
    assert "JPEG" in msg["content"]


async def test_chinese_clients_get_chinese_replies(env: Env) -> None:
    await env.start()
    inter = env.dc.slash("credits", locale="zh-CN")
    await env.until(lambda: "积分" in env.original_text(inter["token"]))


async def test_admin_commands_and_allowlist(env: Env) -> None:
    await env.start(allowed_channels=[NSFW_CHANNEL_ID])
    dc = env.dc
    refused = dc.slash("credits")
    await env.until(lambda: dc.interaction(refused["token"])["response_type"])
    reply = dc.interaction_responses(refused["token"])[0].json
    assert "not enabled" in reply["data"]["content"]
    grant = dc.slash("grant", {"user": USER_ID, "amount": 30}, user=OWNER_ID)
    await env.until(lambda: "30" in env.original_text(grant["token"]))
    assert await env.balance() == 50


# --- as a user runs it -----------------------------------------------------------------------


async def test_sdhost_run_serves_discord(tmp_path: Path) -> None:
    async with FakeDiscord() as dc:
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f"""
[data]
dir = "{tmp_path / "data"}"
[providers.demo]
latency_s = 0.05
[discord]
api_base_url = "{dc.api_base}"
gateway_url = "{dc.gateway_url}"
""",
            encoding="utf-8",
        )
        async with sdhost_run(cfg, {"SDHOST_DISCORD__TOKEN": DEFAULT_TOKEN}) as line:
            assert b"discord" in line
            dc.slash("imagine", {"prompt": "a windmill", "aspect": "3:2"})
            async with asyncio.timeout(30):
                while not [m for m in dc.channel_messages(CHANNEL_ID) if m.get("attachments")]:
                    await asyncio.sleep(0.05)
            msg = next(m for m in dc.channel_messages(CHANNEL_ID) if m.get("attachments"))
            img = decoded(next(iter(dc.message_files(int(msg["id"])).values())))
            assert img.width > img.height


async def test_sdhost_discord_sync_publishes_the_commands(tmp_path: Path) -> None:
    async with FakeDiscord() as dc:
        environ = {
            **os.environ,
            "SDHOST_DISCORD__TOKEN": DEFAULT_TOKEN,
            "SDHOST_DISCORD__API_BASE_URL": dc.api_base,
            "SDHOST_DISCORD__GUILD_IDS": f"[{GUILD_ID}]",
            "SDHOST_DATA__DIR": str(tmp_path / "data"),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "discord", "sync", env=environ, stdout=-1, stderr=-1
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"synced" in out and str(GUILD_ID).encode() in out
        assert {c["name"] for c in dc.registered_commands(GUILD_ID)} >= {"imagine", "Remix"}


async def test_cancel_autocompletes_your_running_jobs_and_model_autocompletes(env: Env) -> None:
    await env.start(latency_s=5.0)
    dc = env.dc
    inter = dc.slash("imagine", {"prompt": "a slow sunrise demo:slow"})
    await env.until(lambda: "#1" in env.status_text(inter["token"]))
    typing = dc.autocomplete("cancel", {"id": ""}, "id")
    choices = await env.until(lambda: dc.autocomplete_choices(typing["token"]))
    assert [c["value"] for c in choices] == [1] and "#1" in choices[0]["name"]
    models = dc.autocomplete("imagine", {"prompt": "x", "model": "mon"}, "model")
    got = await env.until(lambda: dc.autocomplete_choices(models["token"]))
    assert [c["value"] for c in got] == ["demo:mono"]
    cancel = dc.slash("cancel", {"id": 1})
    await env.until(lambda: "cancel" in env.original_text(cancel["token"]))
    await env.until(lambda: "cancelled" in env.status_text(inter["token"]))


async def test_sharded_client(tmp_path: Path, db_url: str) -> None:
    async with FakeDiscord(shard_count=2) as dc:
        e = Env(dc, tmp_path, db_url)
        try:
            await e.start(sharded=True)
            assert e.adapter is not None and e.adapter.client.shard_count == 2
            e.dc.slash("imagine", {"prompt": "two shards"})
            await e.until(e.pictures)
        finally:
            await e.stop()


async def test_settings_become_the_defaults_of_imagine(env: Env) -> None:
    await env.start()
    dc = env.dc
    saved = dc.slash("settings", {"model": "demo:mono", "aspect": "9:16"})
    await env.until(lambda: "mono" in env.original_text(saved["token"]))
    dc.slash("imagine", {"prompt": "a tall tree"})
    msg = (await env.until(env.pictures))[0]
    img = decoded(next(iter(env.files(msg).values()))).convert("RGB")
    assert img.height > img.width
    r, g, b = img.getpixel((img.width // 2, img.height // 3))
    assert r == g == b  # the mono model draws in black and white


async def test_civitai_from_discord(env: Env) -> None:
    from tests.fakes.civitai import FakeCivitai

    async with FakeCivitai() as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        inter = env.dc.slash("civitai", {"query": "image 90013"})
        await env.until(lambda: "Seed: 730091" in env.original_text(inter["token"]))
        env.dc.slash("civitai", {"query": "use 90013"})
        await env.until(lambda: [m for m in env.pictures() if "seed 730091" in m["content"]])


async def test_civitai_pictures_and_buttons_on_discord(env: Env) -> None:
    from tests.fakes.civitai import FakeCivitai

    async with FakeCivitai() as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        dc = env.dc
        inter = dc.slash("civitai", {"query": "image 90013"})
        await env.until(lambda: "Seed: 730091" in env.original_text(inter["token"]))
        answer = dc.message(int(dc.interaction(inter["token"])["original_message_id"]))
        [embed] = answer["embeds"]
        [(name, data)] = env.files(answer).items()
        assert embed["image"]["url"] == f"attachment://{name}"
        assert decoded(data).format == "JPEG" and decoded(data).width == 800
        assert custom_ids(answer) == ["sd:x:/civitai use 90013"]

        await env.stop()
        await env.start()  # a new process: the button still works
        dc.button(int(answer["id"]), "sd:x:/civitai use 90013", user=OWNER_ID)
        made = await env.until(env.pictures)
        made = await env.until(lambda: [m for m in env.pictures() if "seed 730091" in m["content"]])
        assert made and await env.balance(OWNER_ID) == 19 and await env.balance() == 20

        listing = dc.slash("civitai", {"query": "images --model 4201"})
        await env.until(lambda: "/civitai use ID" in env.original_text(listing["token"]))
        answer = dc.message(int(dc.interaction(listing["token"])["original_message_id"]))
        ids = re.findall(r"^#(\d+) ", answer["content"], re.M)
        assert len(answer["embeds"]) == len(env.files(answer)) == len(ids) > 1
        drawable = re.findall(r"^#(\d+) (?!\(no prompt\))", answer["content"], re.M)
        assert custom_ids(answer) == [f"sd:x:/civitai use {i}" for i in drawable]


async def test_an_admin_downloads_a_model_from_discord(env: Env) -> None:
    from tests.fakes.civitai import FakeCivitaiDownloads

    async with FakeCivitaiDownloads(file_size=2_000_000, storage_bps=1_000_000) as civitai:
        env.civitai_url = civitai.base_url
        await env.start()
        refused = env.dc.slash("civitai", {"query": "download 52013"})  # USER_ID: no admin
        await env.until(lambda: "admin" in env.original_text(refused["token"]))
        assert civitai.download_hits == 0

        inter = env.dc.slash("civitai", {"query": "download 52013"}, user=OWNER_ID)
        await env.until(lambda: "downloaded" in env.status_text(inter["token"]))
        final = env.status_text(inter["token"])
        assert "matches Civitai" in final and "checkpoints" in final, final
        status = env.status(inter["token"])
        # progress went through the response, edited: a bar, bytes, speed and time left
        edits = [c.json.get("content", "") for c in env.dc.calls("PATCH", r"/messages/")]
        assert any("▰" in e and "MB/s" in e and "left" in e for e in edits), edits
        notice = await env.until(
            lambda: [
                m
                for m in env.messages()
                if m["content"].startswith("✅ #1") and m["id"] != status["id"]
            ]
        )
        assert len(notice) == 1
        content = civitai.content(civitai.primary_file(52013).id)
        files = list((env.tmp_path / "data" / "models" / "checkpoints").iterdir())
        assert [f.read_bytes() == content for f in files] == [True]
