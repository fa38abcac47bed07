"""Kinds of model and their folders (``civitai.folders`` under ``civitai.models_dir``), and
the limits every download shares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import CivitaiConfig

if TYPE_CHECKING:
    from bot.config import Config


log = logging.getLogger(__name__)


# --- kinds of model and their folders -----------------------------------------------------------

# The defaults live with the setting (civitai.folders); kinds are its keys, in its order.
DEFAULT_FOLDERS: dict[str, str] = dict(CivitaiConfig.model_fields["folders"].default)
CATEGORIES = tuple(DEFAULT_FOLDERS)
_CATEGORY_OF_MODEL_TYPE = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "locon": "lora",
    "lycoris": "lora",
    "dora": "lora",
    "vae": "vae",
    "textualinversion": "embedding",
    "controlnet": "controlnet",
    "upscaler": "upscaler",
}
_CATEGORY_OF_FILE_TYPE = {
    "vae": "vae",
    "controlnet": "controlnet",
    "upscaler": "upscaler",
    "negative": "embedding",
}
# What `models scan` counts as a model file.
# sizeKB is KiB with two decimals (2082642.47): a file may differ from it by a few bytes of
# rounding; this much more than listed is still taken (the hash check has the last word).
SIZE_TOLERANCE = 1024
DISK_MARGIN = 100 * 1024 * 1024  # free space left over after a download, at least
DEFAULT_MAX_BYTES = 20 * 1024**3  # civitai.max_download_gb
MODEL_EXTENSIONS = frozenset(
    {".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx"}
)
PART_SUFFIX = ".part"


def category_of(model_type: str | None, file_type: str | None = None) -> str:
    """The folder kind for a Civitai model type (``LORA``...) and file type (``VAE``...)."""
    by_file = _CATEGORY_OF_FILE_TYPE.get((file_type or "").replace(" ", "").lower())
    if by_file:
        return by_file
    return _CATEGORY_OF_MODEL_TYPE.get((model_type or "").replace(" ", "").lower(), "other")


def resolve_folders(models_dir: Path, folders: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Each kind's folder: ``folders`` over :data:`DEFAULT_FOLDERS`, relative ones under
    ``models_dir``. Unknown kinds are ignored (with a warning)."""
    merged = dict(DEFAULT_FOLDERS)
    for kind, folder in (folders or {}).items():
        if kind not in DEFAULT_FOLDERS:
            log.warning(
                "civitai.folders.%s is not a kind of model (use %s); ignored",
                kind,
                ", ".join(CATEGORIES),
            )
            continue
        merged[kind] = folder
    out = {}
    for kind, folder in merged.items():
        path = Path(folder).expanduser()
        path = path if path.is_absolute() else Path(models_dir).expanduser() / path
        out[kind] = Path(os.path.abspath(path))  # the registry and its cache key on it
    return out


def models_root(config: Config) -> Path:
    """``civitai.models_dir``, or ``<data.dir>/models`` when it is empty."""
    if config.civitai.models_dir:
        return Path(config.civitai.models_dir).expanduser()
    return Path(config.data.dir) / "models"
