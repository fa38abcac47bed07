"""Alembic owns the schema: upgrading an empty database must give exactly the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from storage.migrate import alembic_config, upgrade
from storage.models import Base
from tests.conftest import empty_database
from tests.test_console import ROOT


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def test_upgrade_gives_the_models_and_downgrade_undoes_it(db_url: str) -> None:
    await empty_database(db_url)
    await upgrade(db_url)
    assert await _diff(db_url) == []
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "base")
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
    finally:
        await engine.dispose()
    assert set(tables) <= {"alembic_version"}
    await upgrade(db_url)  # and up again, as `sdhost db upgrade` on a fresh install does
    assert await _diff(db_url) == []


def test_processes_starting_together_on_a_fresh_database_migrate_once(
    db_url: str, tmp_path: Path
) -> None:
    """Each process upgrades at start-up; four starting at once must all succeed."""
    asyncio.run(empty_database(db_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDHOST_")}
    env["SDHOST_DATABASE__URL"] = db_url
    env["SDHOST_DATA__DIR"] = str(tmp_path / "data")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in results]
    assert all("newest schema" in out for out, _ in results)
    assert asyncio.run(_diff(db_url)) == []
