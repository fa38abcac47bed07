"""The model registry as providers see it: which model files sdhost knows (Civitai
downloads, ``sdhost models scan``), with their Civitai names and base models.

A self-hosted backend lists its checkpoints by file; this lets it also answer to the name
Civitai gives the model, and show that name and the base model in /models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from storage import repos
from storage.db import Database


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    sha256: str
    name: str
    type: str  # checkpoint | lora | vae | ...
    version_name: str | None
    base_model: str | None
    file_name: str  # the file's name on disk, without its folder ("" if unknown)


class ModelRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def models(self, type: str | None = None) -> list[RegisteredModel]:
        rows = await self.db.run_read(lambda conn: repos.list_models(conn, type=type))
        return [
            RegisteredModel(
                sha256=row.sha256,
                name=row.name,
                type=row.type,
                version_name=row.version_name,
                base_model=row.base_model,
                file_name=PurePath(row.path.replace("\\", "/")).name if row.path else "",
            )
            for row in rows
        ]
