"""SPEC 2 and 4: the inbound envelope, payload limits, and partial batches."""

from __future__ import annotations

import calendar
import json
from typing import Any

import pytest
from factories import (
    ABSENT,
    EVENT_TS,
    LENIENT,
    PROFILE,
    REPORT_TS,
    STRICT,
    customer,
    delete_record,
    encode,
    envelope,
    op_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.records import Op
from bridge.core.validate import (
    FieldError,
    Mode,
    OpResult,
    Rules,
    Validation,
    decode,
    nesting_exceeds,
    validate,
)

MODES = pytest.mark.parametrize("rules", [LENIENT, STRICT], ids=["lenient", "strict"])
SHANGHAI_OFFSET_S = 8 * 3600


def run(document: Any, rules: Rules = LENIENT, *, customization: bool = False) -> Validation:
    return validate(encode(document), rules, customization=customization)


def only_op(result: Validation) -> OpResult:
    assert result.message_errors == ()
    assert len(result.ops) == 1
    return result.ops[0]


def assert_envelope_fault(result: Validation, field: str, records: list[Any]) -> OpResult:
    """Every record of the single operation fails, and `field` is named as an envelope fault."""
    op = only_op(result)
    assert op.accepted == ()
    assert list(op.rejected) == records
    assert any(e.index is None and e.field == field for e in op.errors), op.errors
    assert all(e.reason for e in op.errors)
    return op


def assert_message_fault(result: Validation, field: str | None = None) -> FieldError:
    """The payload yields no operation, only one message-level fault."""
    assert result.ops == ()
    assert len(result.message_errors) >= 1
    error = result.message_errors[0]
    assert error.index is None
    assert error.reason
    if field is not None:
        assert error.field == field
    return error


def shanghai_ms(*moment: int) -> int:
    """Epoch ms of a wall-clock time in UTC+8, computed without zoneinfo."""
    return (calendar.timegm((*moment, 0, 0, 0)) - SHANGHAI_OFFSET_S) * 1000


# --- the valid envelope ----------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("customization", [False, True])
def test_valid_envelope_accepts_its_record(rules: Rules, customization: bool) -> None:
    """A well-formed envelope forwards its record with msgId, reportTs and eventTs."""
    result = run(envelope(), rules, customization=customization)
    assert (result.msg_id, result.report_ts) == ("m-1", REPORT_TS)
    op = only_op(result)
    assert op == OpResult(Op.ADD, EVENT_TS, (customer(),), (), ())


@MODES
@pytest.mark.parametrize("report_ts", [1661154622, 1661154622000], ids=["seconds", "millis"])
def test_report_ts_may_be_seconds_or_milliseconds(rules: Rules, report_ts: int) -> None:
    """Inbound reportTs is accepted as epoch seconds (10 digits) or milliseconds (13)."""
    result = run(envelope(reportTs=report_ts), rules)
    assert result.report_ts == report_ts
    assert only_op(result).accepted


@MODES
def test_msg_id_is_optional(rules: Rules) -> None:
    """An envelope without msgId is valid; its msg_id is None."""
    result = run(envelope(msgId=ABSENT), rules)
    assert result.msg_id is None
    assert only_op(result).accepted


@MODES
def test_msg_id_of_64_characters_is_kept(rules: Rules) -> None:
    """msgId may be up to 64 characters (code points)."""
    msg_id = "编" * 64
    result = run(envelope(msgId=msg_id), rules)
    assert result.msg_id == msg_id
    assert only_op(result).accepted


@MODES
@pytest.mark.parametrize("msg_id", ["x" * 65, "编" * 65, 12, ["m"], {"m": 1}, True], ids=repr)
def test_invalid_msg_id_is_an_envelope_fault(rules: Rules, msg_id: Any) -> None:
    """A msgId that is not a string of <= 64 characters fails the operation's records."""
    result = run(envelope(msgId=msg_id), rules)
    assert result.msg_id is None
    assert_envelope_fault(result, "msgId", [customer()])


# --- reportTs --------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(
    "report_ts", [ABSENT, None, "abc", True, 0, -1661154622, 1.5, [1], {"t": 1}], ids=repr
)
def test_missing_or_invalid_report_ts_is_an_envelope_fault(rules: Rules, report_ts: Any) -> None:
    """reportTs is a required positive integer epoch."""
    assert_envelope_fault(run(envelope(reportTs=report_ts), rules), "reportTs", [customer()])


def test_strict_report_ts_must_be_seconds_or_milliseconds() -> None:
    """In strict mode a reportTs of neither 10 nor 13 digits is an envelope fault."""
    for value in (166115462, 166115462200, 16611546220000):
        assert_envelope_fault(run(envelope(reportTs=value), STRICT), "reportTs", [customer()])


# --- profile ---------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(
    ("profile", "field"),
    [
        (ABSENT, "profile"),
        (None, "profile"),
        ("s0140001", "profile"),
        ([PROFILE], "profile"),
        ({**PROFILE, "poiCode": "s0120001"}, "profile.poiCode"),
        ({**PROFILE, "appType": "Customer"}, "profile.appType"),
        ({**PROFILE, "modelId": 120001}, "profile.modelId"),
        ({**PROFILE, "modelId": "s0140001"}, "profile.modelId"),
        ({**PROFILE, "modelId": True}, "profile.modelId"),
        ({"appType": "customer", "modelId": 140001}, "profile.poiCode"),
        ({"poiCode": "s0140001", "modelId": 140001}, "profile.appType"),
        ({"poiCode": "s0140001", "appType": "customer"}, "profile.modelId"),
    ],
    ids=repr,
)
def test_wrong_profile_is_an_envelope_fault(rules: Rules, profile: Any, field: str) -> None:
    """The profile must be exactly s0140001 / customer / 140001."""
    assert_envelope_fault(run(envelope(profile=profile), rules), field, [customer()])


def test_strict_profile_model_id_must_be_an_integer() -> None:
    """Strict: `"modelId": "140001"` is a numeric string for an int, hence an error."""
    result = run(envelope(profile={**PROFILE, "modelId": "140001"}), STRICT)
    assert_envelope_fault(result, "profile.modelId", [customer()])


def test_lenient_profile_model_id_numeric_string_is_converted() -> None:
    """Lenient: `"modelId": "140001"` is converted like any numeric string for an int."""
    assert only_op(run(envelope(profile={**PROFILE, "modelId": "140001"}))).accepted


# --- events ----------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("events", [ABSENT, None], ids=["missing", "null"])
def test_missing_events_is_a_message_fault(rules: Rules, events: Any) -> None:
    """Without `events` no operation can be found: one message-level fault."""
    assert_message_fault(run(envelope(events=events), rules), "events")


@MODES
@pytest.mark.parametrize("events", [[], [{"add": {}}], "add", 1, True], ids=repr)
def test_events_that_is_not_an_object_is_a_message_fault(rules: Rules, events: Any) -> None:
    """`events` must be an object."""
    assert_message_fault(run(envelope(events=events), rules), "events")


@MODES
def test_events_without_an_operation_is_a_message_fault(rules: Rules) -> None:
    """An empty `events` object holds no operation that can be found."""
    assert_message_fault(run(envelope(events={}), rules), "events")


@MODES
def test_only_unknown_operations_are_a_message_fault(rules: Rules) -> None:
    """Keys other than add/edit/delete are unknown operations, named by their path."""
    result = run(envelope(events={"upsert": op_body([customer()]), "ADD": op_body([])}), rules)
    assert result.ops == ()
    assert [(e.index, e.field) for e in result.message_errors] == [
        (None, "events.upsert"),
        (None, "events.ADD"),
    ]


@MODES
@pytest.mark.parametrize("body", [None, [], "x", 1, [customer()]], ids=repr)
def test_operation_body_that_is_not_an_object_fails_the_operation(rules: Rules, body: Any) -> None:
    """An operation whose body is not an object is a fault of that operation."""
    op = only_op(run(envelope(events={"add": body}), rules))
    assert op.accepted == ()
    assert op.errors
    assert op.errors[0].field.startswith("events.add")


# --- eventType -------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("event_type", [ABSENT, None, 2, 0, True, 1.5, "x", [1]], ids=repr)
def test_event_type_other_than_1_is_an_envelope_fault(rules: Rules, event_type: Any) -> None:
    """eventType is required and must be 1."""
    result = run(envelope(events={"add": op_body([customer()], eventType=event_type)}), rules)
    assert_envelope_fault(result, "events.add.eventType", [customer()])


def test_strict_event_type_must_be_an_integer() -> None:
    """Strict: `"eventType": "1"` is an error."""
    result = run(envelope(events={"add": op_body([customer()], eventType="1")}), STRICT)
    assert_envelope_fault(result, "events.add.eventType", [customer()])


# --- eventTs ---------------------------------------------------------------------------------


def with_event_ts(value: Any, op: str = "add") -> dict[str, Any]:
    records = [delete_record()] if op == "delete" else [customer()]
    return envelope(events={op: op_body(records, eventTs=value)})


@MODES
def test_thirteen_digit_event_ts_is_accepted(rules: Rules) -> None:
    """A 13-digit epoch ms eventTs is valid in both modes and kept as is."""
    assert only_op(run(with_event_ts(1661154622000), rules)).event_ts == 1661154622000


@MODES
@pytest.mark.parametrize(
    "value", [ABSENT, None, 0, -1661154622000, True, 1.5e12, [1], {"t": 1}, "abc"], ids=repr
)
def test_missing_or_invalid_event_ts_is_an_envelope_fault(rules: Rules, value: Any) -> None:
    """eventTs is a required positive integer."""
    assert_envelope_fault(run(with_event_ts(value), rules), "events.add.eventTs", [customer()])


@pytest.mark.parametrize("value", [148813512323, 1661154622, 16611546220000, 5])
def test_lenient_accepts_an_event_ts_that_is_not_13_digits(value: int) -> None:
    """Lenient: a positive integer eventTs of another length is accepted as is."""
    op = only_op(run(with_event_ts(value)))
    assert op.event_ts == value
    assert op.accepted == (customer(),)


@pytest.mark.parametrize("value", [148813512323, 1661154622, 16611546220000, 5])
def test_strict_refuses_an_event_ts_that_is_not_13_digits(value: int) -> None:
    """Strict: an eventTs that is not 13 digits (e.g. the sample's 12) is an envelope fault."""
    assert_envelope_fault(run(with_event_ts(value), STRICT), "events.add.eventTs", [customer()])


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2022-08-22 15:50:22", (2022, 8, 22, 15, 50, 22)),
        ("2000-01-01 00:00:00", (2000, 1, 1, 0, 0, 0)),
        ("2024-02-29 23:59:59", (2024, 2, 29, 23, 59, 59)),
    ],
)
def test_lenient_converts_a_date_string_event_ts_in_shanghai_time(
    text: str, moment: tuple[int, ...]
) -> None:
    """Lenient: "YYYY-mm-dd HH:MM:SS" becomes epoch ms in Asia/Shanghai (UTC+8) by default."""
    op = only_op(run(with_event_ts(text)))
    assert op.event_ts == shanghai_ms(*moment)
    assert op.accepted


def test_date_string_event_ts_has_the_exact_documented_value() -> None:
    """2022-08-22 15:50:22 in Shanghai is 1661154622000 ms (07:50:22 UTC)."""
    assert only_op(run(with_event_ts("2022-08-22 15:50:22"))).event_ts == 1661154622000


def test_date_string_event_ts_uses_the_configured_time_zone() -> None:
    """With time zone UTC the same wall-clock string is 8 hours later in epoch terms."""
    op = only_op(run(with_event_ts("2022-08-22 15:50:22"), Rules(timezone="UTC")))
    assert op.event_ts == calendar.timegm((2022, 8, 22, 15, 50, 22, 0, 0, 0)) * 1000


def test_strict_refuses_a_date_string_event_ts() -> None:
    """Strict: a date string eventTs is an envelope fault."""
    result = run(with_event_ts("2022-08-22 15:50:22"), STRICT)
    assert_envelope_fault(result, "events.add.eventTs", [customer()])


@pytest.mark.parametrize(
    "text",
    [
        "2022-02-30 10:00:00",
        "2022-13-01 10:00:00",
        "2022-08-22 25:00:00",
        "2022-08-22T15:50:22",
        "2022-08-22 15:50",
        "2022/08/22 15:50:22",
        "22-08-22 15:50:22",
    ],
)
def test_lenient_refuses_an_impossible_or_other_date_format(text: str) -> None:
    """Only a real date in exactly "YYYY-mm-dd HH:MM:SS" is converted; anything else fails."""
    assert_envelope_fault(run(with_event_ts(text)), "events.add.eventTs", [customer()])


@pytest.mark.parametrize("op", ["add", "edit", "delete"])
def test_event_ts_is_checked_for_every_operation(op: str) -> None:
    """The eventTs rules apply to add, edit and delete alike."""
    records = [delete_record()] if op == "delete" else [customer()]
    result = run(with_event_ts("late", op), STRICT)
    assert_envelope_fault(result, f"events.{op}.eventTs", records)


# --- customerList ----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("records", [ABSENT, None, []], ids=["missing", "null", "empty"])
def test_missing_or_empty_customer_list_is_an_envelope_fault(rules: Rules, records: Any) -> None:
    """customerList must hold at least one record."""
    result = run(envelope(events={"add": op_body(records)}), rules)
    assert_envelope_fault(result, "events.add.customerList", [])


@MODES
@pytest.mark.parametrize("records", ["x", {"id": "c-1"}, 1], ids=repr)
def test_customer_list_that_is_not_a_list_is_an_envelope_fault(rules: Rules, records: Any) -> None:
    """customerList must be a list."""
    result = run(envelope(events={"add": op_body(records)}), rules)
    assert_envelope_fault(result, "events.add.customerList", [])


def test_customer_list_of_max_batch_records_is_accepted() -> None:
    """Exactly max_batch records are fine."""
    records = [customer(id=f"c-{n}") for n in range(3)]
    op = only_op(run(envelope(events={"add": op_body(records)}), Rules(max_batch=3)))
    assert len(op.accepted) == 3


@pytest.mark.parametrize("rules", [Rules(max_batch=3), Rules()], ids=["configured", "default"])
def test_more_than_max_batch_records_fails_every_record(rules: Rules) -> None:
    """One record over max_batch (default 1000) is an envelope fault of the operation."""
    records = [customer(id=f"c-{n}") for n in range(rules.max_batch + 1)]
    result = run(envelope(events={"add": op_body(records)}), rules)
    assert_envelope_fault(result, "events.add.customerList", records)


# --- several operations ----------------------------------------------------------------------


def test_operations_are_processed_in_payload_order() -> None:
    """Operations come out in the order they appear in the payload."""
    events = {
        "delete": op_body([delete_record(id="d")]),
        "add": op_body([customer(id="a")]),
        "edit": op_body([customer(id="e")]),
    }
    result = run(envelope(events=events))
    assert [op.op for op in result.ops] == [Op.DELETE, Op.ADD, Op.EDIT]
    assert [op.accepted[0]["id"] for op in result.ops] == ["d", "a", "e"]


def test_each_operation_is_processed_on_its_own() -> None:
    """A fault of one operation (bad eventTs, bad record) does not touch another."""
    events = {
        "add": op_body([customer()], eventTs="yesterday"),
        "edit": op_body([customer(id="e1"), customer(id="e2", age=500)]),
        "delete": op_body([delete_record()]),
    }
    add, edit, delete = run(envelope(events=events)).ops
    assert (add.accepted, add.rejected) == ((), (customer(),))
    assert [e.field for e in add.errors] == ["events.add.eventTs"]
    assert (edit.accepted, edit.rejected) == ((customer(id="e1"),), (customer(id="e2", age=500),))
    assert edit.errors == (FieldError(1, "age", edit.errors[0].reason),)
    assert (delete.accepted, delete.errors) == ((delete_record(),), ())


def test_unknown_operation_beside_a_known_one_is_reported_and_the_known_one_goes_on() -> None:
    """An unknown key is a message fault; the add beside it is still validated and accepted."""
    events = {"purge": op_body([customer()]), "add": op_body([customer()])}
    result = run(envelope(events=events))
    assert [(e.index, e.field) for e in result.message_errors] == [(None, "events.purge")]
    assert len(result.ops) == 1
    assert result.ops[0].op is Op.ADD
    assert result.ops[0].accepted == (customer(),)


def test_envelope_fault_fails_every_operation() -> None:
    """A fault of the envelope itself (wrong profile) fails the records of every operation."""
    events = {"add": op_body([customer()]), "delete": op_body([delete_record()])}
    result = run(envelope(events=events, profile={**PROFILE, "poiCode": "s0120001"}))
    assert [op.accepted for op in result.ops] == [(), ()]
    assert [op.rejected for op in result.ops] == [(customer(),), (delete_record(),)]
    for op in result.ops:
        assert any(e.field == "profile.poiCode" for e in op.errors)


# --- partial batches -------------------------------------------------------------------------


@MODES
def test_partial_batch_forwards_the_valid_and_rejects_the_invalid_as_received(
    rules: Rules,
) -> None:
    """Valid records are accepted; invalid ones come back exactly as received, with reasons."""
    bad_phone = customer(id="c-2", phone="1" * 16, age="30")
    not_object = "c-4"
    records = [customer(id="c-1"), bad_phone, customer(id="c-3"), not_object]
    op = only_op(run(envelope(events={"add": op_body(records)}), rules))
    assert op.accepted == (customer(id="c-1"), customer(id="c-3"))
    assert op.rejected == (bad_phone, not_object)
    assert op.rejected[0]["age"] == "30"  # as received, no lenient conversion
    fields = [(e.index, e.field) for e in op.errors]
    expected = [(1, "phone"), (3, "")]
    if rules.strict:
        expected.insert(1, (1, "age"))
    assert sorted(fields, key=str) == sorted(expected, key=str)
    assert all(e.reason for e in op.errors)


def test_lenient_conversions_apply_to_accepted_records() -> None:
    """Accepted records carry the lenient conversions (int from string, long as string)."""
    record = customer(age="30", projectId=42, customerGradeId=7)
    op = only_op(run(envelope(events={"add": op_body([record])})))
    assert op.accepted == (customer(age=30, projectId="42", customerGradeId="7"),)


def test_field_error_to_dict_is_the_alarm_errors_item() -> None:
    """FieldError serialises to index, field and reason."""
    assert FieldError(2, "phone", "too long").to_dict() == {
        "index": 2,
        "field": "phone",
        "reason": "too long",
    }
    assert FieldError(None, "reportTs", "required").to_dict()["index"] is None


# --- payload limits and decoding -------------------------------------------------------------


def nested(depth: int, kind: str = "list") -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_depth_of_32_is_allowed(kind: str) -> None:
    """JSON nested 32 deep is within the default limit."""
    document = decode(nested(32, kind), LENIENT)
    assert document == json.loads(nested(32, kind))


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_depth_of_33_is_refused(kind: str) -> None:
    """JSON nested 33 deep breaks the default limit."""
    with pytest.raises(ValueError, match="deeper"):
        decode(nested(33, kind), LENIENT)


def test_nesting_depth_limit_is_configurable() -> None:
    """max_depth sets the limit."""
    assert decode(nested(5), Rules(max_depth=5)) == [[[[[]]]]]
    with pytest.raises(ValueError, match="deeper"):
        decode(nested(6), Rules(max_depth=5))


def _depth(node: object) -> int:
    """The nesting depth of a parsed document, by walking it (the oracle)."""
    if isinstance(node, dict):
        return 1 + max(map(_depth, node.values()), default=0)
    if isinstance(node, list):
        return 1 + max(map(_depth, node), default=0)
    return 0


# Strings full of what the byte reading must see through: quotes, backslashes, brackets.
_TRICKY_TEXT = st.text(alphabet=st.sampled_from('"\\[]{}:,a\u00e9\n'), max_size=8)
_DOCUMENTS = st.recursive(
    st.none() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(
    document=_DOCUMENTS,
    limit=st.integers(min_value=1, max_value=12),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_nesting_read_off_the_bytes_matches_a_walk_of_the_document(
    document: object, limit: int, ascii_only: bool, indent: int | None
) -> None:
    """The depth limit is read off the payload's bytes; it agrees with walking the parsed
    document for any JSON, strings holding quotes, backslashes and brackets included."""
    payload = json.dumps(document, ensure_ascii=ascii_only, indent=indent).encode()
    assert nesting_exceeds(payload, limit) is (_depth(document) > limit)


def test_a_bulk_envelope_is_checked_for_depth_without_a_walk() -> None:
    """A payload with more brackets than the limit (a bulk of records) passes the depth check;
    the same records one level too deep do not."""
    records = [{"id": str(n), "meta": {"tags": ["a", "b"]}} for n in range(100)]
    deep: object = records
    for _ in range(28):
        deep = [deep]
    assert _depth(deep) == 32
    assert decode(json.dumps(deep).encode(), LENIENT) == deep
    with pytest.raises(ValueError, match="deeper"):
        decode(json.dumps([deep]).encode(), LENIENT)


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_very_deep_nesting_is_refused_without_recursion_error(kind: str, depth: int) -> None:
    """A 100000-deep document is a message fault, never a RecursionError."""
    result = validate(nested(depth, kind), LENIENT, customization=False)
    assert_message_fault(result)


def test_deep_meta_inside_an_envelope_is_a_message_fault() -> None:
    """An otherwise valid envelope whose record nests too deep breaks the payload limit."""
    meta: Any = {}
    for _ in range(40):
        meta = {"m": meta}
    result = run(envelope(events={"add": op_body([customer(meta=meta)])}), customization=True)
    assert "deeper" in assert_message_fault(result).reason


def test_payload_of_exactly_the_size_limit_is_accepted() -> None:
    """A payload of max_payload_bytes is within the limit."""
    payload = encode(envelope())
    result = validate(payload, Rules(max_payload_bytes=len(payload)), customization=False)
    assert only_op(result).accepted


def test_payload_one_byte_over_the_size_limit_is_refused() -> None:
    """A payload one byte over max_payload_bytes is a message fault."""
    payload = encode(envelope())
    result = validate(payload, Rules(max_payload_bytes=len(payload) - 1), customization=False)
    assert assert_message_fault(result).field == ""


def test_default_size_limit_is_one_mebibyte() -> None:
    """The default limit is 1 MiB: 1048576 bytes pass the size check, 1048577 do not."""
    padding = 1024 * 1024 - len(encode(envelope(pad="")))
    at_limit = encode(envelope(pad="x" * padding))
    assert len(at_limit) == 1024 * 1024
    assert only_op(validate(at_limit, LENIENT, customization=False)).accepted
    over = encode(envelope(pad="x" * (padding + 1)))
    assert_message_fault(validate(over, LENIENT, customization=False))


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe{}", '{"msgId": "编"}'.encode("gbk"), b'{"a": "\xc3"}', b"\xed\xa0\x80"],
    ids=["bom16", "gbk", "truncated", "encoded-surrogate"],
)
def test_payload_that_is_not_utf8_is_a_message_fault(payload: bytes) -> None:
    """Bytes that are not UTF-8 give one message-level fault."""
    assert "UTF-8" in assert_message_fault(validate(payload, LENIENT, customization=False)).reason


@pytest.mark.parametrize(
    "payload", [b"", b" ", b"{", b"hello", b"{'a': 1}", b'{"a": 1,}', b"{} {}", b'{"a":01}']
)
def test_payload_that_is_not_json_is_a_message_fault(payload: bytes) -> None:
    """Bytes that are not JSON give one message-level fault."""
    assert_message_fault(validate(payload, LENIENT, customization=False))


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused(constant: bytes) -> None:
    """NaN and +/-Infinity are not JSON and make the payload a message fault."""
    payload = encode(envelope()).replace(b'"reportTs": 1661154622', b'"reportTs": ' + constant)
    assert constant in payload
    assert_message_fault(validate(payload, LENIENT, customization=False))


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 30, b"-" + b"9" * 25])
def test_huge_numbers_are_a_fault_of_their_field(number: bytes) -> None:
    """A number too large for reportTs fails reportTs (every operation), not the payload."""
    payload = encode(envelope()).replace(b'"reportTs": 1661154622', b'"reportTs": ' + number)
    assert number in payload
    assert_envelope_fault(validate(payload, LENIENT, customization=False), "reportTs", [customer()])


def test_an_integer_past_4300_digits_is_not_json() -> None:
    """Python's integer text limit (4,300 digits) is where a number stops being JSON."""
    payload = encode(envelope()).replace(b'"reportTs": 1661154622', b'"reportTs": ' + b"9" * 4301)
    assert_message_fault(validate(payload, LENIENT, customization=False))


@pytest.mark.parametrize("document", [[], [envelope()], "add", 1, 1.5, None, True], ids=repr)
def test_json_that_is_not_an_object_is_a_message_fault(document: Any) -> None:
    """A JSON document that is not an object is a message fault."""
    result = validate(json.dumps(document).encode(), LENIENT, customization=False)
    assert (result.msg_id, result.report_ts) == (None, None)
    assert_message_fault(result)


def test_mode_default_is_lenient() -> None:
    """Rules() is lenient with the documented defaults."""
    rules = Rules()
    assert rules.mode is Mode.LENIENT
    assert not rules.strict
    assert (rules.timezone, rules.max_batch) == ("Asia/Shanghai", 1000)
    assert (rules.max_payload_bytes, rules.max_depth) == (1024 * 1024, 32)


# --- personal data ---------------------------------------------------------------------------


@pytest.mark.parametrize("rules", [LENIENT, STRICT], ids=["lenient", "strict"])
def test_envelope_and_record_reasons_never_quote_values(rules: Rules) -> None:
    """Reasons name the rule broken, never the value (phone, msgId, eventTs...)."""
    phone = "13800138000-999"
    record = customer(phone=phone + "1", idNumber="110101199003070000" * 3)
    events = {"add": op_body([record], eventTs="secret-ts"), "edit": op_body([record])}
    result = run(envelope(events=events, msgId="secret-msg-id" * 10, reportTs="secret-rts"), rules)
    reasons = [e.reason for op in result.ops for e in op.errors]
    assert reasons
    for reason in reasons:
        for value in (phone, "110101199003070000", "secret-ts", "secret-msg-id", "secret-rts"):
            assert value not in reason


# --- contract round 2 (issue 13): nothing dropped at the edges -------------------------------


def _spliced(document: Any, old: bytes, new: bytes) -> bytes:
    payload = encode(document)
    assert old in payload
    return payload.replace(old, new, 1)


def test_a_36_digit_role_id_fails_its_record_only() -> None:
    """roleId 10**36 beside a valid record: that record fails roleId, its sibling goes on."""
    bad = customer(id="c-2", roleId=10**36)
    result = run(envelope({"add": op_body([customer(), bad])}))
    op = only_op(result)
    assert op.accepted == (customer(),)
    assert op.rejected == (bad,)
    assert [(e.index, e.field) for e in op.errors] == [(1, "roleId")]


def test_a_20_digit_event_ts_in_strict_fails_its_operation_only() -> None:
    """Strict: eventTs 10**20 on add fails add; the valid edit beside it is forwarded."""
    events = {"add": op_body([customer()], eventTs=10**20), "edit": op_body([customer(id="e")])}
    result = run(envelope(events), STRICT)
    assert result.message_errors == ()
    add, edit = result.ops
    assert add.accepted == () and add.errors[0].field == "events.add.eventTs"
    assert edit.accepted == (customer(id="e"),) and edit.errors == ()


def test_a_25_digit_unknown_field_is_kept_exactly_in_lenient() -> None:
    """Lenient keeps an unknown field holding 10**25 digit for digit."""
    op = only_op(run(envelope({"add": op_body([customer(extra=10**25)])})))
    assert op.accepted[0]["extra"] == 10**25
    assert str(10**25) in json.dumps(op.accepted[0])


def test_two_add_blocks_are_two_batches_in_payload_order() -> None:
    """Two `add` keys in events: both batches are processed, first one first."""
    payload = _spliced(
        envelope({"add": op_body([customer(id="a-1")])}),
        b'"events": {',
        b'"events": {"add": ' + encode(op_body([customer(id="a-0")])) + b", ",
    )
    result = validate(payload, LENIENT, customization=False)
    assert [op.op for op in result.ops] == [Op.ADD, Op.ADD]
    assert [op.accepted[0]["id"] for op in result.ops] == ["a-0", "a-1"]


def test_a_field_given_twice_fails_its_record() -> None:
    """A record with `phone` twice fails (repeated field); its sibling is forwarded."""
    payload = _spliced(
        envelope({"add": op_body([customer(id="twice"), customer(id="once")])}),
        b'"id": "twice",',
        b'"id": "twice", "phone": "1",',
    )
    op = only_op(validate(payload, LENIENT, customization=False))
    assert [r["id"] for r in op.accepted] == ["once"]
    assert op.errors == (FieldError(0, "phone", "repeated field"),)


def test_a_repeated_key_in_meta_fails_its_record() -> None:
    """A repeated key nested in a record (meta) fails that record, naming meta."""
    payload = _spliced(
        envelope({"add": op_body([customer(meta={"a": 1})])}), b'{"a": 1}', b'{"a": 1, "a": 2}'
    )
    op = only_op(validate(payload, LENIENT, customization=True))
    assert op.accepted == ()
    assert op.errors == (FieldError(0, "meta", "repeated key"),)


def test_a_repeated_key_in_an_operation_body_fails_that_operation() -> None:
    """eventType twice in add fails add (envelope fault); edit beside it goes on."""
    events = {"add": op_body([customer()]), "edit": op_body([customer(id="e")])}
    payload = _spliced(envelope(events), b'"eventType": 1,', b'"eventType": 1, "eventType": 1,')
    add, edit = validate(payload, LENIENT, customization=False).ops
    assert (
        add.accepted == ()
        and FieldError(None, "events.add.eventType", "repeated key") in add.errors
    )
    assert edit.accepted == (customer(id="e"),)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b'"msgId": "m-1",', b'"msgId": "m-1", "msgId": "m-1",', "msgId"),
        (
            b'"poiCode": "s0140001",',
            b'"poiCode": "s0140001", "poiCode": "s0140001",',
            "profile.poiCode",
        ),
    ],
)
def test_a_repeated_key_at_top_level_or_in_profile_fails_every_operation(
    old: bytes, new: bytes, field: str
) -> None:
    """A key repeated at the top level or in profile fails add and edit alike."""
    events = {"add": op_body([customer()]), "edit": op_body([customer(id="e")])}
    result = validate(_spliced(envelope(events), old, new), LENIENT, customization=False)
    assert len(result.ops) == 2
    for op in result.ops:
        assert op.accepted == ()
        assert FieldError(None, field, "repeated key") in op.errors


def test_a_byte_order_mark_before_the_json_is_ignored() -> None:
    """A UTF-8 BOM in front of a valid envelope changes nothing."""
    op = only_op(validate(b"\xef\xbb\xbf" + encode(envelope()), STRICT, customization=False))
    assert op.accepted == (customer(),)


@pytest.mark.parametrize(("text", "value"), [(b"30.0", 30), (b"1e2", 100), (b"1E1", 10)])
def test_whole_number_floats_for_int_fields_convert_in_lenient_only(
    text: bytes, value: int
) -> None:
    """age 30.0 / 1e2 becomes an int in lenient mode; strict refuses it."""
    payload = _spliced(
        envelope({"add": op_body([customer(age=7)])}), b'"age": 7', b'"age": ' + text
    )
    lenient = only_op(validate(payload, LENIENT, customization=False))
    assert lenient.accepted[0]["age"] == value and type(lenient.accepted[0]["age"]) is int
    strict = only_op(validate(payload, STRICT, customization=False))
    assert strict.accepted == () and strict.errors[0].field == "age"


@pytest.mark.parametrize("text", [b"30.5", b"4503599627370497.5", b"1e400"])
def test_floats_with_a_fraction_or_out_of_range_fail_an_int_field(text: bytes) -> None:
    """A fraction, even one a float rounds away, or a number no float holds: the field fails."""
    payload = _spliced(
        envelope({"add": op_body([customer(bornDate=7)])}), b'"bornDate": 7', b'"bornDate": ' + text
    )
    op = only_op(validate(payload, LENIENT, customization=False))
    assert op.accepted == () and op.errors[0].field == "bornDate"


@MODES
@pytest.mark.parametrize("name", ["id", "name", "phone", "projectId"])
def test_required_strings_of_whitespace_only_fail(rules: Rules, name: str) -> None:
    """A required string must hold a character other than whitespace."""
    op = only_op(run(envelope({"add": op_body([customer(**{name: " \t\u3000"})])}), rules))
    assert op.accepted == () and op.errors[0].field == name


def test_required_strings_are_forwarded_untrimmed() -> None:
    """Surrounding whitespace of a required string is kept as received."""
    op = only_op(run(envelope({"add": op_body([customer(name=" 张三 ")])})))
    assert op.accepted[0]["name"] == " 张三 "


def test_a_repeated_events_key_fails_the_operations_of_both_blocks() -> None:
    """`events` given twice: the operations of both blocks fail, none left unreported."""
    payload = _spliced(
        envelope({"add": op_body([customer(id="second")])}),
        b'"events": {',
        b'"events": {"edit": ' + encode(op_body([customer(id="first")])) + b'}, "events": {',
    )
    result = validate(payload, LENIENT, customization=False)
    assert [(op.op, op.rejected[0]["id"]) for op in result.ops] == [
        (Op.EDIT, "first"),
        (Op.ADD, "second"),
    ]
    for op in result.ops:
        assert op.accepted == () and FieldError(None, "events", "repeated key") in op.errors


def test_a_repeated_customer_list_alarms_the_records_of_each() -> None:
    """customerList given twice fails its operation; the alarm holds the records of both."""
    payload = _spliced(
        envelope({"add": op_body([customer(id="b")])}),
        b'"customerList": [',
        b'"customerList": [' + encode(customer(id="a")) + b'], "customerList": [',
    )
    op = only_op(validate(payload, LENIENT, customization=False))
    assert [r["id"] for r in op.rejected] == ["a", "b"]
    assert FieldError(None, "events.add.customerList", "repeated key") in op.errors
