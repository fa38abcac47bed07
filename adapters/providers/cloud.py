"""What the hosted providers (DashScope, LiblibAI, BFL) share: API key pools, polling with
backoff, retries that honour the provider's limits, and downloading results at once.

Key pools. A provider may hold several keys, each allowed a few tasks at once. A task takes
the least busy key with a free slot (waiting when all are busy) and keeps it until it ends;
the key's *name* (never the key) is stored with the task, so a task resumed after a restart
is polled with the key that submitted it.

Polling. A provider learns how long each model's tasks take (:class:`TaskTimes`, an
exponentially weighted mean and spread per model, in memory) and polls around when a task is
expected to end: once early (a refusal is known at once), then just before and just after the
expected end, then with a growing interval (:func:`next_poll_at`). A model it has not seen yet
is polled with a growing interval from ``poll_first_s`` (x ``poll_factor``, at most
``poll_max_interval_s`` apart): seven polls for a 30-second task. Retry-After on a throttled
poll is honoured by :func:`with_retries` (adapters/http.py), which each poll goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from adapters import http
from bot.config import CloudProviderSection
from bot.errors import FailureClass, ProviderFailure
from bot.waiting import wait_for_event

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: str
    secret: str
    concurrency: int

    def __repr__(self) -> str:  # never print the key itself
        return f"ApiKey({self.name!r})"


class KeyPool:
    def __init__(self, keys: list[ApiKey]) -> None:
        if not keys:
            raise ValueError("a key pool needs at least one key")
        self.keys = {k.name: k for k in keys}
        self.busy = {k.name: 0 for k in keys}
        self.used = {k.name: 0 for k in keys}  # tasks each key has run (for tests, stats)
        self._changed = asyncio.Condition()

    @classmethod
    def from_config(cls, section: CloudProviderSection) -> KeyPool:
        return cls(
            [
                ApiKey(k.name or f"key{i}", k.key, k.secret, k.concurrency)
                for i, k in enumerate(section.keys, start=1)
            ]
        )

    @property
    def capacity(self) -> int:
        return sum(k.concurrency for k in self.keys.values())

    def _free(self, name: str | None) -> ApiKey | None:
        if name is not None and name in self.keys:
            key = self.keys[name]
            return key if self.busy[name] < key.concurrency else None
        candidates = [k for k in self.keys.values() if self.busy[k.name] < k.concurrency]
        if not candidates:
            return None
        return min(candidates, key=lambda k: (self.busy[k.name] / k.concurrency, self.used[k.name]))

    @contextlib.asynccontextmanager
    async def use(self, name: str | None = None) -> AsyncIterator[ApiKey]:
        """A key with a free slot for the length of one task; ``name`` asks for that key
        (a resumed task must be polled with the key that submitted it)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._free(name) is not None)
            key = self._free(name)
            assert key is not None
            self.busy[key.name] += 1
            self.used[key.name] += 1
        try:
            yield key
        finally:
            async with self._changed:
                self.busy[key.name] -= 1
                self._changed.notify_all()


@dataclass(slots=True)
class Estimate:
    mean: float  # seconds from submission to the end, as seen by polling
    spread: float  # mean absolute deviation of the same
    seen: int = 0


class TaskTimes:
    """How long each model's tasks take, learnt from the tasks that ended (in memory).

    Each observation comes from the interval polling narrowed the end to (the last poll
    that saw the task unfinished, the one that saw it done; see :meth:`TaskPolls.ended`):
    :func:`next_poll_at` polls just before and just after the expected end, so once learnt
    the interval is narrow and the estimate stays within it."""

    def __init__(self, weight: float = 0.3) -> None:
        self.weight = weight
        self.models: dict[str, Estimate] = {}
        # Set (and replaced) whenever an estimate changes: tasks waiting for their next poll
        # re-plan it, so a batch's first task to end shows its siblings when to look.
        self.changed = asyncio.Event()
        self.cold: dict[str, int] = {}  # tasks started on each model not learnt yet

    def expected(self, model: str) -> Estimate | None:
        return self.models.get(model)

    def learn(self, model: str, seconds: float, spread: float = 0.0) -> None:
        """One task of ``model`` ended about ``seconds`` after its submission; ``spread``
        says how unsure that is when it is the model's first."""
        seconds = max(seconds, 0.0)
        est = self.models.get(model)
        if est is None:
            self.models[model] = Estimate(seconds, max(spread, 0.0), 1)
        else:
            a = self.weight
            est.spread += a * (abs(seconds - est.mean) - est.spread)
            est.mean += a * (seconds - est.mean)
            est.seen += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


def poll_window(est: Estimate) -> float:
    """Half the width of the window polled around the expected end: the spread seen, at
    least 3 % of the duration (and 0.05 s)."""
    return max(0.05, 0.03 * est.mean, est.spread)


def next_poll_at(
    section: CloudProviderSection,
    est: Estimate | None,
    last: float | None,
    n: int,
    phase: float = 0.0,
) -> float:
    """When (seconds since submission) to poll next, after poll ``n`` at ``last``.

    Unknown model: ``poll_first_s``, then each wait ``poll_factor`` times the last, at most
    ``poll_max_interval_s``. Known model (mean m, window w): one early poll at m/2 (skipped
    when that is under ``poll_first_s`` from the window), then m - w and m + w, then waits
    of w, 2w, 4w, ... capped at ``poll_max_interval_s``."""
    if est is None:
        # ``phase`` (0..1) shifts the schedule by a fraction of one step: tasks of a model
        # not learnt yet that run side by side interleave their polls, so together they see
        # its end soon after it comes (and :class:`TaskTimes` tells the others).
        first = section.poll_first_s * section.poll_factor**phase
        if last is None:
            return first
        wait = first * section.poll_factor ** max(n, 0)
        return last + min(wait, section.poll_max_interval_s)
    w = poll_window(est)
    before, after = est.mean - w, est.mean + w
    early = est.mean / 2
    t = last if last is not None else 0.0
    if t < early - 1e-9 and before - early >= section.poll_first_s:
        return early
    if t < before - 1e-9:
        return before
    if t < after - 1e-9:
        return after
    # Late: waits of w, 2w, 4w ... after the window, capped.
    k = 0
    mark = after
    while mark <= t + 1e-9:
        mark += min(w * 2**k, section.poll_max_interval_s)
        k += 1
    return mark


class TaskPolls:
    """The polls of one task: ``async for n in polls`` sleeps until the next poll is due
    and yields its number; call :meth:`ended` when a poll saw the task done (the time is
    learnt for the model). A resumed task (``resumed=True``) is polled on the unknown-model
    schedule of the estimate but teaches nothing (its start is not known)."""

    def __init__(
        self,
        section: CloudProviderSection,
        times: TaskTimes | None = None,
        model: str = "",
        *,
        resumed: bool = False,
    ) -> None:
        self.section = section
        self.times = times
        self.model = model
        self.resumed = resumed
        self.started = time.monotonic()
        self.n = 0
        self.last: float | None = None  # seconds since start of the last poll
        self.before_last: float | None = None
        # Side-by-side tasks of a model not learnt yet take turns: phases 0, 1/2, 1/4, 3/4.
        self.phase = 0.0
        if times is not None and not resumed and times.expected(model) is None:
            k = times.cold.get(model, 0)
            times.cold[model] = k + 1
            self.phase = (0.0, 0.5, 0.25, 0.75)[k % 4]

    def __aiter__(self) -> TaskPolls:
        return self

    async def __anext__(self) -> int:
        while True:
            est = self.times.expected(self.model) if self.times and not self.resumed else None
            due = next_poll_at(self.section, est, self.last, self.n, self.phase)
            wait = due - (time.monotonic() - self.started)
            if wait <= 0:
                break
            if self.times is None or self.resumed:
                await asyncio.sleep(wait)
                break
            changed = self.times.changed
            if not await wait_for_event(changed, wait):
                break
            # another task of this provider ended: plan this poll again with what it taught
        self.before_last = self.last
        self.last = time.monotonic() - self.started
        self.n += 1
        return self.n

    def ended(self) -> None:
        """The last poll saw the task done: learn when it ended. It ended between the poll
        before (``prev``) and this one (``last``): a narrow interval gives its middle; the
        first task of a model gives the middle of its (wide) interval, as unsure as that
        is; a task that was already done at the first poll of the window ended a window
        earlier than planned (at least); one that ended late, the middle again."""
        if self.times is None or self.resumed or self.last is None:
            return
        last, prev = self.last, self.before_last
        est = self.times.expected(self.model)
        if est is None:
            low = prev if prev is not None else last / 2
            self.times.learn(self.model, (low + last) / 2, (last - low) / 8)
            return
        w = poll_window(est)
        if prev is not None and last - prev <= 2 * w + 1e-6:
            seen = (prev + last) / 2
        elif last <= est.mean:
            seen = max(prev or 0.0, last - w)
        else:
            seen = (last + (prev if prev is not None else 0.0)) / 2
        self.times.learn(self.model, seen)


def poll_delays(
    section: CloudProviderSection,
    times: TaskTimes | None = None,
    model: str = "",
    *,
    resumed: bool = False,
) -> TaskPolls:
    """The polls of one task (see :class:`TaskPolls`); yields the poll number (1, 2, ...).
    ``resumed``: the task was submitted before a restart, so its duration is not learnt."""
    return TaskPolls(section, times, model, resumed=resumed)


async def with_retries(
    section: CloudProviderSection,
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
) -> T:
    """Run ``call``; a ProviderFailure with ``retry_after`` set (throttling, 5xx, network) is
    retried up to ``max_retries`` times, waiting what the provider asked (or backing off
    with jitter); anything else, or the last failure, is raised."""
    return await http.with_retries(
        call, retries=section.max_retries, what=what, retry_after=retry_hint
    )


def retry_hint(exc: BaseException) -> float | bool | None:
    """How a ProviderFailure says it may pass: seconds asked, True (retry, no hint) or None."""
    if not isinstance(exc, ProviderFailure) or exc.retry_after is None:
        return None
    return exc.retry_after if exc.retry_after > 0 else True


def transport_failure(exc: httpx.HTTPError, what: str) -> ProviderFailure:
    """A network problem or timeout talking to a provider: retryable."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderFailure(FailureClass.PROVIDER_ERROR, f"{what} timed out", retry_after=0.0)
    return ProviderFailure(
        FailureClass.PROVIDER_ERROR,
        f"{what} could not be reached ({type(exc).__name__})",
        retry_after=0.0,
    )


# Failures that happen before a request can have reached the server.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


async def send_once(
    client: httpx.AsyncClient, method: str, url: str, *, what: str, service: str, **kw: Any
) -> httpx.Response:
    """Send a request that starts (and may bill) work: retryable only when it cannot have
    reached the server. Any other transport failure may have come after the server took
    it, so sending it again could start a second task: that is not retried."""
    try:
        return await client.request(method, url, **kw)
    except _UNSENT as exc:
        raise transport_failure(exc, what) from exc
    except httpx.HTTPError as exc:
        raise ProviderFailure(
            FailureClass.PROVIDER_ERROR, f"{what}: no answer from {service} ({type(exc).__name__})"
        ) from exc


async def download(
    client: httpx.AsyncClient, url: str, *, what: str, max_bytes: int = 50 * 1024 * 1024
) -> bytes:
    """Fetch a result picture now (the provider's URL expires), with a size cap."""
    try:
        # Result links often redirect to a CDN; httpx drops Authorization when it does.
        async with client.stream("GET", url, follow_redirects=True) as response:
            if response.status_code >= 400:
                retry = None if response.status_code in (403, 404, 410) else 0.0
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR,
                    f"{what}: the result picture could not be fetched "
                    f"(HTTP {response.status_code}; its link may have expired)",
                    retry_after=retry,
                )
            try:
                return await http.read_capped(response, max_bytes)
            except http.TooLarge:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR, f"{what}: the result picture is too large"
                ) from None
    except httpx.HTTPError as exc:
        raise transport_failure(exc, what) from exc


def http_client(section: CloudProviderSection, **kw: Any) -> httpx.AsyncClient:
    """One client per provider: explicit timeouts, a pool sized to its keys, no redirects
    followed silently for API calls."""
    return http.http_client(section.request_timeout_s, **kw)
