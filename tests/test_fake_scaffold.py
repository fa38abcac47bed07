"""The loopback scaffold the fakes share (tests/fakes/scaffold.py): faults are served exactly
as many times as asked, records carry what the client sent (JSON, form, files, query,
headers), and stopping a server with a request still pending does not hang."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.scaffold import LoopbackServer


class Echo(LoopbackServer):
    """Two origins: ``api`` (hello, echo, upload, slow) and ``files`` (serves uploads)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = asyncio.Event()

    def origins(self) -> dict[str, web.Application]:
        api = web.Application()
        api.router.add_get("/hello", self._hello, name="hello")
        api.router.add_post("/echo", self._echo, name="echo")
        api.router.add_post("/upload", self._upload, name="upload")
        api.router.add_get("/slow", self._slow, name="slow")
        files = web.Application()
        files.router.add_get("/f/{key}", self._file, name="file")
        return {"api": api, "files": files}

    def key_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    async def _hello(self, request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def _echo(self, request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()})

    async def _upload(self, request: web.Request) -> web.Response:
        call = self.record(request)
        keys = [self.files.put(f.data, content_type=f.content_type).key for f in call.files]
        return web.json_response({"keys": keys})

    async def _file(self, request: web.Request) -> web.Response:
        return self.files.response(request.match_info["key"])

    async def _slow(self, request: web.Request) -> web.Response:
        await self.release.wait()  # a handler that waits on its own, never released here
        return web.json_response({})


async def test_a_fault_is_served_exactly_as_many_times_as_asked() -> None:
    async with Echo() as fake, aiohttp.ClientSession() as http:
        fake.faults.fail(503, {"detail": "busy"}, on="hello", retry_after=2.0)
        fake.faults.fail(429, on="echo", times=2)
        answers = []
        for _ in range(3):
            async with http.get(f"{fake.base_url}/hello") as resp:
                answers.append((resp.status, resp.headers.get("Retry-After"), await resp.json()))
        assert answers == [
            (503, "2", {"detail": "busy"}),
            (200, None, {"hello": "world"}),
            (200, None, {"hello": "world"}),
        ]
        statuses = []
        for _ in range(3):
            async with http.post(f"{fake.base_url}/echo", json={"n": 1}) as resp:
                statuses.append(resp.status)
        assert statuses == [429, 429, 200]
        assert len(fake.faults) == 0
        assert [c.status for c in fake.calls_of("hello")] == [503, 200, 200]
        assert [c.fault is not None for c in fake.log] == [True, False, False, True, True, False]
        assert fake.calls_of("echo")[0].reply == {"detail": "injected failure (HTTP 429)"}
        assert fake.calls_of("echo")[2].reply == {"got": {"n": 1}}


async def test_a_fault_matches_only_its_requests_and_delay_then_answers() -> None:
    async with Echo() as fake, aiohttp.ClientSession() as http:
        fake.faults.fail(500, on=lambda c: c.query.get("x") == "1")
        fake.faults.delay(0.3, on="/hello")
        async with http.get(f"{fake.base_url}/hello?x=2") as resp:
            assert resp.status == 200  # delayed, then answered by the fake
        async with http.get(f"{fake.base_url}/hello?x=1") as resp:
            assert resp.status == 500
        first, second = fake.calls_of("hello")
        assert second.time - first.time >= 0.3
        assert len(fake.faults) == 0


async def test_a_dropped_connection_gets_no_answer() -> None:
    async with Echo() as fake, aiohttp.ClientSession() as http:
        fake.faults.drop(on="echo")  # a POST: aiohttp retries an idempotent GET once
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with http.post(f"{fake.base_url}/echo", json={}) as resp:
                await resp.read()
        async with http.post(f"{fake.base_url}/echo", json={}) as resp:
            assert resp.status == 200
        dropped, answered = fake.calls_of("echo")
        assert (dropped.status, dropped.done) == (0, True)
        assert answered.status == 200


async def test_recorded_calls_carry_the_body_files_query_and_key() -> None:
    picture = os.urandom(4096) + b"\r\n--not-a-boundary\r\n" + os.urandom(100)
    async with Echo() as fake, aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer sekrit", "X-Trace": "t1"}
        body = {"prompt": "a cat", "n": [1, 2]}
        async with http.post(f"{fake.base_url}/echo?a=1&a=2&b=3", json=body, headers=headers):
            pass
        form = aiohttp.FormData()
        form.add_field("caption", "héllo")
        form.add_field("photo", picture, filename="cat.png", content_type="image/png")
        form.add_field("after", "yes")
        async with http.post(f"{fake.base_url}/upload", data=form) as resp:
            (key,) = (await resp.json())["keys"]
        async with http.get(f"{fake.url('files')}/f/{key}") as resp:
            served = await resp.read()
        async with http.post(f"{fake.base_url}/echo", data={"k": "v"}) as resp:
            assert resp.status == 500  # not JSON: the handler fails, the record still has it

    echo, upload, fetch, urlencoded = fake.log
    assert (echo.method, echo.path, echo.origin, echo.endpoint) == ("POST", "/echo", "api", "echo")
    assert echo.json == body == echo.body
    assert echo.query == {"a": "1", "b": "3"} and echo.params("a") == ["1", "2"]
    assert echo.key == "sekrit"
    assert echo.headers["authorization"] == "Bearer ***" and echo.headers["X-Trace"] == "t1"
    assert upload.form == {"caption": "héllo", "after": "yes"}
    assert upload.parts == ["caption", "photo", "after"]
    (photo,) = upload.files
    assert (photo.field, photo.filename, photo.content_type) == ("photo", "cat.png", "image/png")
    assert photo.data == picture == fake.files.data(key) == served
    assert (fetch.origin, fetch.endpoint, fetch.status) == ("files", "file", 200)
    assert urlencoded.form == {"k": "v"} and urlencoded.json is None
    assert [c.index for c in fake.log] == [0, 1, 2, 3]


async def test_wait_for_call_sees_a_later_call_and_times_out_on_none() -> None:
    async with Echo() as fake, aiohttp.ClientSession() as http:

        async def later() -> None:
            await asyncio.sleep(0.1)
            async with http.get(f"{fake.base_url}/hello"):
                pass

        task = asyncio.create_task(later())
        call = await fake.wait_for_call("hello", timeout=3.0)
        await task
        assert call.status == 200 and call.done
        with pytest.raises(TimeoutError, match="no call echo"):
            await fake.wait_for_call("echo", timeout=0.1)


@pytest.mark.parametrize(
    ("how", "shutdown_timeout", "within"),
    [
        ("injected delay", 10.0, 1.0),  # ends at once, without waiting for shutdown_timeout
        ("handler waiting", 0.5, 2.0),  # cancelled after shutdown_timeout
    ],
)
async def test_stopping_with_a_pending_request_does_not_hang(
    how: str, shutdown_timeout: float, within: float
) -> None:
    fake = await Echo(shutdown_timeout=shutdown_timeout).start()
    path = "/slow"
    if how == "injected delay":
        fake.faults.delay(60.0, on="hello")
        path = "/hello"
    http = aiohttp.ClientSession()
    try:
        pending = asyncio.create_task(http.get(f"{fake.base_url}{path}"))
        await fake.wait_for_call(answered=False, timeout=3.0)
        started = time.monotonic()
        async with asyncio.timeout(15.0):
            await fake.stop()
        assert time.monotonic() - started < within
        with pytest.raises(aiohttp.ClientError):
            async with asyncio.timeout(5.0):
                await pending
    finally:
        await http.close()
    (call,) = fake.log
    assert call.status == 0 and call.done
