"""SPEC 5: the error alarm envelope (eventType 2), built directly and by the pipeline."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from factories import (
    ABSENT,
    CUSTOM_ERROR_TOPIC,
    CUSTOM_TOPIC,
    NOW_MS,
    PROFILE,
    STANDARD_ERROR_TOPIC,
    STANDARD_TOPIC,
    STRICT,
    customer,
    delete_record,
    encode,
    envelope,
    expected_id,
    op_body,
    pipeline,
)

from bridge.core import alarms
from bridge.core.pipeline import Outcome, Pipeline
from bridge.core.topics import Selection
from bridge.core.validate import FieldError, Rules

ALARM_KEYS = {"msgId", "reportTs", "profile", "events", "sourceMsgId", "errors"}
EVENT_KEYS = {"eventTs", "eventType", "msg", "status", "code", "customerList"}


def process(payload: bytes, topic: str = STANDARD_TOPIC, rules: Rules | None = None) -> Outcome:
    return (pipeline(rules) if rules else pipeline()).process(topic, payload)


def only_alarm(outcome: Outcome) -> dict[str, Any]:
    assert len(outcome.alarms) == 1, outcome.alarms
    return outcome.alarms[0].payload


def event_of(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (key, event), *rest = payload["events"].items()
    assert rest == []
    return key, event


# --- alarms.build, status_of, describe -------------------------------------------------------


def test_build_gives_the_documented_envelope() -> None:
    """build() lays out msgId, reportTs, profile, events.<op>_error, sourceMsgId and errors."""
    errors = [FieldError(0, "phone", "longer than 15 characters")]
    alarm = alarms.build(
        error_topic=STANDARD_ERROR_TOPIC,
        op="add",
        code=400,
        msg="customerList[0].phone: longer than 15 characters",
        records=[{"id": "c-1"}],
        errors=errors,
        source_msg_id="m-1",
        now_ms=NOW_MS,
        alarm_id="a-1",
    )
    assert alarm.topic == STANDARD_ERROR_TOPIC
    assert (alarm.op, alarm.status, alarm.code) == ("add", "CUSTOMER_ADD_ERROR", 400)
    assert alarm.payload == {
        "msgId": "a-1",
        "reportTs": NOW_MS,
        "profile": PROFILE,
        "events": {
            "add_error": {
                "eventTs": NOW_MS,
                "eventType": 2,
                "msg": "customerList[0].phone: longer than 15 characters",
                "status": "CUSTOMER_ADD_ERROR",
                "code": 400,
                "customerList": [{"id": "c-1"}],
            }
        },
        "sourceMsgId": "m-1",
        "errors": [{"index": 0, "field": "phone", "reason": "longer than 15 characters"}],
    }
    assert alarm.to_dict() == {"topic": STANDARD_ERROR_TOPIC, "payload": alarm.payload}


def test_build_without_source_msg_id_omits_the_key() -> None:
    """sourceMsgId is present only when the inbound message had one."""
    alarm = alarms.build(
        error_topic=STANDARD_ERROR_TOPIC,
        op="unknown",
        code=400,
        msg="not JSON",
        records=(),
        errors=[],
        source_msg_id=None,
        now_ms=NOW_MS,
        alarm_id="a-1",
    )
    assert "sourceMsgId" not in alarm.payload
    assert alarm.payload["errors"] == []


def test_build_for_a_sink_that_gave_up_uses_code_502() -> None:
    """Code 502 (a sink gave up on valid records) keeps the operation's status."""
    alarm = alarms.build(
        error_topic=CUSTOM_ERROR_TOPIC,
        op="edit",
        code=alarms.CODE_SINK_GAVE_UP,
        msg="sink http gave up",
        records=[customer()],
        errors=[],
        source_msg_id="m-1",
        now_ms=NOW_MS,
        alarm_id="a-2",
    )
    assert alarms.CODE_SINK_GAVE_UP == 502
    key, event = event_of(alarm.payload)
    assert (key, event["status"], event["code"]) == ("edit_error", "CUSTOMER_EDIT_ERROR", 502)
    assert event["customerList"] == [customer()]


@pytest.mark.parametrize(
    ("op", "status"),
    [
        ("add", "CUSTOMER_ADD_ERROR"),
        ("edit", "CUSTOMER_EDIT_ERROR"),
        ("delete", "CUSTOMER_DELETE_ERROR"),
        ("unknown", "CUSTOMER_MESSAGE_ERROR"),
    ],
)
def test_status_of_each_operation(op: str, status: str) -> None:
    """Each operation has its CUSTOMER_<OP>_ERROR status; a message fault CUSTOMER_MESSAGE_ERROR."""
    assert alarms.status_of(op) == status


def test_describe_names_each_field_path_and_reason() -> None:
    """msg joins `customerList[i].field: reason` for records and `field: reason` for envelopes."""
    errors = [
        FieldError(None, "events.add.eventTs", "required"),
        FieldError(0, "phone", "longer than 15 characters"),
        FieldError(2, "spaceIds[1]", "must be a string"),
        FieldError(3, "", "must be an object"),
    ]
    assert alarms.describe(errors) == (
        "events.add.eventTs: required; customerList[0].phone: longer than 15 characters; "
        "customerList[2].spaceIds[1]: must be a string; customerList[3]: must be an object"
    )


def test_describe_of_a_fault_without_a_field_is_its_reason() -> None:
    """A payload fault with no field path is described by its reason alone."""
    assert alarms.describe([FieldError(None, "", "payload is not JSON")]) == "payload is not JSON"


def test_describe_caps_the_message_length() -> None:
    """A batch of many failures gives a msg capped at MSG_MAX_CHARS characters."""
    errors = [FieldError(n, "phone", "longer than 15 characters") for n in range(1000)]
    text = alarms.describe(errors)
    assert len(text) == alarms.MSG_MAX_CHARS
    assert text.startswith("customerList[0].phone: longer than 15 characters; ")


# --- alarms from the pipeline: record faults -------------------------------------------------


def test_partial_batch_alarm_is_exactly_the_documented_envelope() -> None:
    """A failing record gives one add_error alarm with every documented key and value."""
    bad = customer(id="c-2", phone="1" * 16, age="30")
    payload = encode(envelope(events={"add": op_body([customer(), bad])}))
    outcome = process(payload)
    alarm = outcome.alarms[0]
    assert len(outcome.alarms) == 1
    assert alarm.topic == STANDARD_ERROR_TOPIC
    assert set(alarm.payload) == ALARM_KEYS
    key, event = event_of(alarm.payload)
    assert key == "add_error"
    assert set(event) == EVENT_KEYS
    assert alarm.payload["msgId"] == expected_id(1)
    assert uuid.UUID(alarm.payload["msgId"]).version == 4
    assert alarm.payload["reportTs"] == NOW_MS
    assert alarm.payload["profile"] == {
        "poiCode": "s0140001",
        "appType": "customer",
        "modelId": 140001,
    }
    assert (event["eventTs"], event["eventType"]) == (NOW_MS, 2)
    assert (event["status"], event["code"]) == ("CUSTOMER_ADD_ERROR", 400)
    assert event["customerList"] == [bad]
    assert alarm.payload["sourceMsgId"] == "m-1"
    [error] = alarm.payload["errors"]
    assert (error["index"], error["field"]) == (1, "phone")
    assert event["msg"] == f"customerList[1].phone: {error['reason']}"


def test_alarm_customer_list_holds_failing_records_as_received() -> None:
    """customerList holds exactly the failing records, unconverted, in their inbound order."""
    bad1 = customer(id="b1", age="年龄", projectId=7)
    bad2 = customer(id="b2", name=ABSENT, age="30")
    records = [bad1, customer(id="g1"), bad2, customer(id="g2")]
    outcome = process(encode(envelope(events={"edit": op_body(records)})))
    _, event = event_of(only_alarm(outcome))
    assert event["customerList"] == [bad1, bad2]
    assert event["customerList"][0]["projectId"] == 7  # not the converted "7"
    assert [f.customer["id"] for f in outcome.forward] == ["g1", "g2"]


@pytest.mark.parametrize("op", ["add", "edit", "delete"])
def test_each_operation_alarms_under_its_own_key(op: str) -> None:
    """A failing record of <op> gives events.<op>_error with status CUSTOMER_<OP>_ERROR."""
    bad = {"phone": "1"} if op == "delete" else customer(id=ABSENT)
    outcome = process(encode(envelope(events={op: op_body([bad])})))
    key, event = event_of(only_alarm(outcome))
    assert key == f"{op}_error"
    assert event["status"] == f"CUSTOMER_{op.upper()}_ERROR"
    assert event["customerList"] == [bad]


def test_one_alarm_per_failing_operation_with_its_own_id() -> None:
    """Two failing operations give two alarms, in payload order, with fresh ids."""
    events = {
        "delete": op_body([delete_record(id=ABSENT)]),
        "add": op_body([customer(age=999)]),
        "edit": op_body([customer()]),
    }
    outcome = process(encode(envelope(events=events)))
    assert [a.op for a in outcome.alarms] == ["delete", "add"]
    assert [a.payload["msgId"] for a in outcome.alarms] == [expected_id(1), expected_id(2)]
    assert [a.payload["errors"][0]["field"] for a in outcome.alarms] == ["id", "age"]
    assert [f.op for f in outcome.forward] == ["edit"]


def test_envelope_fault_alarm_fails_every_record_with_index_null() -> None:
    """A bad eventTs gives an alarm listing every record of the operation, errors index null."""
    records = [customer(id="c-1"), customer(id="c-2")]
    outcome = process(
        encode(envelope(events={"add": op_body(records, eventTs="2022")})), rules=STRICT
    )
    payload = only_alarm(outcome)
    _, event = event_of(payload)
    assert event["customerList"] == records
    assert payload["errors"] == [
        {"index": None, "field": "events.add.eventTs", "reason": payload["errors"][0]["reason"]}
    ]
    assert outcome.forward == ()


@pytest.mark.parametrize(
    ("msg_id", "present"),
    [("m-42", True), (ABSENT, False), (None, False), ("x" * 65, False), (17, False)],
    ids=["valid", "absent", "null", "too-long", "not-a-string"],
)
def test_source_msg_id_only_when_the_inbound_had_a_valid_msg_id(msg_id: Any, present: bool) -> None:
    """sourceMsgId echoes a valid inbound msgId and is absent otherwise."""
    payload = encode(envelope(msgId=msg_id, events={"add": op_body([customer(age=-1)])}))
    alarm = only_alarm(process(payload))
    assert ("sourceMsgId" in alarm) is present
    if present:
        assert alarm["sourceMsgId"] == msg_id


def test_msg_names_every_error_of_the_alarm() -> None:
    """msg names each failing field path with its reason."""
    records = [customer(phone="1" * 16, sex=9), customer(name="")]
    payload = only_alarm(process(encode(envelope(events={"add": op_body(records)}))))
    _, event = event_of(payload)
    assert len(payload["errors"]) == 3
    for error in payload["errors"]:
        assert f"customerList[{error['index']}].{error['field']}: {error['reason']}" in event["msg"]


# --- alarms from the pipeline: message faults ------------------------------------------------

BAD_PAYLOADS = {
    "not-utf8": b"\xff\xfe\x00",
    "not-json": b"{not json",
    "empty": b"",
    "nan": b'{"reportTs": NaN}',
    "huge-number": b'{"reportTs": 1' + b"0" * 40 + b"}",
    "too-deep": b"[" * 40 + b"]" * 40,
    "very-deep": b"[" * 100_000 + b"]" * 100_000,
    "not-object": b"[1, 2, 3]",
    "string": b'"add"',
    "no-events": encode(envelope(events=ABSENT)),
    "events-not-object": encode(envelope(events=["add"])),
    "no-operation": encode(envelope(events={})),
    "only-unknown-operation": encode(envelope(events={"upsert": op_body([customer()])})),
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_unreadable_payload_gives_one_unknown_error_alarm(payload: bytes) -> None:
    """A payload without a findable operation: unknown_error, CUSTOMER_MESSAGE_ERROR, 400, []."""
    outcome = process(payload)
    alarm = only_alarm(outcome)
    assert outcome.alarms[0].topic == STANDARD_ERROR_TOPIC
    assert set(alarm) <= ALARM_KEYS
    key, event = event_of(alarm)
    assert key == "unknown_error"
    assert set(event) == EVENT_KEYS
    assert (event["status"], event["code"], event["customerList"]) == (
        "CUSTOMER_MESSAGE_ERROR",
        400,
        [],
    )
    assert (event["eventTs"], event["eventType"]) == (NOW_MS, 2)
    assert (alarm["msgId"], alarm["reportTs"], alarm["profile"]) == (
        expected_id(1),
        NOW_MS,
        PROFILE,
    )
    assert event["msg"]
    assert alarm["errors"]
    assert all(e["index"] is None for e in alarm["errors"])
    assert outcome.forward == ()
    assert outcome.undecodable


def test_unknown_error_alarm_keeps_a_readable_msg_id() -> None:
    """A decodable envelope without an operation still echoes its msgId as sourceMsgId."""
    alarm = only_alarm(process(encode(envelope(msgId="m-7", events={}))))
    assert alarm["sourceMsgId"] == "m-7"


def test_unknown_error_alarm_without_a_readable_msg_id_has_no_source() -> None:
    """A payload that is not JSON has no sourceMsgId."""
    assert "sourceMsgId" not in only_alarm(process(b'{"msgId": "m-7", oops}'))


def test_unknown_operation_beside_a_known_one_gives_unknown_error_and_forwards() -> None:
    """An unknown operation key is reported as unknown_error; the valid add beside it forwards."""
    events = {"add": op_body([customer()]), "purge": op_body([customer()])}
    outcome = process(encode(envelope(events=events)))
    key, event = event_of(only_alarm(outcome))
    assert key == "unknown_error"
    assert (event["status"], event["customerList"]) == ("CUSTOMER_MESSAGE_ERROR", [])
    assert "events.purge" in event["msg"]
    assert [f.customer for f in outcome.forward] == [customer()]
    assert not outcome.undecodable


def test_raw_payload_is_never_published() -> None:
    """The raw bytes of an unreadable payload do not appear in its alarm."""
    raw = b'{"phone": "13800138000", broken'
    text = json.dumps(only_alarm(process(raw)), ensure_ascii=False)
    assert "13800138000" not in text
    assert "broken" not in text


def test_unknown_error_names_every_envelope_fault() -> None:
    """With events missing and a bad reportTs and profile, the alarm names all three."""
    document = envelope(events=ABSENT, reportTs="soon", profile={"poiCode": "s0120001"})
    payload = only_alarm(process(encode(document)))
    _, event = event_of(payload)
    fields = {e["field"] for e in payload["errors"]}
    assert {"events", "reportTs"} <= fields
    assert any(f.startswith("profile") for f in fields)
    assert "reportTs" in event["msg"]
    assert "profile" in event["msg"]


# --- routing, ids and clocks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "error_topic"),
    [(STANDARD_TOPIC, STANDARD_ERROR_TOPIC), (CUSTOM_TOPIC, CUSTOM_ERROR_TOPIC)],
)
@pytest.mark.parametrize("payload", [b"nope", encode(envelope(events={"add": op_body([{}])}))])
def test_alarms_go_to_the_derived_error_topic(topic: str, error_topic: str, payload: bytes) -> None:
    """Every alarm is addressed to the error topic of the topic the message came on."""
    outcome = process(payload, topic)
    assert outcome.alarms
    assert {a.topic for a in outcome.alarms} == {error_topic}


def test_default_clock_and_ids_give_fresh_uuid4_and_current_millis() -> None:
    """Without injection, msgId is a fresh uuid4 and reportTs/eventTs the current epoch ms."""
    live = Pipeline(Rules(), Selection())
    before = time.time_ns() // 1_000_000
    outcomes = [live.process(STANDARD_TOPIC, b"x") for _ in range(2)]
    after = time.time_ns() // 1_000_000
    ids = [only_alarm(o)["msgId"] for o in outcomes]
    assert len(set(ids)) == 2
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    for outcome in outcomes:
        payload = only_alarm(outcome)
        _, event = event_of(payload)
        assert before <= payload["reportTs"] == event["eventTs"] <= after
        assert len(str(payload["reportTs"])) == 13


@pytest.mark.parametrize("payload", [b"x", encode(envelope(events={"add": op_body([{}])}))])
def test_alarm_payload_is_json_with_the_wire_types(payload: bytes) -> None:
    """An alarm payload survives a strict JSON round trip unchanged."""
    for alarm in process(payload).alarms:
        text = json.dumps(alarm.payload, ensure_ascii=False, allow_nan=False)
        assert json.loads(text.encode("utf-8")) == alarm.payload


# --- personal data ---------------------------------------------------------------------------


def test_too_long_phone_never_appears_in_msg_or_errors() -> None:
    """A phone that is too long is in customerList (as received) but not in msg or errors."""
    phone = "1380013800012345"
    records = [customer(phone=phone, idNumber="110101199003071234" * 3, age="三十")]
    payload = only_alarm(process(encode(envelope(events={"add": op_body(records)}))))
    _, event = event_of(payload)
    assert event["customerList"][0]["phone"] == phone
    outside = {k: v for k, v in payload.items() if k != "events"}
    outside["msg"] = event["msg"]
    text = json.dumps(outside, ensure_ascii=False)
    for value in (phone, "110101199003071234", "三十"):
        assert value not in text
