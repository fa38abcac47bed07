"""Conformance tests: the real discord.py against the fake Discord (REST v10 + gateway + CDN).

The fake is only worth something if discord.py parses every answer it gives and raises the same
exceptions it would raise against Discord, so nothing of discord.py is mocked: a real
``discord.Client`` with a real ``CommandTree`` logs in over HTTP and connects over a websocket
(zlib-stream by default) to the fake on 127.0.0.1. A few tests at the end speak raw HTTP to pin
down wire details (exact Content-Type, rate-limit headers, validation errors) that discord.py
would otherwise hide or pre-empt client-side.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from PIL import Image

from tests.fakes.discord_api import (
    APPLICATION_ID,
    CHANNEL_ID,
    DEFAULT_TOKEN,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    ROLE_ARTIST_ID,
    USER_ID,
    FakeDiscord,
    FakeDiscordRemote,
    point_discord_at,
)

ROOT = Path(__file__).resolve().parents[1]
# MESSAGE_CONTENT is privileged: without it the fake, like Discord, blanks humans' guild messages.
WITH_CONTENT = discord.Intents.default() | discord.Intents(message_content=True)


def _png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


class SdBot(discord.Client):
    """A minimal bot shaped like sdhost's adapter: a Client subclass owning a CommandTree."""

    def __init__(self, *, intents: discord.Intents | None = None, **options: Any) -> None:
        # on_ready fires guild_ready_timeout (2 s by default) after the last GUILD_CREATE.
        options.setdefault("guild_ready_timeout", 0.05)
        super().__init__(intents=intents or discord.Intents.default(), **options)
        self.tree = app_commands.CommandTree(self)
        self.ready_event = asyncio.Event()
        self.seen: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.errors: list[BaseException] = []
        self.messages: list[discord.Message] = []
        self.dynamic_items: list[type[discord.ui.DynamicItem[Any]]] = []

        @self.tree.error
        async def on_tree_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.errors.append(getattr(error, "original", error))
            self.note("error", error)

    def note(self, key: str, value: Any) -> None:
        self.seen[key] = value
        self.changed.set()

    async def wait_seen(self, key: str, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while key not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[key]

    async def setup_hook(self) -> None:
        if self.dynamic_items:
            self.add_dynamic_items(*self.dynamic_items)

    async def on_ready(self) -> None:
        self.ready_event.set()

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)
        self.changed.set()


@contextlib.asynccontextmanager
async def running(bot: discord.Client, token: str = DEFAULT_TOKEN) -> AsyncIterator[asyncio.Task]:
    """Run ``bot.start`` as a task until on_ready; close it cleanly afterwards."""
    assert isinstance(bot, SdBot)
    task = asyncio.create_task(bot.start(token))
    ready = asyncio.create_task(bot.ready_event.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises the login/connect error
        raise TimeoutError("client never became ready")
    try:
        yield task
    finally:
        await _drain_handlers()
        await bot.close()
        await asyncio.wait_for(task, 5)


_HANDLER_TASKS = ("CommandTree-invoker", "discord-ui-dynamic-item-", "discord-ui-modal-dispatch-")


async def _drain_handlers(timeout: float = 5.0) -> None:
    """Let command, modal and dynamic-item callbacks that are still answering finish, so that
    closing the client never cuts a request short (discord.py names these tasks)."""
    current = asyncio.current_task()
    pending = [
        t
        for t in asyncio.all_tasks()
        if t is not current
        and not t.done()
        and (
            t.get_name().startswith(_HANDLER_TASKS)
            or t.get_name().startswith("discord-ui-view-dispatch-")
        )
    ]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        with point_discord_at(server):
            yield server


async def _until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(0.01)
    return result


# ------------------------------------------------------------------------------ login and gateway


async def test_login_ready_and_guild_create_over_zlib_stream(fake: FakeDiscord) -> None:
    bot = SdBot()
    async with running(bot):
        assert bot.user is not None and bot.user.id == APPLICATION_ID and bot.user.bot
        assert bot.application_id == APPLICATION_ID
        guild = bot.get_guild(GUILD_ID)
        assert guild is not None and guild.name == "sdhost test guild"
        general = guild.get_channel(CHANNEL_ID)
        assert isinstance(general, discord.TextChannel) and general.name == "general"
        nsfw = guild.get_channel(NSFW_CHANNEL_ID)
        assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
        assert guild.me is not None and guild.me.guild_permissions.attach_files
        assert {r.name for r in guild.roles} >= {"@everyone", "Artist", "sdhost"}

    [conn] = fake.gateway_connections()
    assert conn["compression"] == "zlib-stream" and conn["identified"]
    assert conn["binary_frames"] >= conn["frames_sent"] > 0  # every frame was compressed
    # discord.py 2.7 on aiohttp 3.14 puts 4000, not 1000, on the wire in Client.close(): aiohttp
    # first wakes the receive loop with CLOSING and poll_event() then closes with its default
    # 4000. Discord therefore keeps the session resumable, and so does the fake.
    assert conn["closed_by"] == "client" and conn["close_code"] == 4000
    events = [f.t for f in fake.gateway_frames(direction="sent", op=0)]
    assert events[:2] == ["READY", "GUILD_CREATE"]
    identify = fake.gateway_frames(direction="received", op=2)[0].d
    assert identify["token"] == "<redacted>"
    assert identify["intents"] == discord.Intents.default().value
    login = [(c.method, c.path) for c in fake.calls()][:2]
    assert login == [("GET", "/users/@me"), ("GET", "/oauth2/applications/@me")]
    [session] = fake.sessions()
    assert not session["connected"]


async def test_plain_text_frames_when_compression_is_off(fake: FakeDiscord) -> None:
    fake.configure(compression=False)
    bot = SdBot()
    async with running(bot):
        assert bot.get_guild(GUILD_ID) is not None
    [conn] = fake.gateway_connections()
    assert conn["compression"] == "none" and conn["binary_frames"] == 0


async def test_split_zlib_frames_are_reassembled(fake: FakeDiscord) -> None:
    fake.configure(split_frames=True)
    bot = SdBot()
    async with running(bot):
        assert bot.get_guild(GUILD_ID) is not None
    [conn] = fake.gateway_connections()
    assert conn["binary_frames"] == 2 * conn["frames_sent"]


async def test_wrong_token_fails_login(fake: FakeDiscord) -> None:
    bot = SdBot()
    with pytest.raises(discord.LoginFailure):
        await bot.login("not.the.token")
    await bot.close()
    [call] = fake.calls("GET", "^/users/@me$")
    assert call.status == 401 and call.response == {"message": "401: Unauthorized", "code": 0}


async def test_heartbeats_are_acked_and_the_connection_stays_up(fake: FakeDiscord) -> None:
    fake.configure(heartbeat_interval=200)
    bot = SdBot()
    async with running(bot):
        await asyncio.sleep(1.0)
        [conn] = fake.gateway_connections()
        assert conn["open"] and conn["heartbeats"] >= 4
        assert conn["acks"] >= conn["heartbeats"] - 1
        assert bot.latency < 1.0  # discord.py measured a real ack round trip
    assert len(fake.gateway_connections()) == 1


async def test_reconnect_op_resumes_and_replays_missed_dispatches(fake: FakeDiscord) -> None:
    bot = SdBot()
    async with running(bot):
        assert fake.reconnect() == 1
        # Sent while the client is between sockets: must be replayed after RESUME.
        fake.post_user_message(CHANNEL_ID, "while away")
        await _until(lambda: len(fake.gateway_connections()) == 2)
        await _until(lambda: any(m.id for m in bot.messages))
        fake.post_user_message(CHANNEL_ID, "after resume")
        await _until(lambda: len(bot.messages) == 2)
        first, second = fake.gateway_connections()
        assert first["closed_by"] == "client" and first["close_code"] == 4000
        assert second["resumed"] and not second["identified"]
        assert [f.t for f in fake.gateway_frames(direction="sent", t="READY")] == ["READY"]
        assert fake.gateway_frames(direction="sent", t="RESUMED")
        resume = fake.gateway_frames(direction="received", op=6)[0].d
        assert resume["session_id"] == first["session_id"]
        # Default intents lack MESSAGE_CONTENT: a human's guild message arrives blanked.
        assert [m.content for m in bot.messages] == ["", ""]
        assert all(m.author.id == USER_ID for m in bot.messages)


async def test_invalid_session_makes_the_client_identify_again(fake: FakeDiscord) -> None:
    class QuickBot(SdBot):
        async def before_identify_hook(
            self, shard_id: int | None, *, initial: bool = False
        ) -> None:
            pass  # discord.py sleeps 5 s before every non-initial IDENTIFY

    bot = QuickBot(intents=WITH_CONTENT)
    async with running(bot):
        first_session = fake.sessions()[0]["session_id"]
        fake.invalidate_session(resumable=False)
        await _until(lambda: len(fake.gateway_frames(direction="sent", t="READY")) == 2)
        await _until(lambda: fake.sessions() and fake.sessions()[0]["connected"])
        assert fake.sessions()[0]["session_id"] != first_session
        fake.post_user_message(CHANNEL_ID, "hello again")
        message = await _until(lambda: bot.messages and bot.messages[-1])
        assert message.content == "hello again"  # MESSAGE_CONTENT intent keeps content


async def test_auto_sharded_client_uses_gateway_bot(fake: FakeDiscord) -> None:
    fake.configure(shard_count=2)

    class Sharded(discord.AutoShardedClient):
        def __init__(self) -> None:
            super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05)
            self.ready_event = asyncio.Event()

        async def on_ready(self) -> None:
            self.ready_event.set()

        async def before_identify_hook(
            self, shard_id: int | None, *, initial: bool = False
        ) -> None:
            pass  # discord.py sleeps 5 s before identifying every shard but the first

    bot = Sharded()
    task = asyncio.create_task(bot.start(DEFAULT_TOKEN))
    try:
        await asyncio.wait_for(bot.ready_event.wait(), 10)
        assert bot.shard_count == 2
        guild = bot.get_guild(GUILD_ID)
        assert guild is not None and guild.shard_id == (GUILD_ID >> 22) % 2
        shards = sorted(tuple(f.d["shard"]) for f in fake.gateway_frames(t="READY"))
        assert shards == [(0, 2), (1, 2)]
        assert fake.calls("GET", "^/gateway/bot$")
    finally:
        await bot.close()
        await asyncio.wait_for(task, 5)


# ------------------------------------------------------------------------------ commands


def _imagine_bot(png: bytes) -> SdBot:
    bot = SdBot()

    @bot.tree.command(name="imagine", description="Generate an image")
    @app_commands.describe(prompt="What to draw", count="How many")
    async def imagine(
        interaction: discord.Interaction, prompt: str, count: app_commands.Range[int, 1, 4] = 1
    ) -> None:
        bot.note("args", (prompt, count, interaction.user.id, interaction.locale))
        await interaction.response.defer()
        followup = await interaction.followup.send(file=discord.File(io.BytesIO(png), "cat.png"))
        bot.note("followup", followup)
        edited = await interaction.edit_original_response(content=f"{count} x {prompt}")
        bot.note("edited", edited)

    return bot


async def test_tree_sync_puts_commands_and_the_fake_stores_them(fake: FakeDiscord) -> None:
    bot = _imagine_bot(_png())

    @bot.tree.context_menu(name="Use as init image")
    async def use_as_init(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_message("ok")

    async with running(bot):
        synced = await bot.tree.sync()
        assert {c.name for c in synced} == {"imagine", "Use as init image"}
        stored = {c["name"]: c for c in fake.registered_commands()}
        assert stored["imagine"]["options"][1] == {
            "type": 4,
            "name": "count",
            "description": "How many",
            "required": False,
            "min_value": 1,
            "max_value": 4,
        }
        assert stored["Use as init image"]["type"] == 3
        assert stored["Use as init image"]["description"] == ""
        again = await bot.tree.sync()  # a re-sync keeps the ids, as Discord does
        assert {c.id for c in again} == {c.id for c in synced}
        fetched = await bot.tree.fetch_commands()
        assert {c.id for c in fetched} == {c.id for c in synced}

        guild = discord.Object(GUILD_ID)
        bot.tree.copy_global_to(guild=guild)
        await bot.tree.sync(guild=guild)
        assert {c["name"] for c in fake.registered_commands(GUILD_ID)} == {
            "imagine",
            "Use as init image",
        }
        [put] = fake.calls("PUT", f"/guilds/{GUILD_ID}/commands$")
        assert put.path == f"/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
        payload = fake.slash("imagine", {"prompt": "x"})
        assert payload["data"]["guild_id"] == str(GUILD_ID)  # guild command wins


async def test_slash_defer_followup_file_and_edit_original(fake: FakeDiscord) -> None:
    png = _png(96, 64)
    bot = _imagine_bot(png)
    async with running(bot):
        await bot.tree.sync()
        payload = fake.slash("imagine", {"prompt": "a cat", "count": 2}, locale="de")
        edited = await bot.wait_seen("edited")
        assert bot.seen["args"] == ("a cat", 2, USER_ID, discord.Locale.german)

        callback, followup, patch = fake.interaction_responses(payload["token"])
        assert (callback.method, callback.json, callback.query) == (
            "POST",
            {"type": 5},
            {"with_response": "1"},
        )
        assert callback.response["interaction"]["response_message_loading"] is True
        assert followup.method == "POST" and followup.query["wait"] == "1"
        assert followup.file_bytes == {"cat.png": png}
        assert followup.json["attachments"] == [{"id": 0, "filename": "cat.png"}]
        assert patch.method == "PATCH" and patch.path.endswith("/messages/@original")

        # After a defer, the first follow-up fills the "thinking" message: one message in all.
        [message] = fake.channel_messages(CHANNEL_ID)
        assert message["content"] == "2 x a cat" and message["type"] == 20
        [attachment] = message["attachments"]
        assert (attachment["width"], attachment["height"]) == (96, 64)
        assert attachment["content_type"] == "image/png" and attachment["size"] == len(png)
        assert message["interaction_metadata"]["user"]["id"] == str(USER_ID)
        assert isinstance(bot.seen["followup"], discord.WebhookMessage)
        assert bot.seen["followup"].id == edited.id == int(message["id"])
        assert await edited.attachments[0].read() == png  # served by the fake CDN


async def test_attachment_option_resolves_and_reads_from_the_cdn(fake: FakeDiscord) -> None:
    bot = SdBot()
    source = _png(32, 32, (0, 0, 255))

    @bot.tree.command(name="img2img", description="Transform an image")
    async def img2img(
        interaction: discord.Interaction, image: discord.Attachment, strength: float = 0.5
    ) -> None:
        data = await image.read()
        bot.note("image", (image.filename, image.content_type, image.width, data, strength))
        await interaction.response.send_message("got it", ephemeral=True)

    async with running(bot):
        await bot.tree.sync()
        payload = fake.slash("img2img", {"strength": 0.75}, attachments={"image": source})
        filename, content_type, width, data, strength = await bot.wait_seen("image")
        assert (filename, content_type, width, data, strength) == (
            "image.png",
            "image/png",
            32,
            source,
            0.75,
        )
        [resolved] = payload["data"]["resolved"]["attachments"].values()
        assert resolved["ephemeral"] is True and "/ephemeral-attachments/" in resolved["url"]
        [callback] = await fake.wait_for(lambda: fake.interaction_responses(payload["token"]))
        message = callback.response["resource"]["message"]
        assert message["flags"] == 64 and message["content"] == "got it"


async def test_slash_rejects_what_the_discord_client_would_refuse(fake: FakeDiscord) -> None:
    bot = _imagine_bot(_png())
    async with running(bot):
        await bot.tree.sync()
        with pytest.raises(ValueError, match="required"):
            fake.slash("imagine", {"count": 2})
        with pytest.raises(ValueError, match="out of range"):
            fake.slash("imagine", {"prompt": "x", "count": 9})
        with pytest.raises(ValueError, match="unknown option"):
            fake.slash("imagine", {"prompt": "x", "steps": 9})
        with pytest.raises(ValueError, match="not registered"):
            fake.slash("upscale", {})


async def test_message_context_menu_on_a_posted_message(fake: FakeDiscord) -> None:
    bot = SdBot()
    png = _png(40, 30)

    @bot.tree.context_menu(name="Use as init image")
    async def use_as_init(interaction: discord.Interaction, message: discord.Message) -> None:
        data = await message.attachments[0].read()
        bot.note("target", (message.id, message.content, message.author.id, data))
        await interaction.response.send_message("queued img2img")

    async with running(bot):
        await bot.tree.sync()
        posted = fake.post_user_message(CHANNEL_ID, "my sketch", {"sketch.png": png})
        payload = fake.message_command("Use as init image", int(posted["id"]))
        target = await bot.wait_seen("target")
        assert target == (int(posted["id"]), "my sketch", USER_ID, png)
        assert payload["data"]["target_id"] == posted["id"]
        [callback] = await fake.wait_for(lambda: fake.interaction_responses(payload["token"]))
        assert callback.response["resource"]["message"]["type"] == 23
        meta = callback.response["resource"]["message"]["interaction_metadata"]
        assert meta["target_message_id"] == posted["id"]


async def test_expired_cdn_link_then_refetch_gives_a_fresh_one(fake: FakeDiscord) -> None:
    bot = SdBot()
    png = _png(16, 16)

    @bot.tree.context_menu(name="Use as init image")
    async def use_as_init(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.defer(thinking=True)
        fake.expire_attachments()  # e.g. the job waited in the queue for a day
        try:
            await message.attachments[0].read()
        except discord.NotFound:
            bot.note("stale", True)
        fresh = await message.channel.fetch_message(message.id)
        bot.note("fresh", await fresh.attachments[0].read())
        await interaction.followup.send("done")

    async with running(bot):
        await bot.tree.sync()
        posted = fake.post_user_message(CHANNEL_ID, "", {"old.png": png})
        fake.message_command("Use as init image", int(posted["id"]))
        assert await bot.wait_seen("fresh") == png
        assert bot.seen["stale"] is True
        assert [f.status for f in fake.cdn_fetches] == [404, 200]
        assert fake.calls("GET", f"/channels/{CHANNEL_ID}/messages/{posted['id']}$")


async def test_modal_submit_reaches_on_submit(fake: FakeDiscord) -> None:
    bot = SdBot()

    class PromptModal(discord.ui.Modal, title="Edit prompt"):
        prompt = discord.ui.TextInput(label="Prompt", custom_id="prompt", max_length=200)
        negative = discord.ui.Label(
            text="Negative prompt",
            component=discord.ui.TextInput(custom_id="negative", required=False),
        )

        def __init__(self) -> None:
            super().__init__(custom_id="sdhost:edit:7")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            negative = self.negative.component
            assert isinstance(negative, discord.ui.TextInput)
            bot.note("submitted", (self.prompt.value, negative.value))
            await interaction.response.send_message("saved", ephemeral=True)

    @bot.tree.command(name="edit", description="Edit a prompt")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal())

    async with running(bot):
        await bot.tree.sync()
        opened = fake.slash("edit")
        await fake.wait_for(lambda: fake.interaction(opened["token"])["modal"])
        modal = fake.interaction(opened["token"])["modal"]
        assert [c["type"] for c in modal["components"]] == [1, 18]  # action row, then a label
        submitted = fake.modal_submit(
            "sdhost:edit:7", {"prompt": "a red fox", "negative": "blurry"}
        )
        assert await bot.wait_seen("submitted") == ("a red fox", "blurry")
        components = submitted["data"]["components"]
        assert components[0]["components"][0]["value"] == "a red fox"
        assert components[1]["component"] == {
            "type": 4,
            "id": components[1]["component"]["id"],
            "custom_id": "negative",
            "value": "blurry",
        }
        with pytest.raises(ValueError, match="no modal"):
            fake.modal_submit("sdhost:edit:7", {"prompt": "again"})  # a modal is submitted once


async def test_dynamic_item_button_survives_a_restart(fake: FakeDiscord) -> None:
    class Reroll(
        discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"sdhost:reroll:(?P<job>\d+)"
    ):
        def __init__(self, job: int) -> None:
            super().__init__(discord.ui.Button(label="Reroll", custom_id=f"sdhost:reroll:{job}"))
            self.job = job

        @classmethod
        async def from_custom_id(
            cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
        ) -> Reroll:
            return cls(int(match["job"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            assert isinstance(interaction.client, SdBot)
            message_id = interaction.message and interaction.message.id
            interaction.client.note("reroll", (self.job, message_id))
            await interaction.response.send_message(f"rerolling job {self.job}", ephemeral=True)

    first = SdBot()
    async with running(first):
        channel = first.get_channel(CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        view = discord.ui.View(timeout=None)
        view.add_item(Reroll(12))
        sent = await channel.send("job 12 done", view=view)

    second = SdBot()  # a new process after a restart: only the DynamicItem template is known
    second.dynamic_items.append(Reroll)
    async with running(second):
        payload = fake.button(sent.id, "sdhost:reroll:12")
        assert await second.wait_seen("reroll") == (12, sent.id)
        assert payload["data"] == {
            "custom_id": "sdhost:reroll:12",
            "component_type": 2,
            "id": payload["data"]["id"],
        }
        await fake.wait_for(lambda: fake.interaction(payload["token"])["response_type"] == 4)
        with pytest.raises(ValueError, match="no component"):
            fake.button(sent.id, "sdhost:reroll:13")  # users can only click what was sent


async def test_autocomplete_answer_is_recorded(fake: FakeDiscord) -> None:
    bot = SdBot()
    models = ["flux-dev", "flux-schnell", "sdxl"]

    @bot.tree.command(name="model", description="Pick a model")
    async def model(interaction: discord.Interaction, name: str, steps: int = 20) -> None:
        await interaction.response.send_message(name)

    @model.autocomplete("name")
    async def model_autocomplete(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        bot.note("current", (current, interaction.namespace.steps))
        return [app_commands.Choice(name=m, value=m) for m in models if m.startswith(current)]

    async with running(bot):
        await bot.tree.sync()
        payload = fake.autocomplete("model", {"name": "flux", "steps": 30}, focused="name")
        await fake.wait_for(lambda: fake.autocomplete_choices(payload["token"]))
        assert fake.autocomplete_choices(payload["token"]) == [
            {"name": "flux-dev", "value": "flux-dev"},
            {"name": "flux-schnell", "value": "flux-schnell"},
        ]
        assert bot.seen["current"] == ("flux", 30)
        assert payload["type"] == 4
        [option] = [o for o in payload["data"]["options"] if o.get("focused")]
        assert option == {"name": "name", "type": 3, "value": "flux", "focused": True}


# ------------------------------------------------------------------------------ interaction rules


async def test_429_on_followup_waits_retry_after_and_succeeds_once(fake: FakeDiscord) -> None:
    bot = SdBot()
    png = _png()

    @bot.tree.command(name="imagine", description="Generate an image")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.send_message("queued")
        fake.rate_limit_next(0.3, path_regex=r"^/webhooks/", method="POST")
        started = time.monotonic()
        await interaction.followup.send(prompt, file=discord.File(io.BytesIO(png), "out.png"))
        bot.note("waited", time.monotonic() - started)

    async with running(bot):
        await bot.tree.sync()
        fake.slash("imagine", {"prompt": "a cat"})
        assert await bot.wait_seen("waited") >= 0.3
        limited, accepted = fake.calls("POST", r"^/webhooks/")
        assert limited.status == 429 and accepted.status == 200
        assert limited.response == {
            "message": "You are being rate limited.",
            "retry_after": 0.3,
            "global": False,
        }
        assert accepted.time - limited.time >= 0.3
        assert accepted.file_bytes == {"out.png": png}  # the retry re-sent the file intact
        contents = [m["content"] for m in fake.channel_messages(CHANNEL_ID)]
        assert contents == ["queued", "a cat"]  # arrived exactly once


async def test_injected_429_keeps_discord_py_traps_and_records_the_upload(
    fake: FakeDiscord,
) -> None:
    """The scaffold answers the injected 429; discord.py retries it only with ``Via``, a JSON
    body and a Content-Type of exactly application/json. The call still names its payload."""
    png = _png()
    fake.rate_limit_next(1.5, path_regex=r"/messages$", method="POST")
    form = aiohttp.FormData()
    form.add_field("payload_json", json.dumps({"content": "hi"}), content_type="application/json")
    form.add_field("files[0]", png, filename="out.png", content_type="image/png")
    headers = {"Authorization": f"Bot {DEFAULT_TOKEN}"}
    url = f"{fake.api_base}/channels/{CHANNEL_ID}/messages"
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Via"] and resp.headers["Retry-After"] == "2"
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert await resp.json() == {
            "message": "You are being rate limited.",
            "retry_after": 1.5,
            "global": False,
        }
    [call] = fake.calls("POST")
    assert call.route == "POST /channels/{channel_id}/messages" and call.status == 429
    assert call.json == {"content": "hi"} and call.file_bytes == {"out.png": png}
    assert call.authorization == f"Bot {DEFAULT_TOKEN}"
    assert fake.channel_messages(CHANNEL_ID) == []  # the fake never handled it


async def test_cdn_is_its_own_origin_and_keeps_bytes_in_the_file_store(fake: FakeDiscord) -> None:
    png = _png()
    posted = fake.post_user_message(CHANNEL_ID, "", {"in.png": png})
    [attachment] = posted["attachments"]
    assert attachment["url"].startswith(fake.cdn_base) and not fake.cdn_base.startswith(fake.url)
    assert fake.files[attachment["id"]].data == png
    async with aiohttp.ClientSession() as http, http.get(attachment["url"]) as resp:
        assert resp.status == 200 and await resp.read() == png
    assert [f.status for f in fake.cdn_fetches] == [200]
    assert fake.calls() == []  # a CDN fetch is no REST call


async def test_expired_token_then_bot_token_delivery(fake: FakeDiscord) -> None:
    bot = SdBot()

    @bot.tree.command(name="imagine", description="Generate an image")
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer()
        fake.expire_token(interaction.token)  # the job took longer than 15 minutes
        try:
            await interaction.followup.send("result")
        except discord.HTTPException as exc:
            bot.note("followup_error", (type(exc), exc.status, exc.code))
        try:
            await interaction.edit_original_response(content="result")
        except discord.HTTPException as exc:
            bot.note("edit_error", exc.code)
        assert interaction.channel is not None and isinstance(
            interaction.channel, discord.TextChannel
        )
        sent = await interaction.channel.send(f"{interaction.user.mention} here is {prompt}")
        bot.note("fallback", sent)

    async with running(bot):
        await bot.tree.sync()
        fake.slash("imagine", {"prompt": "a cat"})
        fallback = await bot.wait_seen("fallback")
        assert bot.seen["followup_error"] == (discord.HTTPException, 401, 50027)
        assert bot.seen["edit_error"] == 50027
        assert fallback.mentions and fallback.mentions[0].id == USER_ID
        contents = [m["content"] for m in fake.channel_messages(CHANNEL_ID)]
        assert contents == ["", f"<@{USER_ID}> here is a cat"]  # the "thinking" stub stays


async def test_late_ack_is_unknown_interaction(fake: FakeDiscord) -> None:
    fake.configure(interaction_deadline=0.2)
    bot = SdBot()

    @bot.tree.command(name="slow", description="Acks too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)  # e.g. a DB call before defer()
        await interaction.response.defer()

    @bot.tree.command(name="fast", description="Acks at once")
    async def fast(interaction: discord.Interaction) -> None:
        await interaction.response.defer()

    async with running(bot):
        await bot.tree.sync()
        fake.slash("slow")
        await _until(lambda: bot.errors)
        [error] = bot.errors
        assert isinstance(error, discord.NotFound) and error.code == 10062

        fake.delay_next(0.3, path_regex=r"/callback$")  # a slow network counts against 3 s too
        fake.slash("fast")
        await _until(lambda: len(bot.errors) == 2)
        assert isinstance(bot.errors[1], discord.NotFound) and bot.errors[1].code == 10062


async def test_oversize_file_is_413_40005(fake: FakeDiscord) -> None:
    bot = SdBot()
    async with running(bot):
        channel = bot.get_channel(CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        big = b"\0" * (fake.attachment_size_limit + 1)
        with pytest.raises(discord.HTTPException) as info:
            await channel.send(file=discord.File(io.BytesIO(big), "huge.png"))
        assert info.value.status == 413 and info.value.code == 40005
        ok = await channel.send(file=discord.File(io.BytesIO(_png()), "small.png"))
        assert ok.attachments[0].size > 0
        with pytest.raises(discord.HTTPException) as info:
            await channel.send("x" * 2001)
        assert info.value.code == 50035 and "2000" in info.value.text


async def test_dm_interaction_and_dm_channel(fake: FakeDiscord) -> None:
    bot = SdBot(intents=WITH_CONTENT)

    @bot.tree.command(name="balance", description="Credits left")
    async def balance(interaction: discord.Interaction) -> None:
        bot.note("where", (interaction.guild_id, type(interaction.channel).__name__))
        await interaction.response.send_message("42 credits")

    async with running(bot):
        await bot.tree.sync()
        payload = fake.slash("balance", dm=True)
        assert await bot.wait_seen("where") == (None, "DMChannel")
        assert payload["context"] == 1 and payload["user"]["id"] == str(USER_ID)
        user = await bot.fetch_user(USER_ID)
        dm = await user.create_dm()
        await dm.send("your image is ready")
        assert [m["content"] for m in fake.channel_messages(dm.id)] == [
            "42 credits",
            "your image is ready",
        ]


async def test_reply_edit_delete_history_and_spoiler(fake: FakeDiscord) -> None:
    bot = SdBot(intents=WITH_CONTENT)
    deleted: list[int] = []

    @bot.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        deleted.append(payload.message_id)

    png = _png(20, 20)
    async with running(bot):
        fake.post_user_message(CHANNEL_ID, "make it blue", {"in.png": png})
        user_message = await _until(lambda: bot.messages and bot.messages[-1])
        assert user_message.content == "make it blue"
        reply = await user_message.reply(
            "on it", file=discord.File(io.BytesIO(png), "out.png", spoiler=True)
        )
        assert reply.type is discord.MessageType.reply
        assert reply.reference is not None and reply.reference.message_id == user_message.id
        [attachment] = reply.attachments
        assert attachment.filename == "SPOILER_out.png" and attachment.flags.spoiler
        stored = fake.message(reply.id)
        assert stored["referenced_message"]["content"] == "make it blue"

        edited = await reply.edit(content="done")
        assert edited.edited_at is not None and edited.attachments[0].id == attachment.id
        channel = reply.channel
        history = [m.id async for m in channel.history(limit=10)]
        assert history == [reply.id, user_message.id]  # newest first
        with pytest.raises(discord.Forbidden):
            await user_message.edit(content="not yours")  # 403 50005

        await reply.delete()
        await _until(lambda: deleted == [reply.id])
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(reply.id)
        # The bot saw its own message over the gateway too, as Discord sends it.
        assert [m.id for m in bot.messages] == [user_message.id, reply.id]


async def test_server_error_is_retried(fake: FakeDiscord) -> None:
    bot = SdBot()
    async with running(bot):
        channel = bot.get_channel(CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        fake.server_error_next(502, path_regex=rf"^/channels/{CHANNEL_ID}/messages$")
        sent = await channel.send("after a hiccup")  # discord.py sleeps 1 s, then retries
        calls = fake.calls("POST", rf"^/channels/{CHANNEL_ID}/messages$")
        assert [c.status for c in calls] == [502, 200]
        assert [m["id"] for m in fake.channel_messages(CHANNEL_ID)] == [str(sent.id)]


async def test_select_menu_then_update_message(fake: FakeDiscord) -> None:
    bot = SdBot()

    class Picker(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.select(
            custom_id="sdhost:model",
            options=[
                discord.SelectOption(label="SDXL", value="sdxl"),
                discord.SelectOption(label="Flux", value="flux"),
            ],
        )
        async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
            bot.note("picked", select.values)
            await interaction.response.edit_message(content=f"model: {select.values[0]}", view=None)

    async with running(bot):
        channel = bot.get_channel(CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("pick a model", view=Picker())
        with pytest.raises(ValueError, match="not options"):
            fake.select(sent.id, "sdhost:model", ["dalle"])
        payload = fake.select(sent.id, "sdhost:model", ["flux"])
        assert payload["message"]["id"] == str(sent.id)
        assert await bot.wait_seen("picked") == ["flux"]
        await fake.wait_for(lambda: fake.message(sent.id)["content"] == "model: flux")
        assert fake.message(sent.id)["components"] == []
        [callback] = fake.interaction_responses(payload["token"])
        assert callback.json["type"] == 7
        assert callback.response["resource"]["message"]["content"] == "model: flux"


async def test_subcommands_and_resolved_options(fake: FakeDiscord) -> None:
    bot = SdBot()
    admin = app_commands.Group(name="admin", description="Operator tools")
    credits = app_commands.Group(name="credits", description="Credits", parent=admin)

    @credits.command(name="grant", description="Grant credits")
    async def grant(
        interaction: discord.Interaction,
        member: discord.Member,
        amount: int,
        channel: discord.TextChannel | None = None,
        role: discord.Role | None = None,
    ) -> None:
        bot.note(
            "grant",
            (member.id, member.display_name, amount, channel and channel.id, role and role.name),
        )
        await interaction.response.send_message("granted", ephemeral=True)

    bot.tree.add_command(admin)
    async with running(bot):
        await bot.tree.sync()
        payload = fake.slash(
            "admin",
            {"member": USER_ID, "amount": 5, "channel": NSFW_CHANNEL_ID, "role": ROLE_ARTIST_ID},
            subcommand="credits grant",
        )
        assert await bot.wait_seen("grant") == (USER_ID, "Alice", 5, NSFW_CHANNEL_ID, "Artist")
        [group] = payload["data"]["options"]
        assert (group["type"], group["name"]) == (2, "credits")
        assert group["options"][0]["options"][0] == {
            "name": "member",
            "type": 6,
            "value": str(USER_ID),
        }
        assert set(payload["data"]["resolved"]) == {"users", "members", "channels", "roles"}
        with pytest.raises(ValueError, match="needs a subcommand"):
            fake.slash("admin", {})


async def test_raw_gateway_zlib_stream_and_close_codes(fake: FakeDiscord) -> None:
    url = f"{fake.gateway_url}?v=10&encoding=json&compress=zlib-stream"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        inflater = zlib.decompressobj()  # one stream for the whole connection
        frame = await ws.receive(timeout=5)
        assert frame.type is aiohttp.WSMsgType.BINARY
        assert frame.data.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH
        hello = json.loads(inflater.decompress(frame.data))
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
        await ws.send_json({"op": 1, "d": None})
        ack = json.loads(inflater.decompress((await ws.receive(timeout=5)).data))
        assert ack["op"] == 11
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 513, "properties": {}}})
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004

    # A privileged intent the application was not granted: 4014, which discord.py surfaces.
    fake.configure(privileged_intents=0)
    bot = SdBot(intents=WITH_CONTENT)
    try:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await asyncio.wait_for(bot.start(DEFAULT_TOKEN), 10)
    finally:
        await bot.close()


# ------------------------------------------------------------------------------ raw wire details


async def test_wire_headers_and_validation_errors(fake: FakeDiscord) -> None:
    auth = {"Authorization": f"Bot {DEFAULT_TOKEN}"}
    base = fake.api_base
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{base}/gateway/bot") as resp:
            assert resp.headers["Content-Type"] == "application/json"  # exactly, no charset
            assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
                resp.headers
            )
            assert {"X-RateLimit-Reset-After", "X-RateLimit-Bucket"} <= set(resp.headers)
            body = await resp.json()
            assert body["url"] == fake.gateway_url and body["shards"] == 1

        fake.rate_limit_next(0.5, is_global=True)
        async with http.get(f"{base}/users/@me") as resp:
            assert resp.status == 429 and resp.headers["Via"]
            assert resp.headers["Retry-After"] == "1" and resp.headers["X-RateLimit-Global"]
            assert await resp.json() == {
                "message": "You are being rate limited.",
                "retry_after": 0.5,
                "global": True,
            }

        url = f"{base}/channels/{CHANNEL_ID}/messages"
        long_id = {"type": 1, "components": [{"type": 2, "style": 1, "custom_id": "x" * 101}]}
        async with http.post(url, json={"content": "hi", "components": [long_id]}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["code"] == 50035
            assert "custom_id" in str(body["errors"])
        async with http.post(url, json={"content": ""}) as resp:
            assert (await resp.json())["code"] == 50006
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("payload_json", '{"content": "many"}')
        for i in range(11):
            form.add_field(f"files[{i}]", b"x", filename=f"{i}.txt")
        async with http.post(url, data=form) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 50035
        async with http.get(f"{url}/123") as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 10008
        wrong = {"Authorization": "Bot x"}
        async with http.get(f"{base}/channels/{CHANNEL_ID}", headers=wrong) as resp:
            assert resp.status == 401


async def test_double_ack_and_callback_without_with_response(fake: FakeDiscord) -> None:
    bot = SdBot()
    async with running(bot):
        # A command the bot does not know: discord.py ignores it, the test acks by hand.
        ghost = {"id": "1", "name": "ghost", "type": 1}
        payload = fake.inject_interaction({"type": 2, "data": ghost})
        url = f"{fake.api_base}/interactions/{payload['id']}/{payload['token']}/callback"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"type": 5}) as resp:
                assert resp.status == 204  # no with_response: empty answer
            async with http.post(url, json={"type": 5}) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["code"] == 40060
                assert body["message"] == "Interaction has already been acknowledged."


# ------------------------------------------------------------------------------ subprocess mode


async def test_subprocess_mode_and_control_api() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.discord_api",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        png = _png(8, 8)
        async with FakeDiscordRemote(url) as remote:
            with point_discord_at(remote):
                bot = SdBot(intents=WITH_CONTENT)

                @bot.tree.command(name="describe", description="Describe an image")
                async def describe(
                    interaction: discord.Interaction, image: discord.Attachment
                ) -> None:
                    await interaction.response.send_message(f"{len(await image.read())} bytes")

                async with running(bot):
                    await bot.tree.sync()
                    payload = await remote.slash("describe", {"image": ["in.png", png]})
                    call = await remote.wait_for_call("POST", r"/callback$")
                    assert payload["token"] in call["path"]
                    assert call["json"]["data"]["content"] == f"{len(png)} bytes"
                    with pytest.raises(ValueError, match="unknown control method"):
                        await remote.call("stop")
                    posted = await remote.call(
                        "post_user_message",
                        channel_id=CHANNEL_ID,
                        content="from another process",
                        attachments={"p.png": png},
                    )
                    message = await _until(
                        lambda: next((m for m in bot.messages if m.id == int(posted["id"])), None)
                    )
                    assert message.content == "from another process"
                    assert await message.attachments[0].read() == png
            calls = await remote.calls("GET", "^/users/@me$")
            assert calls and calls[0]["status"] == 200
            [conn] = await remote.call("gateway_connections")
            assert conn["compression"] == "zlib-stream"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
