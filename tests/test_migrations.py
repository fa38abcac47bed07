"""Alembic owns the schema: upgrading an empty database must give exactly the models."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.migrate import alembic_config, upgrade
from storage.models import Base


async def _empty(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await engine.dispose()


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
    await _empty(db_url)
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
