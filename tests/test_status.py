"""The stored statuses: one StrEnum each, equal to the strings in the database, and every
one of them has the words a person reads."""

from __future__ import annotations

from sqlalchemy import text

import adapters.civitai.commands  # noqa: F401  (registers the texts)
from adapters.civitai.text import TEXT as CIVITAI_TEXT
from bot.i18n import CATALOG
from bot.params import GenerationParams
from bot.status import JOB_ACTIVE, JOB_TERMINAL, DownloadStatus, JobStatus
from tests.conftest import REPLY, user


def test_every_job_status_is_active_or_terminal_and_has_its_words() -> None:
    assert set(JOB_ACTIVE) | set(JOB_TERMINAL) == set(JobStatus)
    assert not set(JOB_ACTIVE) & set(JOB_TERMINAL)
    for status in JobStatus:
        assert set(CATALOG[f"status.{status}"]) == {"en", "zh"}
    for status in JOB_TERMINAL:  # "job #3 has already <past>"
        assert set(CATALOG[f"past.{status}"]) == {"en", "zh"}


def test_every_download_status_has_its_headline() -> None:
    for status in DownloadStatus:
        assert set(CIVITAI_TEXT[f"cv.dl.{status}"]) == {"en", "zh"}


async def test_members_are_the_strings_stored(app_factory) -> None:
    """Written as members, read back as the plain words (what older rows hold too)."""
    app = await app_factory()
    await app.scheduler.stop()
    params = GenerationParams(prompt="a lake", width=64, height=64)
    receipt = await app.jobs.submit(user(), "txt2img", [params], REPLY)
    await app.jobs.cancel(user(), receipt.job_ids[0])

    async with app.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT status FROM jobs"))).all()
        events = (await conn.execute(text("SELECT status FROM outbox"))).all()
    assert [type(r.status) for r in rows] == [str]
    assert [r.status for r in rows] == ["cancelled"] == [JobStatus.CANCELLED]
    assert {e.status for e in events} <= {"pending", "sending", "sent"}
    assert events
