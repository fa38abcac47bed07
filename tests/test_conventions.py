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
