"""Crash reports: whose they are, what they say, and when they are cleaned up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from bot import crashes
from bot.owners import make_owner


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(p.stdout)


def test_reports_tell_a_fatal_signal_from_a_kill_and_are_swept_once_accounted(
    tmp_path: Path,
) -> None:
    me = make_owner()
    host = socket.gethostname()
    killed = f"{host}:{_dead_pid()}:aaaa1111"
    crashed = f"{host}:{_dead_pid()}:bbbb2222"
    holding = f"{host}:{_dead_pid()}:cccc3333"  # dead, its jobs not yet taken back
    elsewhere = "some-other-host:1:dddd4444"
    for owner, text in [
        (me, ""),
        (killed, ""),
        (crashed, "Fatal Python error: Segmentation fault\n"),
        (holding, ""),
        (elsewhere, ""),
    ]:
        path = crashes.crash_file(tmp_path, owner)
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert crashes.fatal_report(tmp_path, killed) is None
    assert crashes.fatal_report(tmp_path, "h:9:never") is None
    assert "Segmentation fault" in (crashes.fatal_report(tmp_path, crashed) or "")

    assert crashes.sweep(tmp_path, me, still_running=[holding]) == 2
    left = sorted(p.name for p in (tmp_path / crashes.CRASH_DIR).iterdir())
    assert left == sorted(crashes.crash_file(tmp_path, o).name for o in (me, holding, elsewhere))


def test_arming_writes_a_real_segfault_to_the_owners_file(tmp_path: Path) -> None:
    owner = f"{socket.gethostname()}:{os.getpid()}:eeee5555"
    code = (
        "import sys; from pathlib import Path; from bot import crashes;"
        f"crashes.arm(Path({str(tmp_path)!r}), {owner!r});"
        "from adapters.providers.demo import _segfault; _segfault()"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == -11
    report = crashes.fatal_report(tmp_path, owner) or ""
    assert "Segmentation fault" in report and "_segfault" in report
