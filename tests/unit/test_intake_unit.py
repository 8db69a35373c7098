"""The intake's ack discipline, in-process: store, then ack, in receive order (SPEC 6)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import structlog

from bridge.config import Config
from bridge.core.digest import dedup_key
from bridge.runtime import Bridge
from bridge.spool import Spool, SpoolError
from bridge.testing import FakeConnection

TOPIC = "acme/proj_42/v1-business-model-customer"


def payload(customer_id: str, msg_id: str | None = None, *, phone: str = "13800138000") -> bytes:
    """A valid add envelope of one customer."""
    document = {
        "reportTs": 1661154622,
        "msgId": msg_id or f"m-{customer_id}",
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
                        "phone": phone,
                    }
                ],
            }
        },
    }
    return json.dumps(document).encode()


def make_bridge(tmp_path: Path, **spool: object) -> Bridge:
    """A bridge whose broker connection is a FakeConnection; a webhook sink (never reached:
    not posted by the intake, its rows stay in the outbox, where the test can count them)."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL", **spool},
            "health": {"enabled": False},
            "validation": {"workers": 0},
            "sinks": [
                {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x", "direct": False}
            ],
        }
    )
    return Bridge(config, structlog.get_logger("test"), connection=FakeConnection.of)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    """A bridge not started: the test drives `intake.process` itself."""
    made = make_bridge(tmp_path)
    made.intake.attach(made.connection)
    fake(made).reconnect()
    try:
        yield made
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()


def fake(bridge: Bridge) -> FakeConnection:
    """The bridge's broker connection, which these tests always make a fake."""
    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    return connection


def stored(path: Path, keys: Sequence[str]) -> set[str]:
    """Which of `keys` a second connection to the spool file sees as committed."""
    other = Spool(path)
    try:
        return other.seen(keys)
    finally:
        other.close()


def test_acks_go_out_only_after_the_commit(bridge: Bridge, tmp_path: Path) -> None:
    """At the moment the intake acknowledges, another process already sees the batch stored."""
    connection = fake(bridge)
    keys = [dedup_key(f"m-c{i}", TOPIC, b"") for i in range(3)]
    seen_at_ack: list[set[str]] = []
    connection.on_ack = lambda _g, _ids: seen_at_ack.append(stored(tmp_path / "spool.db", keys))

    bridge.intake.process([connection.message(TOPIC, payload(f"c{i}")) for i in range(3)])

    assert seen_at_ack == [set(keys)]
    assert connection.acks == [(1, [1, 2, 3])]


def test_acks_keep_receive_order_in_one_write(bridge: Bridge) -> None:
    """A group is acknowledged once, its packet ids in the order they arrived."""
    connection = fake(bridge)
    messages = [connection.message(TOPIC, payload(f"c{i}")) for i in range(50)]

    bridge.intake.process(messages)

    assert connection.acks == [(1, list(range(1, 51)))]
    assert bridge.spool.targets() == {"hook": 50}


def test_nothing_is_acked_on_a_stale_connection(bridge: Bridge) -> None:
    """Messages of a connection that has since dropped are neither stored nor acknowledged:
    their packet ids mean something else on the new connection, and the broker resends them."""
    connection = fake(bridge)
    old = [connection.message(TOPIC, payload(f"c{i}")) for i in range(3)]
    connection.drop()
    connection.reconnect()

    bridge.intake.process(old)

    assert connection.acks == []
    assert connection.refused_acks == []
    assert bridge.spool.pending == 0
    assert bridge.stats.received == 0


def test_a_connection_lost_during_the_commit_leaves_the_batch_unacked(bridge: Bridge) -> None:
    """Stored but the connection dropped before the ack: counted unacked; the redelivery is
    then a duplicate, acknowledged without a second store."""
    connection = fake(bridge)
    first = connection.message(TOPIC, payload("c1"))
    connection.on_ack = lambda _g, _ids: connection.drop()

    bridge.intake.process([first])

    assert connection.acks == []
    assert bridge.stats.unacked == 1
    connection.on_ack = None
    connection.reconnect()
    bridge.intake.process([connection.message(TOPIC, payload("c1"))])
    assert connection.acks == [(2, [1])]
    assert bridge.spool.pending == 1
    assert bridge.stats.duplicates == 1


def test_duplicates_are_acked_without_a_second_store(bridge: Bridge) -> None:
    """A message seen before (same msgId) is acknowledged, counted, and stores nothing."""
    connection = fake(bridge)
    bridge.intake.process([connection.message(TOPIC, payload("c1", "same"))])
    before = bridge.spool.pending

    bridge.intake.process(
        [
            connection.message(TOPIC, payload("c1", "same")),
            connection.message(TOPIC, payload("c2", "other")),
            connection.message(TOPIC, payload("c2", "other")),
        ]
    )

    assert connection.acked == [1, 2, 3, 4]
    assert bridge.spool.pending == before + 1
    assert bridge.stats.duplicates == 2


def test_a_failing_spool_write_acks_nothing_and_retries(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool refuses twice (disk trouble): no ack meanwhile; the third try commits, then
    the batch is acknowledged, once."""
    connection = fake(bridge)
    real = bridge.spool.store
    failures = [SpoolError("disk I/O error"), SpoolError("disk I/O error")]
    acks_during_failure: list[int] = []

    def flaky(*args: object, **kwargs: object) -> None:
        if failures:
            acks_during_failure.append(len(connection.acks))
            raise failures.pop(0)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bridge.spool, "store", flaky)

    bridge.intake.process([connection.message(TOPIC, payload("c1"))])

    assert acks_during_failure == [0, 0]
    assert connection.acks == [(1, [1])]
    assert bridge.status.spool_writable is True
    assert bridge.spool.pending == 1


def test_stop_while_the_spool_fails_acks_nothing(tmp_path: Path) -> None:
    """A stop during a spool outage gives up the batch unacknowledged (the broker keeps it),
    and what arrives after the stop is left for redelivery."""
    made = make_bridge(tmp_path)
    connection = fake(made)
    trying = threading.Event()

    def broken(*_args: object, **_kwargs: object) -> None:
        trying.set()
        raise SpoolError("disk I/O error")

    made.spool.store = broken  # type: ignore[method-assign]
    made.intake.start(connection)
    try:
        connection.deliver(connection.message(TOPIC, payload("c1")))
        assert trying.wait(10)
        made.intake.stop(10)
        connection.deliver(connection.message(TOPIC, payload("c2")))
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()

    assert connection.acks == []
    assert made.stats.unacked == 1
    assert made.stats.left_for_redelivery == 1


def test_the_intake_thread_groups_what_arrived_meanwhile(tmp_path: Path) -> None:
    """Reads that arrive while a commit runs are stored together and acked in order, the
    group never larger than `spool.intake_batch`."""
    made = make_bridge(tmp_path, intake_batch=7)
    connection = fake(made)
    groups: list[int] = []
    real = made.spool.store
    gate = threading.Event()

    def slow(rows: object, keys: Sequence[str], raws: object) -> None:
        gate.wait(10)  # the first commit waits until every read has arrived
        groups.append(len(keys))
        real(rows, keys, raws)  # type: ignore[arg-type]

    made.spool.store = slow  # type: ignore[method-assign,assignment]
    made.intake.start(connection)
    try:
        for i in range(20):
            connection.deliver(connection.message(TOPIC, payload(f"c{i}")))
        gate.set()
        deadline = time.monotonic() + 10
        while len(connection.acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        made.intake.stop(10)
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()

    assert connection.acked == list(range(1, 21))
    assert sum(groups) == 20
    assert max(groups) <= 7
    assert len(groups) <= 4  # 1 (taken before the gate opened) + 19 in groups of up to 7


def test_qos0_messages_are_stored_and_need_no_ack(bridge: Bridge) -> None:
    """QoS 0 carries no packet id: stored like the others, nothing to acknowledge."""
    connection = fake(bridge)

    bridge.intake.process([connection.message(TOPIC, payload("c1"), qos=0)])

    assert connection.acks == []
    assert bridge.spool.pending == 1
    assert bridge.stats.unacked == 0


def test_a_small_group_lingers_for_more_then_goes_alone(tmp_path: Path) -> None:
    """Reads arriving one by one within `spool.intake_linger` of the first make one group
    (one commit, one write of the acks); a lone message then waits no longer than the
    linger. A group as large as the linger's bound does not wait at all."""
    linger = 0.5  # long, so the test does not depend on how fast this host is
    made = make_bridge(tmp_path, intake_linger=linger)
    connection = fake(made)
    groups: list[int] = []
    real = made.spool.store

    def counted(rows: object, keys: Sequence[str], raws: object) -> None:
        groups.append(len(keys))
        real(rows, keys, raws)  # type: ignore[arg-type]

    def acked(count: int) -> float:
        started = time.monotonic()
        while len(connection.acked) < count and time.monotonic() < started + 10:
            time.sleep(0.005)
        return time.monotonic() - started

    made.spool.store = counted  # type: ignore[method-assign,assignment]
    made.intake.start(connection)
    try:
        for i in range(10):
            connection.deliver(connection.message(TOPIC, payload(f"c{i}")))
        acked(10)
        connection.deliver(connection.message(TOPIC, payload("alone")))
        alone = acked(11)
        connection.deliver(*(connection.message(TOPIC, payload(f"b{i}")) for i in range(64)))
        full = acked(75)
        made.intake.stop(10)
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()

    assert connection.acked == list(range(1, 76))
    assert groups == [10, 1, 64]
    assert alone < 5  # it waited for the linger, and not for ever
    assert full < linger  # more than the bound queued at once: no wait


def test_large_payloads_make_small_groups_and_hold_the_socket(tmp_path: Path) -> None:
    """Groups carry at most `group_bytes` of payload beyond their first message, and the
    queue at most four groups' worth: a read beyond it waits (the real connection stops
    reading the socket, the broker keeps the rest) until the intake has taken some."""
    made = make_bridge(tmp_path, min_free=16 * 40_000)  # group_bytes: 40 KB
    connection = fake(made)
    big = [
        payload(f"c{i}", phone="1" * 20).replace(
            b'"phone"', b'"x": "' + b"p" * 9_500 + b'", "phone"'
        )
        for i in range(40)
    ]
    assert all(10_000 > len(b) > 9_500 for b in big)
    groups: list[int] = []
    real = made.spool.store
    gate = threading.Event()

    def slow(rows: object, keys: Sequence[str], raws: object) -> None:
        gate.wait(10)
        groups.append(len(keys))
        real(rows, keys, raws)  # type: ignore[arg-type]

    made.spool.store = slow  # type: ignore[method-assign,assignment]
    made.intake.start(connection)
    reads = threading.Thread(
        target=lambda: [connection.deliver(connection.message(TOPIC, b)) for b in big]
    )
    try:
        reads.start()
        reads.join(1.0)
        held = reads.is_alive()  # the queue is full while the first commit waits
        queued = made.intake.queued
        gate.set()
        reads.join(10)
        deadline = time.monotonic() + 10
        while len(connection.acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        made.intake.stop(10)
    finally:
        gate.set()
        for target in made.targets:
            target.sink.close()
        made.spool.close()

    assert held
    assert 16 <= queued <= 17  # 160 KB of 10 KB payloads: the first read beyond it waits
    assert connection.acked == list(range(1, 41))
    assert sum(groups) == 40
    assert max(groups) <= 5  # the first message and 40 KB more


def without_name(customer_id: str) -> bytes:
    """A valid envelope but for its one record, which lacks its required name."""
    document = json.loads(payload(customer_id))
    del document["events"]["add"]["customerList"][0]["name"]
    return json.dumps(document).encode()


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_a_group_is_counted_message_by_message(tmp_path: Path, level: int) -> None:
    """One group of usual, repeated, alarmed, ignored and unreadable messages: each is
    counted under its own disposition, and the latency histogram counts every one, whether
    each message is logged (debug) or only summed (info)."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"},
            "health": {"enabled": False},
            "validation": {"workers": 0},
            "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        }
    )
    logger = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()),
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    made = Bridge(config, logger, connection=FakeConnection.of)
    connection = fake(made)
    made.intake.attach(connection)
    connection.reconnect()
    group = [
        connection.message(TOPIC, payload("c1")),
        connection.message(TOPIC, payload("c2")),
        connection.message(TOPIC, payload("c1")),  # the same msgId again
        connection.message(TOPIC, without_name("c3")),
        connection.message("acme/proj_42/v1-business-model-customer_error", b"{}"),
        connection.message("elsewhere/entirely", b"{}"),
        connection.message(TOPIC, b"{not json"),
    ]
    try:
        made.intake.process(group)
        text = made.metrics.render().decode()
    finally:
        for target in made.targets:
            target.sink.close()
        made.spool.close()

    stats = made.stats
    assert (stats.received, stats.forwarded, stats.duplicates) == (7, 2, 1)
    assert stats.rejected == 1
    assert sum(stats.alarms.values()) == 2  # the record without a name, the unreadable one
    assert sum(stats.ignored.values()) == 2
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("bridge_messages_received_total", "bridge_processing_seconds_count"))
    }
    assert samples['bridge_messages_received_total{disposition="processed"}'] == 4
    assert samples['bridge_messages_received_total{disposition="duplicate"}'] == 1
    assert samples["bridge_processing_seconds_count"] == 7
    assert connection.acked == [1, 2, 3, 4, 5, 6, 7]
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["customer"]["id"] for line in lines] == ["c1", "c2"]
