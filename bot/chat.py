"""What the core expects of a chat platform adapter, and what it hands over.

Delivery is at-least-once through the outbox: an adapter's ``deliver`` is called for every
event until it returns, and the event is marked sent right after. An adapter raises
``DeliveryRetry`` when the platform asks it to wait (flood control) and ``DeliveryGone`` when
the target can never be reached (the person blocked the bot, the chat was deleted).

Every outbox event carries its audience, the recipient its reply target names
(``audience_of``). Most platforms can be delivered to by any process; one whose delivery is
bound to a process (a console prints in its own terminal) says which audiences it serves
(``ChatAdapter.audiences``), and gets only their events and their live progress.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

AUDIENCE_MAX = 160  # the width of outbox.audience


@dataclass(frozen=True, slots=True)
class UserRef:
    """A person as a platform knows them."""

    platform: str
    id: str
    name: str = ""
    locale: str | None = None

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.id}"


@dataclass(frozen=True, slots=True)
class ResponseToken:
    """A short-lived right to answer on behalf of the bot (Discord's interaction token):
    the application that holds it, the token, and until when it is good (epoch seconds)."""

    app: int
    token: str
    until: float = 0.0

    def fresh(self, now: float) -> bool:
        return bool(self.token) and now < self.until


def _int(value: Any) -> int | None:
    """An id stored in JSON (an int, or a numeric string); None if absent or unusable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _chat(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a job's (or a download's) news go: the reply target every job and outbox event
    carries. Stored as JSON (``to_json``); ``from_json`` reads every form ever stored.
    Each field is platform-neutral; its comment says what it is on each platform.
    """

    platform: str = ""  # the adapter that serves it ("telegram", "discord", "console")
    # The conversation: a Telegram chat id, a Discord channel id, a console's person.
    chat: int | str | None = None
    person: str | None = None  # the platform's id of the person who asked (Discord user)
    source_message: int | None = None  # the person's message, to reply to (Telegram)
    status_message: int | None = None  # the bot's status message of the job, edited as it goes
    thread: int | None = None  # the topic inside the chat (a Telegram forum topic)
    lang: str | None = None  # the language replies are written in
    nsfw_ok: bool = False  # the chat may see NSFW results (the chat's policy when asked)
    # A digest of the text the status message shows, noted by a stopping process so the
    # one taking the job over does not send the same text again (``bot.jobs.note_status_shown``).
    shown: str | None = None
    # Answering through the platform's short-lived response (a Discord interaction).
    response: ResponseToken | None = None
    community: int | None = None  # the server the chat belongs to (a Discord guild)
    upload_limit: int | None = None  # the largest file the chat takes, in bytes

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | ReplyTo | None) -> ReplyTo:
        """Read a stored reply target: this version's form or any older one.

        The older forms were dicts whose keys meant different things per adapter: Telegram
        stored the person's message as ``message`` and the status message as ``status``;
        Discord (the form with ``channel``) stored the status message as ``message``, the
        person as ``user``, the interaction as ``app``/``token``/``token_until``, the guild as
        ``guild`` and the upload limit as ``limit``.
        """
        if isinstance(data, ReplyTo):
            return data
        d = dict(data or {})
        channel_form = "channel" in d  # the old Discord form
        source, status = d.get("source_message"), d.get("status_message")
        if "message" in d:  # an old form
            if channel_form:
                status = d["message"] if status is None else status
            else:
                source = d["message"] if source is None else source
        if status is None:
            status = d.get("status")
        token = d.get("response")
        response: ResponseToken | None = None
        if isinstance(token, Mapping):
            app, tok = _int(token.get("app")), _str(token.get("token"))
            if app is not None and tok is not None:
                response = ResponseToken(app, tok, float(token.get("until") or 0))
        elif d.get("token"):  # the old Discord form
            app = _int(d.get("app"))
            if app is not None:
                response = ResponseToken(app, str(d["token"]), float(d.get("token_until") or 0))
        chat = d.get("chat")
        if chat is None and channel_form:
            chat = d.get("channel")
        person = d.get("person", d.get("user"))
        return cls(
            platform=str(d.get("platform") or ""),
            chat=_chat(chat),
            person=_str(person),
            source_message=_int(source),
            status_message=_int(status),
            thread=_int(d.get("thread")),
            lang=_str(d.get("lang")),
            nsfw_ok=bool(d.get("nsfw_ok")),
            shown=_str(d.get("shown")),
            response=response,
            community=_int(d.get("community", d.get("guild"))),
            upload_limit=_int(d.get("upload_limit", d.get("limit"))),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form: only the fields that are set."""
        out: dict[str, Any] = {"platform": self.platform}
        for name in (
            "chat",
            "person",
            "source_message",
            "status_message",
            "thread",
            "lang",
            "shown",
            "community",
            "upload_limit",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.nsfw_ok:
            out["nsfw_ok"] = True
        if self.response is not None:
            out["response"] = {
                "app": self.response.app,
                "token": self.response.token,
                "until": self.response.until,
            }
        return out

    def with_(self, **changes: Any) -> ReplyTo:
        """A copy with ``changes`` (field names) applied."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox event. ``kind`` is image | finished | failed | cancelled."""

    id: int
    job_id: int
    kind: str
    idx: int
    payload: dict[str, Any]
    attempts: int = 0

    @property
    def reply_to(self) -> ReplyTo:
        """Where it goes, in whichever form it was stored (``ReplyTo.from_json``)."""
        return ReplyTo.from_json(self.payload.get("reply_to"))


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: int
    percent: int
    stage: str  # received | submitted | generating | done
    reply_to: ReplyTo = field(default_factory=ReplyTo)
    batch_id: int | None = None
    # A status text already written, shown as is: the state of something that is not a job
    # (a model download), sent through the same paced edits as job progress.
    text: str | None = None
    # The picture as it develops (encoded, any format Pillow reads), from providers that
    # have one (a self-hosted GPU's live preview); chats show it with the status, paced.
    preview: bytes | None = None


def audience_of(reply_to: ReplyTo | Mapping[str, Any]) -> str | None:
    """Who an event for ``reply_to`` is for: ``"platform:chat"``; None if it names no chat.

    The same text whichever process writes the event and whichever serves the person, so a
    bound adapter can claim exactly its people's events. A stored (JSON) form is read as
    ``ReplyTo.from_json`` reads it.
    """
    target = ReplyTo.from_json(reply_to)
    if not target.platform or target.chat is None:
        return None
    return f"{target.platform}:{target.chat}"[:AUDIENCE_MAX]


def outbox_address(reply_to: ReplyTo | Mapping[str, Any]) -> dict[str, Any]:
    """The columns that say where an outbox event goes: every writer of events uses it."""
    target = ReplyTo.from_json(reply_to)
    return {"platform": target.platform, "audience": audience_of(target)}


class DeliveryRetry(Exception):
    def __init__(self, retry_after: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {retry_after}s")
        self.retry_after = retry_after


class DeliveryGone(Exception):
    """The target is permanently unreachable; the event is dropped (and logged)."""


class ChatAdapter(ABC):
    platform: str
    # Consecutive pictures of one job handed over in one call (an album); 1: one by one.
    max_group: int = 1

    def audiences(self) -> frozenset[str] | None:
        """The audiences (``audience_of``) this process delivers to, if delivery on this
        platform is bound to the process, such as a terminal; None: any process of the
        platform delivers any of its events. A bound adapter gets only these audiences'
        events, progress and status lines; the others wait for the process serving them.
        """
        return None

    def serves(self, reply_to: ReplyTo | Mapping[str, Any]) -> bool:
        served = self.audiences()
        return served is None or audience_of(reply_to) in served

    @abstractmethod
    async def deliver(self, delivery: Delivery) -> None: ...

    async def deliver_group(self, deliveries: list[Delivery]) -> None:
        """Deliver several picture events of one job together, all or nothing.

        Only called with more than one event when ``max_group`` > 1; the events are marked
        sent together once it returns.
        """
        for delivery in deliveries:
            await self.deliver(delivery)

    # Lifecycle, called by App: ``connect`` before the core starts (log in; deliveries may
    # come from then on), ``listen`` once it runs (take commands), ``stop_listening`` before
    # it stops, ``disconnect`` after. All optional.
    async def connect(self) -> None:  # noqa: B027
        pass

    async def listen(self) -> None:  # noqa: B027
        pass

    async def stop_listening(self) -> None:  # noqa: B027
        pass

    async def disconnect(self) -> None:  # noqa: B027
        pass

    async def progress(self, update: Progress) -> None:  # noqa: B027 - optional
        """Best effort and unthrottled from the core's side: adapters pace their own edits.

        Called inline by the running job, so it must return quickly: an adapter that edits
        a message over the network records the latest state and sends it from a task of
        its own.
        """

    async def show_status(  # noqa: B027 - optional
        self, reply_to: ReplyTo, text: str, *, final: bool = False
    ) -> None:
        """Show ``text`` on the status message ``reply_to`` names, for something that is not a
        job (a model download). Paced like job progress, so it must return quickly;
        ``final`` is the last state: sent now, and nothing older may overwrite it."""

    async def announce(self, reply_to: ReplyTo, text: str) -> None:  # noqa: B027
        """A new message in the chat of ``reply_to`` (news worth a notification, such as a
        finished download, where an edit would go unnoticed). Best effort."""
