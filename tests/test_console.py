"""``sdhost chat`` and the operator CLI, run as a person would: as real subprocesses."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, extra: str = "", latency: float = 0.05) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[data]
dir = "{tmp_path / "data"}"
[queue]
poll_idle_s = 0.05
[providers.demo]
latency_s = {latency}
{extra}
""",
        encoding="utf-8",
    )
    return cfg


def sdhost(
    *args: str, stdin: str = "", cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SDHOST_DATABASE__URL", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


def test_chat_from_stdin_prints_receipt_progress_and_images(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin="/imagine a lighthouse at dusk --ar 16:9 --n 2\n/credits\n",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    receipt = next(line for line in lines if line.startswith("receipt:"))
    assert re.search(
        r"job #1 queued · position \d+ · demo:shapes 1024x576 ×2 · seed \d+ · cost 2 · balance 18",
        receipt,
    )
    assert any(line.startswith("progress: job #1 ") for line in lines)
    images = [line for line in lines if line.startswith("image:")]
    assert len(images) == 2
    for line in images:
        path = line.split()[4]
        im = Image.open(path)
        assert im.size == (1024, 576) and "parameters" in im.text
    assert any(line.startswith("done: job #1 succeeded · 2 images") for line in lines)
    assert "info: you have 18 credits" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_chat_errors_are_one_line_and_cost_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "junk.png").write_bytes(os.urandom(5000))
    Image.new("RGB", (64, 64)).save(tmp_path / "pic.bmp")
    (tmp_path / "big.png").write_bytes(_png_bytes((64, 64)) + b"\0" * (11 * 1024 * 1024))
    out = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin="\n".join(
            [
                "/imagine a cat --sed 4",
                "/imagine --ar 16:9",
                "/imagine a cat --ar banana",
                "/imagine a cat --model nope",
                "/frobnicate",
                "hello",
                "/img2img /no/such/file.png a cat",
                "/cancel abc",
                "/job 99",
                "/batch " + " | ".join(f"p{i}" for i in range(11)),
                f"/img2img {tmp_path / 'junk.png'} a cat",
                f"/img2img {tmp_path / 'pic.bmp'} a cat",
                f"/img2img {tmp_path / 'big.png'} a cat",
                "/img2img http://127.0.0.1:9/cat.png a cat",
                "/credits",
            ]
        )
        + "\n",
    )
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 14, out.stdout
    assert "did you mean --seed" in errors[0]
    assert "prompt is empty" in errors[1]
    assert "--ar" in errors[2]
    assert "unknown model" in errors[3]
    assert "/help" in errors[4]
    assert "no such file" in errors[6]
    assert "at most 10" in errors[9]
    assert "unsupported image format" in errors[10]  # random bytes named .png
    assert "unsupported image format" in errors[11]  # a BMP
    assert "the limit is 10 MB" in errors[12]
    assert "private or loopback" in errors[13]
    assert "info: you have 20 credits" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_img2img_reads_parameters_back_from_our_png(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    first = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin="/imagine a red fox in snow --size 256x256 --seed 7\n",
    )
    path = next(line.split()[4] for line in first.stdout.splitlines() if line.startswith("image:"))
    second = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin=f"/img2img {path} --strength 0.4\n/job 2\n",
    )
    assert second.returncode == 0, second.stderr
    assert "the picture carries its parameters: 'a red fox in snow', seed 7" in second.stdout
    assert re.search(r"receipt: job #2 queued .* 256x256 .* cost 2", second.stdout)
    new = next(line.split()[4] for line in second.stdout.splitlines() if line.startswith("image:"))
    assert "Denoising strength: 0.4" in Image.open(new).text["parameters"]


def test_batch_with_pipes_streams_each_task(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin="/batch a cat --size 64x64 | a dog --size 64x64 | a bird --size 64x64\n",
    )
    assert "receipt: batch #1: 3 tasks queued (jobs #1–#3)" in out.stdout
    assert len([x for x in out.stdout.splitlines() if x.startswith("image:")]) == 3
    assert "balance 17" in out.stdout


def test_operator_cli(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    c = ["--config", str(cfg)]
    assert sdhost(*c, "db", "upgrade").returncode == 0
    out = sdhost(*c, "credits", "grant", "telegram:42", "5")
    assert out.stdout.strip() == "telegram:42: 25 credits", out.stderr
    assert (
        sdhost(*c, "credits", "set", "telegram:42", "3").stdout.strip() == "telegram:42: 3 credits"
    )
    assert sdhost(*c, "credits", "show", "telegram:42").stdout.strip() == "telegram:42: 3 credits"
    bad = sdhost(*c, "credits", "grant", "telegram:42", "-10")
    assert bad.returncode == 1 and "cannot take 10" in bad.stderr
    sdhost(*c, "chat", "--user", "ann", stdin="/imagine a boat --size 64x64\n")
    listing = sdhost(*c, "jobs", "list")
    assert re.search(r"#1\tsucceeded\ttxt2img\tdemo", listing.stdout)
    shown = sdhost(*c, "jobs", "show", "1")
    assert "job #1: succeeded" in shown.stdout and "ledger: charge -1" in shown.stdout
    missing = sdhost(*c, "jobs", "cancel", "99")
    assert missing.returncode == 1 and "no job #99" in missing.stderr


def test_config_check_names_the_wrong_key(tmp_path: Path) -> None:
    good = write_config(tmp_path)
    assert sdhost("config", "check", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nmax_queued_per_usr = 3\n[credits]\nstarting_grant = -1\n")
    out = sdhost("config", "check", str(bad))
    assert out.returncode == 2
    assert "queue.max_queued_per_usr: unknown key" in out.stderr
    assert "credits.starting_grant" in out.stderr
    (tmp_path / "broken.toml").write_text("[queue\n")
    assert "not valid TOML" in sdhost("config", "check", str(tmp_path / "broken.toml")).stderr


def test_no_config_file_uses_embedded_defaults(tmp_path: Path) -> None:
    out = sdhost("chat", "--user", "ann", stdin="/models\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "demo (default)" in out.stdout and "not an AI model" in out.stdout
    assert (tmp_path / "data" / "sdhost.db").exists()


def _png_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "blue").save(buf, "PNG")
    return buf.getvalue()


def _counts(cfg: Path) -> tuple[int, int]:
    """(jobs, charges) in the chat's database: what a refusal must leave at zero."""
    db = sqlite3.connect(cfg.parent / "data" / "sdhost.db")
    try:
        jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        charges = db.execute("SELECT count(*) FROM ledger WHERE reason = 'charge'").fetchone()[0]
    finally:
        db.close()
    return jobs, charges


def test_img2img_reads_only_regular_files_and_never_more_than_the_limit(tmp_path: Path) -> None:
    """/dev/zero would be read forever, a FIFO would block the chat until someone writes to
    it, a directory cannot be read: each gets one line, and the chat goes on."""
    cfg = write_config(tmp_path, "[images]\nmax_input_bytes = 1048576\n")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "huge.png").write_bytes(_png_bytes((64, 64)) + b"\0" * (2 * 1024 * 1024))
    started = time.monotonic()
    out = sdhost(
        "--config",
        str(cfg),
        "chat",
        "--user",
        "ann",
        stdin="\n".join(
            [
                "/img2img /dev/zero a cat",
                "/img2img /dev/urandom a cat",
                f"/img2img {fifo} a cat",
                f"/img2img {tmp_path / 'folder.png'} a cat",
                f"/img2img {tmp_path / 'huge.png'} a cat",
                f"/img2img {tmp_path / 'gone.png'} a cat",
                "/img2img ~no-such-user-sdhost/cat.png a cat",
                "/img2img " + "a" * 300 + " cat",  # a word too long to be a file name
                "/credits",
            ]
        )
        + "\n",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 30
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    not_regular = "is not a regular file (a device, a pipe or a socket); give a picture file"
    assert errors == [
        f"error: /dev/zero {not_regular}",
        f"error: /dev/urandom {not_regular}",
        f"error: {fifo} {not_regular}",
        f"error: {tmp_path / 'folder.png'} is a directory, not a picture file",
        f"error: {tmp_path / 'huge.png'} is too big: the limit is 1 MB",
        f"error: no such file: {tmp_path / 'gone.png'}",
        "error: no such file: ~no-such-user-sdhost/cat.png",
        "error: img2img needs a picture: reply to one with /img2img PROMPT, or give a path or "
        "URL first, e.g. /img2img https://example.com/cat.png a watercolor cat",
    ], out.stdout
    assert "info: you have 20 credits" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert _counts(cfg) == (0, 0)


def test_a_local_file_is_read_at_most_one_byte_past_the_limit(tmp_path: Path) -> None:
    """However big a file is (or claims to be), no more than the limit + 1 bytes are read."""
    from bot.errors import BadInput
    from bot.localfile import read_local_picture

    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 5000)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        reads.append(len(data))
        return data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "read", counting_read)
        with pytest.raises(BadInput, match="too big"):
            read_local_picture(str(big), 1000)
    assert sum(reads) == 1001
    assert read_local_picture(str(big), 5000) == b"x" * 5000


def _sdhost_bytes(
    cfg: Path, stdin: bytes, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full.pop("SDHOST_DATABASE__URL", None)
    if "PYTHONIOENCODING" not in env:
        full.pop("PYTHONIOENCODING", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(cfg), "chat", "--user", "ann"],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env=full,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"PYTHONIOENCODING": "utf-8"},  # strict decoding: the chat used to die here
        {"LC_ALL": "C", "LANG": "C"},  # the locale's surrogateescape: the line was charged
        {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
    ],
    ids=["pythonioencoding", "c-locale", "utf8-locale"],
)
def test_bytes_that_are_not_utf8_are_refused_and_the_chat_goes_on(
    tmp_path: Path, env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path)
    out = _sdhost_bytes(
        cfg,
        b"/imagine a \xff\xfe cat --size 64x64\n/imagine a\x00cat\n/credits\n",
        env,
    )
    stdout, stderr = out.stdout.decode("utf-8", "replace"), out.stderr.decode("utf-8", "replace")
    assert out.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    errors = [line for line in stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, stdout
    assert "cannot take (U+DCFF" in errors[0] and "not UTF-8" in errors[0]
    assert "cannot take (U+0000" in errors[1]
    assert "info: you have 20 credits" in stdout
    assert _counts(cfg) == (0, 0)
