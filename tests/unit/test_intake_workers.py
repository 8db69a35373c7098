"""Worker processes digest a group exactly as the intake would, and a dead one costs nothing."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from bridge.config import Config
from bridge.core.digest import Digest
from bridge.core.pipeline import Pipeline
from bridge.intake.workers import DigestPool, LocalShare, Slices, digest_message, serve
from bridge.runtime import Bridge
from bridge.testing import FakeConnection

STANDARD = "acme/proj_42/v1-business-model-customer"
CUSTOM = "acme/proj_42/v2-customization-海康威视-customer"
VARYING = re.compile(r'"(msgId|reportTs|eventTs)":("[^"]*"|\d+),?')
CONFIG = Config.model_validate({"sinks": [{"type": "log"}], "health": {"enabled": False}})


def envelope(index: int) -> bytes:
    """A varied envelope: valid records, a record without its name, or not JSON at all."""
    if index % 17 == 5:
        return b"{not json " + str(index).encode()
    records = [
        {"id": f"c{index}-{n}", "projectId": "42", "name": "张三", "phone": "13800138000"}
        for n in range(1 + index % 3)
    ]
    if index % 7 == 3:
        del records[0]["name"]
    return add_envelope(f"m{index}", records)


def add_envelope(msg_id: str, records: list[dict[str, str]]) -> bytes:
    """An add envelope of `records`."""
    document = {
        "reportTs": 1661154622,
        "msgId": msg_id,
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {"add": {"eventTs": 1661154622000, "eventType": 1, "customerList": records}},
    }
    return json.dumps(document, ensure_ascii=False).encode()


def items(count: int) -> list[tuple[str | None, bytes]]:
    """Messages on both topic families, one with a topic that was not UTF-8, one ignored."""
    made: list[tuple[str | None, bytes]] = []
    for i in range(count):
        topic: str | None = STANDARD if i % 2 else CUSTOM
        if i % 23 == 7:
            topic = None
        elif i % 29 == 11:
            topic = "acme/elsewhere"
        made.append((topic, envelope(i)))
    return made


@pytest.fixture
def pool() -> Iterator[DigestPool]:
    """Two real worker processes."""
    made = DigestPool(2, CONFIG)
    try:
        yield made
    finally:
        made.close()


def comparable(digests: list[Digest]) -> list[object]:
    """Digests without what differs from run to run: the alarms' own ids and times."""
    return [
        msgspec.structs.replace(
            d, alarm_bodies=tuple(VARYING.sub("", body) for body in d.alarm_bodies)
        )
        for d in digests
    ]


def test_workers_digest_as_the_intake_does_in_order(pool: DigestPool) -> None:
    """300 varied messages: the pool's digests equal those made in one process, in order."""
    pipeline = Pipeline(CONFIG.validation.rules(), CONFIG.subscription.selection())
    log = structlog.get_logger("test")
    batch = items(300)

    here = [digest_message(pipeline, log, topic, payload) for topic, payload in batch]
    there = pool.digest(batch)

    assert comparable(there) == comparable(here)
    assert [d.forward for d in there] == [d.forward for d in here]
    assert len(pool.pids()) == 2
    assert os.getpid() not in pool.pids()


def test_a_worker_process_maps_only_what_the_core_needs(pool: DigestPool) -> None:
    """A worker has digested messages without any message lacking a msgId too (the hash
    of the payload), and still maps none of OpenSSL, pydantic-core, SQLite or the bridge's
    I/O libraries: each would cost every worker megabytes of RSS (docs/performance.md)."""
    batch = [(t, p.replace(b'"msgId"', b'"noId"')) for t, p in items(40)]
    assert any(d.key and d.key.startswith("h:") for d in pool.digest(batch))
    for pid in pool.pids():
        maps = Path(f"/proc/{pid}/maps").read_text()
        for library in ("libcrypto", "libssl", "_hashlib", "_pydantic_core", "sqlite3"):
            assert library not in maps, (pid, library)


def test_a_killed_worker_costs_no_message(tmp_path: Path) -> None:
    """A worker killed with SIGKILL: that group is digested by the intake itself, stored and
    acknowledged in order; the pool starts afresh and takes the next groups."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"},
            "health": {"enabled": False},
            "validation": {"workers": 2},
            "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        }
    )
    bridge = Bridge(config, structlog.get_logger("test"), connection=FakeConnection.of)
    connection = bridge.connection
    assert isinstance(connection, FakeConnection) and bridge.pool is not None
    bridge.intake.attach(connection)
    connection.reconnect()
    try:
        first = bridge.pool.warm()
        bridge.intake.process([connection.message(t, p) for t, p in items(100)])
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first[0] in bridge.pool.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        batch = items(200)[100:]
        bridge.intake.process([connection.message(t, p) for t, p in batch])
        bridge.intake.process([connection.message(t, p) for t, p in items(260)[200:]])
        after = bridge.pool.pids()
    finally:
        bridge.pool.close()
        for target in bridge.targets:
            target.sink.close()
        bridge.spool.close()

    assert connection.acked == list(range(1, 261))
    assert bridge.pool.restarts == 1
    assert after and first[0] not in after
    pipeline = Pipeline(config.validation.rules(), config.subscription.selection())
    log = structlog.get_logger("test")
    expected = [
        json.loads(record.body)["msgId"]
        for topic, payload in items(260)
        for record in digest_message(pipeline, log, topic, payload).forward
    ]
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["msgId"] for line in lines] == expected  # once each, in order


def worker_bridge(tmp_path: Path, workers: int = 2) -> Bridge:
    """A bridge with worker processes, a jsonl sink and a FakeConnection, not started."""
    config = Config.model_validate(
        {
            "spool": {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"},
            "health": {"enabled": False},
            "validation": {"workers": workers},
            "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        }
    )
    return Bridge(config, structlog.get_logger("test"), connection=FakeConnection.of)


def expected_ids(batch: Sequence[tuple[str | None, bytes]]) -> list[str]:
    """The msgIds of the records `batch` forwards, in order, as one process makes them."""
    pipeline = Pipeline(CONFIG.validation.rules(), CONFIG.subscription.selection())
    log = structlog.get_logger("test")
    return [
        json.loads(record.body)["msgId"]
        for topic, payload in batch
        for record in digest_message(pipeline, log, topic, payload).forward
    ]


def written_ids(tmp_path: Path) -> list[str]:
    """The msgIds of the jsonl sink's lines."""
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["msgId"] for line in lines]


class Trace:
    """Records the intake's steps (submit to the workers, commit, ack) as they happen, holds
    the first commit until the next group was handed to the workers, and calls
    `before_second_submit` just before that group is handed over and `after_second_submit`
    once it is under way."""

    def __init__(
        self,
        bridge: Bridge,
        after_second_submit: Callable[[], None] = lambda: None,
        before_second_submit: Callable[[], None] = lambda: None,
    ) -> None:
        self.steps: list[tuple[str, int]] = []
        self.second_submit = threading.Event()
        pool, spool, connection = bridge.pool, bridge.spool, bridge.connection
        assert pool is not None and isinstance(connection, FakeConnection)
        submit, store = pool.submit, spool.store

        def traced_submit(items: Sequence[tuple[str | None, bytes]]) -> Slices:
            self.steps.append(("submit", len(items)))
            second = not self.second_submit.is_set() and len(self.steps) >= 2
            if second:
                before_second_submit()
            slices = submit(items)
            if second:
                after_second_submit()
                self.second_submit.set()
            return slices

        def traced_store(rows: Any, keys: Sequence[str], raws: Any) -> None:
            self.second_submit.wait(10)
            store(rows, keys, raws)
            self.steps.append(("commit", len(keys)))

        def traced_ack(generation: int, ids: Sequence[int]) -> None:
            self.steps.append(("ack", len(ids)))

        pool.submit = traced_submit  # type: ignore[method-assign]
        spool.store = traced_store  # type: ignore[method-assign]
        connection.on_ack = traced_ack


def run(bridge: Bridge, batch: Sequence[tuple[str | None, bytes]], read: int = 40) -> None:
    """Start the intake thread, deliver `batch` in reads of `read`, wait for every ack, stop."""
    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    bridge.intake.start(connection)
    for start in range(0, len(batch), read):
        connection.deliver(*(connection.message(t, p) for t, p in batch[start : start + read]))
    wait = sum(1 for _ in batch)
    deadline = time.monotonic() + 30
    while len(connection.acked) < wait and time.monotonic() < deadline:
        time.sleep(0.01)
    bridge.intake.stop(10)


def close(bridge: Bridge) -> None:
    """Stop the workers, close the sinks and the spool."""
    if bridge.pool is not None:
        bridge.pool.close()
    for target in bridge.targets:
        target.sink.close()
    bridge.spool.close()


def drained_in_order(
    bridge: Bridge, batch: Sequence[tuple[str | None, bytes]], tmp_path: Path, read: int = 40
) -> None:
    """Run `batch` through the started bridge, close it, and check that every message was
    acknowledged and every record written once, in receive order."""
    try:
        run(bridge, batch, read)
    finally:
        close(bridge)
    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    assert connection.acked == list(range(1, len(batch) + 1))
    assert written_ids(tmp_path) == expected_ids(batch)  # once each, in order


def test_workers_digest_the_next_group_while_the_intake_commits(tmp_path: Path) -> None:
    """Pipelined: a group is handed to the workers before the one before it is committed;
    every group is still committed before it is acked, and acked in receive order."""
    bridge = worker_bridge(tmp_path)
    trace = Trace(bridge)
    drained_in_order(bridge, items(600), tmp_path)
    steps = [step for step, _ in trace.steps]
    assert steps[:3] == ["submit", "submit", "commit"]  # group 2 under way before 1 is stored
    commits = [i for i, step in enumerate(steps) if step == "commit"]
    acks = [i for i, step in enumerate(steps) if step == "ack"]
    assert len(commits) == len(acks)
    assert all(c < a for c, a in zip(commits, acks, strict=True))  # each ack after its commit
    assert all(a < c for a, c in zip(acks, commits[1:], strict=False))  # and before the next


def test_the_next_group_waits_in_the_workers_pipe_before_the_one_before_is_collected(
    tmp_path: Path,
) -> None:
    """Once the intake's share of a group is digested, the next group is handed to the workers
    before the first one's digests are read back, so that a worker goes from one slice to the
    next without waiting for the intake; the order of commits and acks does not change."""
    bridge = worker_bridge(tmp_path)
    trace = Trace(bridge)
    pool = bridge.pool
    assert pool is not None
    collect = pool.collect

    def traced_collect(slices: Slices, logger: Any = None) -> list[Digest]:
        found = collect(slices, logger)
        trace.steps.append(("collect", len(found)))
        return found

    pool.collect = traced_collect  # type: ignore[method-assign]
    drained_in_order(bridge, items(600), tmp_path, read=600)
    steps = [step for step, _ in trace.steps]
    assert steps[:4] == ["submit", "submit", "collect", "commit"]


def bulk(index: int, records: int = 100) -> bytes:
    """An envelope of a bulk import: `records` valid customers, about 8 KB."""
    customers = [
        {"id": f"b{index}-{n}", "projectId": "42", "name": "张三", "phone": "13800138000"}
        for n in range(records)
    ]
    return add_envelope(f"bulk{index}", customers)


def test_a_slice_larger_than_the_workers_pipe_waits_for_the_collect(tmp_path: Path) -> None:
    """Bulk envelopes make slices and answers of megabytes: the next slice is then handed over
    only once the workers' answer was read, since a worker whose answer fills its output pipe
    reads no more input (the two writes would wait for each other). Everything arrives once,
    in order, and no group waits in the pipe ahead."""
    bridge = worker_bridge(tmp_path, workers=1)  # one worker, as on two cores: whole slices
    pool = bridge.pool
    assert pool is not None
    assert pool.queue_bytes >= 64 * 1024  # read back from the kernel
    batch = [(STANDARD, bulk(i)) for i in range(600)]
    assert not pool.can_queue(batch[:150])
    assert pool.can_queue(batch[:2])
    assert pool.can_queue([])
    held: list[int] = []
    hand_over = bridge.intake._hand_over_deferred

    def counted(group: Any) -> Any:
        if group.deferred is not None:
            held.append(len(group.deferred))
        return hand_over(group)

    bridge.intake._hand_over_deferred = counted  # type: ignore[method-assign]
    drained_in_order(bridge, batch, tmp_path, read=600)
    assert held  # the large slices waited for the collect


def test_the_intake_digests_its_share_of_each_group_beside_the_workers(tmp_path: Path) -> None:
    """Of each group the workers get the first part and the intake digests the rest itself;
    everything is written once, in receive order, and the share moves with what the intake
    finds when its part is done."""
    bridge = worker_bridge(tmp_path)
    pool = bridge.pool
    assert pool is not None
    sizes: list[int] = []
    submit = pool.submit

    def counted(given: Sequence[tuple[str | None, bytes]]) -> Slices:
        sizes.append(len(given))
        return submit(given)

    pool.submit = counted  # type: ignore[method-assign]
    updates: list[bool] = []
    update = bridge.intake.share.update

    def noted(*, workers_done: bool) -> None:
        updates.append(workers_done)
        update(workers_done=workers_done)

    bridge.intake.share.update = noted  # type: ignore[method-assign]
    drained_in_order(bridge, items(900), tmp_path, read=300)
    assert sizes and sum(sizes) < 900  # the workers did not get everything
    assert len(updates) == len(sizes)  # the share was weighed after every split group


def test_the_share_shrinks_when_the_workers_wait_and_grows_when_the_intake_would() -> None:
    """The intake's share: smaller after a group whose workers had answered first, larger
    after one it would have waited for, never below nothing or above half."""
    share = LocalShare(0.1)
    share.update(workers_done=True)
    assert share.value == pytest.approx(0.08)
    assert share.local(500) == 40
    for _ in range(10):
        share.update(workers_done=True)
    assert share.value == 0.0
    assert share.local(500) == 0
    for _ in range(40):
        share.update(workers_done=False)
    assert share.value == LocalShare.MOST
    assert share.local(500) == 250


def test_a_reconnect_while_the_workers_digest_acks_nothing_of_those_groups(
    tmp_path: Path,
) -> None:
    """The connection changes while two groups are digested: neither is stored nor acked
    (the broker sends them again); what arrives on the new connection is."""
    bridge = worker_bridge(tmp_path)
    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    trace = Trace(bridge, after_second_submit=connection.reconnect)
    assert bridge.pool is not None
    ready, delivered = bridge.pool.ready, threading.Event()

    def held_ready(slices: Slices) -> bool:
        # The intake looks whether the workers have answered once its share of a group is done,
        # then hands the next group over: the second read is queued by then.
        delivered.wait(10)
        return ready(slices)

    bridge.pool.ready = held_ready  # type: ignore[method-assign]
    batch = items(200)
    try:
        bridge.intake.start(connection)
        connection.deliver(*(connection.message(t, p) for t, p in batch[:60]))
        deadline = time.monotonic() + 10
        while not trace.steps and time.monotonic() < deadline:
            time.sleep(0.01)  # the first group is under way: the next read makes a second
        connection.deliver(*(connection.message(t, p) for t, p in batch[60:120]))
        delivered.set()
        deadline = time.monotonic() + 10
        while connection.generation == 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        fresh = batch[120:]
        connection.deliver(*(connection.message(t, p) for t, p in fresh))
        deadline = time.monotonic() + 30
        while len(connection.acked) < len(fresh) and time.monotonic() < deadline:
            time.sleep(0.01)
        bridge.intake.stop(10)
    finally:
        close(bridge)

    assert connection.refused_acks == []
    assert {generation for generation, _ in connection.acks} == {2}
    assert connection.acked == list(range(1, len(fresh) + 1))
    written = written_ids(tmp_path)
    assert written[-len(expected_ids(fresh)) :] == expected_ids(fresh)


def test_a_worker_killed_with_a_group_under_way_costs_no_message(tmp_path: Path) -> None:
    """A worker killed while the next group is under way in the workers: that group is
    digested by the intake itself, the pool restarts once, and every message is stored and
    acknowledged once, in order."""
    bridge = worker_bridge(tmp_path)
    assert bridge.pool is not None
    first = bridge.pool.warm()

    def hold() -> None:
        # Stopped, it cannot answer the slice it is about to be given before the kill lands.
        os.kill(first[0], signal.SIGSTOP)

    def kill() -> None:
        os.kill(first[0], signal.SIGKILL)  # the group just submitted is under way

    Trace(bridge, after_second_submit=kill, before_second_submit=hold)
    batch = items(600)
    try:
        run(bridge, batch)
        after = bridge.pool.warm()  # the fresh pool, whether or not it had work since
    finally:
        close(bridge)

    connection = bridge.connection
    assert isinstance(connection, FakeConnection)
    assert connection.acked == list(range(1, 601))
    assert written_ids(tmp_path) == expected_ids(batch)
    assert bridge.pool.restarts == 1
    assert after and first[0] not in after


def test_a_worker_loop_answers_each_slice_with_its_digests_and_stops_at_eof() -> None:
    """The worker's loop over its pipes: the settings, then two slices in, two frames of
    digests out, equal to those made here, and nothing more once its input ends."""
    settings = pickle.dumps((CONFIG.validation.rules(), CONFIG.subscription.selection()))
    batch = items(120)
    source = io.BytesIO()
    for blob in (settings, msgspec.msgpack.encode(batch[:70]), msgspec.msgpack.encode(batch[70:])):
        source.write(struct.pack("!I", len(blob)) + blob)
    source.seek(0)
    sink = io.BytesIO()

    serve(source, sink)

    answers = sink.getvalue()
    decoder = msgspec.msgpack.Decoder(tuple[list[Digest], list[tuple[str, str, str]]])
    frames, offset = [], 0
    while offset < len(answers):
        (size,) = struct.unpack_from("!I", answers, offset)
        frames.append(decoder.decode(answers[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    pipeline = Pipeline(CONFIG.validation.rules(), CONFIG.subscription.selection())
    here = [digest_message(pipeline, structlog.get_logger("test"), t, p) for t, p in batch]
    assert len(frames) == 2
    assert [failures for _, failures in frames] == [[], []]
    assert comparable([d for digests, _ in frames for d in digests]) == comparable(here)
