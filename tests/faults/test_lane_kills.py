"""Fault test of delivery lanes: kill -9 of the bridge while a webhook sink with four lanes has
several requests in flight. Nothing is lost, each customer's events arrive in order, and what
repeats is at most what the lanes had in flight when a kill landed.

Real mosquitto, real `python -m bridge run` processes and a real (slow) HTTP receiver on
loopback; `FAULT_SEED=<n>` replays a run's kill points and traffic.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto
from faultkit import (
    DRAIN,
    AlarmProbe,
    Bridges,
    HookServer,
    Message,
    Publisher,
    all_out,
    bridge_config,
    outbox_rows,
    report,
    tally,
    traffic,
    wait_until,
)

SEED = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
LANES = 4
BATCH = 20
KILLS = 2


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver taking 50 ms per request."""
    server = HookServer()
    server.delay = 0.05
    yield server
    server.stop()


def first_arrivals_in_order(messages: list[Message], received: list[dict[str, Any]]) -> int:
    """Each customer's events, repeats left out, arrive exactly in sequence; a repeat is of an
    event already there. Returns how many customers were checked."""
    expected: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        if message.valid:
            expected[message.customer_id].append(message.seq)
    arrived: dict[str, list[int]] = defaultdict(list)
    for event in received:
        customer, seq = event["customer"]["id"], int(event["customer"]["remark"])
        if seq not in arrived[customer]:
            arrived[customer].append(seq)
    assert arrived == expected
    return len(expected)


def test_kill_9_during_lane_delivery_loses_nothing_and_keeps_each_customer_in_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """2,000 messages of 40 customers (50 each) to a webhook with lanes: 4 and a receiver
    taking 50 ms a request; the bridge is killed with SIGKILL twice while requests are in
    flight and restarted. Every valid message arrives, every invalid one is alarmed, each
    customer's events arrive in order, and repeats stay within what was in flight."""
    rng = random.Random(SEED)
    messages = traffic(2000, "ln", seed=SEED, customers=40)
    valid = sum(m.valid for m in messages)
    sink = {
        "type": "webhook",
        "name": "crm",
        "url": hook.url,
        "timeout": 2.0,
        "batch_size": BATCH,
        "lanes": LANES,
    }
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(mosquitto, [sink], spool, client_id="fault-lanes")
    hook.start(200)
    bridge = bridges(cfg, "lanes-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    cuts: list[int] = []
    try:
        for kill in range(KILLS):
            low, high = (kill + 0.2) / (KILLS + 1), (kill + 0.8) / (KILLS + 1)
            target = rng.randint(int(low * valid), int(high * valid))
            wait_until(
                lambda t=target: len(hook.received()) >= t, DRAIN, f"{target} events", bridge
            )
            time.sleep(rng.uniform(0, 0.05))
            assert bridge.kill() == -signal.SIGKILL
            cuts.append(len(hook.received()))
            bridge = bridges(cfg, "lanes-").start()
            assert bridge.wait_event("connected")["session_present"] is True
        publisher.wait()
        wait_until(
            all_out(messages, lambda: [e["msgId"] for e in hook.received()], alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            bridge,
        )
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    received = hook.received()
    figures = tally(
        "lanes kill -9 x2", messages, [e["msgId"] for e in received], alarms.source_ids()
    )
    report(
        figures,
        f"| lanes {LANES}; most in flight {hook.most_in_flight}; kills at {cuts}; seed {SEED}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert first_arrivals_in_order(messages, received) == 40
    assert hook.most_in_flight > 1, "the lanes never had two requests in flight"
    # A kill can catch each lane with one batch taken by the receiver and not yet deleted.
    assert figures.duplicated_events <= KILLS * LANES * BATCH
    assert outbox_rows(spool) == 0
