"""The one JSON encoder: byte for byte what the standard library writes, whichever path runs."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import alarms
from bridge.core.encoding import alarm_body, alarm_message, encode_event, encode_json
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.core.validate import Rules, _decode


def standard(value: object) -> str:
    """What the bridge wrote before msgspec, and what receivers have seen."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(JSON)
def test_any_json_value_encodes_as_the_standard_library_does(value: object) -> None:
    """Strings of any code point (lone surrogates too), big integers, floats of any size."""
    assert encode_json(value) == standard(value)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_an_event_encodes_as_its_dict_does(customer: dict[str, object]) -> None:
    """Whatever its record holds, an event's JSON is the standard encoding of its dict."""
    event = DownstreamEvent(
        Op.EDIT, TopicKind.CUSTOMIZATION, "acme", "42", "v2", "海康威视", "m1", 1, 2, customer
    )
    assert encode_event(event) == standard(event.to_dict())


def test_a_lone_surrogate_is_written_as_before() -> None:
    """An escaped lone surrogate in a payload survives decoding; it is encoded as before."""
    value = json.loads('{"remark": "a\\ud800b"}')
    assert encode_json(value) == standard(value)


def test_floats_keep_the_standard_exponent_form() -> None:
    """1e16 is written `1e+16` and 1e-05 `1e-05`, as before; integers of 40 digits exactly."""
    value = {"a": 1e16, "b": 1e-5, "c": 10**40, "d": -0.0, "e": math.pi}
    assert (
        encode_json(value)
        == '{"a":1e+16,"b":1e-05,"c":' + str(10**40) + ',"d":-0.0,"e":3.141592653589793}'
    )


def holds_surrogate(text: str) -> bool:
    """Whether a JSON text holds a lone surrogate, raw or as an escape."""
    lowered = text.lower()
    return (
        any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        or "\\ud8" in lowered
        or any(f"\\u{hi}" in lowered for hi in ("d9", "da", "db", "dc", "dd", "de", "df"))
    )


def holds_float(value: object) -> bool:
    """Whether a float sits anywhere in `value`."""
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(holds_float(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_float(v) for v in value)
    return False


@settings(max_examples=500)
@given(JSON, st.booleans())
def test_the_fast_parse_reads_a_document_as_the_standard_parser_does(
    value: object, ascii_only: bool
) -> None:
    """msgspec's parse gives json.loads's document (big integers exact) and says no float
    only when there is none, so the encoder may skip looking for one."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    payload = text.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8, refused
    rules = Rules(max_depth=1000)
    expected = json.loads(text)
    try:
        document, _flawed, floats = _decode(payload, rules)
    except ValueError:  # a lone surrogate, raw or escaped: refused on either path
        assert holds_surrogate(text)
        return
    assert document == expected
    assert repr(document) == repr(expected) or floats
    if holds_float(expected):
        assert floats


def encodable(value: object) -> bool:
    """Whether the value's JSON can be stored (SQLite takes UTF-8: no lone surrogate)."""
    try:
        encode_json(value).encode()
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=30), JSON.filter(encodable))
def test_an_alarm_row_publishes_its_envelope_as_decoding_and_encoding_it_again_would(
    topic: str, payload: object
) -> None:
    """The payload published from an alarm row is its envelope's text as stored: the bytes
    that decoding the row and encoding the envelope again give (what the alarm worker
    published before), for any JSON value: floats, big integers, escapes, any code point."""
    body = encode_json({"topic": topic, "payload": payload})
    if not encodable(topic):
        return
    published_topic, published = alarm_message(body)
    assert published_topic == topic
    assert published == standard(json.loads(body)["payload"]).encode()
    assert alarm_message(body.encode()) == (published_topic, published)


def test_an_alarm_row_with_whitespace_still_publishes_compact_json() -> None:
    """A row written with spaces between tokens (not by the bridge) publishes compact JSON,
    the text that decoding and encoding it again gives."""
    payload = {"msgId": "m-1", "events": {"add_error": {"code": 400, "msg": "a b: c, d"}}}
    body = json.dumps({"topic": "t/x", "payload": payload})
    assert alarm_message(body) == ("t/x", standard(payload).encode())


@settings(max_examples=300)
@given(st.lists(JSON, min_size=1, max_size=3))
def test_an_alarm_quoting_parsed_records_encodes_as_the_standard_library_does(
    records: list[object],
) -> None:
    """An alarm quotes the records it rejects as they were parsed. Told what the parse said
    (no float in the payload), its encoding skips the look for one and still writes the
    standard text; told nothing, it looks."""
    payload = json.dumps(records).encode("utf-8", "surrogatepass")
    try:
        document, _flawed, floats = _decode(payload, Rules(max_depth=1000))
    except ValueError:  # a lone surrogate: the payload is refused before any alarm quotes it
        return
    alarm = alarms.build(
        error_topic="acme/proj_42/v1-business-model-error-customer",
        op="add",
        code=400,
        msg="rejected",
        records=document,
        errors=(),
        source_msg_id="m-1",
        now_ms=1_700_000_000_000,
        alarm_id="a-1",
    )
    expected = standard({"topic": alarm.topic, "payload": alarm.payload})
    assert alarm_body(alarm, floats=floats) == expected
    assert alarm_body(alarm) == expected
