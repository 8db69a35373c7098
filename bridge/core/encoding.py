"""The JSON the bridge writes: downstream events (SPEC 7), alarm bodies, ordering keys (pure).

One place for each: the spool keeps these strings, the jsonl sink writes them as they are,
and the worker processes make them, so every path produces the same bytes.

msgspec encodes about eight times faster than the standard library and, for strings, ints of
any size, booleans, null, lists and objects, byte for byte the same text (every code point
checked). Floats differ in their exponent form (`1e+16` against `1e16`), and a lone surrogate
(an escaped `\\ud800` in a payload) cannot be encoded at all: an event that holds either is
encoded by the standard library, so the output never depends on which encoder ran.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bridge.core.alarms import Alarm
from bridge.core.events import DownstreamEvent

_ENCODER = msgspec.json.Encoder()


def _standard(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _holds_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _encode(value: object, holds_float: bool) -> str:
    if holds_float:
        return _standard(value)
    try:
        return _ENCODER.encode(value).decode()
    except (UnicodeEncodeError, TypeError):
        # A lone surrogate, or a type msgspec does not write (`OutOfRange`, a str: a number
        # no float holds, quoted by an alarm as its text): the standard library's way.
        return _standard(value)


def encode_json(value: object, *, floats: bool = True) -> str:
    """Compact JSON, non-ASCII as is, exactly as `json.dumps(ensure_ascii=False)` writes it.

    `floats` False: the value holds no float (its parse said so), so it needs no look."""
    return _encode(value, floats and _holds_float(value))


def ordering_key(event: DownstreamEvent) -> str:
    """The outbox ordering key of an event: tenant, project and customer id."""
    # Unit separators cannot occur in a tenant (a topic segment), so the key is unambiguous
    # for tenant and project; it is cheaper than encoding JSON for every record.
    return "\x1f".join((event.tenant, event.project_id, event.customer_id))


def encode_event(event: DownstreamEvent, *, floats: bool = True) -> str:
    """An event as the compact JSON the spool keeps and the jsonl sink writes.

    `floats` False: the payload it came from held no float, so the record needs no look.
    """
    # Only the record can hold a float: the rest is strings and normalised integers.
    return _encode(event.to_dict(), floats and _holds_float(event.customer))


def alarm_body(alarm: Alarm, *, floats: bool = True) -> str:
    """An alarm as the alarm outbox keeps it: its topic and its envelope.

    `floats` False: the payload it came from held no float. The bridge's own parts of an
    alarm are strings and integers, so only the records it quotes could hold one, and the
    look through them (most of an alarm's encoding time, records being whole) is skipped."""
    return encode_json({"topic": alarm.topic, "payload": alarm.payload}, floats=floats)


class _AlarmRow(msgspec.Struct):
    topic: str
    payload: msgspec.Raw


_ALARM_ROW = msgspec.json.Decoder(_AlarmRow)


def alarm_message(body: str | bytes) -> tuple[str, bytes]:
    """The topic and the payload to publish of an alarm row (`alarm_body`'s text).

    The payload is the envelope's own text inside the row, not decoded and encoded again:
    compact JSON holds a nested value exactly as it encodes alone, so these are the bytes
    `encode_json` gives for the envelope (a test compares both over every alarm shape).
    Whitespace between tokens, which no row of the bridge's holds, is taken out all the same
    (0.7 µs in C), so a row written otherwise still publishes compact JSON."""
    row = _ALARM_ROW.decode(body)
    return row.topic, msgspec.json.format(row.payload, indent=-1)
