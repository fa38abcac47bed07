"""Text from outside: what may be shown, logged and stored, and what must be refused.

Two kinds of text reach sdhost. What a person types is refused outright when it holds
characters nothing downstream can carry (``unusable_char``): lone surrogates (bytes that
were not UTF-8, smuggled through ``surrogateescape``) cannot be encoded at all, NUL cannot
go into PostgreSQL text, and other control characters have no business in a prompt.

Text from services (Civitai names, prompts and descriptions, provider error messages, file
names) is not refused but cleaned where it comes in (``clean``): control characters could
move a terminal's cursor, recolour it or forge a log line, and bidirectional overrides and
other invisible format characters can make text display as something it is not.
"""

from __future__ import annotations

import re
import unicodedata

# Kept although they are format characters: joiners shape emoji sequences and many scripts.
_KEEP_FORMAT = frozenset({"\u200c", "\u200d"})
_LINE_BREAKS = re.compile(r"\r\n|[\r\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e]")


def _drop(c: str) -> bool:
    """Whether ``c`` can change how surrounding text looks (or is not text at all)."""
    cat = unicodedata.category(c)
    if cat == "Cc":  # C0, DEL, C1
        return True
    if cat == "Cf":  # bidi embeddings, overrides and isolates, zero-width spaces, BOM, tags
        return c not in _KEEP_FORMAT
    return cat == "Cs"  # a lone surrogate: not a character


def clean(text: str, *, multiline: bool = True) -> str:
    """``text`` with nothing left that could forge a display or a log line.

    Line breaks of every kind become ``\\n`` (or a space when ``multiline`` is false, for
    names and one-line messages), tabs stay (spaces on one line), and control, bidi and
    other invisible format characters go.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case, fast
    text = _LINE_BREAKS.sub("\n", text)
    keep = "\n\t" if multiline else ""
    out = []
    for c in text:
        if c in keep:
            out.append(c)
        elif c in "\n\t":
            out.append(" ")
        elif not _drop(c):
            out.append(c)
    return "".join(out)


def clean_any(value: object, *, multiline: bool = True) -> object:
    """``clean`` applied to every string in a JSON-like value (dict keys too)."""
    if isinstance(value, str):
        return clean(value, multiline=multiline)
    if isinstance(value, list):
        return [clean_any(v, multiline=multiline) for v in value]
    if isinstance(value, dict):
        return {
            clean_any(k, multiline=False): clean_any(v, multiline=multiline)
            for k, v in value.items()
        }
    return value


def unusable_char(text: str) -> str | None:
    """The first character of something a person typed that sdhost will not take, or None.

    Tabs and line breaks are fine; other control characters (C0 with NUL, DEL, C1) and lone
    surrogates (input that was not valid UTF-8) are not.
    """
    if text.isascii() and text.isprintable():
        return None
    for c in text:
        if c in "\t\n\r":
            continue
        cat = unicodedata.category(c)
        if cat == "Cc" or cat == "Cs":
            return c
    return None


def shown_char(c: str) -> str:
    """A character named so a person can find it: ``U+0000``."""
    return f"U+{ord(c):04X}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
