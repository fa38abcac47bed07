"""Discord's /imagine for self-hosted GPUs: the sampler, lora, vae, scheduler and hires
options, completed from what the providers list (``Capabilities.lists``), checked before
the acknowledgement, and carried to the provider and into the delivered picture."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from PIL import Image

from adapters.providers.demo import DemoProvider
from bot.config import DemoProviderConfig
from bot.providers import Capabilities, ModelInfo, ProviderRun, ResolvedRequest
from tests.test_discord import Env, env
from tests.test_discord_mistakes import EPHEMERAL, bot_posts, first_response

__all__ = ["env"]  # the fixture, used by name

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LORAS = (
    "film_grain",
    "detail_tweaker",
    "Detail Slider v2",
    *(f"style_{i:02d}" for i in range(40)),
    "x" * 101,  # too long for a choice: never offered
)


class GpuDemo(DemoProvider):
    """The demo provider dressed as the operator's own GPUs, remembering every request."""

    name = "gpu"

    def __init__(self) -> None:
        super().__init__(DemoProviderConfig(latency_s=0.0))
        self.requests: list[ResolvedRequest] = []
        self.lists: dict[str, tuple[str, ...]] = {
            "loras": LORAS,
            "samplers": ("Euler a", "DPM++ 2M", "DPM++ SDE"),
            "schedulers": ("Automatic", "Karras", "sgm_uniform"),
            "vaes": ("Automatic", "None", "sdxl_vae.safetensors"),
        }

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(
            super().capabilities(),
            models=(ModelInfo("juggernautXL", "Juggernaut XL v9 · SDXL 1.0"),),
            default_model="juggernautXL",
            lists=self.lists,
        )

    async def generate(self, run: ProviderRun) -> None:
        self.requests.append(run.request)
        await super().generate(run)


@pytest.fixture
def gpu(env: Env) -> GpuDemo:
    provider = GpuDemo()
    env.extra_providers["gpu"] = provider
    return provider


def _imagine(e: Env) -> dict[str, Any]:
    [command] = [c for c in e.dc.registered_commands() if c["name"] == "imagine"]
    return command


async def _choices(e: Env, options: dict[str, Any], focused: str) -> list[Any]:
    typing = e.dc.autocomplete("imagine", {"prompt": "x", **options}, focused)
    await e.until(lambda: e.dc.autocomplete_choices(typing["token"]) is not None)
    return e.dc.autocomplete_choices(typing["token"]) or []


async def test_imagine_has_the_gpu_options_within_discords_limits(env: Env, gpu: GpuDemo) -> None:
    await env.start()
    options = {o["name"]: o for o in _imagine(env)["options"]}
    assert len(options) <= 25
    for name in ("sampler", "lora", "vae", "scheduler"):
        assert options[name]["type"] == 3 and options[name]["autocomplete"] is True, name
        assert len(options[name]["description"]) <= 100
    assert options["hires"]["type"] == 5  # a boolean
    assert options["lora"]["name_localizations"]["zh-CN"] == "lora"
    assert options["scheduler"]["name_localizations"]["zh-CN"] == "调度器"


async def test_autocomplete_offers_what_the_gpus_have(env: Env, gpu: GpuDemo) -> None:
    await env.start()
    values = [c["value"] for c in await _choices(env, {"vae": "sdxl"}, "vae")]
    assert values == ["sdxl_vae.safetensors"]
    values = [c["value"] for c in await _choices(env, {"scheduler": "KAR"}, "scheduler")]
    assert values == ["Karras"]
    values = [c["value"] for c in await _choices(env, {"sampler": "dpm"}, "sampler")]
    assert values == ["DPM++ 2M", "DPM++ SDE"]
    # names starting with what is typed come first
    values = [c["value"] for c in await _choices(env, {"lora": "detail"}, "lora")]
    assert values == ["detail_tweaker", "Detail Slider v2"]
    # at most 25, none longer than Discord takes
    got = await _choices(env, {"lora": ""}, "lora")
    assert len(got) == 25 and all(len(c["name"]) <= 100 and len(c["value"]) <= 100 for c in got)
    # the last item of a list is completed; the earlier ones stay as typed and are not offered
    got = await _choices(env, {"lora": "film_grain:0.8, det"}, "lora")
    assert [c["value"] for c in got] == [
        "film_grain:0.8, detail_tweaker",
        "film_grain:0.8, Detail Slider v2",
    ]
    got = await _choices(env, {"lora": "detail_tweaker, film_grain:0.5,  fil"}, "lora")
    assert got == []
    # a weight typed after the name is kept
    got = await _choices(env, {"lora": "film:0.7"}, "lora")
    assert [c["value"] for c in got] == ["film_grain:0.7"]
    # only the provider picked: the demo has no LoRAs
    assert await _choices(env, {"provider": "demo", "lora": ""}, "lora") == []
    got = await _choices(env, {"model": "gpu:juggernautXL", "vae": "n"}, "vae")
    assert [c["value"] for c in got] == ["None", "sdxl_vae.safetensors"]
    # refreshed when they change: asked afresh every time
    gpu.lists = {**gpu.lists, "vaes": ("new_vae.pt",)}
    assert [c["value"] for c in await _choices(env, {"vae": ""}, "vae")] == ["new_vae.pt"]


async def test_the_options_reach_the_gpu_and_the_picture(env: Env, gpu: GpuDemo) -> None:
    await env.start()
    sent = env.dc.slash(
        "imagine",
        {
            "prompt": "a castle <lora:film_grain:0.4>",
            "provider": "gpu",
            "sampler": "DPM++ 2M",
            "lora": "detail_tweaker:0.8, Detail Slider v2:-1,5",
            "vae": "sdxl_vae.safetensors",
            "scheduler": "Karras",
            "hires": True,
        },
    )
    await env.until(lambda: "succeeded" in env.status_text(sent["token"]))
    [request] = gpu.requests
    assert request.prompt == "a castle <lora:film_grain:0.4>"
    assert request.loras == (("detail_tweaker", 0.8), ("Detail Slider v2", -1.5))
    assert (request.sampler, request.vae, request.scheduler, request.hires) == (
        "DPM++ 2M",
        "sdxl_vae.safetensors",
        "Karras",
        True,
    )
    [msg] = env.pictures()
    [data] = env.files(msg).values()
    text = Image.open(io.BytesIO(data)).text["parameters"]  # type: ignore[attr-defined]
    assert text.startswith(
        "a castle <lora:film_grain:0.4> <lora:detail_tweaker:0.8> <lora:Detail Slider v2:-1.5>\n"
    )
    assert "Schedule type: Karras" in text and "VAE: sdxl_vae.safetensors" in text
    assert "Hires upscale: 2" in text

    # hires off is simply not asked for
    sent = env.dc.slash("imagine", {"prompt": "a hut", "provider": "gpu", "hires": False})
    await env.until(lambda: "succeeded" in env.status_text(sent["token"]))
    assert gpu.requests[-1].hires is False and gpu.requests[-1].loras == ()


@pytest.mark.parametrize(
    ("options", "must"),
    [
        ({"lora": "film_grain:9"}, ["`lora`", "-4..4"]),
        ({"lora": "style:v2"}, ["`lora`", "NAME:WEIGHT"]),
        ({"lora": "film_grain, film_grain:0.5"}, ["`lora`", "film_grain", "twice"]),
        ({"lora": "film_grain", "prompt": "x <lora:film_grain:1>"}, ["both in the prompt"]),
        ({"prompt": "x --hires=maybe"}, ["--hires"]),
        ({"vae": "a", "prompt": "x --vae b"}, ["twice"]),
    ],
)
async def test_bad_gpu_options_are_refused_privately(
    env: Env, gpu: GpuDemo, options: dict[str, Any], must: list[str]
) -> None:
    await env.start()
    balance = await env.balance()
    sent = env.dc.slash("imagine", {"prompt": "a castle", "provider": "gpu", **options})
    first = await first_response(env, sent["token"])
    assert first["data"]["flags"] & EPHEMERAL
    for words in must:
        assert words in first["data"]["content"], first["data"]["content"]
    assert bot_posts(env) == [] and gpu.requests == []
    assert await env.balance() == balance


async def test_a_bad_lora_option_is_said_in_chinese(env: Env, gpu: GpuDemo) -> None:
    await env.start()
    sent = env.dc.slash("imagine", {"prompt": "城堡", "lora": "a, a"}, locale="zh-CN")
    first = await first_response(env, sent["token"])
    assert "出现了两次" in first["data"]["content"]
