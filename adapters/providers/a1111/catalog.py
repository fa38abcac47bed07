"""What one instance has (checkpoints, LoRAs, samplers, schedulers, VAEs, upscalers) and
how a name a person typed finds the thing it means.

Names are matched robustly, because the web UI's own names move: ``hash`` and ``sha256``
in ``/sd-models`` are null until the file has been hashed, the title gains `` [hash]``
after the first load, SD.Next lists ``name`` where A1111 lists ``model_name``, and people
type a file name, a title, a short or long hash, or the Civitai name the model registry
knows for the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$")
_HEX = re.compile(r"[0-9a-f]{8,64}")

LOADED = "loaded"  # the pseudo-model "whatever the instance has loaded"


def norm(name: str) -> str:
    """A name reduced for matching: no `` [hash]`` suffix, no folder, no extension, lower
    case, blanks squeezed."""
    text = _TITLE_HASH.sub("", str(name or "")).strip().replace("\\", "/")
    text = text.rsplit("/", 1)[-1]
    low = text.lower()
    for ext in _EXTENSIONS:
        if low.endswith(ext):
            low = low[: -len(ext)]
            break
    return " ".join(low.split())


@dataclass(frozen=True, slots=True)
class Checkpoint:
    key: str  # pool-wide identity: the normalised model name
    name: str  # as listed (model_name, or SD.Next's name)
    title: str  # what override_settings / options take on this instance
    filename: str
    hash10: str | None
    sha256: str | None

    @classmethod
    def of(cls, item: dict[str, Any]) -> Checkpoint | None:
        title = str(item.get("title") or "")
        name = str(item.get("model_name") or item.get("name") or "") or norm(title)
        if not (title or name):
            return None
        filename = str(item.get("filename") or "")
        sha = item.get("sha256")
        short = item.get("hash")
        return cls(
            key=norm(name),
            name=norm(name) if "/" in name or "\\" in name else name,
            title=title or name,
            filename=filename,
            hash10=str(short).lower() if short else None,
            sha256=str(sha).lower() if sha else None,
        )

    def names(self) -> set[str]:
        out = {self.key, norm(self.title)}
        if self.filename:
            out.add(norm(self.filename))
        return {n for n in out if n}

    def matches_hash(self, h: str) -> bool:
        h = h.lower()
        if self.sha256 and self.sha256.startswith(h):
            return True
        if self.hash10 and (self.hash10.startswith(h) or h.startswith(self.hash10)):
            return True
        title_hash = _TITLE_HASH.search(self.title)
        return bool(title_hash and title_hash.group(0).strip(" []").lower().startswith(h))


@dataclass(frozen=True, slots=True)
class Registered:
    """What the model registry (Civitai downloads, ``sdhost models scan``) says a file is."""

    sha256: str
    name: str
    version_name: str | None
    base_model: str | None
    file_name: str


def _named(items: Any, *keys: str) -> dict[str, str]:
    """{lower-case name or alias: the name to send} from a list route's answer."""
    out: dict[str, str] = {}
    for item in items or []:
        if isinstance(item, str):
            out.setdefault(item.lower(), item)
            continue
        if not isinstance(item, dict):
            continue
        main = next((str(item[k]) for k in keys if item.get(k)), "")
        if not main:
            continue
        out[main.lower()] = main
        for k in keys:
            if item.get(k):
                out.setdefault(str(item[k]).lower(), main)
        for alias in item.get("aliases") or []:
            out.setdefault(str(alias).lower(), main)
    return out


@dataclass
class InstanceInfo:
    """One instance as the last probe found it."""

    flavour: str = "a1111"  # a1111 | forge | sdnext
    version: str = ""
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    loras: dict[str, str] = field(default_factory=dict)
    samplers: dict[str, str] = field(default_factory=dict)
    schedulers: dict[str, str] | None = None  # None: the build has no /schedulers
    vaes: dict[str, str] = field(default_factory=dict)
    upscalers: list[str] = field(default_factory=list)
    loaded: str | None = None  # checkpoint key in memory (from sd_checkpoint_hash)
    # Forge (older builds) ignores override_settings' checkpoint: switch with /options.
    switch_by_options: bool = False

    @classmethod
    def read(
        cls,
        *,
        options: dict[str, Any],
        models: Any,
        loras: Any,
        samplers: Any,
        schedulers: Any,
        vaes: Any,
        upscalers: Any,
        sdnext: bool,
    ) -> InstanceInfo:
        forge = any(str(k).startswith("forge_") for k in options)
        flavour = "sdnext" if sdnext else "forge" if forge else "a1111"
        cps = [c for c in (Checkpoint.of(i) for i in models or [] if isinstance(i, dict)) if c]
        info = cls(
            flavour=flavour,
            checkpoints={c.key: c for c in cps},
            loras=_named(loras, "name", "alias"),
            samplers=_named(samplers, "name"),
            schedulers=None if schedulers is None else _named(schedulers, "name", "label"),
            vaes={
                **_named(vaes, "model_name", "filename"),
                "automatic": "Automatic",
                "none": "None",
            },
            upscalers=[str(u.get("name")) for u in upscalers or [] if isinstance(u, dict)],
            switch_by_options=forge,
        )
        info.loaded = info.loaded_from(options)
        return info

    def loaded_from(self, options: dict[str, Any]) -> str | None:
        """The checkpoint really in memory: ``sd_checkpoint_hash`` (the weights), not the
        ``sd_model_checkpoint`` option, which is restored after each job."""
        sha = str(options.get("sd_checkpoint_hash") or "").lower()
        if sha:
            found = self.by_hash(sha)
            if found:
                return found.key
        title = options.get("sd_model_checkpoint")
        found = self.find(str(title)) if title else None
        return found.key if found else None

    def by_hash(self, h: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints.values() if c.matches_hash(h)), None)

    def find(self, name: str) -> Checkpoint | None:
        wanted = norm(name)
        if not wanted:
            return None
        for c in self.checkpoints.values():
            if wanted in c.names():
                return c
        bare = name.strip().strip("[]").lower()
        if _HEX.fullmatch(bare):
            return self.by_hash(bare)
        return None


def close_names(wanted: str, names: Iterable[str], n: int = 5) -> list[str]:
    import difflib

    pool = sorted(set(names))
    return difflib.get_close_matches(wanted, pool, n=n, cutoff=0.5) or pool[:n]
