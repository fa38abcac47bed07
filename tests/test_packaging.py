"""What the code imports is what the package declares: a library imported directly but only
present through another one's dependencies can change, or vanish, under us."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "adapters", "storage")


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {_norm(r.name): r for r in reqs}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the shipped packages -> importing files."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_library_is_a_declared_dependency() -> None:
    declared = _declared()
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: sorted(files)
        for module, files in _imported().items()
        if not any(_norm(d) in declared for d in distributions.get(module, [module]))
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_aiohttp_floor_excludes_the_request_smuggling_releases() -> None:
    # the Telegram webhook server is aiohttp's; before 3.12.14 its parser let requests be
    # smuggled, and through discord.py alone any 3.x could be resolved
    spec = _declared()["aiohttp"].specifier
    assert not spec.contains(Version("3.12.13"))
    assert spec.contains(Version("3.12.14"))
