"""JobService: submit, cancel, retry and look up jobs; charge and refund credits.

Every state change that involves money happens in one write transaction with the job rows
it concerns, so a crash can never leave a charge without a job or a job without a charge.
The transactions are plain functions of a connection (see ``storage.db``).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row

from bot import i18n
from bot.chat import ReplyTo, UserRef, outbox_address
from bot.config import Config
from bot.errors import (
    BadInput,
    FailureClass,
    Forbidden,
    InsufficientCredits,
    LimitReached,
    NotFound,
    UserError,
)
from bot.grammar import MAX_SEED, OPENERS, parse_generation
from bot.ids import valid_id
from bot.imaging import image_size
from bot.params import MAX_BATCH_TASKS, GenerationParams
from bot.routing import Route, Router
from bot.text import shown_char, unusable_char
from storage import repos
from storage.db import Database
from storage.files import PictureStore, StorageError
from storage.status import JOB_TERMINAL, JobStatus

KINDS = ("txt2img", "img2img", "batch")

# The personal defaults /settings keeps (users.settings), in the order they are shown.
SETTING_KEYS = ("model", "aspect", "negative")
MAX_DEFAULT_NEGATIVE = 500


# The job params key holding the sha256 of an img2img job's input pictures after the first
# (which is jobs.input_sha256), in order; the store's sweep counts them as referenced.
MORE_INPUTS = "more_inputs"


# What a person is told when the picture store cannot take or give a picture right now.
STORE_DOWN = "the picture store is unavailable right now; nothing was charged, try again later"


def now() -> float:
    return time.time()


def more_input_shas(params: dict[str, Any] | None) -> list[str]:
    """The sha256 of a job's input pictures after the first (none for most jobs)."""
    got = (params or {}).get(MORE_INPUTS) or []
    return [str(s) for s in got if isinstance(s, str)] if isinstance(got, list) else []


async def load_more_inputs(files: PictureStore, params: dict[str, Any] | None) -> list[bytes]:
    """The bytes of a job's input pictures after the first, in order."""
    return [
        await asyncio.to_thread(files.get, sha, kind="inputs", ext="png")
        for sha in more_input_shas(params)
    ]


@dataclass(frozen=True, slots=True)
class JobTicket:
    id: int
    provider: str
    model: str
    width: int
    height: int
    n: int
    seed: int
    cost: int
    position: int  # 1 = next to start; 0 = no longer waiting
    status: str = JobStatus.QUEUED  # as it is now (a duplicate's job may have finished)


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str
    jobs: tuple[JobTicket, ...]
    batch_id: int | None
    cost: int
    balance: int
    duplicate: bool = False  # the same command was submitted before; nothing new charged
    notes: tuple[str, ...] = ()

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self.jobs]


@dataclass(slots=True)
class JobView:
    id: int
    user_id: int
    kind: str
    status: str
    progress: int
    stage: str
    provider: str
    model: str | None
    params: dict[str, Any]
    cost: int
    attempts: int
    failure: str | None
    error: str | None
    batch_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    images: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[tuple[str, int]] = field(default_factory=list)
    batch_counts: dict[str, int] | None = None
    position: int = 0  # place in the queue while queued (1 = next to start)
    batch_index: int = 0  # place in its batch (0-based)

    @classmethod
    def of(cls, job: Row[Any]) -> JobView:
        return cls(
            id=job.id,
            user_id=job.user_id,
            kind=job.kind,
            status=job.status,
            progress=job.progress,
            stage=job.stage,
            provider=job.provider,
            model=job.model,
            params=dict(job.params),
            cost=job.cost,
            attempts=job.attempts,
            failure=job.failure,
            error=job.error,
            batch_id=job.batch_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            batch_index=job.batch_index,
        )


@dataclass(frozen=True, slots=True)
class Stats:
    """What /stats shows: the queue now, and the last ``window_s`` seconds."""

    queued: int
    running: int
    jobs_by_status: dict[str, int]  # jobs created in the window, by their status now
    charged: int  # credits charged in the window
    refunded: int  # credits refunded in the window
    people: int
    window_s: float
    # what providers billed the operator in the window: (provider, unit, amount)
    provider_spend: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def spent(self) -> int:
        return self.charged - self.refunded


def refund_due(
    config: Config,
    job: Any,
    failure: FailureClass | None,
    images_made: int,
    *,
    uncharged: bool = False,
) -> int:
    """How much of the job's cost goes back.

    A job that never reached a provider and made nothing is refunded in full, whatever
    happened. One that succeeded with fewer pictures than asked pays back the missing ones.
    Otherwise the configured policy for the job's kind decides, and when it refunds, only
    the pictures that were not made are paid back (a person keeps, and pays for, what they
    received). ``uncharged``: the provider charged nothing for what it did not make (see
    ``ProviderFailure.uncharged``), so that is paid back whatever the policy says.
    """
    if job.cost <= 0:
        return 0
    n = max(1, int(job.params.get("n", 1)))
    unit = job.cost // n
    unmade = max(0, n - images_made)
    if (job.submitted_at is None or uncharged) and images_made == 0:
        return job.cost
    if failure is None or uncharged:
        return unit * unmade
    policy: list[FailureClass] = getattr(config.credits.refunds, job.kind)
    return unit * unmade if failure in policy else 0


def cancel_refund_reason(config: Config, job: Any, *, billed: bool) -> str | None:
    """Why a job cancelled now gets back the pictures it has not made, as ``refund_due``
    decides it when the job is finished cancelled (with ``uncharged=not billed``):
    ``"unbilled"`` (its provider bills nothing for an unfinished picture), ``"unsubmitted"``
    (it never reached its provider), ``"policy"`` (config ``credits.refunds.<kind>`` refunds
    a cancel); None: the hosted provider may have billed it, and nothing is refunded.
    ``billed``: ``Router.bills_when_cancelled`` for the job's provider."""
    if not billed:
        return "unbilled"
    if job.submitted_at is None:
        return "unsubmitted"
    if FailureClass.CANCELLED in getattr(config.credits.refunds, job.kind):
        return "policy"
    return None


def finish_job(
    conn: Connection,
    config: Config,
    job: Row[Any],
    *,
    status: JobStatus,
    failure: FailureClass | None,
    message: str | None,
    images_made: int,
    t: float,
    uncharged: bool = False,
) -> int:
    """Move a job to a terminal state, refund by policy and queue the event saying so.

    The caller has made sure, in this transaction, that the job is still its to finish
    (queued and locked, or running under its lease). Returns the refund.
    """
    refund = refund_due(config, job, failure, images_made, uncharged=uncharged)
    values: dict[str, Any] = {
        "status": status,
        "failure": failure.value if failure else None,
        "error": message,
        "finished_at": t,
        "lease_owner": None,
        "lease_until": None,
    }
    if status == JobStatus.SUCCEEDED:
        values.update(progress=100, stage="done")
    repos.update_job(conn, job.id, **values)
    if refund:
        repos.credit(conn, job.user_id, refund, reason="refund", job_id=job.id, now=t)
    payload: dict[str, Any] = {
        "reply_to": ReplyTo.from_json(job.reply_to).to_json(),
        "status": status,
        "refunded": refund,
        "balance": repos.balance(conn, job.user_id),
        "images": images_made,
        "n": int(job.params.get("n", 1)),
        "batch_id": job.batch_id,
        "batch_index": job.batch_index,
        "prompt": job.params.get("prompt", ""),
        "elapsed": round(t - (job.started_at or job.created_at), 2),
    }
    if failure is not None:
        payload["failure"] = failure.value
        payload["message"] = message or ""
    kind = {JobStatus.SUCCEEDED: "finished", JobStatus.CANCELLED: "cancelled"}.get(status, "failed")
    repos.add_events(
        conn,
        [
            {
                "job_id": job.id,
                **outbox_address(job.reply_to),
                "kind": kind,
                "payload": payload,
                "created_at": t,
            }
        ],
    )
    return refund


def queue_positions(
    queue: dict[int, tuple[int, int]], user_id: int, my_queued: Sequence[int]
) -> dict[int, int]:
    """1-based places in a round-robin queue for the person's queued job ids (oldest first).

    Each other person gets one turn per turn of ours; within a round, whoever has been
    waiting longer goes first. ``queue`` is ``{user_id: (queued count, oldest id)}``.
    """
    if not my_queued:
        return {}
    first = my_queued[0]
    out: dict[int, int] = {}
    for k, job_id in enumerate(my_queued):
        ahead = k
        for other, (count, their_first) in queue.items():
            if other != user_id:
                ahead += min(count, k + 1 if their_first < first else k)
        out[job_id] = ahead + 1
    return out


def _positions(conn: Connection, user_id: int, providers: set[str]) -> dict[int, int]:
    out: dict[int, int] = {}
    for provider in providers:
        mine = repos.queued_ids(conn, user_id, provider)
        out.update(queue_positions(repos.queue_by_user(conn, provider), user_id, mine))
    return out


def _receipt(
    conn: Connection,
    user_id: int,
    kind: str,
    rows: Sequence[Any],
    balance: int,
    *,
    duplicate: bool = False,
    notes: Sequence[str] = (),
) -> Receipt:
    positions = _positions(conn, user_id, {r.provider for r in rows})
    tickets = tuple(
        JobTicket(
            id=r.id,
            provider=r.provider,
            model=r.model or "",
            width=r.params.get("width") or 0,
            height=r.params.get("height") or 0,
            n=r.params.get("n", 1),
            seed=r.params.get("seed") or 0,
            cost=r.cost,
            position=positions.get(r.id, 0),
            status=getattr(r, "status", JobStatus.QUEUED),
        )
        for r in rows
    )
    return Receipt(
        kind=kind,
        jobs=tickets,
        batch_id=rows[0].batch_id if rows else None,
        cost=sum(r.cost for r in rows),
        balance=balance,
        duplicate=duplicate,
        notes=tuple(notes),
    )


@dataclass(frozen=True, slots=True)
class Standing:
    lang: str | None  # the person's /lang choice; None: follow their app
    settings: dict[str, str]  # their /settings defaults
    banned: bool


@dataclass(frozen=True, slots=True)
class _NewJob:
    """A job row about to be inserted, readable like a stored one for the receipt."""

    id: int
    provider: str
    model: str | None
    params: dict[str, Any]
    cost: int
    batch_id: int | None


class JobService:
    def __init__(
        self,
        config: Config,
        db: Database,
        router: Router,
        files: PictureStore,
        *,
        on_submit: Callable[[str], None] | None = None,
        on_cancel: Callable[[int], bool] | None = None,
        on_event: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.router = router
        self.files = files
        self.on_submit = on_submit or (lambda provider: None)
        self.on_cancel = on_cancel or (lambda job_id: False)
        self.on_event = on_event or (lambda: None)

    def _ensure(self, conn: Connection, ref: UserRef, t: float) -> Row[Any]:
        return repos.ensure_user(
            conn,
            ref.platform,
            ref.id,
            name=ref.name,
            starting_grant=self.config.credits.starting_grant,
            now=t,
        )

    # --- people and credits ----------------------------------------------------------------

    async def user(self, ref: UserRef) -> Row[Any]:
        """The person's row (id, balance, banned, ...), created with the starting grant."""
        return await self.db.run_write(self._ensure, ref, now())

    async def balance(self, ref: UserRef) -> int:
        return int((await self.user(ref)).balance)

    async def grant(
        self, ref: UserRef, amount: int, *, note: str = "", key: str | None = None
    ) -> int:
        """Admin grant (negative to take back). Returns the new balance."""
        return await self._adjust(ref, lambda _: amount, note=note, key=key)

    async def set_balance(self, ref: UserRef, target: int, *, note: str = "") -> int:
        if target < 0:
            raise UserError.of("error.negative_balance")
        return await self._adjust(
            ref, lambda balance: target - balance, note=note or f"set to {target}"
        )

    async def _adjust(
        self,
        ref: UserRef,
        amount_for: Callable[[int], int],
        *,
        note: str,
        key: str | None = None,
    ) -> int:
        """Move the balance by ``amount_for(current balance)`` as an admin ledger entry, in
        one transaction with reading it; returns the new balance."""

        def tx(conn: Connection) -> int:
            t = now()
            user = self._ensure(conn, ref, t)
            amount = amount_for(user.balance)
            if key is not None and repos.ledger_has_key(conn, key):
                return int(user.balance)  # done before (the same message): nothing to do
            if user.balance + amount < 0:
                raise UserError.of(
                    "error.cannot_take", user=ref.key, balance=user.balance, amount=-amount
                )
            if amount:
                repos.credit(
                    conn,
                    user.id,
                    amount,
                    reason="grant" if amount > 0 else "debit",
                    now=t,
                    key=key or f"admin:{uuid.uuid4().hex}",
                    note=note,
                )
            return repos.balance(conn, user.id)

        return await self.db.run_write(tx)

    async def set_banned(self, ref: UserRef, banned: bool) -> None:
        def tx(conn: Connection) -> None:
            repos.set_banned(conn, self._ensure(conn, ref, now()).id, banned)

        await self.db.run_write(tx)

    async def user_lang(self, ref: UserRef) -> str | None:
        """The language the person chose with /lang, or None to follow their app."""
        row = await self.db.run_read(repos.get_user, ref.platform, ref.id)
        return None if row is None else i18n.normalize(row.locale)

    async def set_lang(self, ref: UserRef, lang: str | None) -> None:
        """Store the person's language (None: follow their app's language)."""
        if lang is not None and lang not in i18n.LANGS:
            raise ValueError(f"unsupported language {lang!r}")

        def tx(conn: Connection) -> None:
            repos.set_locale(conn, self._ensure(conn, ref, now()).id, lang)

        await self.db.run_write(tx)

    # --- personal defaults (/settings) ------------------------------------------------------

    async def user_prefs(self, ref: UserRef) -> tuple[str | None, dict[str, str]]:
        """The person's /lang choice (None: follow their app) and their /settings defaults,
        in one read (both come from their row; nothing is created)."""
        standing = await self.standing(ref)
        return standing.lang, standing.settings

    async def standing(self, ref: UserRef) -> Standing:
        """What every command needs to know about the person first, in one read of their
        row (nothing is created): their language, their defaults, whether they are banned."""
        row = await self.db.run_read(repos.get_user, ref.platform, ref.id)
        if row is None:
            return Standing(None, {}, False)
        return Standing(i18n.normalize(row.locale), self._settings_of(row.settings), row.banned)

    async def check_not_banned(self, ref: UserRef) -> None:
        """Raise the translated refusal if the person is banned (for work that does not
        start with a command, such as a picture's buttons)."""
        if (await self.standing(ref)).banned:
            raise Forbidden.of("error.banned")

    async def settings(self, ref: UserRef) -> dict[str, str]:
        """The person's defaults: any of ``SETTING_KEYS`` they set, as stored."""
        return (await self.user_prefs(ref))[1]

    async def set_setting(self, ref: UserRef, key: str, value: str | None) -> dict[str, str]:
        """Check and store one default (``value=None`` clears it); returns all of them.

        The value is stored as the core will use it: a model as ``provider:model`` (or a
        provider name), an aspect as ``W:H``, a negative prompt on one line. Anything that
        would not be accepted is refused (BadInput) and nothing is stored.
        """
        if key not in SETTING_KEYS:
            raise BadInput.of("error.settings_key", setting=key[:30])
        stored = None if value is None else self.check_setting(key, value)

        def tx(conn: Connection) -> dict[str, str]:
            if stored is None:
                row = repos.get_user(conn, ref.platform, ref.id)
                if row is None:
                    return {}  # nobody to clear anything for: create no one
                uid = int(row.id)
            else:
                uid = int(self._ensure(conn, ref, now()).id)
            current = self._settings_of(repos.lock_settings(conn, uid))
            if stored is None:
                if key not in current:
                    return current
                del current[key]
            else:
                current[key] = stored
            repos.set_settings(conn, uid, current)
            return current

        return await self.db.run_write(tx)

    async def clear_settings(self, ref: UserRef) -> None:
        """Forget all of the person's defaults."""

        def tx(conn: Connection) -> None:
            row = repos.get_user(conn, ref.platform, ref.id)
            if row is not None and row.settings is not None:
                repos.set_settings(conn, row.id, None)

        await self.db.run_write(tx)

    def check_setting(self, key: str, value: str) -> str:
        """``value`` as it would be stored for ``key``, or BadInput saying what is wrong."""
        text = " ".join(value.split())
        closer = OPENERS.get(text[:1])
        if closer is not None and len(text) >= 2 and text[-1] == closer:
            if closer not in text[1:-1]:
                text = text[1:-1].strip()  # one quoted group, read as flag values are
        if not text:
            raise BadInput.of("error.settings_value", setting=key)
        if key == "negative":
            if len(text) > MAX_DEFAULT_NEGATIVE:
                raise BadInput.of(
                    "error.settings_negative_long", limit=MAX_DEFAULT_NEGATIVE, length=len(text)
                )
            return text
        if key == "model":
            return self._check_model(text)
        if key == "aspect":
            return self._check_aspect(text)
        raise BadInput.of("error.settings_key", setting=key[:30])

    def _check_model(self, name: str) -> str:
        """A default model must route, with the router's own rules: ``provider:model``, a
        model name, or a provider name (its default model). Stored as ``provider:model``
        so it keeps meaning the same model; a provider name is kept as it is."""
        shown = name if len(name) <= 60 else name[:59] + "…"
        is_provider = name in self.router.providers
        params = (
            GenerationParams(prompt="x", provider=name)
            if is_provider
            else GenerationParams(prompt="x", model=name)
        )
        refusal: BadInput | None = None
        for kind, init_size in (("txt2img", None), ("img2img", (512, 512))):
            try:
                route = self.router.resolve(params, kind, init_size)
            except BadInput as err:
                refusal = refusal or err
                continue
            return name if is_provider else f"{route.provider}:{route.model}"
        reason = refusal.message if refusal is not None else "not available"
        raise BadInput.of("error.settings_model", model=shown, reason=reason)

    @staticmethod
    def _check_aspect(text: str) -> str:
        """A default aspect ratio must be what ``--ar`` accepts (stored as ``--ar`` reads it)."""
        aspect = None
        if not any(c.isspace() for c in text):
            try:
                aspect = parse_generation(f"x --ar {text}").aspect
            except BadInput:
                aspect = None
        if aspect is None:
            shown = text if len(text) <= 30 else text[:29] + "…"
            raise BadInput.of("error.settings_aspect", value=shown)
        return aspect

    @staticmethod
    def _settings_of(raw: Any) -> dict[str, str]:
        """The stored defaults, keeping only known keys with text values."""
        if not isinstance(raw, dict):
            return {}
        return {k: raw[k] for k in SETTING_KEYS if isinstance(raw.get(k), str) and raw[k]}

    async def find_user(self, platform: str, name_or_id: str) -> UserRef | None:
        """A person the bot knows: ``@name`` (their stored name, any case, on ``platform``),
        ``platform:id``, or an id on ``platform``. None if there is no such person; a name
        several people share is refused (BadInput) rather than guessed."""
        target = name_or_id.strip()

        def tx(conn: Connection) -> UserRef | None:
            if target.startswith("@"):
                rows = repos.users_named(conn, platform, target, limit=2)
                if len(rows) > 1:
                    raise BadInput.of("error.ambiguous_person", target=target)
                row = rows[0] if rows else None
            elif ":" in target:
                where, _, pid = target.partition(":")
                row = repos.get_user(conn, where, pid)
            else:
                row = repos.get_user(conn, platform, target)
            if row is None:
                return None
            return UserRef(row.platform, row.platform_user_id, row.name)

        if not target or target == "@":
            return None
        return await self.db.run_read(tx)

    async def stats(self, window_s: float = 24 * 3600) -> Stats:
        """The queue now, and jobs and credits over the last ``window_s`` seconds."""
        raw = await self.db.run_read(repos.stats, now() - window_s)
        return Stats(window_s=window_s, **raw)

    # --- submitting -------------------------------------------------------------------------

    async def _store_input(self, data: bytes) -> str:
        """Keep an input picture in the store; its sha256. Before anything is charged, so a
        store that cannot take it now refuses the request with a clear word."""
        try:
            stored = await asyncio.to_thread(self.files.put, data, kind="inputs", ext="png")
        except StorageError as exc:
            raise UserError(STORE_DOWN) from exc
        return stored.sha256

    async def submit(
        self,
        ref: UserRef,
        kind: str,
        params_list: Sequence[GenerationParams],
        reply_to: ReplyTo | Mapping[str, Any],
        *,
        init_image: bytes | None = None,
        init_size: tuple[int, int] | None = None,
        more_images: Sequence[bytes] = (),
        fit_more: bool = False,
        idem_key: str | None = None,
        retry_of: int | None = None,
        notes: Sequence[str] = (),
        on_accept: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> Receipt:
        """Validate, route, charge and queue in one transaction; return the receipt.

        ``on_accept``: called once everything that can refuse the command said yes (and it is
        not a duplicate), just before the job is queued; the ``ReplyTo`` fields it returns
        are set on ``reply_to`` (a stored, JSON form is read by ``ReplyTo.from_json``). A
        chat adapter opens the job's status message there, so a refusal is answered
        directly and only an accepted job gets a status message (whose id the job carries
        from its first moment).

        ``init_image`` is the (first) input picture of an img2img job, ``more_images`` the
        others in order (an album), each already checked like the first
        (``bot.imaging.load_input_image``). More than the model takes are refused, unless
        ``fit_more`` (the rest of an album replied to): then the model takes what it can and
        a note says so. The first is the job's ``input_sha256``, the
        others' sha256 go in its params as ``more_inputs``; all are in the store as "inputs".

        Everything that can be refused (an unknown model, a size the provider cannot make,
        too many tasks) is refused before the transaction, so a refusal costs nothing.
        """
        reply_to = ReplyTo.from_json(reply_to)
        if kind not in KINDS:
            raise BadInput(f"unknown job kind {kind!r}")
        if not params_list:
            raise BadInput("nothing to do: give a prompt")
        if kind == "batch" and len(params_list) > MAX_BATCH_TASKS:
            raise BadInput(
                f"a batch holds at most {MAX_BATCH_TASKS} tasks; you gave {len(params_list)}"
            )
        if kind == "img2img" and init_image is None:
            raise BadInput.of("error.img2img_needs_picture_short")
        if more_images and kind != "img2img":
            raise BadInput(f"{kind} takes no input pictures")
        for p in params_list:
            check_values(p)
        inputs = 1 if fit_more else 1 + len(more_images)
        routes: list[Route] = [
            self.router.resolve(p, kind, init_size, inputs=inputs) for p in params_list
        ]
        if fit_more and more_images:
            limit = min(r.max_inputs for r in routes)
            if 1 + len(more_images) > limit:
                notes = (
                    *notes,
                    i18n.Message(
                        "note.inputs_fitted",
                        model=routes[0].model,
                        limit=limit,
                        count=1 + len(more_images),
                    ),
                )
                more_images = more_images[: limit - 1]
        costs = [
            r.unit_price * (1 if kind == "batch" else p.n)
            for r, p in zip(routes, params_list, strict=True)
        ]
        input_sha = None
        if init_image is not None:
            input_sha = await self._store_input(init_image)
        more_shas: list[str] = []
        for data in more_images:
            more_shas.append(await self._store_input(data))
        resolved = [
            p.with_(seed=r.seed, width=r.width, height=r.height, model=r.model, provider=r.provider)
            for p, r in zip(params_list, routes, strict=True)
        ]

        total = sum(costs)
        unit = min(r.unit_price for r in routes)

        def admit(conn: Connection, t: float) -> tuple[Row[Any], Receipt | None]:
            """The person, and the earlier receipt when this is a duplicate; raises what
            refuses the command."""
            user = self._ensure(conn, ref, t)
            if user.banned:
                raise Forbidden.of("error.banned")
            if idem_key is not None:
                existing = repos.jobs_by_idem_key(conn, idem_key)
                if existing:
                    dup = _receipt(conn, user.id, kind, existing, user.balance, duplicate=True)
                    return user, dup
            active = repos.active_count(conn, user.id)
            limit = self.config.queue.max_queued_per_user
            if active + len(resolved) > limit:
                raise LimitReached.of("error.queue_limit", active=active, limit=limit)
            if user.balance < total:
                raise _short_of(total, user.balance, unit)
            return user, None

        if on_accept is not None:
            _, earlier = await self.db.run_write(admit, now())
            if earlier is not None:
                return earlier
            reply_to = reply_to.with_(**(await on_accept()))

        def tx(conn: Connection) -> Receipt:
            t = now()
            user, earlier = admit(conn, t)
            if earlier is not None:
                return earlier
            batch_id = (
                repos.insert_batch(conn, user.id, len(resolved), t) if kind == "batch" else None
            )
            rows = [
                {
                    "user_id": user.id,
                    "batch_id": batch_id,
                    "batch_index": i,
                    "kind": kind,
                    "status": JobStatus.QUEUED,
                    "params": (
                        {**p.to_dict(), MORE_INPUTS: more_shas} if more_shas else p.to_dict()
                    ),
                    "provider": r.provider,
                    "model": r.model,
                    "input_sha256": input_sha,
                    "cost": cost,
                    "reply_to": reply_to.to_json(),
                    "retry_of": retry_of,
                    "idem_key": (idem_key if i == 0 else f"{idem_key}#{i}") if idem_key else None,
                    "created_at": t,
                }
                for i, (p, r, cost) in enumerate(zip(resolved, routes, costs, strict=True))
            ]
            ids = repos.insert_jobs(conn, rows)
            balance = repos.charge(conn, user.id, list(zip(ids, costs, strict=True)), now=t)
            if balance is None:  # lost a race with another process: roll it all back
                raise _short_of(total, repos.balance(conn, user.id), unit)
            new = [
                _NewJob(i, row["provider"], row["model"], row["params"], row["cost"], batch_id)
                for i, row in zip(ids, rows, strict=True)
            ]
            return _receipt(conn, user.id, kind, new, balance, notes=notes)

        receipt = await self.db.run_write(tx)
        if not receipt.duplicate:
            for provider in {r.provider for r in routes}:
                self.on_submit(provider)
        return receipt

    # --- cancel and retry -------------------------------------------------------------------

    @staticmethod
    def _own_job(
        conn: Connection, ref: UserRef | None, job_id: int, *, lock: bool = False
    ) -> Row[Any]:
        """The job if ``ref`` owns it (``None`` means an operator: any job)."""
        if not valid_id(job_id):  # past the column's range: no such row, and no query
            raise NotFound.of(
                "error.no_job" if ref is None else "error.no_job_of_yours", job_id=job_id
            )
        job = repos.get_job(conn, job_id) if not lock else repos.lock_job(conn, job_id)
        if job is None:
            if ref is None:
                raise NotFound.of("error.no_job", job_id=job_id)
            raise NotFound.of("error.no_job_of_yours", job_id=job_id)
        if ref is not None:
            user = repos.get_user(conn, ref.platform, ref.id)
            if user is None or job.user_id != user.id:
                raise NotFound.of("error.no_job_of_yours", job_id=job_id)
        return job

    async def cancel(self, ref: UserRef | None, job_id: int) -> str:
        """Cancel a queued job at once (refunded) or ask the worker to stop a running one.

        ``ref=None`` cancels as an operator (any person's job).
        """

        def tx(conn: Connection) -> tuple[str | None, str]:
            job = self._own_job(conn, ref, job_id, lock=True)
            if job.status in JOB_TERMINAL:
                raise UserError.of(
                    "error.already_finished", job_id=job_id, past=i18n.term("past", job.status)
                )
            billed = self.router.bills_when_cancelled(job.provider)
            if job.status == JobStatus.QUEUED:
                refunded = finish_job(
                    conn,
                    self.config,
                    job,
                    status=JobStatus.CANCELLED,
                    failure=FailureClass.CANCELLED,
                    message="cancelled before it started",
                    # pictures an earlier attempt delivered are kept (and paid for)
                    images_made=len(repos.images_for_job(conn, job.id)),
                    t=now(),
                    uncharged=not billed,
                )
                return i18n.Message("cancel.done", job_id=job_id, refunded=refunded), ""
            repos.request_cancel(conn, job_id)
            # The worker refunds when it stops the job (bot.scheduler), by the same rule.
            why = cancel_refund_reason(self.config, job, billed=billed)
            if why is None:
                return None, i18n.Message(
                    "cancel.note.kept_billed", provider=job.provider, kind=job.kind
                )
            return None, i18n.Message(
                f"cancel.note.refunded_{why}", provider=job.provider, kind=job.kind
            )

        message, note = await self.db.run_write(tx)
        if message is not None:
            self.on_event()
            return message
        self.on_cancel(job_id)
        return i18n.Message("cancel.running", job_id=job_id, note=note)

    async def retry(
        self,
        ref: UserRef,
        job_id: int,
        reply_to: ReplyTo | Mapping[str, Any] | None,
        *,
        on_accept: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> Receipt:
        job = await self.db.run_read(self._own_job, ref, job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUARANTINED):
            raise UserError.of(
                "error.retry_only_failed", job_id=job_id, status=i18n.term("status", job.status)
            )
        init = None
        if job.input_sha256:
            init = await asyncio.to_thread(
                self.files.get, job.input_sha256, kind="inputs", ext="png"
            )
        more = await load_more_inputs(self.files, job.params)
        params = GenerationParams.from_dict(job.params)
        # an upscale is sized from its input picture (bot.routing.upscale_size); its stored
        # width and height are the result's
        init_size = image_size(init) if init is not None and params.upscale else None
        return await self.submit(
            ref,
            job.kind,
            [params],
            reply_to or ReplyTo.from_json(job.reply_to),
            init_image=init,
            init_size=init_size,
            more_images=more,
            retry_of=job_id,
            notes=(i18n.Message("note.retry_of", job_id=job_id),),
            on_accept=on_accept,
        )

    # --- looking things up ------------------------------------------------------------------

    async def job(self, ref: UserRef | None, job_id: int) -> JobView:
        """One job in detail; ``ref=None`` looks as an operator (any person's job)."""

        def tx(conn: Connection) -> JobView:
            job = self._own_job(conn, ref, job_id)
            view = JobView.of(job)
            view.images = [
                {
                    "idx": im.idx,
                    "sha256": im.sha256,
                    "width": im.width,
                    "height": im.height,
                    "seed": im.seed,
                    "path": self.files.locate(im.sha256),
                }
                for im in repos.images_for_job(conn, job_id)
            ]
            view.ledger = [(e.reason, e.delta) for e in repos.ledger_for_job(conn, job_id)]
            if job.batch_id is not None:
                view.batch_counts = repos.batch_counts(conn, job.batch_id)
            if job.status == JobStatus.QUEUED:
                view.position = _positions(conn, job.user_id, {job.provider}).get(job.id, 0)
            return view

        return await self.db.run_read(tx)

    async def owner_balance(self, job_id: int) -> int | None:
        """The balance of the person a job is for, as it is now (None: no such job). An
        outcome shows this rather than the balance when the job finished: the outbox may
        deliver it later, after other jobs were charged or finished."""

        def tx(conn: Connection) -> int | None:
            job = repos.get_job(conn, job_id)
            return None if job is None else repos.balance(conn, job.user_id)

        return await self.db.run_read(tx)

    async def note_status_shown(self, shown: dict[int, str]) -> None:
        """Write on each job's reply target what its status message shows (``{job id:
        digest}``, see ``adapters.chat.conversation``), so the process that takes the job
        over after a restart does not send the same text again."""

        def tx(conn: Connection) -> None:
            for job_id, digest in shown.items():
                job = repos.get_job(conn, job_id)
                if job is None or job.status in JOB_TERMINAL:
                    continue
                reply_to = ReplyTo.from_json(job.reply_to)
                if reply_to.shown != digest:
                    repos.update_job(conn, job_id, reply_to=reply_to.with_(shown=digest).to_json())

        if shown:
            await self.db.run_write(tx)

    async def jobs(self, ref: UserRef, limit: int = 10) -> list[JobView]:
        def tx(conn: Connection) -> list[JobView]:
            user = repos.get_user(conn, ref.platform, ref.id)
            if user is None:
                return []
            return [JobView.of(j) for j in repos.jobs_for_user(conn, user.id, limit)]

        return await self.db.run_read(tx)

    async def all_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobView]:
        def tx(conn: Connection) -> list[JobView]:
            return [JobView.of(j) for j in repos.recent_jobs(conn, status=status, limit=limit)]

        return await self.db.run_read(tx)

    async def is_idle(self, ref: UserRef) -> bool:
        """No job of this person is active and nothing is left to tell them."""

        def tx(conn: Connection) -> bool:
            user = repos.get_user(conn, ref.platform, ref.id)
            if user is None:
                return True
            return (
                repos.active_count(conn, user.id) == 0 and repos.unsent_for_user(conn, user.id) == 0
            )

        return await self.db.run_read(tx)


_TEXT_FIELDS = ("prompt", "negative", "sampler", "model", "provider", "aspect")


def check_values(params: GenerationParams) -> None:
    """Refuse what no provider or column can take, whichever way it came in (typed, a
    button, a Civitai image's settings, a picture's embedded parameters, a retry): text with
    control characters or bytes that were not UTF-8, and numbers out of range. Called
    before anything is stored or charged."""
    for name in _TEXT_FIELDS:
        value = getattr(params, name)
        if value and (bad := unusable_char(value)) is not None:
            raise BadInput.of("error.unusable_text", char=shown_char(bad))
    if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
        raise BadInput.of("error.seed_range", max=MAX_SEED)
    if params.steps is not None and not 1 <= params.steps <= 150:
        raise BadInput.of("error.steps_range")
    if not 1 <= params.n <= MAX_BATCH_TASKS:
        raise BadInput.of("error.n_range", max=MAX_BATCH_TASKS)
    for number, top in ((params.cfg, 100.0), (params.strength, 1.0)):
        if number is not None and not (math.isfinite(number) and 0 <= number <= top):
            raise BadInput.of("error.number_range")
    for side in (params.width, params.height):
        if side is not None and not 1 <= side <= 100_000:
            raise BadInput.of("error.number_range")


def _short_of(cost: int, balance: int, unit: int) -> InsufficientCredits:
    """Too few credits: fewer pictures would do when one is affordable; otherwise say where
    credits come from (this bot's admins, with /grant)."""
    if balance >= unit:
        return InsufficientCredits.of("error.not_enough_credits", cost=cost, balance=balance)
    return InsufficientCredits.of("error.no_credits", cost=cost, balance=balance)
