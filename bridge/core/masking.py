"""Personal data found and hidden (SPEC 8): by the name of its key, and by the look of a value.

Lenient validation keeps unknown fields and `meta` is free-form, so a phone may sit under any
key (`mobile`, `Phone`, `meta.tel`), inside a list (`spaceIds`) or in free text (`remark`).
Named fields are masked at any depth whatever their value; every other string (and every
number inside a record) is searched for what looks like a phone number, a mainland ID number
or an e-mail address, and each match masked where it stands. The keys that name a record
or carry the bridge's own identifiers and times are left alone, so that logs can still say
which record they speak of.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASKED_FIELDS = frozenset(
    {"name", "contractName", "phone", "contractPhone", "idNumber", "email", "address"}
    | {"bornDate"}
)
"""SPEC 8's named fields."""
DROPPED_FIELDS = frozenset({"facePhoto"})


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


# Keys compared without case or separators: `Phone`, `id_number`, `contract-name` are the same.
# Besides SPEC 8's names, the ones producers use for the same things.
_MASKED = frozenset(_norm(k) for k in MASKED_FIELDS) | frozenset(
    {"mobile", "mobilephone", "tel", "telephone", "phonenumber", "cellphone"}
    | {"idcard", "idno", "identitycard", "passport", "mail", "birthday", "realname"}
)
_DROPPED = frozenset(_norm(k) for k in DROPPED_FIELDS) | {"photo", "faceimage"}

# Ids and times that name a record or a message: long digit strings that are not personal.
_IDENTIFIERS = frozenset(
    _norm(k)
    for k in (
        "id",
        "projectId",
        "customerGradeId",
        "customerTypeId",
        "roleId",
        "msgId",
        "sourceMsgId",
        "tenant",
        "topic",
        "error_topic",
        "reportTs",
        "eventTs",
        "updated_at",
        "timestamp",
        "digest",
        "version",
        "vendor",
        "modelId",
        "poiCode",
        "customer_key",
    )
)

# An e-mail address; an ID number (18 characters, the last a digit or X; or 15 digits, which
# the phone pattern covers); 7 or more digits with or without separators, or +86 before them.
# Digits glued to letters count: Chinese text has no spaces (`电话13800138000`).
_LOOKS_PERSONAL = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])"
    r"|(?:\+\s?86[\s-]?)?(?<![0-9])[0-9](?:[\s\-.()/]{0,2}[0-9]){6,}(?![0-9])"
)
_CANDIDATE = re.compile(r"[0-9@]")  # a cheap first look: most strings have neither
# A record quoted inside text (a sink's error answer echoing the request): `"name": "..."`,
# `name=...`. The value of a named key is masked whatever it looks like.
_QUOTED_FIELD = re.compile(
    r"""(?P<q>["']?)(?P<key>[A-Za-z][A-Za-z_\-]*)(?P=q)\s*[:=]\s*"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;&}\]]+)"""
)


def mask(value: object) -> str:
    """Hide a personal value, keeping at most its last two characters as a hint."""
    text = str(value)
    if len(text) <= 4:
        return "***"
    return "*" * (len(text) - 2) + text[-2:]


def mask_text(text: str) -> str:
    """`text` with whatever looks like a phone, an ID number or an e-mail address masked,
    and the values of named fields quoted in it (`"name": "..."`)."""
    if ":" in text or "=" in text:
        text = _QUOTED_FIELD.sub(_mask_quoted, text)
    if _CANDIDATE.search(text) is None:
        return text
    return _LOOKS_PERSONAL.sub(lambda m: mask(m.group(0)), text)


def _mask_quoted(match: re.Match[str]) -> str:
    if _norm(match.group("key")) not in _MASKED:
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in ('"', "'") else ""
    inner = value[1:-1] if quote else value
    start = match.start("value") - match.start(0)
    return match.group(0)[:start] + quote + mask(inner) + quote


def _number(value: int | float) -> int | float | str:
    text = str(value)
    return mask(text) if sum(c.isdigit() for c in text) >= 7 else value


def redact(value: Any, *, numbers: bool = True) -> Any:
    """A copy of `value` with personal data masked or dropped, at any depth.

    With `numbers` false, the numbers directly in `value` are left as they are (a log
    event's own fields are counts and sizes); those deeper, in a record, are looked at.
    """
    kind = type(value)
    if kind is str:
        return mask_text(value)
    if kind is bool or value is None:
        return value
    if kind is int or kind is float:
        return _number(value) if numbers else value
    if kind is dict or isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = key if type(key) is str else str(key)
            norm = _norm(name)
            if norm in _DROPPED:
                continue
            shown_key = mask_text(name)
            if item is None:
                out[shown_key] = None
            elif norm in _MASKED:
                out[shown_key] = _masked_whole(item)
            elif _kept_as_is(norm, item, numbers):
                out[shown_key] = item
            else:
                out[shown_key] = redact(item, numbers=True)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, numbers=True) for item in value]
    if isinstance(value, bytes | bytearray):
        return mask_text(bytes(value).decode("utf-8", "replace"))
    return value


def _kept_as_is(norm: str, item: Any, numbers: bool) -> bool:
    kind = type(item)
    if norm in _IDENTIFIERS and kind in (str, int):
        return True
    return not numbers and kind in (int, float)


def _masked_whole(item: Any) -> Any:
    # A named field is masked whatever it holds; a structure under it is masked throughout.
    if isinstance(item, Mapping):
        return {k: _masked_whole(v) for k, v in item.items() if v is not None}
    if isinstance(item, list | tuple):
        return [_masked_whole(v) for v in item]
    return mask(item)


def redact_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A log event's fields with personal data masked; its own top-level figures kept."""
    return redact(event, numbers=False)  # type: ignore[no-any-return]


def redact_field(key: str, value: Any) -> Any:
    """One named value (a table column, a CLI field) masked as it would be inside a record."""
    shown = redact({key: value})
    return shown.get(mask_text(key))
