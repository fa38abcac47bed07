"""Rules of the house that a reviewer would otherwise have to remember.

``asyncio.wait_for`` on Python 3.11 can swallow a cancellation (see ``bot/waiting.py``): a
loop that used it to wait for a wake-up ran on after ``stop()`` cancelled it, and CI hung
for 90 minutes in ``App.stop``. The shipped code and the fakes use ``wait_for_event`` or
``asyncio.timeout`` instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = [ROOT / "bot", ROOT / "adapters", ROOT / "storage", ROOT / "tests" / "fakes"]


def _wait_for_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "wait_for"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "asyncio"
    ]


def test_no_asyncio_wait_for_in_shipped_code_or_fakes() -> None:
    files = [p for folder in CHECKED for p in folder.rglob("*.py")]
    files.append(ROOT / "tests" / "conftest.py")
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := _wait_for_calls(p))}
    assert found == {}, f"asyncio.wait_for can swallow a cancel on 3.11: {found}"


def test_the_rule_sees_a_call(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import asyncio\nasync def f(e):\n    await asyncio.wait_for(e.wait(), 1)\n")
    assert _wait_for_calls(sample) == [3]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


# The program's front doors may wire adapters in; the rest of the core never names one.
FRONT_DOORS = {"bot/app.py", "bot/cli.py"}


def test_the_core_imports_no_adapter_outside_its_front_doors() -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("adapters"))
        for p in (ROOT / "bot").rglob("*.py")
        if str(p.relative_to(ROOT)) not in FRONT_DOORS
    }
    assert {k: v for k, v in bad.items() if v} == {}


def _family(module: str) -> str | None:
    """The adapter a module belongs to: adapters.chat.telegram, adapters.providers.bfl..."""
    module = PART_OF.get(module, module)
    parts = module.split(".")
    if len(parts) >= 3 and parts[0] == "adapters" and parts[1] in ("chat", "providers"):
        return ".".join(parts[:3])
    return None


PART_OF = {"adapters.providers.demo_art": "adapters.providers.demo"}

# Shared by the adapters of one kind: not an adapter of its own.
SHARED = {
    "adapters.chat.conversation",
    "adapters.chat.status",
    "adapters.providers.cloud",
    "adapters.providers.gpupool",
    "adapters.providers.base",
}


def test_adapters_never_import_each_other() -> None:
    bad: dict[str, list[str]] = {}
    for path in (ROOT / "adapters").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = _family(module)
        if own is None or own in SHARED:
            continue
        for imported in _imports(path):
            other = _family(imported)
            if other is not None and other != own and other not in SHARED:
                bad.setdefault(module, []).append(imported)
    assert bad == {}


def test_chat_adapters_depend_on_the_host_protocol_not_the_app() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "adapters" / "chat").rglob("*.py")
        if "bot.app" in _imports(p)
    ]
    assert users == []
