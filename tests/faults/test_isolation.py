"""Fault tests of SPEC 6 "no collateral damage" and "order across a give-up", with real
mosquitto, a real `bridge run` and a webhook receiver that refuses one customer (400 for any
request carrying one of its events) and takes everyone else's (200).

A backlog builds while the receiver is down; it comes back refusing that customer. Each
scenario counts what was sent, delivered, dead-lettered (and whose), the code-502 alarms,
then fixes the receiver, replays the dead letters with the CLI beside the running daemon,
and counts per-customer order violations at the receiver. One line per scenario (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto
from faultkit import (
    DRAIN,
    WAIT,
    AlarmProbe,
    Bridges,
    HookServer,
    Message,
    Publisher,
    bridge_config,
    outbox_rows,
    tally,
    traffic,
    wait_until,
)

SEED = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
MESSAGES = 2000
CUSTOMERS = 40
BAD = "cust-007"
SINK_BATCH = 100
GAVE_UP = "502"


def code_of(alarm: dict[str, Any]) -> str:
    """The code of an alarm (one operation per alarm here)."""
    (body,) = alarm["events"].values()
    return str(body["code"])


def dead_customers(spool: Path) -> list[str]:
    """The customer id of every event dead letter, in the order they were given up."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT okey FROM dead WHERE kind = 'event' ORDER BY id").fetchall()
    finally:
        db.close()
    return [str(okey).split("\x1f")[-1] for (okey,) in rows]


def sink_rows(spool: Path, target: str = "crm") -> int:
    """Rows of one sink waiting in the outbox (alarms not counted)."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return int(
            db.execute("SELECT COUNT(*) FROM outbox WHERE target = ?", (target,)).fetchone()[0]
        )
    finally:
        db.close()


def order_violations(received: list[dict[str, Any]]) -> int:
    """Events that reached the receiver after a later event of the same customer had."""
    newest: dict[str, int] = defaultdict(lambda: -1)
    violations = 0
    for event in received:
        customer, seq = event["customer"]["id"], int(event["customer"]["remark"])
        if seq < newest[customer]:
            violations += 1
        newest[customer] = max(newest[customer], seq)
    return violations


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bridge dead-letters ...` with the daemon's config."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dead-letters", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("after_give_up", ["flow", "hold"])
def test_one_refused_customer_costs_no_other_customer_anything(
    mosquitto: Mosquitto,
    bridges: Bridges,
    alarms: AlarmProbe,
    hook: HookServer,
    tmp_path: Path,
    after_give_up: str,
) -> None:
    """2,000 messages for 40 customers as a backlog; the receiver then refuses one customer.
    Only that customer's records are dead letters (collateral 0), each with its 502 alarm
    (with holding: only its first, the rest wait); after the fix a replay delivers them, and
    no customer's events arrive out of order."""
    messages = traffic(MESSAGES, "iso", seed=SEED, customers=CUSTOMERS)
    valid = [m for m in messages if m.valid]
    bad = [m for m in valid if m.customer_id == BAD]
    spool = tmp_path / "state" / "spool.db"
    sink = {
        "type": "webhook",
        "name": "crm",
        "url": hook.url,
        "timeout": 2.0,
        "batch_size": SINK_BATCH,
        "after_give_up": after_give_up,
    }
    cfg = bridge_config(mosquitto, [sink], spool, client_id=f"fault-iso-{after_give_up}")
    bridge = bridges(cfg, f"iso-{after_give_up}-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    try:
        # The backlog: everything taken into the spool while the receiver is down.
        publisher.wait()
        wait_until(lambda: bridge.count("message") >= MESSAGES, DRAIN, "every message", bridge)
        hook.refuse_event = lambda event: event["customer"]["id"] == BAD
        hook.start(200)
        good = {m.msg_id for m in valid if m.customer_id != BAD}
        wait_until(
            lambda: good <= {e["msgId"] for e in hook.received()},
            DRAIN,
            "every other customer's events at the receiver",
            bridge,
        )
        expected_dead = len(bad) if after_give_up == "flow" else 1
        wait_until(
            lambda: len(dead_customers(spool)) >= expected_dead,
            WAIT,
            f"{expected_dead} dead letters",
            bridge,
        )
        gave_up = [a for a in alarms.alarms() if code_of(a) == GAVE_UP]
        wait_until(
            lambda: len([a for a in alarms.alarms() if code_of(a) == GAVE_UP]) >= expected_dead,
            WAIT,
            "the 502 alarms",
            bridge,
        )
        # Delivered rows leave the outbox a moment after the receiver has them.
        expected_held = len(bad) - 1 if after_give_up == "hold" else 0
        wait_until(
            lambda: sink_rows(spool) <= expected_held, WAIT, "delivered rows deleted", bridge
        )
        dead = dead_customers(spool)
        collateral = sum(1 for c in dead if c != BAD)
        gave_up = [a for a in alarms.alarms() if code_of(a) == GAVE_UP]
        held = sink_rows(spool)
        refused_requests = hook.answered[400]

        # The receiver is fixed; the operator replays beside the running daemon.
        hook.refuse_event = None
        replayed = cli(bridge.config_path, "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        wait_until(
            lambda: {m.msg_id for m in valid} <= {e["msgId"] for e in hook.received()},
            DRAIN,
            "every valid message at the receiver after the replay",
            bridge,
        )
        wait_until(lambda: outbox_rows(spool) == 0, WAIT, "the spool drained", bridge)
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    received = hook.received()
    violations = order_violations(received)
    alarmed = [a.get("sourceMsgId") for a in alarms.alarms() if code_of(a) != GAVE_UP]
    figures = tally(
        f"isolation ({after_give_up})", messages, [e["msgId"] for e in received], alarmed
    )
    print(
        f"\n[faults] isolation after_give_up={after_give_up}: sent={figures.sent} "
        f"(valid {figures.valid}, of the refused customer {len(bad)}) "
        f"delivered before replay={figures.valid - len(dead) - held} dead-lettered={len(dead)} "
        f"collateral={collateral} held={held} alarms502={len(gave_up)} "
        f"refused requests={refused_requests} | after replay: delivered={figures.forwarded} "
        f"lost={len(figures.lost)} duplicated={figures.duplicated_events} "
        f"order violations={violations} | replay said: {replayed.stdout.strip()!r} seed {SEED}",
        flush=True,
    )
    assert collateral == 0
    assert len(dead) == expected_dead
    assert all(d == BAD for d in dead)
    assert len(gave_up) == expected_dead
    assert held == expected_held
    assert figures.lost == []
    assert figures.unexpected == []
    assert violations == 0
    assert "overtaken" not in replayed.stdout


def test_replay_reports_and_skips_a_dead_letter_a_later_event_overtook(
    mosquitto: Mosquitto, bridges: Bridges, hook: HookServer, tmp_path: Path
) -> None:
    """Keep flowing (the default): one record refused, its customer's later events delivered.
    The replay names the overtaken dead letter; `--skip-superseded` drops it, so no stale
    event overwrites a newer one at the receiver."""
    messages: list[Message] = [
        m for m in traffic(200, "sup", seed=SEED, customers=10, invalid_share=0.0)
    ]
    refused = next(m for m in messages if m.customer_id == BAD.replace("007", "003") and m.seq == 4)
    spool = tmp_path / "state" / "spool.db"
    sink = {"type": "webhook", "name": "crm", "url": hook.url, "timeout": 2.0, "batch_size": 20}
    cfg = bridge_config(mosquitto, [sink], spool, client_id="fault-superseded")
    hook.refuse_event = lambda event: event["msgId"] == refused.msg_id
    hook.start(200)
    bridge = bridges(cfg, "superseded-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    try:
        publisher.wait()
        others = {m.msg_id for m in messages} - {refused.msg_id}
        wait_until(
            lambda: others <= {e["msgId"] for e in hook.received()},
            DRAIN,
            "every other message at the receiver",
            bridge,
        )
        wait_until(lambda: dead_customers(spool), WAIT, "the dead letter", bridge)
        hook.refuse_event = None
        listed = [json.loads(line) for line in cli(bridge.config_path, "list").stdout.splitlines()]
        replayed = cli(bridge.config_path, "replay", "--all", "--skip-superseded")
        assert replayed.returncode == 0, replayed.stderr
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    received = hook.received()
    print(
        f"\n[faults] superseded: sent={len(messages)} delivered={len(received)} "
        f"dead-lettered={len(listed)} order violations={order_violations(received)} "
        f"| replay said: {replayed.stdout.strip()!r} seed {SEED}",
        flush=True,
    )
    assert [(d["customer"].split("/")[-1], d["overtaken"]) for d in listed] == [
        (refused.customer_id, True)
    ]
    assert "dropped 1 overtaken" in replayed.stdout
    assert refused.msg_id not in {e["msgId"] for e in received}
    assert order_violations(received) == 0
    assert outbox_rows(spool) == 0
    assert dead_customers(spool) == []
