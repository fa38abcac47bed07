"""Keeping secrets out of the logs, in one place.

Libraries log what they send: httpx logs every request URL at INFO, and URLs carry secrets
(the Telegram bot token is part of every Bot API path, LiblibAI signs each request with its
AccessKey and Signature in the query, Discord interaction tokens are path segments). Rather
than hoping no library (or traceback) ever prints one, sdhost's logging setup puts one
filter on every handler it makes (:func:`install`); each record passes through it on its
way out, whichever logger made it. The filter formats the message with its arguments, and
the traceback, then replaces

* every secret value the config holds (``Config.secrets``), as written and URL-encoded, and
* secret-bearing shapes whoever's they are: ``/bot<id>:<token>``, ``AccessKey=``,
  ``Signature=``, ``SignatureNonce=``, ``key=``/``token=``-style query parameters,
  ``Authorization``/``x-key`` headers, ``Bearer`` credentials, ``"token": "..."`` fields of
  JSON and dicts, a password in a URL, and Discord webhook/interaction tokens

with ``***``. Uncaught exceptions (``sys.excepthook``) go through it too.
"""

from __future__ import annotations

import logging
import re
import sys
import types
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_SECRET_LEN", "RedactingFilter", "Redactor", "install"]

MASK = "***"
# Shorter values are not secrets anyone should use, and masking every "abc" in the logs
# would make them unreadable; they are still masked wherever a pattern below finds them.
MIN_SECRET_LEN = 6

_QUERY_NAMES = (
    r"AccessKey|Signature|SignatureNonce|key|api_?key|apikey|token|access_?token|secret"
    r"|password|passwd|sig|signature|auth"
)
_HEADER_NAMES = (
    r"authorization|proxy-authorization|x-key|x-api-key|api-key|x-auth-token"
    r"|x-telegram-bot-api-secret-token"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # the Bot API path: /bot<token>/getMe and /file/bot<token>/photos/...
    (re.compile(r"(/bot)\d+:[A-Za-z0-9_-]+"), rf"\1{MASK}"),
    # a Telegram bot token anywhere else
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), MASK),
    # secrets in a query string: ?AccessKey=..&Signature=..&SignatureNonce=..
    (re.compile(rf"(?i)([?&;](?:{_QUERY_NAMES})=)[^&\s'\"#<>]*"), rf"\1{MASK}"),
    # headers, as "Name: value", name=value, {'name': 'value'} or (b'name', b'value')
    (
        re.compile(
            rf"(?i)\b({_HEADER_NAMES})((?:['\"])?\s*[:=,]\s*(?:b?['\"])?)"
            r"(?:(?:Bearer|Bot|Basic|Token)\s+)?[^\s'\",})\]]+"
        ),
        rf"\1\2{MASK}",
    ),
    (re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{MASK}"),
    # a secret field of a JSON document or a dict: {'token': '...'} (a Discord interaction)
    (
        re.compile(rf"(?i)(['\"](?:{_QUERY_NAMES}|client_secret)['\"]\s*:\s*['\"])[^'\"]+"),
        rf"\1{MASK}",
    ),
    # a password in a URL: scheme://user:password@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/\s@]*:)[^@\s/]+@"), rf"\1{MASK}@"),
    # Discord: an interaction's token in webhook and callback paths
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.-]{20,}"), rf"\1{MASK}"),
)


class Redactor:
    """Text with known secret values and secret-bearing shapes masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: re.Pattern[str] | None = None
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LEN:
                continue
            variants |= {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
        ordered = sorted(variants, key=len, reverse=True)  # a longer one first: no stubs left
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class RedactingFilter(logging.Filter):
    """Put on a handler: every record it emits is formatted (message, arguments, traceback,
    stack) and redacted first. It changes the record in place, so other handlers that see it
    afterwards get the redacted text too."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: keep both, masked
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


def install(secrets: Iterable[str], *, logger: logging.Logger | None = None) -> Redactor:
    """Redact what ``logger``'s handlers (the root logger's: every logger that propagates)
    emit, and what an uncaught exception prints. Installing again updates the secrets."""
    target = logger or logging.getLogger()
    redactor: Redactor | None = None
    for handler in target.handlers:
        for existing in handler.filters:
            if isinstance(existing, RedactingFilter):
                redactor = existing.redactor
    if redactor is None:
        redactor = Redactor()
    redactor.set_secrets(secrets)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
    _redact_uncaught(redactor)
    return redactor


def _redact_uncaught(redactor: Redactor) -> None:
    import traceback

    def hook(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        sys.stderr.write(redactor(text))

    sys.excepthook = hook
