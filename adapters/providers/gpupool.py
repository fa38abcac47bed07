"""A pool of self-hosted GPU instances (web UIs the operator runs), shared by the jobs of
one provider: one job per instance at a time, health checks, and checkpoint affinity.

Any self-hosted backend uses it (AUTOMATIC1111 and its forks today); the backend supplies
a ``check`` coroutine that says whether an instance answers (and refreshes what it knows
about it), and reports after each job which checkpoint the instance now has loaded.

**One job per instance.** A web UI renders one request at a time behind a lock; a second
request would only wait there, out of sight, and could not be moved to an idle instance.
So an instance is lent to one job at a time (``acquire`` ... ``release``).

**Affinity.** Loading another checkpoint costs seconds to a minute, so the scheduler lends
the pool a few more jobs than it has instances (``concurrency``, twice the instances by
default) and a freed instance chooses among the jobs waiting for one:

0. when another instance has the same checkpoint loaded, the oldest job whose checkpoint
   no instance has (nor is about to load): spread over the checkpoints first;
1. the oldest job that wants the checkpoint it has loaded (or does not care);
2. else the oldest job whose checkpoint no other healthy instance has loaded: a switch is
   needed anyway, and this instance is free now;
3. else the oldest job whose checkpoint another instance has loaded, but only once the jobs
   queued for it would keep those instances busy longer than two switches take (one now,
   one back later for this instance's own work; measured), or the job has waited longer
   than that plus a job: then switching is faster than waiting.

A job that no instance can serve (its checkpoint or LoRA is on none that is up) waits for
one to come back, and is refused after ``wait_for_instance_s`` with a retryable failure.

**Health.** An instance that stops answering is taken out (``mark_down``) and checked again
after ``recheck_s``, doubling up to ``recheck_max_s``; when the check passes it is back.
Every instance is checked once at start.

**Several processes.** With ``hold`` (``bot.locks.NamedLocks``), an instance lent to a job
is also locked for every sdhost process sharing the database; one another process holds is
skipped for a moment, and the job keeps its place in the queue.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from bot.errors import FailureClass, ProviderFailure
from bot.waiting import wait_for_event

log = logging.getLogger(__name__)

B = TypeVar("B")
T = TypeVar("T")

TICK_S = 0.25  # how often waiting jobs are looked at again without any event
ELSEWHERE_S = 0.5  # an instance another process holds is tried again after this
SWITCH_BACK = 2.0  # see _choose, rule 3


class Hold(Protocol):
    async def release(self) -> None: ...


class InstanceDown(Exception):
    """The instance did not answer (refused, reset, timed out): it is out of the pool."""


class NoInstance(Exception):
    """No healthy instance could take the job within the time allowed."""


@dataclass
class Member(Generic[B]):
    """One instance: its backend object and what the pool knows about it."""

    name: str
    backend: B
    up: bool = False
    checked: bool = False  # checked at least once (up or down)
    busy: bool = False
    loaded: str | None = None  # the checkpoint key it has in memory, as far as we know
    current: str | None = None  # the task it renders now
    failures: int = 0
    next_check: float = 0.0
    down_reason: str = ""
    jobs: int = 0
    switches: int = 0
    target: str | None = None  # the checkpoint the job it is lent to wants
    handle: Any = None  # the cross-process lock held while lent
    elsewhere_until: float = 0.0  # another sdhost process holds it: lend it to no one


@dataclass
class _Waiter(Generic[B]):
    seq: int
    want: str | None
    fits: Callable[[Member[B]], bool]
    since: float
    avoid: frozenset[str]
    future: asyncio.Future[Member[B]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _set_event(event: asyncio.Event, _future: object) -> None:
    event.set()


class _Ewma:
    def __init__(self, first: float) -> None:
        self.value = first
        self.seen = 0

    def add(self, sample: float) -> None:
        self.seen += 1
        a = 0.5 if self.seen < 5 else 0.2
        self.value = sample if self.seen == 1 else (1 - a) * self.value + a * sample


class GpuPool(Generic[B]):
    def __init__(
        self,
        members: list[Member[B]],
        *,
        check: Callable[[Member[B]], Awaitable[bool]],
        recheck_s: float = 2.0,
        recheck_max_s: float = 60.0,
        wait_for_instance_s: float = 120.0,
        job_s: float = 5.0,
        switch_s: float = 10.0,
        affinity: bool = True,
        hold: Callable[[Member[B]], Awaitable[Hold | None]] | None = None,
    ) -> None:
        self.members = members
        self._check = check
        self.recheck_s = recheck_s
        self.recheck_max_s = recheck_max_s
        self.wait_for_instance_s = wait_for_instance_s
        # False: the oldest waiting job takes the next free instance, whatever it has loaded
        # (plain first-come first-served; bench/a1111_pool.py compares the two)
        self.affinity = affinity
        # the cross-process lock of an instance (bot.locks): None when another process has it
        self._hold = hold
        self.job_s = _Ewma(job_s)  # one job's time on an instance, without a switch
        self.switch_s = _Ewma(switch_s)  # what a checkpoint switch adds
        self._waiters: list[_Waiter[B]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checking: set[str] = set()
        self._checks: set[asyncio.Task[None]] = set()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._upkeep(), name="gpu-pool")

    async def aclose(self) -> None:
        tasks = [*self._checks, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _upkeep(self) -> None:
        await asyncio.gather(*(self._run_check(m) for m in self.members if not m.checked))
        while True:
            await wait_for_event(self._changed, TICK_S)
            self._changed.clear()
            t = time.monotonic()
            due = [m for m in self.members if not m.up and m.next_check <= t]
            for m in due:
                if m.name not in self._checking:
                    task = asyncio.create_task(self._run_check(m), name=f"gpu-check-{m.name}")
                    self._checks.add(task)
                    task.add_done_callback(self._checks.discard)
            self._assign()

    async def _run_check(self, m: Member[B]) -> None:
        self._checking.add(m.name)
        try:
            ok = await self._check(m)
        except Exception as exc:  # a check that breaks counts as a failed check
            log.debug("instance %s: check failed: %r", m.name, exc)
            ok = False
        finally:
            self._checking.discard(m.name)
        was_up, m.checked = m.up, True
        if ok:
            m.up, m.failures, m.down_reason = True, 0, ""
            if not was_up:
                log.info("instance %s is up", m.name)
        else:
            m.up = False
            m.failures += 1
            delay = min(self.recheck_max_s, self.recheck_s * 2 ** (m.failures - 1))
            m.next_check = time.monotonic() + delay
        self._changed.set()
        self._assign()

    def mark_down(self, m: Member[B], reason: str) -> None:
        """The instance stopped answering: out of the pool until a check passes."""
        if m.up:
            log.warning("instance %s is down (%s); checking again shortly", m.name, reason)
        m.up, m.down_reason = False, reason
        m.failures = max(m.failures, 0) + 1
        m.next_check = time.monotonic() + self.recheck_s
        self._changed.set()

    async def recheck(self) -> None:
        """Check every instance now (at start, after new model files arrived)."""
        await asyncio.gather(*(self._run_check(m) for m in self.members))

    async def recheck_one(self, m: Member[B]) -> None:
        while m.name in self._checking:  # one is under way: wait, then look again
            await asyncio.sleep(0.02)
        await self._run_check(m)

    # --- lending -------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(
        self,
        want: str | None,
        *,
        fits: Callable[[Member[B]], bool] = lambda m: True,
        avoid: frozenset[str] = frozenset(),
        on_wait: Callable[[int], Awaitable[None]] | None = None,
    ) -> Member[B]:
        """An instance for one job that wants checkpoint ``want`` (None: any), among those
        ``fits`` accepts and not named in ``avoid``; waits for one. ``on_wait(place)`` is
        told the job's place among those waiting whenever it changes. Raises NoInstance when
        none that fits has been up for ``wait_for_instance_s``. Give it back with
        ``release``."""
        self.start()
        w: _Waiter[B] = _Waiter(next(self._seq), want, fits, time.monotonic(), avoid)
        told = -1
        no_one_since: float | None = None
        while True:
            self._enqueue(w)
            lent = asyncio.Event()
            w.future.add_done_callback(functools.partial(_set_event, lent))
            try:
                while not w.future.done():
                    place = self._waiters.index(w) + 1 if w in self._waiters else 0
                    if on_wait is not None and place != told and place:
                        told = place
                        await on_wait(place)
                    if any(self._usable(m, w) for m in self.members if m.up) or not all(
                        m.checked for m in self.members
                    ):
                        no_one_since = None
                    elif no_one_since is None:
                        no_one_since = time.monotonic()
                    elif time.monotonic() - no_one_since > self.wait_for_instance_s:
                        raise NoInstance(self._why_none(w))
                    await wait_for_event(lent, TICK_S * 4)
                m = w.future.result()
            except BaseException:
                if w in self._waiters:
                    self._waiters.remove(w)
                if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                    self._idle(w.future.result())  # lent just as we gave up: give it back
                elif not w.future.done():
                    w.future.cancel()
                raise
            if await self._hold_for(m):
                return m
            # another sdhost process is using it: wait for the next one, keeping our place
            w.future = asyncio.get_running_loop().create_future()

    async def on_some_instance(
        self,
        work: Callable[[Member[B]], Awaitable[T]],
        *,
        want: str | None,
        fits: Callable[[Member[B]], bool],
        on_wait: Callable[[int], Awaitable[None]] | None,
        job: int,
    ) -> T:
        """``work(instance)`` on an instance lent for it, given back after. An instance that
        dies under it (``InstanceDown``) is taken out and ``work`` goes on on another (it
        must make only what is still missing); the job is neither failed nor counted as a
        crash. No instance for ``wait_for_instance_s``, or instances that keep dying: a
        retryable ProviderFailure, with nothing charged."""
        deaths = 0
        while True:
            try:
                m = await self.acquire(want, fits=fits, on_wait=on_wait)
            except NoInstance as exc:
                raise ProviderFailure(
                    FailureClass.PROVIDER_ERROR, str(exc), retry_after=30.0, uncharged=True
                ) from None
            try:
                return await work(m)
            except InstanceDown as exc:
                deaths += 1
                self.mark_down(m, f"died during job {job} ({exc})")
                log.warning(
                    "job %s: instance %s stopped answering; going on elsewhere", job, m.name
                )
                if deaths > 2 * len(self.members) + 1:
                    raise ProviderFailure(
                        FailureClass.PROVIDER_ERROR,
                        "the GPU instances kept stopping in the middle of this job",
                        retry_after=30.0,
                    ) from None
            finally:
                if m.busy:
                    await self.release(m)

    def _enqueue(self, w: _Waiter[B]) -> None:
        """Into the queue at its place by age (a job sent back keeps its turn)."""
        at = next((i for i, x in enumerate(self._waiters) if x.seq > w.seq), len(self._waiters))
        self._waiters.insert(at, w)
        self._assign()

    async def _hold_for(self, m: Member[B]) -> bool:
        """Take the instance's cross-process lock (``hold``); False when another process
        holds it (it is marked busy elsewhere for a moment, and lent to no one)."""
        if self._hold is None:
            return True
        try:
            handle = await self._hold(m)
        except BaseException:
            self._idle(m)
            raise
        if handle is None:
            m.elsewhere_until = time.monotonic() + ELSEWHERE_S
            self._idle(m)
            return False
        m.handle = handle
        return True

    def _why_none(self, w: _Waiter[B]) -> str:
        up = [m for m in self.members if m.up and m.name not in w.avoid]
        if not up:
            reasons = "; ".join(
                f"{m.name}: {m.down_reason or 'not answering'}" for m in self.members
            )
            return f"no GPU instance is answering ({reasons})"
        return "no GPU instance that is up has what this job needs"

    async def release(self, m: Member[B]) -> None:
        """The job is done with ``m`` (its ``loaded`` says what it has in memory now). The
        cross-process lock is given back before the instance is lent again."""
        handle, m.handle = m.handle, None
        if handle is None:
            self._idle(m)
            return
        task = asyncio.ensure_future(handle.release())
        task.add_done_callback(lambda _t: self._idle(m))
        await asyncio.shield(task)

    def _idle(self, m: Member[B]) -> None:
        m.busy, m.current = False, None
        self._changed.set()
        self._assign()

    def observe(
        self, m: Member[B], seconds: float, *, switched: bool, pure_switch: bool = False
    ) -> None:
        """One picture took ``seconds`` on ``m``; ``switched``: a checkpoint was loaded
        for it (``pure_switch``: the seconds are the switch alone). The estimates steer
        the choice between switching and waiting."""
        if switched:
            m.switches += 1
            extra = seconds if pure_switch else seconds - self.job_s.value
            self.switch_s.add(max(0.0, extra))
        else:
            self.job_s.add(seconds)

    # --- choosing ------------------------------------------------------------------------

    @staticmethod
    def _usable(m: Member[B], w: _Waiter[B]) -> bool:
        return m.name not in w.avoid and w.fits(m)

    def _assign(self) -> None:
        """Lend every idle healthy instance to the job it serves best (module docstring)."""
        changed = True
        while changed and self._waiters:
            changed = False
            for m in self.members:
                if not m.up or m.busy or m.elsewhere_until > time.monotonic():
                    continue
                w = self._choose(m)
                if w is None:
                    continue
                self._waiters.remove(w)
                log.debug(
                    "lend %s (has %s) to a job for %s; %d waiting: %s",
                    m.name,
                    m.loaded,
                    w.want,
                    len(self._waiters),
                    [x.want for x in self._waiters],
                )
                m.busy = True
                m.target = w.want  # what it will have loaded once this job starts
                m.jobs += 1
                w.future.set_result(m)
                changed = True

    def _choose(self, m: Member[B]) -> _Waiter[B] | None:
        mine = [w for w in self._waiters if not w.future.done() and self._usable(m, w)]
        if not mine:
            return None
        if not self.affinity:
            return mine[0]
        held: dict[str, int] = {}
        for other in self.members:
            has = other.target if other.busy and other.target else other.loaded
            if other is not m and other.up and has is not None:
                held[has] = held.get(has, 0) + 1
        orphans = [w for w in mine if w.want is not None and w.want not in held]
        if orphans and m.loaded in held:
            return orphans[0]  # 0: another instance has ours too; nobody has theirs
        for w in mine:  # 1: no switch needed
            if w.want is None or w.want == m.loaded:
                return w
        if orphans:  # 2: a switch is needed anyway
            return orphans[0]
        # 3: switch only when waiting for the instances that have it would take longer
        t = time.monotonic()
        switch, job = self.switch_s.value, self.job_s.value
        for w in mine:
            queued = sum(1 for x in self._waiters if x.want == w.want)
            # a switch away is paid twice: once now, once to come back for our own work
            if queued * job / held[w.want or ""] > SWITCH_BACK * switch:
                return w
            if t - w.since > SWITCH_BACK * switch + job:
                return w
        return None

    # --- reporting -----------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "up": m.up,
                "busy": m.busy,
                "elsewhere": m.elsewhere_until > time.monotonic(),
                "loaded": m.loaded,
                "jobs": m.jobs,
                "switches": m.switches,
                "down_reason": m.down_reason,
            }
            for m in self.members
        ]
