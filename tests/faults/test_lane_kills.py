"""Fault test of delivery lanes: kill -9 of the bridge while a webhook sink with four lanes has
several requests in flight. Nothing is lost, each customer's events arrive in order, and what
repeats is at most what the lanes had in flight when a kill landed.

Real mosquitto, real `python -m bridge run` processes and a real (slow) HTTP receiver on
loopback; `FAULT_SEED=<n>` replays a run's kill points and traffic.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Mosquitto
from faultkit import (
    AlarmProbe,
    Bridges,
    HookServer,
    bridge_config,
    first_arrivals_in_order,
    kill_while_delivering,
    outbox_rows,
    report,
    tally,
    traffic,
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


def test_kill_9_during_lane_delivery_loses_nothing_and_keeps_each_customer_in_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """2,000 messages of 40 customers (50 each) to a webhook with lanes: 4 and a receiver
    taking 50 ms a request; the bridge is killed with SIGKILL twice while requests are in
    flight and restarted. Every valid message arrives, every invalid one is alarmed, each
    customer's events arrive in order, and repeats stay within what was in flight."""
    rng = random.Random(SEED)
    messages = traffic(2000, "ln", seed=SEED, customers=40)
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
    cuts = kill_while_delivering(
        mosquitto, bridges, alarms, hook, cfg, messages, name="lanes-", kills=KILLS, rng=rng,
        jitter=0.05,
    )  # fmt: skip

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
