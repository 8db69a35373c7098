"""The intake posts a caught-up webhook's events itself (`direct`), against a real loopback
receiver: no outbox rows on the way, each group's requests in receive order and of
`batch_size` at most, the ack after the answer; a failure, a refusal or a slow answer sends
the sink's events through the outbox, and per-customer order holds across the switch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import Config
from bridge.delivery import Gate
from bridge.runtime import Bridge
from bridge.testing import FakeConnection, Recorder

TOPIC = "acme/proj_42/v1-business-model-customer"

# Loopback requests must not be sent to a proxy from the environment.
pytestmark = pytest.mark.usefixtures("no_proxies")


def envelope(msg_id: str, customers: list[str]) -> bytes:
    """A valid add envelope of `customers` (ids)."""
    document = {
        "reportTs": 1661154622,
        "msgId": msg_id,
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {
            "add": {
                "eventTs": 1661154622000,
                "eventType": 1,
                "customerList": [
                    {
                        "id": c,
                        "projectId": "1117745722292428800",
                        "name": "张三",
                        "phone": "13800138000",
                    }
                    for c in customers
                ],
            }
        },
    }
    return json.dumps(document).encode()


@pytest.fixture
def receiver() -> Iterator[Recorder]:
    """A webhook receiver on a free loopback port, answering 200."""
    with Recorder(path="/hooks") as server:
        yield server


def make_bridge(tmp_path: Path, url: str, **sink: Any) -> Bridge:
    """A bridge not started (the test drives `intake.process`), one webhook sink to `url`."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"},
            "health": {"enabled": False},
            "validation": {"workers": 0},
            "sinks": [{"type": "webhook", "name": "hook", "url": url, **sink}],
        }
    )
    bridge = Bridge(config, structlog.get_logger("test"), connection=FakeConnection.of)
    bridge.intake.attach(bridge.connection)
    fake(bridge).reconnect()
    return bridge


@pytest.fixture
def closing() -> Iterator[list[Bridge]]:
    """Bridges to close after the test."""
    made: list[Bridge] = []
    yield made
    for bridge in made:
        for target in bridge.targets:
            target.sink.close()
        bridge.spool.close()


def fake(bridge: Bridge) -> FakeConnection:
    """The bridge's broker connection, a FakeConnection in these tests."""
    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    return connection


def ids_received(receiver: Recorder) -> list[list[str]]:
    """Each request's customer ids, in the order the requests came."""
    return [[e["customer"]["id"] for e in r.json()["events"]] for r in receiver.recorded()]


def group(bridge: Bridge, *envelopes: tuple[str, list[str]]) -> None:
    """Let the intake take one group of these envelopes (msgId, customer ids)."""
    connection = fake(bridge)
    bridge.intake.process([connection.message(TOPIC, envelope(m, c)) for m, c in envelopes])


def test_a_caught_up_webhook_gets_the_group_without_outbox_rows(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge]
) -> None:
    """Nothing is stored for the sink: the group is posted before its commit, in requests of
    `batch_size` in receive order, and acknowledged after the answers."""
    bridge = make_bridge(tmp_path, receiver.url, batch_size=4)
    closing.append(bridge)
    customers = [f"c{i}" for i in range(10)]

    group(bridge, ("m1", customers[:6]), ("m2", customers[6:]))

    assert ids_received(receiver) == [customers[:4], customers[4:8], customers[8:]]
    assert bridge.spool.targets() == {}
    assert fake(bridge).acked == [1, 2]
    assert bridge.targets.delivered() == {"hook": 10, "@alarms": 0}
    # The body is the one the outbox path would send: the contract's events, as JSON.
    first = receiver.recorded()[0]
    assert first.headers["x-bridge-batch-size"] == "4"
    assert first.json()["events"][0]["msgId"] == "m1"


def test_a_failing_webhook_sends_the_rest_through_the_outbox_in_order(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge]
) -> None:
    """A 503 on the second request: the first went out, the rest are rows (acked, since
    stored); while rows wait, later groups are stored behind them, not posted."""
    bridge = make_bridge(tmp_path, receiver.url, batch_size=2)
    closing.append(bridge)
    receiver.statuses.extend([200, 503])

    group(bridge, ("m1", ["a", "b", "c", "d", "e"]))
    group(bridge, ("m2", ["c"]))

    assert ids_received(receiver) == [["a", "b"], ["c", "d"]]
    assert bridge.spool.targets() == {"hook": 4}  # c, d, e, then the later c behind them
    assert fake(bridge).acked == [1, 2]
    # The worker then sends them in receive order: the customer's two events one after another.
    worker = next(w for w in bridge.targets.workers if w.name == "hook")
    while worker.step():
        pass
    assert ids_received(receiver)[2:] == [["c", "d"], ["e", "c"]]
    assert bridge.spool.targets() == {}
    # Caught up again: the next group is posted directly.
    group(bridge, ("m3", ["f"]))
    assert ids_received(receiver)[4:] == [["f"]]
    assert bridge.spool.targets() == {}


def test_a_refusal_is_settled_by_the_worker(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge]
) -> None:
    """A 400 refuses the request for good: the records go to the outbox, whose worker splits
    the batch until the refused record stands alone as a dead letter."""
    bridge = make_bridge(tmp_path, receiver.url, batch_size=10)
    closing.append(bridge)
    receiver.refuse = lambda request: b'"bad"' in request.body

    group(bridge, ("m1", ["ok1", "bad", "ok2"]))

    assert bridge.spool.targets() == {"hook": 3}
    assert fake(bridge).acked == [1]
    worker = next(w for w in bridge.targets.workers if w.name == "hook")
    while worker.step():
        pass
    delivered = [ids for ids in ids_received(receiver)[1:] if "bad" not in ids]
    assert [c for ids in delivered for c in ids] == ["ok1", "ok2"]
    assert [(d.target, d.okey.split("\x1f")[-1]) for d in bridge.spool.dead_letters()] == [
        ("hook", "bad")
    ]


def test_a_slow_group_stops_at_its_budget_and_the_rest_is_stored(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge]
) -> None:
    """The budget bounds the wait inside a group too: once a request ends past it, the
    group's later events are stored as rows (in order, behind nothing), not posted, so a
    slow receiver holds the intake for one request past the budget at most."""
    bridge = make_bridge(tmp_path, receiver.url, batch_size=1, direct_budget=0.05)
    closing.append(bridge)
    receiver.delay = 0.2

    group(bridge, ("m1", ["a", "b", "c"]))

    assert ids_received(receiver) == [["a"]]
    assert bridge.spool.targets() == {"hook": 2}
    assert fake(bridge).acked == [1]
    receiver.delay = 0.0
    worker = next(w for w in bridge.targets.workers if w.name == "hook")
    while worker.step():
        pass
    assert ids_received(receiver) == [["a"], ["b"], ["c"]]


def test_a_slow_webhook_is_paused_and_goes_through_the_outbox(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge]
) -> None:
    """A group whose requests take longer than `direct_budget` is still delivered, but the
    sink's next groups are stored as rows until the pause is over."""
    bridge = make_bridge(tmp_path, receiver.url, direct_budget=0.05)
    closing.append(bridge)
    target = next(iter(bridge.targets))
    receiver.delay = 0.2

    group(bridge, ("m1", ["a"]))

    assert ids_received(receiver) == [["a"]]
    assert not target.gate.open(time.monotonic())
    receiver.delay = 0.0
    group(bridge, ("m2", ["b"]))
    assert ids_received(receiver) == [["a"]]
    assert bridge.spool.targets() == {"hook": 1}

    target.gate.until = 0.0  # the pause is over
    worker = next(w for w in bridge.targets.workers if w.name == "hook")
    while worker.step():
        pass
    group(bridge, ("m3", ["c"]))
    assert ids_received(receiver) == [["a"], ["b"], ["c"]]
    assert bridge.spool.targets() == {}


@pytest.mark.parametrize("settings", [{"direct": False}, {"lanes": 4}])
def test_without_direct_or_with_lanes_every_event_is_a_row(
    receiver: Recorder, tmp_path: Path, closing: list[Bridge], settings: dict[str, Any]
) -> None:
    """`direct: false`, and a sink with lanes (a receiver a round trip away), keep the outbox."""
    bridge = make_bridge(tmp_path, receiver.url, **settings)
    closing.append(bridge)

    group(bridge, ("m1", ["a", "b"]))

    assert receiver.recorded() == []
    assert bridge.spool.targets() == {"hook": 2}


def test_the_gate_closes_only_past_its_budget() -> None:
    """A hand-over within budget leaves the gate open; one past it closes it for `pause`."""
    gate = Gate(pause=30.0)
    assert gate.open(100.0)
    assert not gate.took(0.2, 0.25, now=100.0)
    assert not gate.took(5.0, None, now=100.0)  # a local sink has no budget
    assert gate.open(100.0)
    assert gate.took(0.3, 0.25, now=100.0)
    assert not gate.open(129.9)
    assert gate.open(130.0)
