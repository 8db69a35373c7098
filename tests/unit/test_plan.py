"""The plan step: a batch of outcomes -> outbox rows, keys, direct hand-overs, repeats."""

from __future__ import annotations

import hashlib
import json

from bridge.config import Config
from bridge.core.digest import FAILED_REASON, Digest, dedup_key, digest
from bridge.core.pipeline import Disposition, Outcome, Pipeline
from bridge.core.plan import Destination, Plan, plan
from bridge.core.records import Op
from bridge.sinks import Route
from bridge.spool import ALARMS

TOPIC = "acme/proj_42/v1-business-model-customer"
CONFIG = Config.model_validate({"sinks": [{"type": "log"}]})
PIPELINE = Pipeline(
    CONFIG.validation.rules(), CONFIG.subscription.selection(), now_ms=lambda: 0, new_id=str
)


def envelope(msg_id: str, *customers: str, op: str = "add", nameless: str = "") -> bytes:
    """An envelope with one operation over `customers`; `nameless` lacks its required name."""
    records: list[dict[str, str]] = []
    for c in customers:
        record = {"id": c, "projectId": "1117745722292428800", "phone": "13800138000"}
        if c != nameless:
            record["name"] = "张三"
        records.append(record)
    body: dict[str, object] = {"eventTs": 1661154622000, "eventType": 1}
    body["customerList"] = records
    document = {
        "reportTs": 1661154622,
        "msgId": msg_id,
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {op: body},
    }
    return json.dumps(document).encode()


def received(raw: bytes, topic: str = TOPIC) -> tuple[Digest, bytes]:
    """The digest of what the pipeline makes of a message, with its payload."""
    return digest(PIPELINE.process(topic, raw), raw), raw


def planned(
    batch: list[tuple[Digest, bytes]],
    seen: set[str],
    destinations: list[Destination],
    caught_up: set[str],
) -> Plan:
    """`plan` over messages given as (digest, payload) pairs."""
    return plan([d for d, _ in batch], [p for _, p in batch], seen, destinations, caught_up)


EVERYTHING = Destination("hook", Route())
ADDS_ONLY = Destination("adds", Route(ops=(Op.ADD,)))
LOCAL = Destination("file", Route())


def test_each_event_goes_to_every_destination_whose_route_matches() -> None:
    """Two customers, two sinks (one taking adds only): a row per event per sink, in order."""
    result = planned([received(envelope("m1", "a", "b"))], set(), [EVERYTHING, ADDS_ONLY], set())

    assert [(row.target, row.okey.split("\x1f")[-1]) for row in result.rows] == [
        ("hook", "a"),
        ("adds", "a"),
        ("hook", "b"),
        ("adds", "b"),
    ]
    assert result.rows[0].body == result.rows[1].body  # encoded once for both
    assert result.keys == ["m:m1"]
    assert result.duplicates == set()


def test_a_caught_up_local_sink_gets_its_events_directly() -> None:
    """A caught-up sink's events are handed over, not stored; the others still get rows."""
    result = planned([received(envelope("m1", "a"))], set(), [LOCAL, EVERYTHING], {"file"})

    assert [row.target for row in result.rows] == ["hook"]
    (record,) = result.direct["file"]
    assert record.event().customer_id == "a"
    assert record.body == result.rows[0].body


def test_repeats_in_the_batch_and_from_before_store_nothing() -> None:
    """A key the spool holds, and the second copy within the batch, are duplicates."""
    batch = [
        received(envelope("old", "a")),
        received(envelope("new", "b")),
        received(envelope("new", "b")),
    ]

    result = planned(batch, {"m:old"}, [EVERYTHING], set())

    assert result.duplicates == {0, 2}
    assert result.keys == ["m:new"]
    assert [row.okey.split("\x1f")[-1] for row in result.rows] == ["b"]


def test_a_rejected_record_becomes_an_alarm_row_beside_the_valid_ones() -> None:
    """The alarm of a rejected record is an outbox row of the alarm target; its sibling
    goes on to the sink."""
    result = planned([received(envelope("m1", "a", "b", nameless="b"))], set(), [EVERYTHING], set())

    assert [row.target for row in result.rows] == ["hook", ALARMS]
    assert "add_error" in result.rows[1].body
    assert result.keys == ["m:m1"]


def test_an_unreadable_payload_is_kept_raw_with_its_alarm() -> None:
    """Not JSON: an unknown_error alarm, the payload in the dead letters, its hash as key."""
    raw = b"{not json"
    result = planned([received(raw)], set(), [EVERYTHING], set())

    assert [row.target for row in result.rows] == [ALARMS]
    assert [(topic, body) for topic, body, _reason in result.raws] == [(TOPIC, raw)]
    assert result.keys == [dedup_key(None, TOPIC, raw)]


def test_a_message_the_pipeline_failed_on_is_kept_raw_without_a_key() -> None:
    """A bug: kept raw for a fixed version, no key, so its redelivery is not a duplicate."""
    failed = digest(Outcome(TOPIC, Disposition.FAILED), b"{}"), b"{}"

    result = planned([failed], set(), [EVERYTHING], set())

    assert result.raws == [(TOPIC, b"{}", FAILED_REASON)]
    assert (result.rows, result.keys) == ([], [])
    assert result.writes


def test_an_ignored_message_plans_nothing() -> None:
    """A topic outside the subscription: nothing stored, nothing kept."""
    result = planned([received(b"{}", "acme/other")], set(), [EVERYTHING], set())

    assert not result.writes
    assert result.duplicates == set()


def test_a_message_without_msgid_is_keyed_by_the_sha256_of_topic_and_payload() -> None:
    """The key of a message without msgId is hashlib's SHA-256 of topic, NUL and payload
    (computed without OpenSSL in the workers: the same digest)."""
    payload = b'{"events":{}}' * 100
    expected = hashlib.sha256(TOPIC.encode() + b"\0" + payload).hexdigest()
    assert dedup_key(None, TOPIC, payload) == "h:" + expected
    assert dedup_key("m-1", TOPIC, payload) == "m:m-1"


def test_routes_that_take_everything_give_each_sink_what_matching_per_record_gives() -> None:
    """With every route open, records go to each sink whole; the rows each sink gets, and
    their order, are those that matching each record against each route gives (a route
    listing every operation lets all through too, but is matched record by record)."""
    batch = [
        received(envelope("m1", "a", "b")),
        received(envelope("m2", "c", nameless="c")),
        received(envelope("m3", "d", "e", op="edit")),
        received(envelope("m1", "a", "b")),
    ]
    listed = Route(ops=tuple(Op))
    open_plan = planned(batch, set(), [LOCAL, EVERYTHING], {"file"})
    matched = planned(
        batch,
        set(),
        [Destination("file", listed), Destination("hook", listed)],
        {"file"},
    )

    def by_sink(result: Plan) -> dict[str, list[tuple[str, bytes | str]]]:
        found: dict[str, list[tuple[str, bytes | str]]] = {}
        for row in result.rows:
            found.setdefault(row.target, []).append((row.okey, row.body))
        return found

    assert by_sink(open_plan) == by_sink(matched)
    assert [r.okey for r in open_plan.direct["file"]] == [r.okey for r in matched.direct["file"]]
    assert [r.okey.split("\x1f")[-1] for r in open_plan.direct["file"]] == ["a", "b", "d", "e"]
    assert open_plan.keys == matched.keys == ["m:m1", "m:m2", "m:m3"]
    assert open_plan.duplicates == matched.duplicates == {3}
