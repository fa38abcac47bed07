"""The composition root: the one place that names providers and builds the running core.

Chat adapters are built by the CLI (which knows which ones the operator asked for) and
passed in; everything else in ``bot/`` only sees the protocols.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bot import crashes
from bot.chat import ChatAdapter, Progress, ReplyTo
from bot.commands import Commands
from bot.config import Config
from bot.delivery import Deliverer
from bot.housekeeping import sweep_forever
from bot.inbox import LEASE_S, Inbox
from bot.jobs import JobService
from bot.locks import NamedLocks
from bot.model_registry import ModelRegistry
from bot.owners import make_owner
from bot.providers import Provider
from bot.routing import Router
from bot.scheduler import Scheduler
from storage.db import Database
from storage.files import FileStore, PictureStore
from storage.migrate import upgrade
from storage.notify import JOBS_CHANNEL, OUTBOX_CHANNEL, Listener

log = logging.getLogger(__name__)

# While notifications wake a process (PostgreSQL, queue.listen), its idle poll, the safety
# net, runs this many times less often than queue.poll_idle_s.
LISTENING_POLL_FACTOR = 10


def open_store(config: Config) -> PictureStore:
    """The picture store ``data.store`` names: the folder under ``data.dir`` or a bucket."""
    data = config.data
    if data.store == "s3":
        from storage.s3 import S3Store  # boto3 is loaded only by those who use it

        s3 = data.s3
        return S3Store(
            bucket=s3.bucket,
            endpoint_url=s3.endpoint_url,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            region=s3.region,
            public_base_url=s3.public_base_url,
            connect_timeout_s=s3.connect_timeout_s,
            read_timeout_s=s3.read_timeout_s,
            max_attempts=s3.max_attempts,
        )
    return FileStore(data.dir)


class App:
    """The core, wired: database, file store, providers, jobs, scheduler and delivery."""

    def __init__(
        self,
        config: Config,
        *,
        providers: dict[str, Provider] | None = None,
        owner: str | None = None,
        run_workers: bool = True,
        crash_reports: bool = False,
    ) -> None:
        self.config = config
        self.owner = owner or make_owner()
        self.db = Database(
            config.database_url,
            busy_timeout_ms=config.database.busy_timeout_ms,
            echo=config.database.echo,
        )
        self.files = open_store(config)
        # locks every process sharing the database sees (one job per GPU instance)
        self.locks = NamedLocks(self.db)
        if providers is None:
            from adapters import wiring  # the one place the core meets concrete adapters

            providers = wiring.build_providers(
                config, registry=ModelRegistry(self.db), locks=self.locks
            )
        self.providers = providers
        if config.providers.default not in self.providers and self.providers:
            log.warning("default provider %r is not configured", config.providers.default)
        self.router = Router(config, self.providers)
        self.adapters: dict[str, ChatAdapter] = {}
        self.deliverer = Deliverer(
            self.db, self.adapters, self.owner, poll_idle_s=config.queue.poll_idle_s
        )
        self.scheduler = Scheduler(
            config,
            self.db,
            self.providers,
            self.files,
            owner=self.owner,
            on_event=self.deliverer.wake,
            on_progress=self._progress,
        )
        self.jobs = JobService(
            config,
            self.db,
            self.router,
            self.files,
            on_submit=self.scheduler.wake,
            on_cancel=self.scheduler.cancel_local,
            on_event=self.deliverer.wake,
        )
        self.commands = Commands(config, self.jobs)
        if config.civitai.enabled:
            from adapters import wiring

            self.commands.extensions.update(wiring.build_extensions(self))
        # False only for one-shot CLI commands (`sdhost credits ...`): they start nothing in
        # the background, such as resuming interrupted model downloads.
        self.long_lived = run_workers
        self.run_workers = run_workers and config.queue.run_workers
        # A process of its own (the CLI, not a test's App): fatal signals are written to a
        # crash report that tells the next worker whether a job took the process down.
        self.crash_reports = crash_reports
        self._sweeper: asyncio.Task[None] | None = None
        # PostgreSQL: other processes' new jobs and events wake this one (built at start,
        # once the adapters are known)
        self.listener: Listener | None = None
        self._started = False

    def inbox(self, source: str, *, lease_s: float = LEASE_S) -> Inbox:
        """The updates pushed to any process for ``source`` (one bot), handled once."""
        return Inbox(self.db, self.owner, source, lease_s=lease_s)

    def add_configured_adapters(self) -> None:
        """The chat platforms the config turns on (the console is added by `sdhost chat`)."""
        from adapters import wiring

        for adapter in wiring.build_chat_adapters(self):
            self.add_adapter(adapter)

    def add_adapter(self, adapter: ChatAdapter) -> None:
        self.adapters[adapter.platform] = adapter

    async def migrate(self) -> None:
        if self.db.is_sqlite:
            self.config.data.dir.mkdir(parents=True, exist_ok=True)
        await upgrade(self.config.database_url)

    async def start(self) -> None:
        if self.config.database.auto_migrate:
            await self.migrate()
        for adapter in self.adapters.values():
            await adapter.connect()
        if self.run_workers:
            if self.crash_reports:
                crashes.arm(self.config.data.dir, self.owner)
            for provider in self.providers.values():
                await provider.start()
            await self.scheduler.start()
        await self.deliverer.start()
        await self._listen()
        if self.long_lived:
            self._sweeper = asyncio.create_task(
                sweep_forever(self.db, self.files), name="store-sweep"
            )
        self._started = True
        for extension in self.commands.extensions.values():
            start = getattr(extension, "start", None)
            if start is not None:
                await start(resume=self.long_lived)
        for adapter in self.adapters.values():
            await adapter.listen()

    async def _listen(self) -> None:
        """Wake this process's idle dispatchers and deliverer when another process (or
        this one) queues work: PostgreSQL only, with ``queue.listen``."""
        if self.db.is_sqlite or not self.config.queue.listen or not self.long_lived:
            return
        handlers: dict[str, Callable[[str], None]] = {}
        if self.run_workers and self.providers:
            handlers[JOBS_CHANNEL] = self._jobs_notified
        if self.adapters:
            handlers[OUTBOX_CHANNEL] = self._outbox_notified
        if not handlers:
            return
        self.listener = Listener(self.config.database_url, handlers, on_change=self._wake_all)
        # While it listens, the poll is only the safety net: look ten times less often.
        poll = self.config.queue.poll_idle_s
        listener = self.listener

        def idle_poll() -> float:
            return poll * LISTENING_POLL_FACTOR if listener.healthy else poll

        if JOBS_CHANNEL in handlers:
            self.scheduler.idle_poll = idle_poll
        if OUTBOX_CHANNEL in handlers:
            self.deliverer.idle_poll = idle_poll
        await self.listener.start()

    def _jobs_notified(self, provider: str) -> None:
        if not provider or provider in self.providers:
            self.scheduler.wake(provider or None)

    def _outbox_notified(self, platform: str) -> None:
        if not platform or platform in self.adapters:
            self.deliverer.wake()

    def _wake_all(self) -> None:
        if self.run_workers:
            self.scheduler.wake()
        self.deliverer.wake()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        for adapter in self.adapters.values():
            try:
                await adapter.stop_listening()
            except Exception:
                log.exception("stopping %s failed", adapter.platform)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._started:
            await self.scheduler.stop()
            await self.deliverer.stop()
        for adapter in self.adapters.values():
            try:
                await adapter.disconnect()
            except Exception:
                log.exception("disconnecting %s failed", adapter.platform)
        for extension in self.commands.extensions.values():
            try:
                await extension.aclose()
            except Exception:
                log.exception("closing an extension failed")
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:
                log.exception("closing provider %s failed", provider.name)
        await self.locks.aclose()
        await self.db.dispose()
        if self.crash_reports:
            crashes.disarm()  # a clean stop: nothing to report
        self._started = False

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # Live news goes to a platform's adapter in this process only if it serves that person:
    # a console running someone else's job prints nothing of it.

    async def _progress(self, update: Progress) -> None:
        adapter = self.adapters.get(update.reply_to.platform)
        if adapter is not None and adapter.serves(update.reply_to):
            await adapter.progress(update)

    # What extensions tell a chat about work that is not a job (a model download).

    async def models_changed(self) -> None:
        """Model files may have arrived (a Civitai download, a scan): every provider that
        serves model folders looks again."""
        for name, provider in self.providers.items():
            try:
                await provider.models_changed()
            except Exception:
                log.exception("provider %s could not look for new models", name)

    async def show_status(self, reply_to: ReplyTo, text: str, *, final: bool = False) -> None:
        adapter = self.adapters.get(reply_to.platform)
        if adapter is not None and adapter.serves(reply_to):
            try:
                await adapter.show_status(reply_to, text, final=final)
            except Exception:
                log.exception("showing a status on %s failed", adapter.platform)

    async def announce(self, reply_to: ReplyTo, text: str) -> None:
        adapter = self.adapters.get(reply_to.platform)
        if adapter is not None and adapter.serves(reply_to):
            try:
                await adapter.announce(reply_to, text)
            except Exception:
                log.exception("announcing on %s failed", adapter.platform)
