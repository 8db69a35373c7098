"""Worker processes digest a group exactly as the intake would, and a dead one costs nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog

from bridge.config import Config
from bridge.core.digest import Digest
from bridge.core.pipeline import Pipeline
from bridge.intake.workers import DigestPool, digest_message
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
    document = {
        "reportTs": 1661154622,
        "msgId": f"m{index}",
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
