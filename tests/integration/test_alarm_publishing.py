"""SPEC 6 alarms published in batches with many publishes in flight, against a real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import structlog
from brokers import Mosquitto, MqttProbe

from bridge.config import BrokerConfig, DeliveryConfig, ReconnectConfig
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.delivery import Worker, alarm_sender
from bridge.errors import BrokerError, PublishRefused
from bridge.mqtt import Publisher
from bridge.sinks.republish import RepublishSink
from bridge.spool import ALARMS, NewRow, Spool

LOG = structlog.get_logger()
PROTOCOLS = ["5", "3.1.1"]
TOPICS = [f"alarms/ok/t{n}" for n in range(4)]


def alarm(n: int, topic: str) -> NewRow:
    """An alarm row whose payload carries `n`, so the subscriber can count each one."""
    return NewRow(ALARMS, "", json.dumps({"topic": topic, "payload": {"n": n}}))


def numbers(messages: Sequence[tuple[str, bytes]]) -> list[int]:
    """The `n` of each message received, in arrival order."""
    return [int(json.loads(payload)["n"]) for _, payload in messages]


def publisher_for(server: Mosquitto, protocol: str, **extra: object) -> Publisher:
    """A started publisher on `server`, once it is connected."""
    config = BrokerConfig(
        host=server.host,
        port=server.port,
        protocol=protocol,  # type: ignore[arg-type]
        client_id="bridge-test",
        publish_timeout=5.0,
        reconnect=ReconnectConfig(min_delay=1, max_delay=1),
        **extra,  # type: ignore[arg-type]
    )
    publisher = Publisher(config, LOG)
    publisher.start()
    assert publisher.connected.wait(10), "the publisher did not connect"
    return publisher


def alarm_worker(spool: Spool, publish_many: object, batch_size: int = 50) -> Worker:
    """The runtime's alarm worker over `spool`, with retries quick enough for a test."""
    return Worker(
        ALARMS,
        alarm_sender(publish_many),  # type: ignore[arg-type]
        spool,
        DeliveryConfig(initial_backoff=0.1, max_backoff=0.5),
        threading.Event(),
        LOG,
        batch_size=batch_size,
        gave_up=lambda _rows, _reason: [],
        kind="alarm",
    )


def drain(w: Worker, spool: Spool, timeout: float = 30.0) -> None:
    """Step the worker until the outbox is empty."""
    deadline = time.monotonic() + timeout
    while spool.pending and time.monotonic() < deadline:
        if not w.step():
            time.sleep(0.05)
    assert spool.pending == 0, f"{spool.pending} alarms still in the outbox"


def distinct_within(watcher: MqttProbe, count: int, timeout: float) -> list[int]:
    """The `n` of every message received, once `count` distinct ones came or 3 s brought none."""
    deadline = time.monotonic() + timeout
    seen, quiet_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        received = numbers(watcher.messages)
        if len(set(received)) >= count or time.monotonic() - quiet_since > 3.0:
            break
        if len(received) > seen:
            seen, quiet_since = len(received), time.monotonic()
        time.sleep(0.1)
    return numbers(watcher.messages)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A fresh spool file in tmp_path, closed afterwards."""
    opened = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_many_alarms_in_flight_arrive_once_in_order(
    mosquitto: Mosquitto, spool: Spool, protocol: str
) -> None:
    """A backlog of alarms, published many in flight: each arrives once, in order per topic."""
    count = 600
    spool.store([alarm(n, TOPICS[n % len(TOPICS)]) for n in range(count)], [])
    with MqttProbe(mosquitto.host, mosquitto.port, mqtt5=protocol == "5") as watcher:
        watcher.subscribe("alarms/#", qos=1)
        publisher = publisher_for(mosquitto, protocol)
        try:
            drain(alarm_worker(spool, publisher.publish_many, batch_size=200), spool)
            received = watcher.wait_for(count, timeout=30)
        finally:
            publisher.stop()
    assert sorted(numbers(received)) == list(range(count))
    for topic in TOPICS:
        on_topic = numbers([m for m in received if m[0] == topic])
        assert on_topic == sorted(on_topic), f"{topic} out of order"
    assert spool.dead_count() == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publish_many_reports_one_outcome_per_message(mosquitto: Mosquitto, protocol: str) -> None:
    """publish_many answers None for every message the broker took, keeping payload bytes."""
    payloads = [json.dumps({"n": n, "name": "Zoë"}, ensure_ascii=False).encode() for n in range(50)]
    with MqttProbe(mosquitto.host, mosquitto.port, mqtt5=protocol == "5") as watcher:
        watcher.subscribe("alarms/#", qos=1)
        publisher = publisher_for(mosquitto, protocol)
        try:
            outcomes = publisher.publish_many([("alarms/ok/x", p, 1, False) for p in payloads])
            received = watcher.wait_for(len(payloads), timeout=10)
        finally:
            publisher.stop()
    assert outcomes == [None] * len(payloads)
    assert [payload for _, payload in received] == payloads


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto whose ACL lets the user `bridge` publish under alarms/ok/ only."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n\nuser bridge\ntopic write alarms/ok/#\n")
    server = Mosquitto(tmp_path / "acl-broker", extra_config=[f"acl_file {acl}"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_refused_alarms_are_dead_lettered_alone(acl_broker: Mosquitto, spool: Spool) -> None:
    """MQTT 5: the broker refuses one error topic (0x87): only its alarms become dead letters."""
    denied = "alarms/denied/t"
    rows = [alarm(n, denied if n % 5 == 2 else TOPICS[n % 2]) for n in range(40)]
    spool.store(rows, [])
    with MqttProbe(acl_broker.host, acl_broker.port, mqtt5=True) as watcher:
        watcher.subscribe("alarms/#", qos=1)
        publisher = publisher_for(acl_broker, "5", username="bridge")
        try:
            drain(alarm_worker(spool, publisher.publish_many), spool)
            allowed = [n for n in range(40) if n % 5 != 2]
            received = watcher.wait_for(len(allowed), timeout=10)
        finally:
            publisher.stop()
    assert sorted(numbers(received)) == allowed
    letters = spool.dead_letters()
    assert sorted(json.loads(letter.body)["payload"]["n"] for letter in letters) == [
        n for n in range(40) if n % 5 == 2
    ]
    assert {letter.kind for letter in letters} == {"alarm"}
    assert all("Not authorized" in letter.reason for letter in letters)


def test_publish_many_names_the_refused_message(acl_broker: Mosquitto) -> None:
    """One refused message among taken ones gets PublishRefused; its neighbours None."""
    publisher = publisher_for(acl_broker, "5", username="bridge")
    try:
        outcomes = publisher.publish_many(
            [
                ("alarms/ok/a", b"1", 1, False),
                ("alarms/denied/b", b"2", 1, False),
                ("alarms/ok/a", b"3", 1, False),
            ]
        )
    finally:
        publisher.stop()
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], PublishRefused)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_killed_mid_batch_loses_no_alarm(
    tmp_path: Path, spool: Spool, protocol: str
) -> None:
    """kill -9 of mosquitto in a batch: every alarm is acknowledged once it is back, those
    whose acknowledgement was lost arrive after the restart, and only those arrive twice."""
    server = Mosquitto(tmp_path / "killed", persistence=True, max_queued_messages=0)
    server.start()
    count = 3000
    spool.store([alarm(n, TOPICS[n % len(TOPICS)]) for n in range(count)], [])
    watcher = MqttProbe(
        server.host, server.port, client_id="watcher", clean_session=False, mqtt5=protocol == "5"
    )
    lost: list[int] = []  # the n of every alarm whose acknowledgement was lost
    acked: list[int] = []  # the n of every alarm the broker acknowledged
    killed_at = 0  # how many the killed broker acknowledged
    try:
        watcher.connect()
        watcher.subscribe("alarms/#", qos=1)
        watcher.close()
        server.restart()  # the watcher's session is now on disk: it survives the kill
        watcher = MqttProbe(
            server.host,
            server.port,
            client_id="watcher",
            clean_session=False,
            mqtt5=protocol == "5",
        )
        watcher.connect()
        publisher = publisher_for(server, protocol)

        def observed(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
            outcomes = publisher.publish_many(messages)
            for (_, payload, _, _), outcome in zip(messages, outcomes, strict=True):
                (lost if outcome is not None else acked).append(int(json.loads(payload)["n"]))
            return outcomes

        w = alarm_worker(spool, observed, batch_size=200)
        w.start()
        try:
            watcher.wait_for(count // 4, timeout=30)
            server.kill()
            time.sleep(0.3)  # the batch in hand ends on the disconnect and records its outcome
            killed_at = len(acked)
            server.start()
            deadline = time.monotonic() + 60
            while spool.pending and time.monotonic() < deadline:
                time.sleep(0.1)
            assert spool.pending == 0
        finally:
            w.stop()
            w.join(10)
            publisher.stop()
        received = distinct_within(watcher, count, timeout=30)
    finally:
        watcher.close()
        server.stop()
    assert lost, "the kill came after the last batch: nothing was tested"
    # Each alarm was acknowledged by the broker at least once: the bridge's part.
    assert sorted(set(acked)) == list(range(count))
    # What never arrived is what mosquitto acknowledged and then lost in the kill -9 (it
    # keeps messages for subscribers in memory between autosaves), never what we retried.
    missing = set(range(count)) - set(received)
    assert missing <= set(acked[:killed_at])
    assert set(lost) <= set(received)
    twice = {n for n, seen in Counter(received).items() if seen > 1}
    assert twice <= set(lost)
    assert spool.dead_count() == 0


def republished_event(customer_id: str) -> DownstreamEvent:
    """A downstream add of one customer, for the mqtt sink."""
    return DownstreamEvent(
        op=Op.ADD,
        kind=TopicKind.STANDARD,
        tenant="acme",
        project_id="proj_42",
        version=None,
        vendor=None,
        msg_id="m-1",
        report_ts=1661154622,
        event_ts=1661154622000,
        customer={"id": customer_id, "name": "Zoë"},
    )


def test_mqtt_sink_refusal_is_the_records_alone(acl_broker: Mosquitto) -> None:
    """The mqtt sink, pipelined: the record the broker refuses (0x87) is the only one refused."""
    publisher = publisher_for(acl_broker, "5", username="bridge")
    sink = RepublishSink("out", publisher.publish_many, "alarms/{id}/x", 1, False)
    with MqttProbe(acl_broker.host, acl_broker.port, mqtt5=True) as watcher:
        watcher.subscribe("alarms/#", qos=1)
        try:
            answer = sink.send([republished_event(i) for i in ("ok", "denied", "ok", "ok")])
            received = watcher.wait_for(3, timeout=10)
        finally:
            publisher.stop()
    assert answer is not None
    assert list(answer.records) == [1]
    assert "Not authorized" in answer.records[1]
    assert [topic for topic, _ in received] == ["alarms/ok/x"] * 3
