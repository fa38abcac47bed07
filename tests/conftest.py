"""Shared fixtures: a database per backend, a configured App, a scriptable test provider.

Storage and scheduler tests run on SQLite always and on PostgreSQL too when
``SDHOST_TEST_DATABASE_URL`` is set. Each pytest run creates its own PostgreSQL database
(and drops it afterwards), so concurrent runs on one server never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import App
from bot.chat import ChatAdapter, Delivery, Progress, UserRef
from bot.config import Config
from bot.waiting import wait_for_event
from storage.models import Base

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

PG_URL = os.environ.get("SDHOST_TEST_DATABASE_URL", "")

_real_getaddrinfo = socket.getaddrinfo


def _loopback(host: Any) -> bool:
    if host is None:
        return True  # a server binding to all interfaces
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.lower() in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, f"tests reach no host but loopback: {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the internet: every name but loopback fails to resolve (a test that
    needs a resolver of its own passes one in)."""
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only)


async def _admin_exec(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Any:
    """A fresh PostgreSQL database for this test run, or None without SDHOST_TEST_DATABASE_URL."""
    if not PG_URL:
        yield None
        return
    name = f"sdhost_t_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin_exec(PG_URL, f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    asyncio.run(_admin_exec(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> Any:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'sdhost.db'}"
        return
    if not pg_url:
        pytest.skip("set SDHOST_TEST_DATABASE_URL to run on PostgreSQL")
    asyncio.run(empty_database(pg_url, then_create=True))
    yield pg_url


async def empty_database(url: str, *, then_create: bool = False) -> None:
    """No tables at all, as on a fresh install; with ``then_create``, the models' tables
    (what the db_url fixture gives PostgreSQL tests: SQLite ones get a fresh file)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
            if then_create:
                await conn.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()


def process_env(**extra: str) -> dict[str, str]:
    """The environment for an ``sdhost`` subprocess: unbuffered output, and no database URL
    from the outer environment overriding the test's config file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("SDHOST_DATABASE__URL", None)
    return env


async def query_db(url: str, sql: str) -> list[Any]:
    """Rows of one SQL statement, on a connection of its own (to look at what processes
    wrote)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


def make_config(tmp_path: Path, db_url: str, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "data": {"dir": str(tmp_path / "data")},
        "database": {"url": db_url},
        "queue": {"poll_idle_s": 0.05, "lease_s": 6},
        "providers": {"demo": {"latency_s": 0.0}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merged = dict(raw[key])
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            raw[key] = merged
        else:
            raw[key] = value
    return Config.model_validate(raw)


class RecordingAdapter(ChatAdapter):
    """A chat adapter that writes down what it was asked to deliver."""

    platform = "test"

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.progress_updates: list[Progress] = []
        self.changed = asyncio.Event()

    async def deliver(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()

    async def progress(self, update: Progress) -> None:
        self.progress_updates.append(update)

    def of_kind(self, kind: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.kind == kind]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                if pred():
                    return
                await wait_for_event(self.changed, 0.1)


REPLY = {"platform": "test", "chat": "c1"}


def user(name: str = "alice") -> UserRef:
    return UserRef("test", name, name)


@pytest.fixture
async def app_factory(tmp_path: Path, db_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Build started Apps on the test database; all are stopped at the end."""
    apps: list[App] = []

    async def make(*, provider_objs: Any = None, migrate: bool = False, **sections: Any) -> App:
        config = make_config(tmp_path, db_url, **sections)
        if not migrate:
            config.database.auto_migrate = False
        app = App(config, providers=provider_objs)
        if not migrate and not apps and db_url.startswith("sqlite"):
            await app.db.create_all()
        app.add_adapter(RecordingAdapter())
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        await app.stop()


@contextlib.asynccontextmanager
async def sdhost_run(config: Path, environ: dict[str, str]) -> AsyncIterator[bytes]:
    """``sdhost run --config FILE`` as a person starts it; yields its first line of output
    (printed once it serves) and stops it with SIGTERM, which must end it cleanly."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **environ},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        yield line
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
    assert code == 0, (await proc.stderr.read()).decode()
