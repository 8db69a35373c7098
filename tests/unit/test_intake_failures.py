"""SPEC 6: a message the bridge fails on by its own bug is kept raw, counted, logged at error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from bridge.config import Config
from bridge.core.pipeline import Disposition, Outcome
from bridge.runtime import Bridge
from bridge.testing import FakeConnection

TOPIC = "acme/proj_42/v1-business-model-customer"
PHONE = "13800138000"


def payload(customer_id: str) -> bytes:
    """A valid add envelope of one customer, carrying a phone number."""
    document = {
        "reportTs": 1661154622,
        "msgId": f"m-{customer_id}",
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {
            "add": {
                "eventTs": 1661154622000,
                "eventType": 1,
                "customerList": [
                    {
                        "id": customer_id,
                        "projectId": "1117745722292428800",
                        "name": "张三",
                        "phone": PHONE,
                    }
                ],
            }
        },
    }
    return json.dumps(document).encode()


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    """A bridge with a jsonl sink, not connected (the intake is driven by the test)."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"},
            "health": {"enabled": False},
            "validation": {"workers": 0},
            "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        }
    )
    made = Bridge(config, structlog.get_logger("test"), connection=FakeConnection.of)
    made.intake.attach(made.connection)
    try:
        yield made
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()


def test_a_message_the_pipeline_fails_on_is_kept_raw_and_the_rest_go_on(
    bridge: Bridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug on one message: it is a raw dead letter, counted and logged at error (with no
    personal data), acknowledged; the other messages of the batch are forwarded."""
    process = bridge.pipeline.process

    def buggy(topic: str, raw: bytes) -> Outcome:
        if b'"bad"' in raw:
            raise KeyError(PHONE)  # a bug whose text quotes the payload
        return process(topic, raw)

    monkeypatch.setattr(bridge.pipeline, "process", buggy)

    with capture_logs() as logs:
        fake = bridge.connection
        assert isinstance(fake, FakeConnection)
        fake.reconnect()
        batch = [fake.message(TOPIC, payload(c), qos=0) for c in ("good-1", "bad", "good-2")]
        bridge.intake.process(batch)

    (letter,) = bridge.spool.dead_letters()
    assert letter.kind == "payload"
    assert letter.body == payload("bad")
    assert letter.topic == TOPIC
    assert bridge.stats.failed == 1
    assert bridge.stats.unacked == 0
    failed = [line for line in logs if line["event"] == "pipeline_failed"]
    assert [(line["log_level"], line["error"]) for line in failed] == [("error", "KeyError")]
    assert PHONE not in json.dumps(logs, default=str)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["customer"]["id"] for line in out] == ["good-1", "good-2"]


def test_a_number_no_float_holds_in_a_rejected_record_is_alarmed_as_its_text(
    bridge: Bridge, tmp_path: Path
) -> None:
    """A record with `1e400` in an integer field fails validation; its alarm quotes the record,
    the number as its text (docs/contract.md), and the rest of the group is forwarded."""
    bad = payload("big").replace(b'"name"', b'"age": 1e400, "name"')
    fake = bridge.connection
    assert isinstance(fake, FakeConnection)
    fake.reconnect()

    bridge.intake.process([fake.message(TOPIC, p) for p in (payload("a"), bad, payload("b"))])

    assert fake.acked == [1, 2, 3]
    assert bridge.stats.failed == 0
    (row,) = bridge.spool.due("@alarms", 10)
    (alarm,) = json.loads(row.body)["payload"]["events"].values()
    quoted = alarm["customerList"]
    assert [(c["id"], c["age"]) for c in quoted] == [("big", "1e400")]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["customer"]["id"] for line in out] == ["a", "b"]


def test_a_bug_in_the_digest_is_kept_raw_and_the_rest_go_on(
    bridge: Bridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard covers the digest too (the encoding of events and alarms), not only the
    pipeline: a bug there makes that message a raw dead letter, never the group's loss."""
    import bridge.intake.workers as workers  # noqa: PLC0415 - the module the guard is in

    real = workers.digest

    def buggy(outcome: Outcome, raw: bytes) -> object:
        if b'"bad"' in raw and outcome.disposition is not Disposition.FAILED:
            raise TypeError(PHONE)
        return real(outcome, raw)

    monkeypatch.setattr(workers, "digest", buggy)
    fake = bridge.connection
    assert isinstance(fake, FakeConnection)
    fake.reconnect()

    bridge.intake.process([fake.message(TOPIC, payload(c)) for c in ("good-1", "bad", "good-2")])

    assert fake.acked == [1, 2, 3]
    (letter,) = bridge.spool.dead_letters()
    assert (letter.kind, letter.body) == ("payload", payload("bad"))
    assert bridge.stats.failed == 1
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["customer"]["id"] for line in out] == ["good-1", "good-2"]
