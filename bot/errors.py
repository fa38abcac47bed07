"""The one family of user-facing errors.

Everything a person can cause or act on is a ``UserError``: adapters render ``str(err)``
(English) or ``err.render(lang)`` as one line and never show a traceback. Anything else
that escapes is a bug and is logged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from bot import i18n
from bot.text import clean


class UserError(Exception):
    """An error whose message is safe and useful to show in a chat.

    One made with ``of(key, **kw)`` carries its catalog key (``bot.i18n``) and can be said
    in the person's language with ``render``; ``str(err)`` is always the English text.
    """

    def __init__(
        self, message: str, *, key: str | None = None, kw: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.kw: dict[str, Any] = dict(kw or {})

    @classmethod
    def of(cls, key: str, **kw: Any) -> Self:
        """The error whose text is catalog entry ``key`` filled with ``kw``."""
        return cls(i18n.t(i18n.DEFAULT_LANG, key, **kw), key=key, kw=kw)

    def render(self, lang: str) -> str:
        if self.key is None or self.key not in i18n.CATALOG:
            return self.message
        return i18n.t(lang, self.key, **self.kw)

    def __str__(self) -> str:
        return self.message


class BadInput(UserError):
    """The command, a flag, or an input image is wrong; the message says how to fix it."""


class InsufficientCredits(UserError):
    pass


class NotFound(UserError):
    pass


class Forbidden(UserError):
    pass


class LimitReached(UserError):
    pass


class FailureClass(StrEnum):
    """Why a job failed; the refund policy is keyed by these."""

    BAD_INPUT = "bad_input"  # the provider said our request was invalid
    REFUSED = "refused"  # moderation / content policy / the provider would not do it
    PROVIDER_ERROR = "provider_error"  # 5xx, quota, auth, anything on the provider's side
    TIMEOUT = "timeout"  # the per-job deadline passed
    CANCELLED = "cancelled"  # the person (or an admin) cancelled it
    CRASH = "crash"  # our own code kept failing: the job was quarantined


class ProviderFailure(Exception):
    """Raised by providers: a classified failure with a message a person can read.

    The message usually quotes the provider's own words, so it is cleaned here, once for
    every provider: one line, no control or bidi characters (it is shown in chats, printed
    on the console and logged).

    ``uncharged`` says the provider charged nothing for the pictures it did not make (it
    never found a worker for the request, or gave the cost back): those are paid back in
    full whatever the refund policy says, as for a job that never reached a provider."""

    def __init__(
        self,
        failure: FailureClass,
        message: str,
        *,
        retry_after: float | None = None,
        uncharged: bool = False,
    ):
        message = clean(str(message), multiline=False)
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.retry_after = retry_after
        self.uncharged = uncharged
