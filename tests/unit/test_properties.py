"""Properties of Pipeline.process over generated payloads: total, accountable, serialisable."""

from __future__ import annotations

import json
from typing import Any

from factories import (
    CUSTOM_ERROR_TOPIC,
    CUSTOM_TOPIC,
    LENIENT,
    PROFILE,
    STANDARD_ERROR_TOPIC,
    STANDARD_TOPIC,
    STRICT,
    customer,
    pipeline,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.pipeline import Disposition, Outcome
from bridge.core.validate import Rules

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOPICS = st.sampled_from(
    [(STANDARD_TOPIC, STANDARD_ERROR_TOPIC), (CUSTOM_TOPIC, CUSTOM_ERROR_TOPIC)]
)
RULES = st.sampled_from([LENIENT, STRICT, Rules(max_batch=3, max_depth=6)])
KNOWN_OPS = ("add", "edit", "delete")

# --- strategies for envelope-like documents --------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


numeric_text = st.integers(min_value=0, max_value=250).map(str)
# Each field: (a value the tables accept, a value near or beyond the table's limits).
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (st.text(min_size=1, max_size=36), st.text(min_size=0, max_size=38)),
    "projectId": (
        st.integers(min_value=0, max_value=2**63 - 1) | st.text(min_size=1, max_size=36),
        st.integers(min_value=2**62, max_value=2**64) | st.text(max_size=38),
    ),
    "name": (st.text(min_size=1, max_size=20), st.text(max_size=22)),
    "phone": (st.from_regex(r"1[0-9]{10}", fullmatch=True), st.text(max_size=17)),
    "idType": (st.integers(0, 4), st.integers(-1, 5) | numeric_text),
    "sex": (st.integers(0, 2), st.integers(-1, 3) | st.booleans()),
    "age": (st.integers(0, 200), st.integers(-1, 201) | numeric_text | st.just("年龄")),
    "spaceIds": (st.lists(st.text(max_size=5), max_size=3), st.lists(scalars, max_size=3)),
    "customerGradeId": (st.none() | st.integers(0, 99), st.text(max_size=40)),
    "remark": (st.text(max_size=100), st.text(max_size=102)),
    "bornDate": (st.integers(min_value=0, max_value=2**45), scalars),
    "meta": (st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), scalars),
    "unknownExtra": (scalars, junk),
}
REQUIRED = ("id", "projectId", "name", "phone")


def record_of(pick: int) -> st.SearchStrategy[dict[str, Any]]:
    """A record whose fields come from the valid (0) or the noisy (1) column."""
    return st.fixed_dictionaries(
        {k: FIELDS[k][pick] for k in REQUIRED},
        optional={k: v[pick] for k, v in FIELDS.items() if k not in REQUIRED},
    )


valid_record = record_of(0)
noisy_record = st.one_of(record_of(1), junk, st.just(customer()))
clean_ops = st.dictionaries(
    st.sampled_from(KNOWN_OPS),
    st.fixed_dictionaries(
        {
            "eventTs": st.integers(min_value=10**12, max_value=10**13 - 1),
            "eventType": st.just(1),
            "customerList": st.lists(
                st.one_of(valid_record, valid_record, noisy_record), min_size=1, max_size=5
            ),
        }
    ),
    min_size=1,
    max_size=3,
)
clean_documents = st.fixed_dictionaries(
    {
        "reportTs": st.sampled_from([1661154622, 1661154622000]),
        "profile": st.just(PROFILE),
        "events": clean_ops,
    },
    optional={"msgId": st.text(min_size=1, max_size=64)},
)

event_ts = st.one_of(
    st.integers(min_value=-5, max_value=10**14),
    st.sampled_from(["2022-08-22 15:50:22", "2022-02-30 10:00:00", "1661154622000"]),
    junk,
)
noisy_body = st.one_of(
    st.fixed_dictionaries(
        {"eventTs": event_ts, "eventType": st.just(1) | junk, "customerList": junk},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "eventTs": event_ts,
            "eventType": junk,
            "customerList": st.lists(st.one_of(valid_record, noisy_record), max_size=4),
        },
    ),
    junk,
)
noisy_events = st.one_of(
    st.dictionaries(st.sampled_from([*KNOWN_OPS, "add ", "purge", "ADD"]), noisy_body, max_size=4),
    clean_ops.flatmap(lambda ops: st.just({**ops, "purge": {}})),
    junk,
)
noisy_documents = st.fixed_dictionaries(
    {},
    optional={
        "msgId": st.text(max_size=70) | junk,
        "reportTs": st.sampled_from([1661154622, 1661154622000, 0, -1, 16611546, "1661154622"])
        | junk,
        "profile": st.just(PROFILE) | st.just({**PROFILE, "modelId": "140001"}) | junk,
        "events": st.one_of(clean_ops, noisy_events),
    },
)
documents = st.one_of(clean_documents, clean_documents, noisy_documents, junk)


def expected_records(document: Any) -> int:
    """How many records the known operations of a decodable envelope hold."""
    if not isinstance(document, dict) or not isinstance(document.get("events"), dict):
        return 0
    total = 0
    for key, body in document["events"].items():
        if key in KNOWN_OPS and isinstance(body, dict):
            listed = body.get("customerList")
            if isinstance(listed, list):
                total += len(listed)
    return total


def check_outcome(outcome: Outcome, error_topic: str) -> None:
    """Every processed message forwards records and/or raises alarms, all well-formed."""
    assert outcome.disposition is Disposition.PROCESSED
    assert outcome.forward or outcome.alarms
    listed = 0
    for alarm in outcome.alarms:
        assert alarm.topic == error_topic
        text = json.dumps(alarm.payload, ensure_ascii=False, allow_nan=False)
        assert json.loads(text.encode("utf-8")) == alarm.payload
        ((key, event),) = alarm.payload["events"].items()
        assert key == f"{alarm.op}_error"
        assert (event["eventType"], event["code"]) == (2, 400)
        listed += len(event["customerList"])
        if alarm.op == "unknown":
            assert event["customerList"] == []
    assert listed == outcome.rejected
    for forwarded in outcome.forward:
        json.dumps(forwarded.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")


@SETTINGS
@given(payload=st.binary(max_size=300), topics=TOPICS, rules=RULES)
def test_any_bytes_on_an_inbound_topic_give_an_outcome(
    payload: bytes, topics: tuple[str, str], rules: Rules
) -> None:
    """For any bytes, process never raises; the outcome is forwards and/or valid alarms."""
    topic, error_topic = topics
    check_outcome(pipeline(rules).process(topic, payload), error_topic)


@SETTINGS
@given(document=documents, topics=TOPICS, rules=RULES)
def test_any_envelope_like_document_is_fully_accounted_for(
    document: Any, topics: tuple[str, str], rules: Rules
) -> None:
    """Forwarded plus rejected records equal the records of the operations; alarms are JSON."""
    topic, error_topic = topics
    payload = json.dumps(document, ensure_ascii=False).encode("utf-8")
    outcome = pipeline(rules).process(topic, payload)
    check_outcome(outcome, error_topic)
    within_limits = len(payload) <= rules.max_payload_bytes
    if within_limits and not outcome.undecodable:
        assert len(outcome.forward) + outcome.rejected == expected_records(document)


@settings(max_examples=80, deadline=None)
@given(
    topic=st.one_of(
        st.text(max_size=60),
        st.builds(
            "/".join,
            st.lists(
                st.sampled_from(
                    [
                        "acme",
                        "proj_1",
                        "proj_",
                        "v1-business-model-customer",
                        "v1-customization-x-error-customer",
                        "+",
                        "#",
                        "",
                        "\x00",
                    ]
                ),
                max_size=4,
            ),
        ),
    ),
    payload=st.binary(max_size=50),
)
def test_any_topic_never_raises(topic: str, payload: bytes) -> None:
    """For any topic string, process never raises; non-inbound topics never raise an alarm."""
    outcome = pipeline().process(topic, payload)
    if outcome.disposition is not Disposition.PROCESSED:
        assert (outcome.alarms, outcome.forward) == ((), ())
