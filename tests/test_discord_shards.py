"""One Discord bot, its shards split between two sdhost processes on one database.

The real discord.py (AutoShardedClient) in each process against the fake Discord, whose
gateway routes a guild's events to shard ``(guild_id >> 22) % shard_count`` as Discord does:
each process sees only the interactions of its shards' guilds, and any process delivers any
job's pictures (over REST, with the interaction's token), also after the process that took
the command has gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.chat.discord import DiscordAdapter
from bot.app import App
from tests.chat_helpers import RecordingDemo
from tests.conftest import make_config
from tests.fakes.discord_api import (
    CHANNEL_ID,
    DEFAULT_TOKEN,
    GUILD_ID,
    USER_ID,
    FakeDiscord,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHARDS = 2
OTHER_GUILD = GUILD_ID + (1 << 22)  # the next guild id on the other shard
OTHER_CHANNEL = OTHER_GUILD + 10


def shard_of(guild_id: int) -> int:
    return (guild_id >> 22) % SHARDS


class Processes:
    def __init__(self, dc: FakeDiscord, tmp_path: Path, db_url: str) -> None:
        self.dc = dc
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.apps: dict[int, App] = {}

    async def start(
        self, shard: int, *, run_workers: bool = True, latency_s: float = 0.05
    ) -> DiscordAdapter:
        section = {
            "token": DEFAULT_TOKEN,
            "api_base_url": self.dc.api_base,
            "gateway_url": self.dc.gateway_url,
            "progress_edit_s": 0.05,
            "shard_ids": [shard],
            "shard_count": SHARDS,
        }
        config = make_config(
            self.tmp_path / f"shard{shard}",
            self.db_url,
            discord=section,
            civitai={"base_url": "http://127.0.0.1:9", "image_hosts": ["127.0.0.1"]},
        )
        config.providers.demo.latency_s = latency_s
        config.queue.run_workers = run_workers
        config.database.auto_migrate = False
        app = App(config, providers={"demo": RecordingDemo(config.providers.demo)})
        app.add_configured_adapters()
        adapter = app.adapters["discord"]
        assert isinstance(adapter, DiscordAdapter)
        adapter.client._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
        if self.db_url.startswith("sqlite"):
            await app.db.create_all()
        self.apps[shard] = app
        await app.start()
        return adapter

    async def stop(self, shard: int | None = None) -> None:
        for key in [shard] if shard is not None else list(self.apps):
            app = self.apps.pop(key, None)  # type: ignore[arg-type]
            if app is not None:
                await app.stop()

    async def until(self, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = pred()
                if value:
                    return value
                await asyncio.sleep(0.02)

    def pictures(self, channel: int) -> list[dict[str, Any]]:
        return [m for m in self.dc.channel_messages(channel) if m.get("attachments")]


@pytest.fixture
async def procs(tmp_path: Path, db_url: str) -> AsyncIterator[Processes]:
    async with FakeDiscord(shard_count=SHARDS) as dc:
        dc.add_guild(
            {
                "id": OTHER_GUILD,
                "name": "the other guild",
                "channels": [{"id": OTHER_CHANNEL, "name": "general"}],
                "members": [{"user": USER_ID}],
            }
        )
        assert shard_of(GUILD_ID) != shard_of(OTHER_GUILD)
        p = Processes(dc, tmp_path, db_url)
        try:
            yield p
        finally:
            await p.stop()


async def test_each_process_runs_its_shards_and_sees_only_their_guilds(
    procs: Processes,
) -> None:
    dc = procs.dc
    first = await procs.start(0)
    second = await procs.start(1)
    shards = sorted(tuple(s["shard"]) for s in dc.sessions())
    assert shards == [(0, SHARDS), (1, SHARDS)]  # one IDENTIFY each, with its own shard
    assert first.client.shard_ids == [0] and second.client.shard_ids == [1]
    by_shard = {0: first, 1: second}
    for guild, channel in ((GUILD_ID, CHANNEL_ID), (OTHER_GUILD, OTHER_CHANNEL)):
        before = {s: a.interactions_handled for s, a in by_shard.items()}
        inter = dc.slash("credits", guild_id=guild, channel_id=channel)
        await procs.until(lambda t=inter["token"]: dc.interaction(t)["original_message_id"])
        await asyncio.sleep(0.3)  # had the other process seen it, it would have answered
        mine = shard_of(guild)
        assert by_shard[mine].interactions_handled == before[mine] + 1
        assert by_shard[1 - mine].interactions_handled == before[1 - mine]


async def test_a_job_taken_by_one_shard_is_delivered_by_the_other_process(
    procs: Processes,
) -> None:
    dc = procs.dc
    taker_shard = shard_of(OTHER_GUILD)
    # the process whose shard sees the command generates nothing; the other one does
    await procs.start(taker_shard, run_workers=False)
    other = await procs.start(1 - taker_shard, latency_s=1.0)
    inter = dc.slash(
        "imagine", {"prompt": "a lighthouse"}, guild_id=OTHER_GUILD, channel_id=OTHER_CHANNEL
    )
    inter_token = inter["token"]
    await procs.until(lambda: dc.interaction(inter_token)["original_message_id"])
    assert other.interactions_handled == 0  # the command went to the taker's shard only
    async with asyncio.timeout(15):  # the job is in the queue (the command has done its part)
        while not await procs.apps[1 - taker_shard].jobs.all_jobs():
            await asyncio.sleep(0.05)
    await procs.stop(taker_shard)  # gone before the picture is ready
    pictures = await procs.until(lambda: procs.pictures(OTHER_CHANNEL), timeout=30)
    assert pictures and procs.pictures(CHANNEL_ID) == []
    [job] = await procs.apps[1 - taker_shard].jobs.all_jobs()
    assert job.status == "succeeded"


def test_shard_ids_must_be_shards_of_the_count() -> None:
    from bot.config import DiscordConfig

    assert DiscordConfig(token="t", shard_ids=[1], shard_count=2).shard_ids == [1]
    for bad in ({"shard_ids": [0]}, {"shard_ids": [2], "shard_count": 2}):
        with pytest.raises(ValueError, match="shard_count"):
            DiscordConfig(token="t", **bad)
    with pytest.raises(ValueError, match="twice"):
        DiscordConfig(token="t", shard_ids=[1, 1], shard_count=2)
