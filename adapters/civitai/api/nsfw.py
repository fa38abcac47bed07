"""Civitai's NSFW browsing levels: a bitmask (PG=1, PG13=2, R=4, X=8, XXX=16), the old
names and booleans, and the chat policies (allow, blur, block) mapped onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from bot.ids import is_digits

log = logging.getLogger(__name__)


# --- NSFW browsing levels -----------------------------------------------------------------------

PG, PG13, R, X, XXX, BLOCKED = 1, 2, 4, 8, 16, 32
PUBLIC, SFW, ALL, NSFW_ONLY = PG, PG | PG13, PG | PG13 | R | X | XXX, R | X | XXX | BLOCKED
# What a policy word means, as "everything up to this level" (the old names are cumulative).
_POLICY_LEVELS = {
    # the API's deprecated names
    "none": PG,
    "soft": SFW,
    "mature": PG | PG13 | R,
    "x": ALL,
    "blocked": BLOCKED,
    # the level names, cumulatively
    "pg": PG,
    "pg13": SFW,
    "pg-13": SFW,
    "r": PG | PG13 | R,
    "xxx": ALL,
    # the reference's named sets
    "public": PUBLIC,
    "safe": PUBLIC,
    "sfw": SFW,
    "all": ALL,
    "nsfw": NSFW_ONLY,
    # booleans as text: NSFW allowed or not
    "true": ALL,
    "yes": ALL,
    "on": ALL,
    "false": PG,
    "no": PG,
    "off": PG,
    # the chats' NSFW policies (bot.config): blur/spoiler still show NSFW, hidden behind a click
    "allow": ALL,
    "blur": ALL,
    "spoiler": ALL,
    "block": PG,
}
# A single image's deprecated ``nsfwLevel`` string, as the server maps it back.
_IMAGE_LEVEL_NAMES = {"none": PG, "soft": PG13, "mature": R, "x": X, "blocked": BLOCKED}
# Older shapes (version images, models) carry only ``nsfw: true|false``: false is PG; true
# says only "not PG", so it counts as X (civitai.md §0: X is what "nsfw" meant before the
# levels), shown where X is allowed, hidden under the PG and SFW defaults.
_NSFW_TRUE = X


def _old_level(value: Any) -> int | None:
    """A level from the older fields: ``nsfw`` true/false, or an old level name."""
    if isinstance(value, bool):
        return _NSFW_TRUE if value else PG
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return _NSFW_TRUE if word == "true" else PG
        return _IMAGE_LEVEL_NAMES.get(word)
    return None


NsfwPolicy = bool | int | str | Iterable[bool | int | str]


def browsing_level(policy: NsfwPolicy | None) -> int:
    """The browsing-level bitmask for ``policy``.

    ``None`` is PG only (the API's own default). ``True``/``False`` mean NSFW allowed (31) or
    not (1). An int is taken as a bitmask (1..63). Words: the old names ``None`` (1),
    ``Soft`` (3), ``Mature`` (7), ``X`` (31), ``Blocked`` (32); the levels ``PG``, ``PG13``,
    ``R``, ``XXX`` (each meaning "up to"); ``safe``/``public`` (1), ``sfw`` (3), ``all`` (31),
    ``nsfw`` (60, NSFW only, as the reference defines it); a chat's ``allow``/``blur``/
    ``spoiler`` (31) or ``block`` (1). Comma lists and iterables are OR-ed together.
    """
    if policy is None:
        return PG
    if isinstance(policy, bool):
        return ALL if policy else PG
    if isinstance(policy, int):
        if not 1 <= policy <= 63:
            raise ValueError(f"a browsing level is a bitmask from 1 to 63, not {policy}")
        return policy
    if isinstance(policy, str):
        words = [w.strip() for w in policy.split(",") if w.strip()]
        if not words:
            raise ValueError("an empty NSFW policy")
        mask = 0
        for word in words:
            if is_digits(word):
                mask |= browsing_level(int(word))
                continue
            level = _POLICY_LEVELS.get(word.lower().replace(" ", ""))
            if level is None:
                known = "None, Soft, Mature, X, PG, PG13, R, XXX, safe, sfw, all, allow, block"
                raise ValueError(f"unknown NSFW level {word!r} (use one of {known})")
            mask |= level
        return mask
    mask = 0
    for part in policy:
        mask |= browsing_level(part)
    if not mask:
        raise ValueError("an empty NSFW policy")
    return mask


def level_allowed(level: int | None, mask: int) -> bool:
    """Whether something at ``level`` (a bitmask, ``None`` when unknown) may be shown under
    ``mask``. An unknown level is shown only when every NSFW level is allowed."""
    if level is None or level <= 0:
        return mask & (R | X | XXX) == (R | X | XXX)
    return bool(level & mask)
