"""Fault tests of webhook delivery under kill -9: the bridge is killed twice while requests
are in flight, with four lanes (the outbox's workers) and with one lane (the intake posting
groups itself before their commit). Nothing is lost, each customer's events arrive in order,
and what repeats is at most what was in flight when a kill landed.

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
GROUP = 40
"""`spool.intake_batch` of the direct test: the most one kill can catch posted, not committed."""


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver; each test sets how long it takes per request."""
    server = HookServer()
    yield server
    server.stop()


def test_kill_9_during_lane_delivery_loses_nothing_and_keeps_each_customer_in_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """2,000 messages of 40 customers (50 each) to a webhook with lanes: 4 and a receiver
    taking 50 ms a request; the bridge is killed with SIGKILL twice while requests are in
    flight and restarted. Every valid message arrives, every invalid one is alarmed, each
    customer's events arrive in order, and repeats stay within what was in flight."""
    hook.delay = 0.05
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


def test_kill_9_during_direct_posts_loses_nothing_and_keeps_each_customer_in_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """2,000 messages of 40 customers to a webhook the intake posts itself (one lane, requests
    of 5 events, 10 ms each); the bridge is killed with SIGKILL twice and restarted. Every
    valid message arrives, every invalid one is alarmed, each customer's events arrive in
    order, and repeats stay within the groups the kills caught."""
    hook.delay = 0.01
    rng = random.Random(SEED)
    messages = traffic(2000, "dk", seed=SEED, customers=40)
    sink = {
        "type": "webhook",
        "name": "crm",
        "url": hook.url,
        "timeout": 2.0,
        "batch_size": 5,
        "direct_budget": 10.0,  # never paused: every group is posted by the intake
    }
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(
        mosquitto, [sink], spool, client_id="fault-direct", spool_options={"intake_batch": GROUP}
    )
    hook.start(200)
    cuts = kill_while_delivering(
        mosquitto, bridges, alarms, hook, cfg, messages, name="direct-", kills=KILLS, rng=rng,
        jitter=0.02,
    )  # fmt: skip
    posted_directly = sum(
        len(made.events("delivered", sink="crm", direct=True)) for made in bridges.made
    )

    received = hook.received()
    figures = tally(
        "direct kill -9 x2", messages, [e["msgId"] for e in received], alarms.source_ids()
    )
    report(figures, f"| direct; group {GROUP}; kills at {cuts}; seed {SEED}")
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert first_arrivals_in_order(messages, received) == 40
    assert posted_directly > 0, "the intake never posted a group itself"
    # A kill can catch one group posted (some of its requests, or all) and not yet committed.
    assert figures.duplicated_events <= KILLS * GROUP
    assert outbox_rows(spool) == 0
