"""The plain case in two passes of C: a compact, valid, single-operation envelope (pure).

Most traffic is envelopes a producer's JSON library wrote compactly, every record valid. For
those this module gives the message's `Digest` straight from the payload bytes: one msgspec
decode into typed Structs derived from the field tables checks the envelope and every record,
a second one (skipping everything else) takes each record's text as it is, and each event's
JSON is the event's context, the record's own bytes, and a brace. Nothing is built per field
and no dict per record: about half the general path's cost (see docs/performance.md).

Anything else gives None and takes the general path (`Pipeline`, then `digest`), which names
every reason: a strict rule set, a payload with whitespace between tokens or any backslash, a
float, a field the tables do not name, a numeric string, a lenient conversion the record needs,
several operations, no msgId. Both paths give the very same digest, byte for byte, for every
payload this one answers (tests/unit/test_plain.py).

Why the record's own bytes are the bytes the general path writes: the general path encodes the
parsed record with msgspec, which writes a string without a backslash as it was received (it
escapes only quotes, backslashes and control characters, none of which such a string holds),
an integer in its one canonical form, and keys in the order received. The received text differs
from that encoding only by whitespace, a repeated key (the parsed record keeps one), `-0`, or
escapes, and each of these makes the received text longer than the encoding of what was parsed.
So the payload is taken only when the encoding of the parsed envelope is exactly as long as the
payload: then no such difference exists anywhere in it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from bridge.core import fastcheck
from bridge.core.digest import Digest, Forward, dedup_key
from bridge.core.pipeline import TOPIC_CACHE_SIZE, Disposition
from bridge.core.records import FIELDS, INT64_MAX, Op, Type
from bridge.core.topics import InboundTopic
from bridge.core.validate import MSG_ID_MAX, PROFILE, Rules, too_deep

_ENCODER = msgspec.json.Encoder()
_DEEPEST_WITHOUT_META = 6  # envelope, events, operation, customerList, record, a list field
_POSITIVE = Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]
_MSG_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=MSG_ID_MAX)]


class _NotPlain(Exception):
    """Raised by the float hook: a payload with a float takes the general path."""


def _no_float(_text: str) -> Any:
    raise _NotPlain


def _record_struct(op: Op) -> Any:
    """The record of `op`'s table as a Struct that refuses any other field.

    The required fields have no default; every other one defaults to UNSET, so a field sent
    as null is encoded back as null and one left out is not encoded at all: the length
    comparison counts exactly what was sent.
    """
    table = FIELDS[op].items()
    required = [(name, fastcheck.annotation(spec)) for name, spec in table if spec.required]
    optional = [
        (name, fastcheck.annotation(spec) | UnsetType, UNSET)
        for name, spec in table
        if not spec.required
    ]
    return msgspec.defstruct(
        f"_Plain{op.name.title()}",
        [*required, *optional],
        forbid_unknown_fields=True,
        omit_defaults=False,
    )


_RECORDS = {op: _record_struct(op) for op in Op}
_OPS = tuple(str(op) for op in Op)


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of `names` of a record, as a tuple, in one call."""
    if len(names) > 1:
        return attrgetter(*names)
    return lambda record: tuple(getattr(record, name) for name in names)


_REQUIRED = {str(op): _getter([n for n, f in t.items() if f.required]) for op, t in FIELDS.items()}
_LONG_NAMES = {
    str(op): [n for n, f in t.items() if f.type is Type.LONG] for op, t in FIELDS.items()
}
_LONG = {str(op): _getter(names) for op, names in _LONG_NAMES.items()}
_LONG_KEYS = {op: [f'"{name}":'.encode() for name in names] for op, names in _LONG_NAMES.items()}
_PROFILE = msgspec.defstruct(
    "_PlainProfile",
    [(key, Literal[value]) for key, value in PROFILE.items()],
    forbid_unknown_fields=True,
)


class _Texts(msgspec.Struct):
    """The second pass: each record's text, nothing else parsed."""

    customerList: list[msgspec.Raw]


class _TextEvents(msgspec.Struct):
    add: _Texts | UnsetType = UNSET
    edit: _Texts | UnsetType = UNSET
    delete: _Texts | UnsetType = UNSET


class _TextEnvelope(msgspec.Struct):
    events: _TextEvents


_TEXTS = msgspec.json.Decoder(_TextEnvelope)


class Schema:
    """The typed decoder of a plain envelope under one rule set's batch limit."""

    def __init__(self, max_batch: int) -> None:
        def body(op: Op) -> Any:
            batch = Annotated[
                list[_RECORDS[op]],  # type: ignore[valid-type]
                msgspec.Meta(min_length=1, max_length=max_batch),
            ]
            return msgspec.defstruct(
                f"_Plain{op.name.title()}Body",
                [("eventTs", _POSITIVE), ("eventType", Literal[1]), ("customerList", batch)],
                forbid_unknown_fields=True,
            )

        events = msgspec.defstruct(
            "_PlainEvents",
            [(str(op), body(op) | UnsetType, UNSET) for op in Op],
            forbid_unknown_fields=True,
        )
        envelope = msgspec.defstruct(
            "_PlainEnvelope",
            [
                ("msgId", _MSG_ID),
                ("reportTs", _POSITIVE),
                ("profile", _PROFILE),
                ("events", events),
            ],
            forbid_unknown_fields=True,
        )
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            envelope, float_hook=_no_float
        )


@lru_cache(maxsize=8)
def _schema(max_batch: int) -> Schema:
    return Schema(max_batch)


def plain_digest(inbound: InboundTopic, payload: bytes, rules: Rules) -> Digest | None:
    """The digest of a plain envelope on `inbound`, or None for the general path to decide."""
    if rules.strict or len(payload) > rules.max_payload_bytes or b"\\" in payload:
        return None
    try:
        envelope = _schema(rules.max_batch).decoder.decode(payload)
    except (msgspec.MsgspecError, _NotPlain, RecursionError):
        return None
    found = [(op, body) for op in _OPS if (body := getattr(envelope.events, op)) is not UNSET]
    if len(found) != 1 or len(_ENCODER.encode(envelope)) != len(payload):
        return None
    op, body = found[0]
    records = body.customerList
    required, longs = _REQUIRED[op], _LONG[op]
    meta = False
    for record in records:
        for value in required(record):
            if value.__class__ is str and value.isspace():
                return None
        meta = meta or record.meta is not UNSET
    if (meta or rules.max_depth < _DEEPEST_WITHOUT_META) and too_deep(payload, rules.max_depth):
        return None
    texts = getattr(_TEXTS.decode(payload).events, op).customerList
    bodies: list[bytes] = []
    head = b"".join(
        (
            _head(inbound, op),
            _ENCODER.encode(envelope.msgId),
            b',"reportTs":',
            str(envelope.reportTs).encode(),
            b',"eventTs":',
            str(body.eventTs).encode(),
            b',"customer":',
        )
    )
    for record, raw in zip(records, texts, strict=True):
        text = head + raw + b"}"
        for key, value in zip(_LONG_KEYS[op], longs(record), strict=True):
            if value.__class__ is int:
                # A long id sent as a number goes downstream as a string (SPEC 3). Its key
                # occurs once in the event's text: in the head it is `"projectId":"`, and
                # the record repeats no key (the length test); only `meta` may hold it too.
                if record.meta is not UNSET and text.count(key, len(head)) != 1:
                    return None
                digits = str(value).encode()
                text = text.replace(key + digits, key + b'"' + digits + b'"', 1)
        bodies.append(text)
    msg_id: str = envelope.msgId
    kind = str(inbound.kind)
    tenant, project, vendor = inbound.tenant, inbound.project_id, inbound.vendor
    context = "\x1f".join((tenant, project, ""))
    return Digest(
        inbound.topic,
        _PROCESSED,
        msg_id,
        (op,),
        dedup_key(msg_id, inbound.topic, payload),
        tuple(
            Forward(op, kind, tenant, project, vendor, context + record.id, text)
            for record, text in zip(records, bodies, strict=True)
        ),
        (),
        (),
        0,
        (),
        None,
    )


_PROCESSED = str(Disposition.PROCESSED)
_HEADS: dict[tuple[str, str], bytes] = {}


def _head(inbound: InboundTopic, op: str) -> bytes:
    """An event's JSON up to its msgId, for one topic and operation (kept for each pair)."""
    known = _HEADS.get((inbound.topic, op))
    if known is None:
        if len(_HEADS) >= TOPIC_CACHE_SIZE:
            _HEADS.clear()  # a flood of distinct topics must not grow memory
        whole = _ENCODER.encode(
            {
                "op": op,
                "tenant": inbound.tenant,
                "projectId": inbound.project_id,
                "version": inbound.version,
                "vendor": inbound.vendor,
                "msgId": None,
            }
        )
        known = _HEADS[(inbound.topic, op)] = whole[: -len(b"null}")]
    return known
