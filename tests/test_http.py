"""adapters/http.py: what every HTTP adapter shares."""

from __future__ import annotations

import httpx
import pytest

from adapters.http import backoff_s, retry_after_s, with_retries


def test_retry_after_reads_seconds_and_dates_and_ignores_junk() -> None:
    def said(value: str) -> float | None:
        return retry_after_s(httpx.Response(429, headers={"Retry-After": value}))

    assert said("7") == 7.0
    assert said("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date: go now
    assert said("soon") is None
    assert retry_after_s(httpx.Response(429)) is None


def test_one_backoff_waits_at_least_what_was_asked_and_grows_to_its_cap() -> None:
    for _ in range(50):
        assert 3.0 <= backoff_s(1, 3.0) <= 3.3
        assert 0.25 <= backoff_s(1, None, base=0.5, cap=30) <= 0.5
        assert 2.0 <= backoff_s(4, None, base=0.5, cap=30) <= 4.0
        assert 15.0 <= backoff_s(20, None, base=0.5, cap=30) <= 30.0


async def test_with_retries_retries_only_what_may_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr("adapters.http.asyncio.sleep", sleep)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("busy")
        return "done"

    def hint(exc: BaseException) -> float | None:
        return 2.0 if isinstance(exc, OSError) else None

    assert await with_retries(flaky, retries=5, what="t", retry_after=hint) == "done"
    assert calls == 3 and len(slept) == 2 and all(s >= 2.0 for s in slept)

    async def broken() -> str:
        raise ValueError("never")

    with pytest.raises(ValueError):
        await with_retries(broken, retries=5, what="t", retry_after=hint)
    assert len(slept) == 2


async def test_provider_result_download_uses_the_capped_read() -> None:
    from adapters.providers.cloud import download
    from bot.errors import ProviderFailure

    sent: list[int] = []

    async def body():  # an endless picture: the read must stop soon after the cap
        for _ in range(1000):
            sent.append(1)
            yield b"x" * 1024

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ProviderFailure, match="too large"):
            await download(client, "http://127.0.0.1/p.png", what="t", max_bytes=10 * 1024)
    assert len(sent) <= 12

    def declared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"y" * 20, headers={"Content-Length": "999999"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(declared)) as client:
        with pytest.raises(ProviderFailure, match="too large"):
            await download(client, "http://127.0.0.1/p.png", what="t", max_bytes=1000)


async def test_a_submission_is_sent_again_only_when_it_cannot_have_arrived() -> None:
    """A submit that starts billed work: a refused connection is retried; a request the
    server read but never answered is not (a second send could start a second task)."""
    import asyncio

    from adapters.providers.cloud import send_once, with_retries
    from bot.config import BflConfig
    from bot.errors import ProviderFailure

    received = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()  # read it, answered nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    section = BflConfig.model_validate({"max_retries": 3})
    async with server, httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(ProviderFailure) as taken:
            await with_retries(
                section,
                lambda: send_once(
                    client, "POST", f"http://127.0.0.1:{port}/v1/x", what="submit", service="X"
                ),
                what="submit",
            )
        assert taken.value.retry_after is None and "no answer from X" in taken.value.message
        assert received == 1
    # nobody listening any more: it cannot have arrived, so it may be sent again
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(ProviderFailure) as refused:
            await send_once(client, "POST", f"http://127.0.0.1:{port}/v1/x", what="s", service="X")
    assert refused.value.retry_after == 0.0


def test_a_content_length_that_is_not_a_plain_number_is_no_length() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: a server sending such a length (or
    Arabic-Indic digits) must read as one that declared none, not crash the download."""
    from adapters.http import declared_length

    def answer(length: str) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": length.encode("latin-1")})

    assert declared_length(answer("1234")) == 1234
    assert declared_length(answer(" 12 ")) == 12
    for junk in ("²", "\xb3", "12a", "-5", "", "1_000"):
        assert declared_length(answer(junk)) is None, junk


async def test_the_capped_read_survives_a_lying_length() -> None:
    from adapters.http import TooLarge, read_capped

    def reply(length: bytes, body: bytes) -> httpx.MockTransport:
        return httpx.MockTransport(
            lambda request: httpx.Response(200, headers={"content-length": length}, content=body)
        )

    async with httpx.AsyncClient(transport=reply(b"\xb2", b"x" * 10)) as client:
        async with client.stream("GET", "http://127.0.0.1/x") as response:
            assert await read_capped(response, 100) == b"x" * 10
    async with httpx.AsyncClient(transport=reply(b"\xb2", b"x" * 200)) as client:
        async with client.stream("GET", "http://127.0.0.1/x") as response:
            with pytest.raises(TooLarge):
                await read_capped(response, 100)
