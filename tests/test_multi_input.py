"""img2img from several pictures (issue 17, FLUX.2): the core keeps every input, the
scheduler hands them all to the provider in order, the router refuses more than a model
takes before anything is charged, and the store's sweep keeps them all."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from adapters.chat.console import ConsoleAdapter
from adapters.providers.bfl import BflProvider
from bot.errors import BadInput
from bot.housekeeping import sweep_store
from bot.params import GenerationParams
from bot.results import Results
from storage.models import Job
from tests.conftest import REPLY, user
from tests.fakes.bfl import FakeBfl
from tests.test_provider_bfl import config as bfl_config

HOUR = 3600.0


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


RED, GREEN, BLUE = png((200, 0, 0)), png((0, 200, 0)), png((0, 0, 200))


def color_of(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as im:
        return tuple(im.convert("RGB").getpixel((1, 1)))  # type: ignore[arg-type]


def inputs_sent(task: Any) -> list[bytes]:
    """input_image, input_image_2, ... as the fake received them, in order."""
    names = ["input_image", *(f"input_image_{i}" for i in range(2, 9))]
    return [task.images[n] for n in names if n in task.images]


async def job_count(app: Any) -> int:
    async with app.db.session() as s:
        return int((await s.execute(select(func.count()).select_from(Job))).scalar_one())


async def test_three_pictures_reach_flux2_in_order(app_factory: Any) -> None:
    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(provider_objs={"bfl": BflProvider(bfl_config(fake))})
        adapter = app.adapters["test"]
        params = GenerationParams(prompt="the three as one scene", model="bfl:flux-2-pro")
        receipt = await app.jobs.submit(
            user(), "img2img", [params], REPLY, init_image=RED, more_images=[GREEN, BLUE]
        )
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
        view = await app.jobs.job(user(), receipt.job_ids[0])
        # Reroll sends all three again
        await Results(app.jobs).reroll(user(), receipt.job_ids[0], 0, REPLY)
        await adapter.wait_for(lambda: len(adapter.of_kind("finished")) == 2)
        task, again = fake.tasks.values()
    assert inputs_sent(again) == [RED, GREEN, BLUE]
    assert view.status == "succeeded" and view.model == "flux-2-pro"
    assert inputs_sent(task) == [RED, GREEN, BLUE]
    assert len(view.params["more_inputs"]) == 2
    for sha in view.params["more_inputs"]:
        assert app.files.get(sha, kind="inputs", ext="png") in (GREEN, BLUE)


async def test_too_many_pictures_for_the_model_are_refused_before_charging(
    app_factory: Any,
) -> None:
    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(provider_objs={"bfl": BflProvider(bfl_config(fake))})
        before = await app.jobs.balance(user())
        one = GenerationParams(prompt="merge", model="bfl:flux-pro-1.1")
        with pytest.raises(BadInput) as refused:
            await app.jobs.submit(
                user(), "img2img", [one], REPLY, init_image=RED, more_images=[GREEN]
            )
        text = str(refused.value)
        assert "flux-pro-1.1 takes at most 1 input picture(s) and you gave 2" in text
        assert "bfl:flux-2-pro (8)" in text and "bfl:flux-2-klein-4b (4)" in text
        klein = GenerationParams(prompt="merge", model="bfl:flux-2-klein-4b")
        with pytest.raises(BadInput, match="at most 4 input picture"):
            await app.jobs.submit(
                user(), "img2img", [klein], REPLY, init_image=RED, more_images=[GREEN] * 4
            )
        assert await app.jobs.balance(user()) == before
        assert await job_count(app) == 0
        assert fake.submits == []


async def test_the_sweep_keeps_every_input_of_a_job(app_factory: Any) -> None:
    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(provider_objs={"bfl": BflProvider(bfl_config(fake))})
        adapter = app.adapters["test"]
        params = GenerationParams(prompt="two into one", model="bfl:flux-2-pro")
        await app.jobs.submit(
            user(), "img2img", [params], REPLY, init_image=RED, more_images=[GREEN]
        )
        await adapter.wait_for(lambda: adapter.of_kind("finished"))
    store = app.files
    inputs = [p for p in (store.root / "inputs").rglob("*") if p.is_file()]
    assert len(inputs) == 2
    orphan = store.put(b"an input whose job never came", kind="inputs", ext="png").path
    for path in [*inputs, orphan]:
        t = time.time() - HOUR
        os.utime(path, (t, t))
    removed = await sweep_store(app.db, store, grace_s=60)
    assert removed == [orphan]
    assert all(p.exists() for p in inputs)


async def test_console_img2img_with_two_paths(app_factory: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b picture.png"
    a.write_bytes(RED)
    b.write_bytes(GREEN)
    async with FakeBfl(delay_s=0.05) as fake:
        app = await app_factory(provider_objs={"bfl": BflProvider(bfl_config(fake))})
        out = io.StringIO()
        console = ConsoleAdapter(app, user("ann"), out=out)
        app.add_adapter(console)
        await console.handle_line(
            f'/img2img {a} "{b}" put them side by side --model bfl:flux-2-pro'
        )
        await console.wait_until_done()
        # the one-picture syntax still works
        await console.handle_line(f"/img2img {a} just one --model bfl:flux-2-pro")
        await console.wait_until_done()
        # a one-picture model refuses two, naming its limit; nothing is sent
        await console.handle_line(f'/img2img {a} "{b}" merge --model bfl:flux-pro-1.1')
    printed = out.getvalue()
    assert "receipt: job #1" in printed and "receipt: job #2" in printed, printed
    assert "error: bfl:flux-pro-1.1 takes at most 1 input picture(s) and you gave 2" in printed
    first, second = fake.tasks.values()
    assert [color_of(d) for d in inputs_sent(first)] == [(200, 0, 0), (0, 200, 0)]
    assert fake.submits[0].body["prompt"] == "put them side by side"
    assert [color_of(d) for d in inputs_sent(second)] == [(200, 0, 0)]
    assert len(fake.submits) == 2
