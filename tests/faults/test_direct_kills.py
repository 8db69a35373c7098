"""Fault test of the webhook posted by the intake (`direct`): kill -9 of the bridge while the
intake has a group's requests in flight to the receiver, before that group's commit.

Nothing is lost (the group was not acknowledged: the broker sends it again), each customer's
events arrive in order, and what repeats is at most the group each kill caught. Real
mosquitto, real `python -m bridge run` processes and a real (slowish) HTTP receiver on
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
GROUP = 40
"""`spool.intake_batch`: the most one kill can catch handed over and not yet committed."""
KILLS = 2


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver taking 10 ms per request."""
    server = HookServer()
    server.delay = 0.01
    yield server
    server.stop()


def test_kill_9_during_direct_posts_loses_nothing_and_keeps_each_customer_in_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """2,000 messages of 40 customers to a webhook the intake posts itself (one lane, requests
    of 5 events, 10 ms each); the bridge is killed with SIGKILL twice and restarted. Every
    valid message arrives, every invalid one is alarmed, each customer's events arrive in
    order, and repeats stay within the groups the kills caught."""
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
