from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from bot import fetch
from bot.errors import BadInput
from bot.fetch import fetch_image, is_forbidden_address

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
REFUSED = "refusing to fetch from a private or loopback address"


@dataclass
class Server:
    port: int
    hits: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(port=0)

    async def img(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        # Declares 50 MB, then dawdles: only an up-front Content-Length check ends this fast.
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 50 * 1024 * 1024
        await resp.prepare(request)
        await resp.write(b"\0" * 1024)
        await asyncio.sleep(10)
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(10_000):
                await resp.write(b"\xab" * 4096)
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(body=PNG)

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        srv.hits.append(request.path_qs)
        srv.hosts.append(request.host)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_get("/img.png", img)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/missing", missing)
    app.router.add_get("/page", page)
    app.router.add_get("/declared-huge", declared_huge)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/empty", empty)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield srv
    finally:
        await runner.cleanup()


def fake_dns(table: dict[str, list[str]]) -> fetch.Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 (and only it) is a public address.

    This is what makes the redirect tests meaningful with allow_private=False: the first
    hop to the loopback test server passes the real check path, so a refusal afterwards
    can only come from re-checking the redirect target.
    """
    real = fetch.is_forbidden_address
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(fetch, "is_forbidden_address", lambda ip: ip != loopback and real(ip))


# --- the address checker ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT, not "private" but not global either
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "151.101.1.140", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


# --- URL refusals (no network involved) ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://10.0.0.5/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "https://[fe80::1]/",
    ],
)
async def test_private_literals_refused(url: str) -> None:
    async def no_dns(host: str, port: int) -> Sequence[str]:
        raise AssertionError("a literal address must not be resolved")

    with pytest.raises(BadInput) as err:
        await fetch_image(url, resolver=no_dns)
    assert str(err.value) == REFUSED


async def test_names_resolving_to_private_addresses_refused() -> None:
    dns = fake_dns({"intranet.example": ["10.9.8.7"], "mixed.example": ["8.8.8.8", "::1"]})
    for url in ("http://intranet.example/x.png", "https://mixed.example/x.png"):
        with pytest.raises(BadInput, match=REFUSED):
            await fetch_image(url, resolver=dns)


async def test_localhost_via_the_system_resolver_refused(server: Server) -> None:
    with pytest.raises(BadInput, match=REFUSED):
        await fetch_image(server.url("/img.png", host="localhost"))
    assert server.hits == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "example.com/a.png"]
)
async def test_only_http_schemes(url: str) -> None:
    with pytest.raises(BadInput, match=r"^only http\(s\) URLs can be fetched$"):
        await fetch_image(url)


async def test_unresolvable_host() -> None:
    with pytest.raises(BadInput, match=r"cannot resolve nowhere\.invalid"):
        await fetch_image("http://nowhere.invalid/a.png", resolver=fake_dns({}))


# --- against a real loopback server ----------------------------------------------------


async def test_fetches_bytes(server: Server) -> None:
    assert await fetch_image(server.url("/img.png"), allow_private=True) == PNG
    assert await fetch_image(f"<{server.url('/img.png')}>", allow_private=True) == PNG


async def test_with_a_callers_client(server: Server) -> None:
    async with httpx.AsyncClient() as client:
        data = await fetch_image(server.url("/img.png"), client=client, allow_private=True)
    assert data == PNG


async def test_private_server_refused_without_allow_private(server: Server) -> None:
    with pytest.raises(BadInput, match=REFUSED):
        await fetch_image(server.url("/img.png"))
    assert server.hits == []


async def test_follows_redirects(server: Server) -> None:
    url = server.url("/redirect?to=/img.png")
    assert await fetch_image(url, allow_private=True) == PNG
    assert server.hits == ["/redirect?to=/img.png", "/img.png"]


async def test_too_many_redirects(server: Server) -> None:
    with pytest.raises(BadInput, match="more than 3 redirects"):
        await fetch_image(server.url("/loop"), allow_private=True)
    assert len(server.hits) == 4  # the first request and three followed redirects


async def test_redirect_to_other_scheme_refused(server: Server) -> None:
    url = server.url("/redirect?to=file:///etc/passwd")
    with pytest.raises(BadInput, match="only http"):
        await fetch_image(url, allow_private=True)


async def test_public_name_is_fetched_when_the_check_passes(
    server: Server, loopback_is_public: None
) -> None:
    """Control for the tests below: with the check passing, the fetch goes through and the
    server sees the original host name (not the pinned IP) in the Host header."""
    dns = fake_dns({"public.example": ["127.0.0.1"]})
    url = server.url("/img.png", host="public.example")
    assert await fetch_image(url, resolver=dns) == PNG
    assert server.hosts == [f"public.example:{server.port}"]


@pytest.mark.parametrize("callers_client", [False, True], ids=["own-client", "callers-client"])
@pytest.mark.parametrize(
    "to",
    [
        "http://internal.example:{port}/img.png",  # name resolving to 10.x
        "http://metadata.example/latest/meta-data/",  # name resolving to 169.254.169.254
        "http://10.0.0.1/img.png",  # literal
        "http://[::ffff:127.0.0.2]:{port}/img.png",  # mapped loopback other than .1
    ],
)
async def test_redirect_to_private_address_refused(
    server: Server, loopback_is_public: None, to: str, callers_client: bool
) -> None:
    """With a caller's plain httpx client the per-hop check is the only line of defence
    (our own client would also refuse at connect time), so both are exercised."""
    dns = fake_dns(
        {
            "public.example": ["127.0.0.1"],
            "internal.example": ["10.0.0.7"],
            "metadata.example": ["169.254.169.254"],
        }
    )
    target = to.format(port=server.port)
    # a plain client resolves names itself, so its first hop uses the literal address
    host = "127.0.0.1" if callers_client else "public.example"
    url = server.url(f"/redirect?to={target}", host=host)
    async with httpx.AsyncClient() as plain:
        client = plain if callers_client else None
        with pytest.raises(BadInput) as err:
            await fetch_image(url, resolver=dns, client=client, timeout=3)
    assert str(err.value) == REFUSED
    assert server.hits == [f"/redirect?to={target}"]  # the hop was refused, not requested


async def test_dns_rebinding_is_caught_at_connect_time(
    server: Server, loopback_is_public: None
) -> None:
    """First lookup public, second private: the connection layer re-checks and refuses."""
    answers = [["127.0.0.1"], ["10.0.0.9"]]

    async def rebinding(host: str, port: int) -> Sequence[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    with pytest.raises(BadInput, match=REFUSED):
        await fetch_image(server.url("/img.png", host="rebind.example"), resolver=rebinding)
    assert server.hits == []


async def test_http_errors(server: Server) -> None:
    with pytest.raises(BadInput) as err:
        await fetch_image(server.url("/missing?token=SECRET"), allow_private=True)
    assert str(err.value) == "could not fetch the image: HTTP 404"


async def test_html_page_refused(server: Server) -> None:
    with pytest.raises(BadInput, match="web page, not an image"):
        await fetch_image(server.url("/page"), allow_private=True)


async def test_empty_body_refused(server: Server) -> None:
    with pytest.raises(BadInput, match="empty"):
        await fetch_image(server.url("/empty"), allow_private=True)


async def test_oversize_by_content_length(server: Server) -> None:
    start = time.perf_counter()
    with pytest.raises(BadInput) as err:
        await fetch_image(server.url("/declared-huge"), allow_private=True, timeout=5)
    assert str(err.value) == "the image is 50 MB; the limit is 10 MB"
    assert time.perf_counter() - start < 2


async def test_oversize_by_streamed_body(server: Server) -> None:
    start = time.perf_counter()
    with pytest.raises(BadInput) as err:
        await fetch_image(server.url("/endless"), allow_private=True, max_bytes=100_000)
    assert str(err.value) == "the image is larger than the 0.1 MB limit"
    assert time.perf_counter() - start < 2


async def test_small_limit_accepts_exact_size(server: Server) -> None:
    assert await fetch_image(server.url("/img.png"), allow_private=True, max_bytes=len(PNG))
    with pytest.raises(BadInput, match="limit"):
        await fetch_image(server.url("/img.png"), allow_private=True, max_bytes=len(PNG) - 1)


async def test_slow_server_hits_the_deadline(server: Server) -> None:
    start = time.perf_counter()
    with pytest.raises(BadInput) as err:
        await fetch_image(server.url("/slow?sig=SECRET"), allow_private=True, timeout=0.3)
    assert time.perf_counter() - start < 2
    assert "0.3 s" in str(err.value) or "took too long" in str(err.value)
    assert "SECRET" not in str(err.value)


async def test_connection_refused_message_has_no_url_details() -> None:
    dns = fake_dns({"closed.example": ["127.0.0.1"]})
    url = "http://closed.example:9/a.png?token=SECRET"  # port 9 (discard): nothing listens
    with pytest.raises(BadInput) as err:
        await fetch_image(url, resolver=dns, allow_private=True)
    assert str(err.value) == "could not fetch the image: cannot connect to closed.example"
