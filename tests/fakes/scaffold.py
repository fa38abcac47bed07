"""The loopback scaffold every fake HTTP service in tests/fakes stands on.

A fake is a :class:`LoopbackServer` subclass that says which origins it serves
(:meth:`LoopbackServer.origins`: ``{name: aiohttp app}``, each on 127.0.0.1 and a free port)
and how a request names its caller (:meth:`LoopbackServer.key_of`). The scaffold does the
rest, for every origin alike, in one middleware:

* **records** each request as a :class:`Recorded` (method, path, query, headers with secrets
  masked, the JSON / form / raw body, the multipart files, the time, the route name, the
  status and JSON answered) in a :class:`CallLog`, with :meth:`CallLog.calls_of` and
  :meth:`CallLog.wait_for_call`;
* **injects faults** from a :class:`Faults` queue: the next N matching requests get an answer
  (status, body, headers such as Retry-After) without reaching the fake, or wait first
  (latency), or lose their connection; a standing :attr:`LoopbackServer.latency_s` slows
  every request;
* keeps **uploaded files** in a :class:`FileStore` (:attr:`LoopbackServer.files`).

``async with Fake() as fake`` starts every origin; leaving the block stops them and does not
hang on a request still pending: injected delays end at once (the connection is dropped) and
a handler still running after ``shutdown_timeout`` is cancelled. Handlers that wait on their
own should use :meth:`LoopbackServer.sleep`, which also ends at shutdown.

A handler finds its own record with ``self.record(request)``. The middleware has read the
body already: ``await request.read()``, ``request.json()`` and ``request.post()`` of a
urlencoded form still work, but a multipart body is only in the record (``form``,
``files``), as aiohttp cannot read a multipart stream twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.message
import hashlib
import json as jsonlib
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar, Generic, Self, TypeVar

from aiohttp import hdrs, web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from multidict import CIMultiDict

from bot.waiting import wait_for_event

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- records ----------------------------------------------------------------------------------


@dataclasses.dataclass
class UploadedFile:
    """One multipart part that carried a file (a ``filename``), exactly as sent."""

    field: str
    filename: str
    content_type: str | None
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass
class Recorded:
    """One request as the fake saw it, and what it answered.

    ``headers`` has the values of :attr:`LoopbackServer.redact` masked (``Bearer ***``);
    ``key`` is the credential the request carried (:meth:`LoopbackServer.key_of`, the fake's
    own test keys) so tests can check which one was used. ``json`` is the parsed JSON body
    (``None`` if the body was not JSON); ``form`` the urlencoded or multipart text fields and
    ``files`` the multipart file parts, with ``parts`` the names of all parts in order.
    ``status`` is 0 until answered (and stays 0 for a dropped connection); ``reply`` is the
    JSON answered, if it was JSON; ``done`` is set once the answer is out."""

    index: int
    origin: str
    endpoint: str  # the aiohttp route name, "" for an unnamed route
    method: str
    path: str
    query: dict[str, str]
    query_items: list[tuple[str, str]]
    headers: CIMultiDict[str]
    key: str | None
    raw: bytes
    json: Any
    form: dict[str, str]
    files: list[UploadedFile]
    parts: list[str]
    time: float  # time.monotonic() when it arrived
    status: int = 0
    reply: Any = None
    fault: Fault | None = None  # the injected fault that answered or held it, if any
    done: bool = False

    @property
    def body(self) -> Any:
        """The JSON body, else the form, else the text, else None."""
        if self.json is not None:
            return self.json
        if self.form or self.files:
            return self.form
        return self.raw.decode("utf-8", "replace") if self.raw else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query_items if k == name), None)

    def params(self, name: str) -> list[str]:
        return [v for k, v in self.query_items if k == name]

    def file(self, field: str) -> UploadedFile | None:
        return next((f for f in self.files if f.field == field), None)


RECORD_KEY: web.RequestKey[Recorded] = web.RequestKey("scaffold.record", Recorded)

R = TypeVar("R", bound=Recorded)


class CallLog(list[R], Generic[R]):
    """Every request, in arrival order (a list), and ways to pick and wait for some."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    def calls_of(
        self,
        endpoint: str | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        prefix: str | None = None,
        origin: str | None = None,
        key: str | None = None,
        where: Callable[[R], bool] | None = None,
        since: int = 0,
    ) -> list[R]:
        """The calls matching every filter given: route name, HTTP method, exact path, path
        prefix, origin, key, a predicate; from index ``since`` on."""
        return [
            c
            for c in self[since:]
            if (endpoint is None or c.endpoint == endpoint)
            and (method is None or c.method == method.upper())
            and (path is None or c.path == path)
            and (prefix is None or c.path.startswith(prefix))
            and (origin is None or c.origin == origin)
            and (key is None or c.key == key)
            and (where is None or where(c))
        ]

    async def wait_for_call(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 5.0,
        answered: bool = True,
        **filters: Any,
    ) -> R:
        """The first call matching :meth:`calls_of`'s filters (and answered, unless
        ``answered=False``), waiting up to ``timeout`` seconds for it. TimeoutError if none
        came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            found = [c for c in self.calls_of(endpoint, **filters) if c.done or not answered]
            if found:
                return found[0]
            left = deadline - loop.time()
            if left <= 0 or not await wait_for_event(self._changed, left):
                seen = [(c.method, c.path, c.status) for c in self[-10:]]
                raise TimeoutError(
                    f"no call {endpoint or ''} {filters} within {timeout}s; last seen: {seen}"
                )


# --- faults -----------------------------------------------------------------------------------


Match = str | Callable[[Recorded], bool] | None


@dataclasses.dataclass
class Fault:
    """What the next ``times`` requests matching ``on`` get instead of (or before) the fake's
    answer. ``on``: None or ``"any"`` (every request), a route name or exact path, or a
    predicate on the :class:`Recorded`. ``status`` None lets the fake answer (after
    ``delay_s``); ``drop`` closes the connection without an answer."""

    on: Match = None
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    times: int = 1
    served: int = 0

    def matches(self, call: Recorded) -> bool:
        if self.on is None or self.on == "any":
            return True
        if isinstance(self.on, str):
            return self.on in (call.endpoint, call.path)
        return bool(self.on(call))


class Faults:
    """A queue of :class:`Fault`; the first that matches a request is served, once per
    request, until its ``times`` are used up."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self._queue.append(fault)
        return fault

    def fail(
        self,
        status: int,
        body: Any = None,
        *,
        on: Match = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        retry_after: float | str | None = None,
        content_type: str | None = None,
        delay_s: float = 0.0,
    ) -> Fault:
        """Answer ``status`` with ``body``: a dict or list is sent as JSON, a str as text
        (or as ``content_type``), bytes as they are; None gives ``{"detail": ...}``."""
        if body is None:
            body = {"detail": f"injected failure (HTTP {status})"}
        if isinstance(body, dict | list):
            raw, ctype = jsonlib.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            raw, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            raw, ctype = bytes(body), "application/octet-stream"
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = _fmt(retry_after)
        fault = Fault(on, status, raw, content_type or ctype, extra, delay_s, times=times)
        return self.add(fault)

    def delay(self, seconds: float, *, on: Match = None, times: int = 1) -> Fault:
        """Hold the next ``times`` matching requests ``seconds`` before the fake answers."""
        return self.add(Fault(on, delay_s=seconds, times=times))

    def drop(self, *, on: Match = None, times: int = 1, delay_s: float = 0.0) -> Fault:
        """Close the connection of the next ``times`` matching requests without an answer."""
        return self.add(Fault(on, drop=True, delay_s=delay_s, times=times))

    def take(self, call: Recorded) -> Fault | None:
        for fault in self._queue:
            if fault.matches(call):
                fault.served += 1
                if fault.served >= fault.times:
                    self._queue.remove(fault)
                return fault
        return None

    def pending(self) -> list[Fault]:
        return list(self._queue)

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


def _fmt(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- uploaded files ---------------------------------------------------------------------------


@dataclasses.dataclass
class StoredFile:
    key: str
    data: bytes
    content_type: str | None = None
    filename: str | None = None
    time: float = dataclasses.field(default_factory=time.monotonic)


class FileStore:
    """Files clients uploaded (or the fake made), by key."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def put(
        self,
        data: bytes,
        *,
        key: str | None = None,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> StoredFile:
        stored = StoredFile(key or uuid.uuid4().hex, data, content_type, filename)
        self._files[stored.key] = stored
        return stored

    def get(self, key: str) -> StoredFile | None:
        return self._files.get(key)

    def data(self, key: str) -> bytes:
        return self._files[key].data

    def response(self, key: str, content_type: str | None = None) -> web.Response:
        """The file as an HTTP answer, or a 404."""
        found = self._files.get(key)
        if found is None:
            return web.Response(status=404)
        ctype = content_type or found.content_type or "application/octet-stream"
        return web.Response(body=found.data, content_type=ctype)

    def as_bytes(self) -> dict[str, bytes]:
        return {k: f.data for k, f in self._files.items()}

    def clear(self) -> None:
        self._files.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._files

    def __getitem__(self, key: str) -> StoredFile:
        return self._files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


# --- the server -------------------------------------------------------------------------------


class LoopbackServer:
    """Base of a loopback fake: its origins on 127.0.0.1, the call log, faults and files.

    Subclasses override :meth:`origins` (and :meth:`key_of`), may set :attr:`record_type`
    to a :class:`Recorded` subclass with their own fields (filled in by :meth:`describe`) or
    property names, :attr:`redact` / :attr:`redact_query` to the headers / query parameters
    masked in the record (:meth:`redacted`), and override :attr:`base_url` when the client is
    configured with a path under the first origin."""

    record_type: ClassVar[type[Recorded]] = Recorded
    redact: ClassVar[frozenset[str]] = frozenset({"authorization"})
    redact_query: ClassVar[frozenset[str]] = frozenset()  # query parameters recorded as ***

    def __init__(self, *, shutdown_timeout: float = 1.0, latency_s: float = 0.0) -> None:
        self.log: CallLog[Any] = CallLog()
        self.faults = Faults()
        self.files = FileStore()
        self.latency_s = latency_s  # every request waits this long first
        self.shutdown_timeout = shutdown_timeout
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self._closing = asyncio.Event()

    # --- what a fake says ------------------------------------------------------------------

    def origins(self) -> dict[str, web.Application]:
        """The apps this fake serves, by origin name; the first is :attr:`base_url`."""
        raise NotImplementedError

    def key_of(self, request: web.Request) -> str | None:
        """The credential a request carries (recorded as ``key``)."""
        return None

    def redacted(self, value: str) -> str:
        """What a header of :attr:`redact` is recorded as: its scheme, the rest masked."""
        scheme, sep, _ = value.partition(" ")
        return f"{scheme} ***" if sep else "***"

    def describe(self, call: Any, request: web.Request) -> None:
        """Fill in a :attr:`record_type`'s own fields, when a call is recorded."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        """Serve every origin; ``port`` is the first one's (0, and always for the others, picks
        a free port)."""
        self._closing.clear()
        try:
            for name, app in self.origins().items():
                app.middlewares.insert(0, self._middleware(name))
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
                await runner.setup()
                self._runners.append(runner)
                await web.TCPSite(runner, host, port if len(self._runners) == 1 else 0).start()
                self.urls[name] = f"http://{host}:{runner.addresses[0][1]}"
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        self._closing.set()  # pending delays end, and their connections are dropped
        runners, self._runners = self._runners, []
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return next(iter(self.urls.values()))

    def url(self, origin: str) -> str:
        return self.urls[origin]

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the server stops; True if it is stopping."""
        return await wait_for_event(self._closing, seconds)

    # --- records ---------------------------------------------------------------------------

    def record(self, request: web.Request) -> Any:
        """The :class:`Recorded` of the request a handler is answering."""
        return request[RECORD_KEY]

    def calls_of(self, endpoint: str | None = None, **filters: Any) -> list[Any]:
        return self.log.calls_of(endpoint, **filters)

    async def wait_for_call(self, endpoint: str | None = None, **kw: Any) -> Any:
        return await self.log.wait_for_call(endpoint, **kw)

    # --- the middleware --------------------------------------------------------------------

    def _middleware(self, origin: str) -> Any:
        @web.middleware
        async def scaffold(request: web.Request, handler: Handler) -> web.StreamResponse:
            call = await self._record(origin, request)
            try:
                response = await self._serve(call, request, handler)
                call.status = response.status
                if isinstance(response, web.Response) and response.content_type.endswith("json"):
                    with contextlib.suppress(ValueError, TypeError):
                        call.reply = jsonlib.loads(response.body)  # type: ignore[arg-type]
                return response
            except web.HTTPException as exc:
                call.status = exc.status
                raise
            finally:
                call.done = True
                self.log.notify()

        return scaffold

    async def _serve(
        self, call: Recorded, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if self.latency_s and await self.sleep(self.latency_s):
            self._drop(request)
        fault = call.fault = self.faults.take(call)
        if fault is None:
            return await handler(request)
        if fault.delay_s and await self.sleep(fault.delay_s):
            self._drop(request)
        if fault.drop:
            self._drop(request)
        if fault.status is None:
            return await handler(request)
        return web.Response(
            status=fault.status,
            body=fault.body,
            headers={hdrs.CONTENT_TYPE: fault.content_type, **fault.headers},
        )

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp ends the request without writing

    async def _record(self, origin: str, request: web.Request) -> Recorded:
        headers = CIMultiDict(request.headers)
        for name in list(headers):
            if name.lower() in self.redact:
                headers[name] = self.redacted(headers[name])
        query_items = [
            (k, "***" if k in self.redact_query else v) for k, v in request.query.items()
        ]
        call = self.record_type(
            index=len(self.log),
            origin=origin,
            endpoint=request.match_info.route.name or "",
            method=request.method,
            path=request.path,
            query={k: v for k, v in reversed(query_items)},  # a repeated one's first value
            query_items=query_items,
            headers=headers,
            key=self.key_of(request),
            raw=b"",
            json=None,
            form={},
            files=[],
            parts=[],
            time=time.monotonic(),
        )
        self.describe(call, request)
        request[RECORD_KEY] = call
        self.log.append(call)
        self.log.notify()
        if request.can_read_body:
            try:
                call.raw = await request.read()
            except web.HTTPException as exc:  # e.g. 413, the body over client_max_size
                call.status, call.done = exc.status, True
                raise
            _parse_body(call, request.content_type, request.headers.get(hdrs.CONTENT_TYPE, ""))
        return call


def _parse_body(call: Recorded, content_type: str, header: str) -> None:
    raw = call.raw
    if not raw:
        return
    if content_type == "application/x-www-form-urlencoded":
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        call.form = dict(pairs)
        call.parts = [k for k, _ in pairs]
        return
    if content_type == "multipart/form-data":
        _parse_multipart(call, header)
        return
    try:
        call.json = jsonlib.loads(raw)
    except (ValueError, UnicodeDecodeError):
        call.json = None


def _parse_multipart(call: Recorded, header: str) -> None:
    """Split a multipart/form-data body on its boundary (bytes kept exactly)."""
    message = email.message.Message()
    message[hdrs.CONTENT_TYPE] = header
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return
    for chunk in call.raw.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        part_headers: CIMultiDict[str] = CIMultiDict()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                part_headers[name.strip()] = value.strip()
        _, disposition = parse_content_disposition(part_headers.get(hdrs.CONTENT_DISPOSITION))
        field = disposition.get("name", "")
        call.parts.append(field)
        filename = content_disposition_filename(disposition, "filename")
        if filename is not None:
            ctype = part_headers.get(hdrs.CONTENT_TYPE)
            call.files.append(UploadedFile(field, filename, ctype, data))
        else:
            call.form[field] = data.decode("utf-8", "replace")
