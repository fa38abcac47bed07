"""A model downloaded from Civitai reaches the GPU instances at once: ``sdhost civitai
download`` and ``/civitai download`` in chat ask every instance to refresh its lists, and
the checkpoint then answers to its Civitai name from the model registry."""

from __future__ import annotations

from pathlib import Path

from adapters.providers.a1111 import A1111Provider
from bot.config import A1111Config
from bot.model_registry import ModelRegistry
from storage.db import Database
from tests.fakes.a1111 import A1111Fake
from tests.fakes.civitai import FakeCivitaiDownloads
from tests.test_civitai_cli import sdhost
from tests.test_provider_a1111 import FAST


def config(tmp_path: Path, civitai: FakeCivitaiDownloads, gpu: A1111Fake) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n'
        f'[civitai]\nbase_url = "{civitai.base_url}"\n'
        "[providers.demo]\nlatency_s = 0.05\n"
        f'[providers.a1111]\ninstances = [{{ name = "gpu1", url = "{gpu.base_url}" }}]\n',
        encoding="utf-8",
    )
    return path


async def test_a_cli_download_makes_the_instances_look_again_and_answers_to_its_name(
    tmp_path: Path,
) -> None:
    async with (
        FakeCivitaiDownloads(file_size=300_000) as civitai,
        A1111Fake(checkpoints=["sd15.safetensors"]) as gpu,
    ):
        cfg = config(tmp_path, civitai, gpu)
        code, _, err = await sdhost(cfg, "civitai", "download", "52013", "--no-progress")
        assert code == 0, err
        assert gpu.refreshes["checkpoints"] == 1  # asked right after the download
        [path] = (tmp_path / "data" / "models" / "checkpoints").iterdir()

        # the web UI serves that folder: the file is in its list now
        gpu.checkpoints.append(path.name)
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'sdhost.db'}")
        registry = ModelRegistry(db)
        [row] = await registry.models("checkpoint")
        p = A1111Provider(
            A1111Config.model_validate({"instances": [{"url": gpu.base_url}], **FAST}),
            registry=registry,
        )
        try:
            await p.start()
            await p.models_changed()
            found = p.find_model(row.name)  # by the name Civitai gives it
            assert found is not None and found.name == path.stem
            assert row.name in found.description
            assert p.find_model(row.sha256[:12]) is not None  # by the registry's hash
        finally:
            await p.aclose()
            await db.dispose()


async def test_a_download_in_chat_makes_the_instances_look_again(tmp_path: Path) -> None:
    async with (
        FakeCivitaiDownloads(file_size=300_000) as civitai,
        A1111Fake(checkpoints=["sd15.safetensors"]) as gpu,
    ):
        cfg = config(tmp_path, civitai, gpu)
        code, out, err = await sdhost(
            cfg, "chat", "--user", "ann", stdin="/civitai download 52013\n/models a1111\n"
        )
        assert code == 0, err
        assert "Traceback" not in out + err
        assert gpu.refreshes["checkpoints"] >= 1
