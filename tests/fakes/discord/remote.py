"""Running the fake as a subprocess, and pointing discord.py at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp

from tests.fakes.discord.base import DEFAULT_TOKEN, Json, _decode_bytes, _encode_bytes
from tests.fakes.discord.server import FakeDiscord


@contextlib.contextmanager
def point_discord_at(target: FakeDiscord | FakeDiscordRemote | str) -> Iterator[None]:
    """Redirect discord.py's REST base and default gateway to the fake, restoring them after.

    ``Route.BASE`` is read when each Route is built and ``DEFAULT_GATEWAY`` when a client
    connects without a gateway (``Client.connect``), so patching both before ``start`` is all
    it takes; resumes use READY's ``resume_gateway_url``, which the fake points at itself.
    """
    import discord.gateway
    import discord.http
    import yarl

    url = target if isinstance(target, str) else target.url
    url = url.rstrip("/")
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        url.replace("http://", "ws://", 1) + "/"
    )
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


class FakeDiscordRemote:
    """Client for the HTTP control API of a fake running in another process.

    Every method of :class:`FakeDiscord` listed in the control API is reachable through
    :meth:`call` (``await remote.call("slash", name="imagine", options={...})``); the common ones
    have wrappers. Answers are JSON: calls as dicts, bytes as ``{"$b64": ...}``.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FakeDiscordRemote:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, method: str, /, **kwargs: Any) -> Any:
        """POST ``/_control/<method>`` with ``kwargs`` (bytes anywhere are base64-wrapped)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            f"{self.url}/_control/{method}", json=_encode_bytes(kwargs)
        ) as resp:
            payload = await resp.json(content_type=None)
        if resp.status == 408:
            raise TimeoutError(payload.get("error"))
        if resp.status != 200:
            raise ValueError(payload.get("error", str(payload)))
        return _decode_bytes(payload["result"])

    async def slash(self, name: str, options: dict[str, Any] | None = None, **kw: Any) -> Json:
        return await self.call("slash", name=name, options=options, **kw)

    async def button(self, message_id: int, custom_id: str, **kw: Any) -> Json:
        return await self.call("button", message_id=message_id, custom_id=custom_id, **kw)

    async def calls(self, method: str | None = None, path_regex: str | None = None) -> list[Json]:
        return await self.call("calls", method=method, path_regex=path_regex)

    async def channel_messages(self, channel_id: int) -> list[Json]:
        return await self.call("channel_messages", channel_id=channel_id)

    async def wait_for_call(
        self, method: str | None = None, path_regex: str | None = None, timeout: float = 5.0
    ) -> Json:
        return await self.call(
            "wait_for_call", method=method, path_regex=path_regex, timeout=timeout
        )


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeDiscord(
        token=args.token,
        heartbeat_interval=args.heartbeat_interval,
        compression=not args.no_compression,
    )
    await fake.start(args.host, args.port)
    print(f"READY {fake.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of ``python -m tests.fakes.discord_api``."""
    parser = argparse.ArgumentParser(description="Fake Discord (REST v10 + gateway) for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--heartbeat-interval", type=int, default=41250, help="milliseconds")
    parser.add_argument("--no-compression", action="store_true", help="plain text frames")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
