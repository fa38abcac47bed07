"""The configuration: the example file documents every key with its real default."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"


# Keys whose value is a table of the operator's own choosing, not a section.
MAPS = {
    "credits.prices",
    "credits.provider_prices",
    "telegram.nsfw_chats",
    "providers.failover",
    "providers.aliases",
    "providers.chat_models",
    "providers.liblib.models",
}


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in MAPS:
            out |= _keys(value, path + ".")
        else:
            out.add(path)
    return out


def test_example_file_is_exactly_the_defaults() -> None:
    from_file = load_config(EXAMPLE, environ={})
    assert from_file.model_dump() == Config().model_dump()


def test_example_file_names_every_key() -> None:
    written = _keys(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")))
    known = _keys(Config().model_dump(mode="json"))
    assert known - written == set(), "keys missing from config.example.toml"
    assert written - known == set(), "keys in config.example.toml that do not exist"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[queue]\nmax_queued_per_user = 3\n")
    config = load_config(
        cfg,
        environ={
            "SDHOST_QUEUE__MAX_RUNNING_PER_USER": "2",
            "SDHOST_DATABASE__URL": "postgresql+asyncpg://u@h/db",
            "SDHOST_CREDITS__PRICES": "{ txt2img = 3 }",
        },
    )
    assert config.queue.max_queued_per_user == 3
    assert config.queue.max_running_per_user == 2
    assert config.database_url == "postgresql+asyncpg://u@h/db"
    assert config.credits.prices == {"txt2img": 3, "img2img": 2, "batch": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[queue]\nmax_queued_per_usr = 3\n", "queue.max_queued_per_usr: unknown key"),
        ("[credits]\nstarting_grant = -1\n", "credits.starting_grant"),
        ("[credits.refunds]\nbatch = ['oops']\n", "credits.refunds.batch"),
        ("[credits]\nprices = { upscale = 1 }\n", "unknown job kind"),
        ("[queue\n", "not valid TOML"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load_config(cfg, environ={})
