"""A job's live preview on the console: a small JPEG in a file of the person's own, a
``preview:`` line saying where, at most once per ``[images] preview_interval_s``, the file
gone when the outcome is reported. Two people's consoles never share a preview file."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

from adapters.chat.console import ConsoleAdapter
from bot.app import App
from bot.chat import Progress, UserRef
from tests.chat_helpers import decoded
from tests.conftest import make_config
from tests.preview_helpers import BLUE, RED, PreviewDemo, color_of, near, shades, square_png


def console(app: App, name: str) -> tuple[ConsoleAdapter, io.StringIO]:
    out = io.StringIO()
    return ConsoleAdapter(app, UserRef("console", name, name), out=out), out


def preview_lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line.startswith("preview:")]


def update(adapter: ConsoleAdapter, job: int, picture: bytes) -> Progress:
    return Progress(job, 50, "generating", reply_to=adapter.reply_to, preview=picture)


async def test_each_person_gets_their_own_file_paced_and_not_rewritten(
    tmp_path: Path, db_url: str
) -> None:
    config = make_config(tmp_path, db_url)
    config.images.preview_interval_s = 30.0
    app = App(config, run_workers=False)
    ann, ann_out = console(app, "ann")
    bob, bob_out = console(app, "../bob")  # a name that is no path
    await ann.progress(update(ann, 1, square_png(RED)))
    await bob.progress(update(bob, 2, square_png(BLUE)))
    for picture in shades(5):  # more previews inside the interval: none written
        await ann.progress(update(ann, 1, picture))
    assert len(preview_lines(ann_out)) == 1 and len(preview_lines(bob_out)) == 1
    ann_file, bob_file = ann.preview_path(1), bob.preview_path(2)
    assert ann_file.parent != bob_file.parent
    assert (tmp_path / "data" / "previews" / "console") in bob_file.parents
    assert str(ann_file) in preview_lines(ann_out)[0] and str(bob_file) not in ann_out.getvalue()
    jpeg = decoded(ann_file.read_bytes())
    assert jpeg.format == "JPEG" and jpeg.size == (512, 512)
    assert near(color_of(ann_file.read_bytes()), RED)
    assert near(color_of(bob_file.read_bytes()), BLUE)

    # past the interval: a new picture is written, the same one is not
    ann.preview_interval_s = 0.01
    await asyncio.sleep(0.02)
    await ann.progress(update(ann, 1, square_png(RED)))
    assert len(preview_lines(ann_out)) == 1
    await ann.progress(update(ann, 1, square_png(BLUE)))
    assert len(preview_lines(ann_out)) == 2 and near(color_of(ann_file.read_bytes()), BLUE)
    # a preview that is no picture: nothing written, the progress line still comes
    await asyncio.sleep(0.02)
    await ann.progress(Progress(1, 70, "generating", reply_to=ann.reply_to, preview=b"junk"))
    assert len(preview_lines(ann_out)) == 2 and "job #1 70%" in ann_out.getvalue()
    await app.db.dispose()


async def test_a_job_run_from_the_console_shows_its_preview_then_removes_it(
    tmp_path: Path, db_url: str
) -> None:
    config = make_config(tmp_path, db_url)
    config.images.preview_interval_s = 0.05
    config.database.auto_migrate = False
    provider = PreviewDemo(lambda prompt: shades(3), gap_s=0.1)
    app = App(config, providers={"demo": provider})
    if db_url.startswith("sqlite"):
        await app.db.create_all()
    adapter, out = console(app, "ann")
    app.add_adapter(adapter)
    await app.start()
    try:
        await adapter.handle_line("/imagine a quiet pond")
        async with asyncio.timeout(20):
            await adapter.wait_until_done(poll=0.05)
    finally:
        await app.stop()
    lines = preview_lines(out)
    assert 1 <= len(lines) <= 3
    path = Path(re.sub(r"^preview: job #\d+ ", "", lines[0]))
    assert path == adapter.preview_path(1)
    assert not path.exists()  # the outcome came: the preview went
    assert "done: job #1 succeeded" in out.getvalue()
