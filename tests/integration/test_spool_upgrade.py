"""A spool written by an older bridge is carried over by this one: its pending events drain in
order and unchanged, its dead letters stay listed and replayable, its dedup window still holds.

The fixture `tests/fixtures/spools/a021115.db` was written by the bridge of commit a021115 (before
the message path was split into rooms), killed with SIGKILL, by `make_old_spool.py` beside it;
`a021115.json` says what it holds, read back from it when it was made.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from brokers import Mosquitto

from bridge.spool import Spool
from bridge.testing import Recorder
from bridge.testing.process import BridgeProcess, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "spools"
COMMIT = "a021115"
HELD = json.loads((FIXTURES / f"{COMMIT}.json").read_text(encoding="utf-8"))


@pytest.fixture
def old_spool(tmp_path: Path) -> Path:
    """A copy of the old bridge's spool, where the new bridge's config puts it."""
    path = tmp_path / "state" / "spool.db"
    path.parent.mkdir()
    shutil.copyfile(FIXTURES / f"{COMMIT}.db", path)
    return path


@pytest.fixture
def receivers() -> Iterator[tuple[Recorder, Recorder]]:
    """The two webhook receivers the old spool's sinks were named for, both answering 200."""
    with Recorder(path="/later") as later, Recorder(path="/picky") as picky:
        yield later, picky


def columns(path: Path, table: str) -> set[str]:
    """The column names of `table` in the spool at `path`."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def events_of(recorder: Recorder) -> list[dict[str, Any]]:
    """Every event the recorder took, in arrival order."""
    return [e for r in recorder.recorded() if r.status == 200 for e in r.json()["events"]]


def test_the_old_spool_opens_with_its_pending_rows_dead_letters_and_seen_keys(
    old_spool: Path,
) -> None:
    """Opened by today's Spool, the old file shows the same pending rows, dead letters and
    dedup keys, and gains the columns added since."""
    assert "seq" not in columns(old_spool, "dead")  # it really is the older schema

    spool = Spool(old_spool)
    try:
        assert spool.targets() == {"later": len(HELD["pending"]["later"])}
        letters = spool.dead_letters()
        assert [(d.id, d.target, d.kind) for d in letters] == [
            (d["id"], d["target"], d["kind"]) for d in HELD["dead_letters"]
        ]
        published = [m["msgId"] for m in HELD["published"] if m["msgId"] is not None]
        with contextlib.closing(sqlite3.connect(old_spool)) as db:
            assert db.execute("SELECT count(*) FROM seen").fetchone()[0] == HELD["seen_keys"]
        assert len(published) <= HELD["seen_keys"]
    finally:
        spool.close()

    assert {"seq", "overtaken_at", "size", "digest"} <= columns(old_spool, "dead")


def test_the_new_bridge_drains_the_old_spool_in_order_and_replays_its_dead_letters(
    mosquitto: Mosquitto, old_spool: Path, receivers: tuple[Recorder, Recorder], tmp_path: Path
) -> None:
    """Every pending event reaches its sink once, each customer's in their order, with the body
    the old bridge stored; an old dead letter is listed and, replayed, delivered; a message the
    old bridge took is still recognised as a duplicate."""
    later, picky = receivers
    config = {
        "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "upgraded"},
        "sinks": [
            {"type": "webhook", "name": "later", "url": later.url},
            {"type": "webhook", "name": "picky", "url": picky.url, "batch_size": 1},
        ],
        # The fixture's dedup keys are as old as the fixture: keep them whatever today's date.
        "spool": {"path": str(old_spool), "dedup_max_age": 1e10},
        "health": {"enabled": False},
        "logging": {"level": "info", "format": "json"},
    }
    bridge = BridgeProcess(tmp_path / "bridge", "new", config).start()
    try:
        bridge.wait_ready()
        pending = HELD["pending"]["later"]
        wait_until(lambda: len(events_of(later)) >= len(pending), 30, "the old rows to drain")

        arrived: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events_of(later):
            if event not in arrived[event["customer"]["id"]]:
                arrived[event["customer"]["id"]].append(event)
        expected: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in pending:
            event = json.loads(row["body"])
            expected[event["customer"]["id"]].append(event)
        assert arrived == expected

        listed = dead_letters(bridge, "list")
        assert [json.loads(line)["id"] for line in listed.splitlines()] == [
            d["id"] for d in HELD["dead_letters"]
        ]
        event_letter = next(d["id"] for d in HELD["dead_letters"] if d["kind"] == "event")
        dead_letters(bridge, "replay", str(event_letter))
        wait_until(
            lambda: any(e["customer"]["id"] == "c-refused" for e in events_of(picky)),
            30,
            "the replayed dead letter at its sink",
        )

        topic, payload = first_published_message()
        publish(mosquitto, topic, payload)
        bridge.wait_for("duplicate", msg_id="old-001")
    finally:
        bridge.terminate()
    assert [e["msgId"] for e in events_of(later)].count("old-001") == 1


def dead_letters(bridge: BridgeProcess, *args: str) -> str:
    """Run `bridge dead-letters ARGS` with the bridge's config, beside the running daemon."""
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "dead-letters", *args, "-c", str(bridge.config_path)],
        cwd=bridge.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def first_published_message() -> tuple[str, bytes]:
    """The first message the old bridge took, rebuilt byte for byte by the fixture's script."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_old_spool  # noqa: PLC0415 - the fixture's own generator

        topic, payload, _ = make_old_spool.traffic()[0]
    finally:
        sys.path.remove(str(FIXTURES))
    return topic, payload


def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    """Publish once, QoS 1, and wait for the broker's acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
