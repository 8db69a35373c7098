"""Payload bytes -> accepted and rejected customer records with reasons (pure; SPEC 2-4)."""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from bridge.core import fastcheck
from bridge.core.records import (
    FIELDS,
    REPEATED_KEY,
    InvalidValue,
    Op,
    OutOfRange,
    Repeated,
    WholeFloat,
    as_int,
    check_record,
    flaw_in,
    repeated_keys,
)

PROFILE: dict[str, Any] = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
MSG_ID_MAX = 64
_BOM = "\ufeff"
_JSON_WHITESPACE = b" \t\n\r"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


class Mode(StrEnum):
    """How forgiving validation is (SPEC 3, "Strict and lenient")."""

    LENIENT = "lenient"
    STRICT = "strict"


@dataclass(frozen=True, slots=True)
class Rules:
    """What a valid message is: mode, time zone for date strings, and payload limits."""

    mode: Mode = Mode.LENIENT
    timezone: str = "Asia/Shanghai"
    max_batch: int = 1000
    max_payload_bytes: int = 1024 * 1024
    max_depth: int = 32
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.timezone))

    @property
    def strict(self) -> bool:
        """True in strict mode."""
        return self.mode is Mode.STRICT


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a record or envelope was refused. `index` is the record's place in the
    inbound customerList, or None for a fault of the envelope."""

    index: int | None
    field: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The `errors[]` item of an alarm."""
        return {"index": self.index, "field": self.field, "reason": self.reason}


class OpResult(msgspec.Struct, frozen=True):
    """The outcome of one operation of an envelope."""

    op: Op
    event_ts: int | None
    accepted: tuple[dict[str, Any], ...]
    rejected: tuple[Any, ...]
    errors: tuple[FieldError, ...]


class Validation(msgspec.Struct, frozen=True):
    """The outcome of one payload: its operations, and faults that belong to no operation."""

    msg_id: str | None
    report_ts: int | None
    ops: tuple[OpResult, ...] = ()
    message_errors: tuple[FieldError, ...] = ()
    floats: bool = True
    """Whether the payload may hold a float (False: no record does, the encoder need not look)."""


class _PayloadError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Flaws:
    """What one parse met that json's own dicts and floats cannot say."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found = False

    def parse_float(self, text: str) -> Any:
        value = float(text)
        if not math.isfinite(value):
            self.found = True
            return OutOfRange(text)
        if value.is_integer():
            exact = Decimal(text)
            if exact == exact.to_integral_value():
                return WholeFloat(value, int(exact))
        return value

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(pairs)
        if len(document) == len(pairs):
            return document
        self.found = True
        return Repeated(pairs)


def _reject_constant(name: str) -> Any:
    raise _PayloadError(f"{name} is not JSON")


class _Float(Exception):
    """A float in the payload: the standard parser's hooks decide what it becomes."""


def _no_float(_text: str) -> Any:
    raise _Float


# msgspec parses about three times faster than json.loads and keeps integers of any size
# exact; it has no hook for repeated keys, and what it refuses it names in its own words.
# So it takes only the plain case: anything with a float, anything it refuses, goes to the
# standard parser, whose hooks and reasons are the contract's.
_FAST = msgspec.json.Decoder(float_hook=_no_float)
_FAST_REFUSES = (_Float, msgspec.MsgspecError, RecursionError)


def _known_keys(document: dict[str, Any]) -> int:
    """How many keys the envelope objects hold: top level, profile, events, bodies, records."""
    count = len(document)
    profile = document.get("profile")
    if profile.__class__ is dict:
        count += len(profile)
    events = document.get("events")
    if events.__class__ is dict:
        count += len(events)
        for body in events.values():
            if body.__class__ is dict:
                count += len(body)
                records = body.get("customerList")
                if records.__class__ is list:
                    for record in records:
                        if record.__class__ is dict:
                            count += len(record)
                            meta = record.get("meta")
                            if meta.__class__ is dict:
                                count += len(meta)
    return count


def _may_repeat_keys(payload: bytes, document: dict[str, Any]) -> bool:
    """False only if no JSON object of the payload gives a key twice; cheap, and exact when False.

    Every key is followed by a colon, and by a quote, whitespace and the colon. Either count
    bounds the number of keys from above; when the envelope objects alone hold that many,
    no object lost a key to a repeat. The colon count is the cheaper one; it misses only
    when a string holds a colon (a URL, a time of day).
    """
    known = _known_keys(document)
    if known == payload.count(b":"):
        return False
    return known != payload.translate(None, _JSON_WHITESPACE).count(b'":')


def _has_surrogate(document: object) -> bool:
    stack: list[object] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def nesting_exceeds(payload: bytes, limit: int) -> bool:
    """Whether the containers of a well-formed JSON text nest deeper than `limit` (the
    outermost is depth 1), read off its bytes in C rather than by walking the document.

    Escaped backslashes, then escaped quotes, go first, so every quote left opens or closes
    a string; everything but quotes and brackets goes, braces become brackets; what strings
    held goes (two adjacent quotes are an empty string, or the end of one and the start of
    the next with nothing structural between); then each pass removes every innermost pair,
    so the text is empty after exactly as many passes as the document is deep.
    """
    if limit < 1:
        return True
    text = payload
    if b"\\" in text:  # a search in C; the replaces cost more than the rest together
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])
    for _ in range(limit):
        if not text:
            return False
        text = text.replace(b"[]", b"")
    return bool(text)


def too_deep(payload: bytes, limit: int) -> bool:
    """Whether a well-formed JSON text nests deeper than `limit`; the nesting is read off the
    bytes only when there are enough brackets to be that deep."""
    brackets = payload.count(b"{") + payload.count(b"[")
    return brackets > limit and nesting_exceeds(payload, limit)


def decode(payload: bytes, rules: Rules) -> object:
    """Parse a payload within the limits; raise ValueError with a value-free reason."""
    return _decode(payload, rules)[0]


def _decode(payload: bytes, rules: Rules) -> tuple[object, bool, bool]:
    """The document, whether it holds a repeated key or a number out of range, and whether
    it may hold a float."""
    if len(payload) > rules.max_payload_bytes:
        raise ValueError(f"payload larger than {rules.max_payload_bytes} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8") from None
    if text.startswith(_BOM):
        text = text[1:]
    flaws = _Flaws()
    floats = False
    try:
        try:
            document = _FAST.decode(text)
        except _FAST_REFUSES:
            floats = True
            document = json.loads(
                text, parse_constant=_reject_constant, parse_float=flaws.parse_float
            )
        # Only a payload that may repeat a key pays for the slow parse that finds out.
        if document.__class__ is dict and _may_repeat_keys(payload, document):
            document = json.loads(
                text,
                parse_constant=_reject_constant,
                parse_float=flaws.parse_float,
                object_pairs_hook=flaws.pairs,
            )
    except _PayloadError as bad:
        raise ValueError(bad.reason) from None
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {rules.max_depth}") from None
    except ValueError:
        raise ValueError("payload is not JSON") from None
    if too_deep(payload, rules.max_depth):
        raise ValueError(f"JSON nested deeper than {rules.max_depth}")
    # A \uD800-\uDFFF escape decodes to a lone surrogate that no sink can encode again.
    if _SURROGATE_ESCAPE.search(payload) and _has_surrogate(document):
        raise ValueError("payload holds a lone surrogate escape")
    return document, flaws.found, floats


def validate(payload: bytes, rules: Rules, *, customization: bool) -> Validation:
    """Check one inbound payload against SPEC 2-4."""
    try:
        document, flawed, floats = _decode(payload, rules)
    except ValueError as bad:
        return Validation(None, None, message_errors=(FieldError(None, "", str(bad)),))
    if not isinstance(document, dict):
        return Validation(None, None, message_errors=(FieldError(None, "", "not a JSON object"),))
    return validate_document(
        document, rules, customization=customization, flawed=flawed, floats=floats
    )


def validate_document(
    document: dict[str, Any],
    rules: Rules,
    *,
    customization: bool,
    flawed: bool | None = None,
    floats: bool = True,
) -> Validation:
    """Check a parsed envelope: the operations it holds and every record of each.

    `flawed` says whether it holds a repeated key or a number out of range (found if None);
    `floats` False says it holds no float.
    """
    if flawed is None:
        flawed = flaw_in(document) is not None
    envelope_errors: list[FieldError] = []
    if flawed:
        envelope_errors.extend(_envelope_flaws(document))
    msg_id = _check_msg_id(document, envelope_errors)
    report_ts = _check_report_ts(document, rules, envelope_errors)
    _check_profile(document.get("profile"), rules, envelope_errors)

    events = document.get("events")
    if not isinstance(events, dict):
        reason = "required" if events is None else "must be an object"
        faults = (*envelope_errors, FieldError(None, "events", reason))
        return Validation(msg_id, report_ts, message_errors=faults, floats=floats)
    message_errors: list[FieldError] = []
    ops: list[OpResult] = []
    for key, body in _operations(document, events):
        try:
            op = Op(key)
        except ValueError:
            message_errors.append(FieldError(None, f"events.{_cap(key)}", "unknown operation"))
            continue
        ops.append(_check_op(op, body, envelope_errors, rules, customization, flawed))
    if not ops:
        # No operation to carry the envelope's faults: the unknown_error alarm names them.
        if not message_errors:
            message_errors.append(FieldError(None, "events", "holds no operation"))
        message_errors[:0] = envelope_errors
    return Validation(msg_id, report_ts, tuple(ops), tuple(message_errors), floats)


def _operations(document: dict[str, Any], events: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every operation in payload order: a repeated operation key is an operation of its own,
    and so is each operation of a repeated `events` (all failing, but none left unreported)."""
    blocks = [events]
    if document.__class__ is Repeated:
        blocks = [v for k, v in document.pairs if k == "events" and isinstance(v, dict)]
    return [
        pair
        for block in blocks
        for pair in (block.pairs if block.__class__ is Repeated else block.items())
    ]


def _unit_flaws(node: dict[str, Any], base: str, *skip: str) -> list[FieldError]:
    """Faults of one envelope object: its repeated keys, and flaws under its other keys."""
    prefix = f"{base}." if base else ""
    errors = [
        FieldError(None, f"{prefix}{_cap(key)}", REPEATED_KEY)
        for key in (repeated_keys(node) if node.__class__ is Repeated else ())
    ]
    named = {e.field for e in errors}
    for key, value in node.items():
        path = f"{prefix}{_cap(key)}"
        if key in skip or path in named:
            continue
        flaw = flaw_in(value)
        if flaw is not None:
            errors.append(FieldError(None, path, flaw))
    return errors


def _envelope_flaws(document: dict[str, Any]) -> list[FieldError]:
    """Repeated keys and numbers out of range at the top level or in `profile` (every op fails)."""
    errors = _unit_flaws(document, "", "events", "profile")
    named = {e.field for e in errors}
    profile = document.get("profile")
    if "profile" not in named:
        if isinstance(profile, dict):
            errors.extend(_unit_flaws(profile, "profile"))
        elif (flaw := flaw_in(profile)) is not None:
            errors.append(FieldError(None, "profile", flaw))
    events = document.get("events")
    if isinstance(events, dict) and "events" not in named:
        # Only a body that is not an object can hide a flaw in `events` itself.
        operations = events.pairs if events.__class__ is Repeated else events.items()
        for key, body in operations:
            if not isinstance(body, dict):
                flaw = flaw_in(body)
                if flaw is not None:
                    errors.append(FieldError(None, f"events.{_cap(key)}", flaw))
    return errors


def _cap(key: str, limit: int = 64) -> str:
    """An unknown key as it may appear in a field path: at most `limit` characters."""
    return key if len(key) <= limit else key[: limit - 1] + "…"


def _check_msg_id(document: dict[str, Any], errors: list[FieldError]) -> str | None:
    msg_id = document.get("msgId")
    if msg_id is None:
        return None
    if msg_id.__class__ is not str or not msg_id:
        errors.append(FieldError(None, "msgId", "must be a non-empty string"))
        return None
    if len(msg_id) > MSG_ID_MAX:
        errors.append(FieldError(None, "msgId", f"longer than {MSG_ID_MAX} characters"))
        return None
    return msg_id


def _check_report_ts(
    document: dict[str, Any], rules: Rules, errors: list[FieldError]
) -> int | None:
    if "reportTs" not in document or document["reportTs"] is None:
        errors.append(FieldError(None, "reportTs", "required"))
        return None
    try:
        value = as_int(document["reportTs"], rules.strict)
    except InvalidValue as bad:
        errors.append(FieldError(None, "reportTs", bad.reason))
        return None
    if value <= 0:
        errors.append(FieldError(None, "reportTs", "must be a positive epoch"))
        return None
    if rules.strict and len(str(value)) not in (10, 13):
        errors.append(FieldError(None, "reportTs", "must be epoch seconds or milliseconds"))
        return None
    return value


def _check_profile(profile: object, rules: Rules, errors: list[FieldError]) -> None:
    if not isinstance(profile, dict):
        reason = "required" if profile is None else "must be an object"
        errors.append(FieldError(None, "profile", reason))
        return
    for key, expected in PROFILE.items():
        value = profile.get(key)
        if isinstance(expected, int) and not rules.strict and isinstance(value, str):
            with contextlib.suppress(InvalidValue):
                value = as_int(value, strict=False)
        if value != expected or isinstance(value, bool):
            errors.append(FieldError(None, f"profile.{key}", f"must be {expected!r}"))


def _check_op(
    op: Op,
    body: object,
    envelope_errors: list[FieldError],
    rules: Rules,
    customization: bool,
    flawed: bool,
) -> OpResult:
    base = f"events.{op}"
    errors = list(envelope_errors)
    records: list[Any] = []
    event_ts: int | None = None
    if not isinstance(body, dict):
        errors.append(FieldError(None, base, "must be an object"))
        return OpResult(op, None, (), (), tuple(errors))
    if flawed:
        errors.extend(_unit_flaws(body, base, "customerList"))
    event_ts = _check_event_ts(body, base, rules, errors)
    event_type = body.get("eventType")
    try:
        if event_type is None or as_int(event_type, rules.strict) != 1:
            errors.append(FieldError(None, f"{base}.eventType", "must be 1"))
    except InvalidValue:
        errors.append(FieldError(None, f"{base}.eventType", "must be 1"))
    customer_list = body.get("customerList")
    if body.__class__ is Repeated and isinstance(customer_list, list):
        # A repeated customerList fails the operation; the alarm lists the records of each.
        lists = [v for k, v in body.pairs if k == "customerList" and isinstance(v, list)]
        customer_list = [record for each in lists for record in each]
    if isinstance(customer_list, list):
        records = customer_list
        if not records:
            errors.append(FieldError(None, f"{base}.customerList", "must not be empty"))
        elif len(records) > rules.max_batch:
            errors.append(
                FieldError(None, f"{base}.customerList", f"more than {rules.max_batch} records")
            )
    else:
        reason = "required" if customer_list is None else "must be a list"
        errors.append(FieldError(None, f"{base}.customerList", reason))

    if errors:
        # An envelope fault fails every record of the operation, as received.
        return OpResult(op, event_ts, (), tuple(records), tuple(errors))

    quick = not rules.strict and not flawed
    if quick:
        everything = fastcheck.accept_all(records, op)
        if everything is not None:
            return OpResult(op, event_ts, tuple(everything), (), ())
    accepted: list[dict[str, Any]] = []
    rejected: list[Any] = []
    for index, raw in enumerate(records):
        # One bad record sends its batch here; the others still pass as they are, in C.
        if quick and (passed := fastcheck.accept_all([raw], op)) is not None:
            accepted.append(passed[0])
            continue
        record, problems = check_record(
            raw, op, strict=rules.strict, customization=customization, flawed=flawed
        )
        if record is None:
            rejected.append(raw)
            errors.extend(FieldError(index, p.field, p.reason) for p in problems)
        else:
            accepted.append(record)
    return OpResult(op, event_ts, tuple(accepted), tuple(rejected), tuple(errors))


def _check_event_ts(
    body: dict[str, Any], base: str, rules: Rules, errors: list[FieldError]
) -> int | None:
    path = f"{base}.eventTs"
    value = body.get("eventTs")
    if value is None:
        errors.append(FieldError(None, path, "required"))
        return None
    if not rules.strict and isinstance(value, str) and _DATE_TIME.fullmatch(value):
        try:
            moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=rules.zone)
        except ValueError:
            errors.append(FieldError(None, path, "not a valid date and time"))
            return None
        return int(moment.timestamp() * 1000)
    try:
        number = as_int(value, rules.strict)
    except InvalidValue:
        errors.append(FieldError(None, path, "must be epoch milliseconds"))
        return None
    if number <= 0:
        errors.append(FieldError(None, path, "must be a positive epoch"))
        return None
    if rules.strict and len(str(number)) != 13:
        errors.append(FieldError(None, path, "must be 13-digit epoch milliseconds"))
        return None
    return number


__all__ = [
    "FIELDS",
    "PROFILE",
    "FieldError",
    "Mode",
    "OpResult",
    "Rules",
    "Validation",
    "decode",
    "validate",
    "validate_document",
]
