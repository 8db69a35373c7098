"""One message -> one outcome: dispositions, downstream events (SPEC 7), the documented samples."""

from __future__ import annotations

import json
from typing import Any

import pytest
from factories import (
    ABSENT,
    CUSTOM_ERROR_TOPIC,
    CUSTOM_TOPIC,
    EVENT_TS,
    LENIENT,
    REPORT_TS,
    STANDARD_ERROR_TOPIC,
    STANDARD_TOPIC,
    STRICT,
    VENDOR,
    customer,
    delete_record,
    encode,
    envelope,
    op_body,
    pipeline,
    sample,
)

from bridge.core.events import DownstreamEvent
from bridge.core.pipeline import Disposition, Outcome, Pipeline
from bridge.core.records import Op
from bridge.core.topics import Selection, TopicKind
from bridge.core.validate import Rules

DOWNSTREAM_KEYS = [
    "op",
    "tenant",
    "projectId",
    "version",
    "vendor",
    "msgId",
    "reportTs",
    "eventTs",
    "customer",
]


def process(
    topic: str, payload: bytes, rules: Rules = LENIENT, selection: Selection | None = None
) -> Outcome:
    return pipeline(rules, selection).process(topic, payload)


def assert_ignored(outcome: Outcome, disposition: Disposition) -> None:
    assert outcome.disposition is disposition
    assert (outcome.forward, outcome.alarms, outcome.ops, outcome.rejected) == ((), (), (), 0)


# --- topics that are not input ---------------------------------------------------------------

ANY_PAYLOADS = [encode(envelope()), b"garbage", b"", encode(envelope(events={"add": {}}))]


@pytest.mark.parametrize(
    "topic",
    [
        STANDARD_ERROR_TOPIC,
        CUSTOM_ERROR_TOPIC,
        "acme/proj_42/v1-customization-hik-error-customer",
    ],
)
@pytest.mark.parametrize("payload", ANY_PAYLOADS)
def test_error_topic_is_ignored_without_an_alarm(topic: str, payload: bytes) -> None:
    """A message on an error topic is dropped: never input, never an alarm about an alarm."""
    assert_ignored(process(topic, payload), Disposition.ERROR_TOPIC)


@pytest.mark.parametrize(
    "topic",
    [
        "acme/proj_42",
        "acme/42/v1-business-model-customer",
        "acme/proj_/v1-business-model-customer",
        "acme/proj_42/v1-business-model-customer/x",
        "acme/proj_42/v1-customization-h+k-customer",
        "acme/proj_42/whatever",
        "",
    ],
)
@pytest.mark.parametrize("payload", ANY_PAYLOADS)
def test_unrecognised_topic_is_ignored_without_an_alarm(topic: str, payload: bytes) -> None:
    """A message on a topic the bridge does not recognise is dropped without an alarm."""
    assert_ignored(process(topic, payload), Disposition.UNRECOGNISED)


@pytest.mark.parametrize(
    "topic",
    [
        "acme/proj_42/v1-customization-h\x00k-customer",
        "ac\x1bme/proj_42/v1-business-model-customer",
        "acme/proj_4\x852/v1-business-model-customer",
        "acme/proj_42/v1-customization-h\ufffek-customer",
    ],
)
@pytest.mark.parametrize("payload", ANY_PAYLOADS)
def test_inbound_topic_with_a_control_character_is_refused_without_an_alarm(
    topic: str, payload: bytes
) -> None:
    """A control character or noncharacter in an inbound topic: refused (kept raw), no alarm."""
    outcome = process(topic, payload)
    assert outcome.disposition is Disposition.REFUSED_TOPIC
    assert outcome.alarms == () and outcome.forward == ()
    assert outcome.inbound is not None


def test_a_refused_topic_outside_the_selection_is_not_selected() -> None:
    """The selection applies first: another tenant's refused topic is not this bridge's."""
    pipeline = Pipeline(Rules(), Selection(tenants=("acme",)))
    outcome = pipeline.process("other/proj_42/v1-customization-h\x00k-customer", b"{}")
    assert outcome.disposition is Disposition.NOT_SELECTED


def test_no_alarm_for_a_leaf_ending_in_error_customer() -> None:
    """A bad payload on `v1-customization-error-customer` raises no alarm (it is an error topic)."""
    outcome = process("acme/proj_42/v1-customization-error-customer", b"garbage")
    assert outcome.alarms == ()


@pytest.mark.parametrize(
    ("selection", "topic"),
    [
        (Selection(tenants=("other",)), STANDARD_TOPIC),
        (Selection(projects=("7",)), STANDARD_TOPIC),
        (Selection(standard=False), STANDARD_TOPIC),
        (Selection(customization=False), CUSTOM_TOPIC),
        (Selection(vendors=("hik",)), CUSTOM_TOPIC),
        (Selection(versions=("v1",)), CUSTOM_TOPIC),
    ],
)
@pytest.mark.parametrize("payload", ANY_PAYLOADS)
def test_unselected_topic_is_ignored_without_an_alarm(
    selection: Selection, topic: str, payload: bytes
) -> None:
    """An inbound topic outside the selection is dropped, whatever its payload."""
    outcome = process(topic, payload, selection=selection)
    assert_ignored(outcome, Disposition.NOT_SELECTED)
    assert outcome.inbound is not None
    assert outcome.inbound.topic == topic


def test_selected_topic_is_processed() -> None:
    """An inbound topic within a literal selection is processed."""
    selection = Selection(tenants=("acme",), projects=("42",), versions=("v2",), vendors=(VENDOR,))
    outcome = process(CUSTOM_TOPIC, encode(envelope()), selection=selection)
    assert outcome.disposition is Disposition.PROCESSED
    assert len(outcome.forward) == 1


def test_process_inbound_skips_topic_parsing() -> None:
    """process_inbound validates a payload for an already-parsed topic."""
    p = pipeline()
    inbound = process(STANDARD_TOPIC, b"x").inbound
    assert inbound is not None
    outcome = p.process_inbound(inbound, encode(envelope()))
    assert outcome.disposition is Disposition.PROCESSED
    assert len(outcome.forward) == 1


# --- the outcome of a processed message ------------------------------------------------------


def test_outcome_summarises_the_message() -> None:
    """A processed outcome carries topic, inbound, msgId, ops, forward, alarms and counts."""
    events = {
        "add": op_body([customer(id="a1"), customer(id="a2", phone=ABSENT)]),
        "delete": op_body([delete_record(id="d1")]),
    }
    outcome = process(STANDARD_TOPIC, encode(envelope(events=events)))
    assert outcome.disposition is Disposition.PROCESSED
    assert outcome.topic == STANDARD_TOPIC
    assert outcome.inbound is not None
    assert outcome.inbound.kind is TopicKind.STANDARD
    assert outcome.msg_id == "m-1"
    assert outcome.ops == ("add", "delete")
    assert [(e.op, e.customer["id"]) for e in outcome.forward] == [
        (Op.ADD, "a1"),
        (Op.DELETE, "d1"),
    ]
    assert outcome.rejected == 1
    assert [(e.index, e.field) for e in outcome.errors] == [(1, "phone")]
    assert len(outcome.alarms) == 1
    assert not outcome.undecodable


def test_fully_valid_message_has_no_alarm() -> None:
    """A message whose records are all valid forwards them all and raises nothing."""
    records = [customer(id=f"c-{n}") for n in range(5)]
    outcome = process(STANDARD_TOPIC, encode(envelope(events={"edit": op_body(records)})))
    assert [e.customer for e in outcome.forward] == records
    assert (outcome.alarms, outcome.rejected, outcome.errors) == ((), 0, ())


def test_envelope_fault_counts_every_record_as_rejected() -> None:
    """An envelope fault rejects every record of the operation and forwards none."""
    records = [customer(id=f"c-{n}") for n in range(3)]
    document = envelope(events={"add": op_body(records)}, reportTs=ABSENT)
    outcome = process(STANDARD_TOPIC, encode(document))
    assert (outcome.forward, outcome.rejected) == ((), 3)


# --- downstream events (SPEC 7) --------------------------------------------------------------


def test_downstream_event_of_a_standard_topic_has_exactly_the_documented_keys() -> None:
    """to_dict has op, tenant, projectId, version, vendor, msgId, reportTs, eventTs, customer."""
    outcome = process(STANDARD_TOPIC, encode(envelope()))
    [event] = outcome.forward
    assert list(event.to_dict()) == DOWNSTREAM_KEYS
    assert event.to_dict() == {
        "op": "add",
        "tenant": "acme",
        "projectId": "42",
        "version": None,
        "vendor": None,
        "msgId": "m-1",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": customer(),
    }
    assert event.kind is TopicKind.STANDARD


def test_downstream_event_of_a_customization_topic_names_version_and_vendor() -> None:
    """On a customization topic version and vendor come from the topic."""
    record = customer(meta={"k": "v"})
    [event] = process(CUSTOM_TOPIC, encode(envelope(events={"add": op_body([record])}))).forward
    assert event.to_dict() == {
        "op": "add",
        "tenant": "acme",
        "projectId": "42",
        "version": "v2",
        "vendor": VENDOR,
        "msgId": "m-1",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": record,
    }
    assert event.kind is TopicKind.CUSTOMIZATION


def test_downstream_project_id_comes_from_the_topic() -> None:
    """`projectId` of the event is the topic's, whatever the record's projectId says."""
    record = customer(projectId="999")
    [event] = process(STANDARD_TOPIC, encode(envelope(events={"add": op_body([record])}))).forward
    assert event.to_dict()["projectId"] == "42"
    assert event.to_dict()["customer"]["projectId"] == "999"


def test_downstream_event_carries_lenient_conversions() -> None:
    """The customer of a downstream event is the validated record, lenient conversions applied."""
    record = customer(age="30", projectId=123, roleId=5, sex="1", extra="kept")
    document = envelope(events={"add": op_body([record], eventTs="2022-08-22 15:50:22")})
    [event] = process(STANDARD_TOPIC, encode(document)).forward
    out = event.to_dict()
    assert out["customer"] == customer(age=30, projectId="123", roleId="5", sex=1, extra="kept")
    assert out["eventTs"] == 1661154622000


def test_downstream_msg_id_is_null_without_one() -> None:
    """An inbound message without msgId gives msgId null downstream."""
    [event] = process(STANDARD_TOPIC, encode(envelope(msgId=ABSENT))).forward
    assert event.to_dict()["msgId"] is None


def test_downstream_event_ts_is_that_of_its_operation() -> None:
    """Each event carries the eventTs of the operation its record came in."""
    events = {
        "add": op_body([customer()], eventTs=1661154622001),
        "delete": op_body([delete_record()], eventTs=1661154622002),
    }
    outcome = process(STANDARD_TOPIC, encode(envelope(events=events)))
    assert [(e.op, e.event_ts) for e in outcome.forward] == [
        (Op.ADD, 1661154622001),
        (Op.DELETE, 1661154622002),
    ]


def test_downstream_event_is_json_serialisable_and_keyed_for_ordering() -> None:
    """An event serialises to JSON and is ordered per (tenant, projectId, customer id)."""
    [event] = process(CUSTOM_TOPIC, encode(envelope())).forward
    assert json.loads(json.dumps(event.to_dict(), ensure_ascii=False)) == event.to_dict()
    assert event.customer_id == "c-1"
    assert event.ordering_key == ("acme", "42", "c-1")


def test_downstream_event_from_topic_copies_the_topic_parts() -> None:
    """DownstreamEvent.from_topic takes kind, tenant, project, version and vendor from the topic."""
    inbound = process(CUSTOM_TOPIC, b"x").inbound
    assert inbound is not None
    event = DownstreamEvent.from_topic(inbound, Op.EDIT, None, 1, 2, {"id": "x"})
    assert event.to_dict() == {
        "op": "edit",
        "tenant": "acme",
        "projectId": "42",
        "version": "v2",
        "vendor": VENDOR,
        "msgId": None,
        "reportTs": 1,
        "eventTs": 2,
        "customer": {"id": "x"},
    }


# --- the documented samples ------------------------------------------------------------------


def sample_records(name: str) -> list[Any]:
    document = json.loads(sample(name))
    (body,) = document["events"].values()
    records: list[Any] = body["customerList"]
    return records


@pytest.mark.parametrize(
    ("name", "topic", "op"),
    [
        ("standard-add", STANDARD_TOPIC, "add"),
        ("standard-edit", STANDARD_TOPIC, "edit"),
        ("customization-add", CUSTOM_TOPIC, "add"),
        ("customization-edit", CUSTOM_TOPIC, "edit"),
    ],
)
def test_lenient_add_and_edit_samples_give_one_alarm_about_age(
    name: str, topic: str, op: str
) -> None:
    """Lenient: the documented add/edit sample fails only on `"age": "年龄"`."""
    outcome = process(topic, sample(name))
    assert outcome.forward == ()
    [alarm] = outcome.alarms
    assert alarm.topic == topic.removesuffix("customer") + "error-customer"
    event = alarm.payload["events"][f"{op}_error"]
    assert event["customerList"] == sample_records(name)
    assert [(e["index"], e["field"]) for e in alarm.payload["errors"]] == [(0, "age")]
    assert "sourceMsgId" not in alarm.payload  # the samples carry no msgId
    assert outcome.rejected == 1


@pytest.mark.parametrize(
    ("name", "topic"),
    [("standard-delete", STANDARD_TOPIC), ("customization-delete", CUSTOM_TOPIC)],
)
def test_lenient_delete_samples_forward_their_record(name: str, topic: str) -> None:
    """Lenient: the documented delete sample forwards its one record unchanged."""
    outcome = process(topic, sample(name))
    assert outcome.alarms == ()
    [event] = outcome.forward
    assert event.to_dict()["customer"] == sample_records(name)[0]
    assert (event.op, event.msg_id, event.report_ts, event.event_ts) == (
        Op.DELETE,
        None,
        1661154622,
        148813512323,
    )


@pytest.mark.parametrize(
    ("name", "topic", "op"),
    [
        ("standard-add", STANDARD_TOPIC, "add"),
        ("standard-edit", STANDARD_TOPIC, "edit"),
        ("standard-delete", STANDARD_TOPIC, "delete"),
        ("customization-add", CUSTOM_TOPIC, "add"),
        ("customization-edit", CUSTOM_TOPIC, "edit"),
        ("customization-delete", CUSTOM_TOPIC, "delete"),
    ],
)
def test_strict_samples_fail_on_their_12_digit_event_ts(name: str, topic: str, op: str) -> None:
    """Strict: the samples' 12-digit eventTs is an envelope fault failing every record."""
    outcome = process(topic, sample(name), rules=STRICT)
    assert outcome.forward == ()
    [alarm] = outcome.alarms
    assert alarm.payload["events"][f"{op}_error"]["customerList"] == sample_records(name)
    fields = [(e["index"], e["field"]) for e in alarm.payload["errors"]]
    assert (None, f"events.{op}.eventTs") in fields
