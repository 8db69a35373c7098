"""Fault tests: the SPEC 6 delivery promise under kill -9, broker restarts, sink outages, a full
spool, an unwritable state directory and a full disk.

Every test runs real mosquitto (persistence on, `max_queued_messages 0` so that no queued QoS 1
message is ever dropped) and real `python -m bridge run` processes, and counts every message by
msgId: each valid message must reach the sink, each invalid one (about 5%) must be alarmed on the
error topic (counted by `sourceMsgId` by a probe on a persistent session). Each scenario prints
one line (`pytest -s`): sent / forwarded / alarmed / lost / duplicated.

`FAULT_SEED=<n>` replays the random kill points and traffic of a run (each line names its seed).

"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto
from faultkit import (
    ALARM_BATCH,
    DRAIN,
    WAIT,
    AlarmProbe,
    Bridges,
    HookServer,
    Message,
    Publisher,
    all_out,
    bridge_config,
    count_lines,
    outbox_rows,
    read_jsonl,
    report,
    tally,
    traffic,
    wait_until,
)

SEED = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
SINK_BATCH = 100  # the sinks' default batch_size
# The kill -9 scenario's `spool.intake_batch` (1,000 by default): the largest group the intake
# writes to a caught-up sink before its commit, so the most a kill can repeat from there.
KILL_GROUP = 200
# What a kill can catch in flight at a jsonl sink: the batch its worker had taken, or, while the
# sink is caught up, the group the intake wrote itself before its commit (one record each here).
IN_FLIGHT = max(SINK_BATCH, KILL_GROUP)


def jsonl_sink(path: Path) -> dict[str, Any]:
    """The jsonl sink every jsonl scenario uses."""
    return {"type": "jsonl", "name": "crm", "path": str(path), "batch_size": SINK_BATCH}


def webhook_sink(hook: HookServer, batch_size: int = SINK_BATCH) -> dict[str, Any]:
    """A webhook sink to `hook` with a short timeout."""
    return {
        "type": "webhook",
        "name": "crm",
        "url": hook.url,
        "timeout": 2.0,
        "batch_size": batch_size,
    }


def msg_ids(events: list[dict[str, Any]]) -> list[str | None]:
    """The msgId of each downstream event."""
    return [event.get("msgId") for event in events]


def dropped_redeliveries(bridges: Bridges) -> int:
    """Inbound redeliveries every bridge of the test dropped by msgId (its `duplicate` events)."""
    return sum(bridge.count("duplicate") for bridge in bridges.made)


# --- 1. kill -9 of the bridge -------------------------------------------------------------------

KILLS = 3


def test_kill_9_of_the_bridge_three_times_loses_nothing(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, tmp_path: Path
) -> None:
    """5,000 messages; the bridge is killed with SIGKILL at three random points and restarted
    with the same client id and spool. Every valid message reaches the jsonl sink, every invalid
    one is alarmed; repeats downstream are only the batch the sink had taken when a kill landed
    (from its worker, or from the intake before its commit), and are the same line again."""
    rng = random.Random(SEED)
    messages = traffic(5000, "k9", seed=SEED)
    valid = sum(m.valid for m in messages)
    out = tmp_path / "out" / "customers.jsonl"
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(
        mosquitto,
        [jsonl_sink(out)],
        spool,
        client_id="fault-kill9",
        spool_options={"intake_batch": KILL_GROUP},
    )
    bridge = bridges(cfg, "kill9-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    cuts: list[int] = []  # lines in the sink's file once each killed bridge was gone
    try:
        for kill in range(KILLS):
            # One random point in each quarter of the stream (the last quarter runs undisturbed).
            low, high = (kill + 0.15) / (KILLS + 1), (kill + 0.85) / (KILLS + 1)
            target = rng.randint(int(low * valid), int(high * valid))
            wait_until(
                lambda t=target: count_lines(out) >= t, DRAIN, f"{target} lines in {out}", bridge
            )
            time.sleep(rng.uniform(0, 0.03))
            assert bridge.kill() == -signal.SIGKILL
            cuts.append(count_lines(out))
            bridge = bridges(cfg, "kill9-").start()
            assert bridge.wait_event("connected")["session_present"] is True
        publisher.wait()
        wait_until(
            all_out(messages, lambda: msg_ids(read_jsonl(out).events), alarms.source_ids),
            DRAIN,
            "every valid message in the sink and every invalid one alarmed",
            bridge,
        )
        assert bridge.terminate() == 0
    finally:
        publisher.close()
    assert outbox_rows(spool) == 0

    output = read_jsonl(out)
    figures = tally("1. kill -9 x3", messages, msg_ids(output.events), alarms.source_ids())
    report(
        figures,
        f"| kills at sink lines {cuts}; redeliveries dropped by de-dup "
        f"{dropped_redeliveries(bridges)}; seed {SEED}",
    )
    assert not output.broken, f"torn lines in the sink: {output.broken[:3]}"
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    first: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, event in enumerate(output.events):
        msg_id = event["msgId"]
        assert event["customer"]["id"] == f"c-{msg_id}", "a line carries another message's record"
        if msg_id in first:
            assert event == first[msg_id][1], f"a repeat of {msg_id} differs from the original"
            # Only what was in flight repeats: the last batch the sink took before a kill.
            where = first[msg_id][0]
            assert any(cut - IN_FLIGHT <= where < cut for cut in cuts), (
                f"{msg_id} (line {where}) repeated, but was not in flight at a kill {cuts}"
            )
        else:
            first[msg_id] = (index, event)
    assert figures.duplicated_events <= KILLS * IN_FLIGHT
    # An alarm sent again is the same alarm (its own msgId too), so it can be de-duplicated.
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alarm in alarms.alarms():
        by_source[alarm["sourceMsgId"]].append(alarm)
    assert all(all(a == copies[0] for a in copies) for copies in by_source.values())
    assert figures.duplicated_alarms <= KILLS * ALARM_BATCH


# --- 2. the broker restarted, then killed -------------------------------------------------------


def test_broker_restart_and_broker_kill_lose_nothing(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, tmp_path: Path
) -> None:
    """mosquitto is restarted (SIGTERM: it saves its state) while the stream flows, then killed
    (SIGKILL: it loses what it did since its last autosave, a second ago) while the bridge is
    working through a backlog. The bridge's acks since that autosave are forgotten, so the broker
    sends those messages again: de-duplication drops them, and nothing is lost or doubled."""
    rng = random.Random(SEED + 2)
    first = traffic(1500, "mqA", seed=SEED)
    # The backlog worked on at the SIGKILL has no alarms: an alarm the broker acknowledged in
    # its last second would die with it, which is mosquitto's durability, not the bridge's.
    backlog = traffic(1500, "mqB", seed=SEED + 1, invalid_share=0.0)
    last = traffic(1000, "mqC", seed=SEED + 2)
    messages = first + backlog + last
    out = tmp_path / "out" / "customers.jsonl"
    cfg = bridge_config(
        mosquitto, [jsonl_sink(out)], tmp_path / "state" / "spool.db", client_id="fault-broker"
    )
    bridge = bridges(cfg, "broker-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start(allowed=len(first))
    assert bridge.proc is not None
    try:
        # Restart mid-stream.
        target = rng.randint(200, 700)
        wait_until(lambda: count_lines(out) >= target, DRAIN, f"{target} lines", bridge)
        mosquitto.restart()
        bridge.wait_event("subscribed", count=2)
        publisher.wait()
        wait_until(
            all_out(first, lambda: msg_ids(read_jsonl(out).events), alarms.source_ids),
            DRAIN,
            "the first part out",
            bridge,
        )
        # A backlog, saved by the broker, then SIGKILL while the bridge works through it.
        bridge.proc.send_signal(signal.SIGSTOP)
        try:
            publisher.allow(len(first) + len(backlog))
            publisher.wait()
            time.sleep(2.5)  # two autosaves: the whole backlog is on the broker's disk
            done = count_lines(out)
        finally:
            bridge.proc.send_signal(signal.SIGCONT)
        target = done + rng.randint(200, 900)
        wait_until(lambda: count_lines(out) >= target, DRAIN, f"{target} lines", bridge)
        mosquitto.kill()
        mosquitto.start()
        publisher.allow(len(messages))
        bridge.wait_event("subscribed", count=3)
        publisher.wait()
        wait_until(
            all_out(messages, lambda: msg_ids(read_jsonl(out).events), alarms.source_ids),
            DRAIN,
            "every valid message in the sink and every invalid one alarmed",
            bridge,
        )
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    output = read_jsonl(out)
    figures = tally(
        "2. broker restart + kill", messages, msg_ids(output.events), alarms.source_ids()
    )
    report(
        figures,
        f"| redeliveries dropped by de-dup {dropped_redeliveries(bridges)}; seed {SEED}",
    )
    assert [e["session_present"] for e in bridge.events("connected")] == [False, True, True]
    assert not output.broken
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert figures.duplicated_events == 0, "the bridge was never killed: nothing may repeat"
    assert figures.duplicated_alarms <= 2 * ALARM_BATCH


# --- 3. the webhook down, failing, back ---------------------------------------------------------


def check_customer_order(messages: list[Message], received: list[dict[str, Any]]) -> int:
    """Each customer's events arrive in sequence: none before every earlier one has arrived.

    Returns how many customers were checked."""
    expected: dict[str, set[int]] = defaultdict(set)
    for message in messages:
        if message.valid:
            expected[message.customer_id].add(message.seq)
    arrived: dict[str, set[int]] = defaultdict(set)
    for event in received:
        customer = event["customer"]["id"]
        seq = int(event["customer"]["remark"])
        missing = {s for s in expected[customer] if s < seq} - arrived[customer]
        assert not missing, f"{customer} #{seq} arrived before #{sorted(missing)}"
        arrived[customer].add(seq)
    assert arrived == expected
    return len(expected)


def test_webhook_down_then_failing_then_back_loses_nothing_and_keeps_order(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """1,000 messages, 50 per customer for 20 customers (sequence in `remark`). The receiver
    takes some, goes away (connections cut, port closed), comes back answering 503, then 200.
    Nothing is lost, each customer's events arrive in order, and the spool drains."""
    messages = traffic(1000, "wh", seed=SEED, customers=20)
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(mosquitto, [webhook_sink(hook, 50)], spool, client_id="fault-webhook")
    hook.start(200)
    bridge = bridges(cfg, "webhook-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start(allowed=300)
    try:
        wait_until(lambda: len(hook.received()) >= 100, DRAIN, "100 events at the receiver", bridge)
        hook.stop()
        publisher.allow(650)
        publisher.wait()
        wait_until(lambda: bridge.count("message") >= 650, DRAIN, "650 messages taken", bridge)
        wait_until(lambda: bridge.count("sink_failed") >= 3, WAIT, "3 failed sends", bridge)
        hook.start(503)
        wait_until(lambda: hook.answered[503] >= 3, WAIT, "3 answers 503", bridge)
        publisher.allow(len(messages))
        publisher.wait()
        hook.status = 200
        wait_until(
            all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            bridge,
        )
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    received = hook.received()
    figures = tally("3. webhook down/503/200", messages, msg_ids(received), alarms.source_ids())
    report(
        figures,
        f"| answers {dict(hook.answered)}; failed sends {bridge.count('sink_failed')}; seed {SEED}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    check_customer_order(messages, received)
    (stopped,) = bridge.events("stopped")
    assert stopped["unacked"] == 0
    assert outbox_rows(spool) == 0, "the spool did not drain"


# --- 4. the spool full --------------------------------------------------------------------------

MAX_PENDING = 50
INTAKE_BATCH = 20


def test_full_spool_stops_acking_and_loses_nothing(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """With the webhook down the outbox fills to `max_pending`: the bridge logs backpressure_on
    and stops taking (and acking) messages, mosquitto keeps the rest; once the receiver is up
    every message arrives."""
    messages = traffic(1000, "bp", seed=SEED)
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(
        mosquitto,
        [webhook_sink(hook)],
        spool,
        client_id="fault-full",
        spool_options={"max_pending": MAX_PENDING, "intake_batch": INTAKE_BATCH},
    )
    bridge = bridges(cfg, "full-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    try:
        publisher.wait()  # mosquitto took all of them
        bridge.wait_event("backpressure_on")
        time.sleep(1.0)
        taken = bridge.count("message")  # logged once acknowledged
        time.sleep(2.0)
        assert bridge.count("message") == taken, "the bridge went on acking with a full spool"
        # The limit is checked before each intake batch: at most one batch past it. (Rows of
        # alarms leave the outbox at once: count the messages that left a row for the sink.)
        held = sum(1 for e in bridge.events("message") if e["forwarded"])
        assert held < MAX_PENDING + INTAKE_BATCH, held
        assert bridge.events("stopped") == []
        hook.start(200)
        wait_until(
            all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            bridge,
        )
        bridge.wait_event("backpressure_off")
        assert bridge.terminate() == 0
    finally:
        publisher.close()

    figures = tally("4. spool full", messages, msg_ids(hook.received()), alarms.source_ids())
    report(
        figures,
        f"| acked while full: {taken} of {len(messages)} ({held} rows for the sink); seed {SEED}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert figures.duplicated == 0
    assert outbox_rows(spool) == 0


def test_sigterm_with_a_full_spool_exits_promptly_and_loses_nothing(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """SIGTERM while back-pressured: the bridge stops at once (it does not wait out the drain
    timeout for room that cannot come); the next start, with the receiver up, delivers all."""
    messages = traffic(200, "bpterm", seed=SEED)
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(
        mosquitto,
        [webhook_sink(hook)],
        spool,
        client_id="fault-full-term",
        spool_options={"max_pending": 10},
    )
    bridge = bridges(cfg, "full-term-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    try:
        publisher.wait()
        bridge.wait_event("backpressure_on")
        started = time.monotonic()
        assert bridge.terminate(timeout=45) == 0
        took = time.monotonic() - started
        assert took < 10, f"SIGTERM with a full spool took {took:.1f}s"
        hook.start(200)
        again = bridges(cfg, "full-term-").start()
        wait_until(
            all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            again,
        )
        assert again.terminate() == 0
    finally:
        publisher.close()
    figures = tally(
        "4b. SIGTERM, spool full", messages, msg_ids(hook.received()), alarms.source_ids()
    )
    report(figures, f"| exit took {took:.1f}s")
    assert figures.lost == []
    assert figures.duplicated == 0


# --- 5. an unwritable state directory, a full disk ----------------------------------------------


@pytest.mark.parametrize("layout", ["parent-is-a-file", "spool-is-a-directory"])
def test_unwritable_state_directory_fails_clearly_at_start(
    mosquitto: Mosquitto, bridges: Bridges, hook: HookServer, tmp_path: Path, layout: str
) -> None:
    """A spool that cannot be created: a one-line error naming it on stderr, a non-zero exit,
    and no connection to the broker. (The tests run as root, who can write to a mode 555
    directory, so the unwritable place is made with files instead.)"""
    blocker = tmp_path / "state"
    if layout == "parent-is-a-file":
        blocker.write_text("not a directory\n")
        spool = blocker / "spool.db"
    else:
        spool = blocker / "spool.db"
        spool.mkdir(parents=True)
    cfg = bridge_config(mosquitto, [webhook_sink(hook)], spool, client_id="fault-unwritable")
    bridge = bridges(cfg, "unwritable-").start()
    code = bridge.wait_exit(WAIT)
    assert code is not None, "the bridge kept running without a spool"
    stderr = bridge.stderr()
    print(f"\n[faults] 5a. unwritable state ({layout}): exit {code}: {stderr.strip()}")
    assert code != 0
    assert "spool" in stderr
    assert str(spool) in stderr
    assert "Traceback" not in stderr
    assert bridge.events("connected") == []


class DiskFull:
    """A bridge none of whose files may grow past the spool's initial size plus 64 KiB, fed one
    message at a time until its spool write fails. The webhook receiver is its sink (no file)
    and its log goes through a pipe, so the limit only reaches the spool."""

    def __init__(
        self,
        mosquitto: Mosquitto,
        bridges: Bridges,
        hook: HookServer,
        tmp_path: Path,
        messages: list[Message],
        name: str,
    ) -> None:
        self.spool = tmp_path / "state" / "spool.db"
        self.cfg = bridge_config(
            mosquitto, [webhook_sink(hook, 20)], self.spool, client_id=f"fault-{name}"
        )
        # A first run creates the spool; its clean exit leaves the database alone (no WAL).
        assert bridges(self.cfg, f"{name}-init-").start().wait_ready().terminate() == 0
        self.initial = self.spool.stat().st_size
        self.limit = self.initial + 64 * 1024
        self.bridge = bridges(self.cfg, f"{name}-").start(file_size_limit=self.limit)
        self.bridge.wait_ready()
        self.publisher = Publisher(mosquitto, messages).start(allowed=0)
        self.fed = 0

    def fill(self) -> dict[str, Any]:
        """Publish one message at a time until the bridge logs spool_write_failed."""
        bridge = self.bridge
        while not bridge.count("spool_write_failed"):
            assert self.fed < len(self.publisher.messages), "the spool never filled up"
            self.fed += 1
            self.publisher.allow(self.fed)
            wait_until(
                lambda: bridge.count("message") >= self.fed or bridge.count("spool_write_failed"),
                WAIT,
                f"message {self.fed} taken or the spool write failing",
                bridge,
            )
        return bridge.events("spool_write_failed")[0]


def test_disk_full_acks_nothing_unstored_and_a_restart_delivers_all(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """The spool cannot grow (RLIMIT_FSIZE): spool_write_failed, no ack from then on; after a
    kill -9 and a start without the limit every message arrives."""
    messages = traffic(400, "df", seed=SEED)
    hook.start(200)
    disk = DiskFull(mosquitto, bridges, hook, tmp_path, messages, "diskfull")
    try:
        failed = disk.fill()
        stored = disk.bridge.count("message")
        disk.publisher.allow(len(messages))
        disk.publisher.wait()
        time.sleep(2.0)
        assert disk.bridge.count("message") == stored, "acked while the spool could not be written"
        assert disk.bridge.count("spool_write_recovered") == 0
        assert disk.bridge.kill() == -signal.SIGKILL
        again = bridges(disk.cfg, "diskfull-after-").start()
        wait_until(
            all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            again,
        )
        assert again.terminate() == 0
    finally:
        disk.publisher.close()
    figures = tally(
        "5b. disk full, kill, restart", messages, msg_ids(hook.received()), alarms.source_ids()
    )
    report(
        figures,
        f"| limit {disk.limit} B (spool {disk.initial} B); failed after {stored} stored: "
        f"{failed['reason']!r}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert outbox_rows(disk.spool) == 0


def test_disk_full_recovers_in_place_when_space_returns(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """The same full disk, but space comes back while the bridge runs (the limit is lifted):
    spool_write_recovered, and every message arrives without a restart."""
    messages = traffic(400, "dfr", seed=SEED)
    hook.start(200)
    disk = DiskFull(mosquitto, bridges, hook, tmp_path, messages, "diskback")
    assert disk.bridge.proc is not None
    try:
        disk.fill()
        disk.publisher.allow(len(messages))
        disk.publisher.wait()
        time.sleep(1.0)
        disk.bridge.lift_limit()
        disk.bridge.wait_event("spool_write_recovered", timeout=WAIT)
        wait_until(
            all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            "every valid message at the receiver and every invalid one alarmed",
            disk.bridge,
        )
        assert disk.bridge.terminate() == 0
    finally:
        disk.publisher.close()
    figures = tally(
        "5c. disk full, space back", messages, msg_ids(hook.received()), alarms.source_ids()
    )
    report(figures, f"| spool_failed logged {disk.bridge.count('spool_failed')} times")
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert outbox_rows(disk.spool) == 0


def test_disk_full_does_not_resend_a_delivered_batch_every_second(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """A batch the sink took while the spool cannot record it may come once more later (at
    least once), but not again and again for the whole outage."""
    messages = traffic(100, "dfdup", seed=SEED, invalid_share=0.0)
    hook.start(503)  # rows wait in the outbox until the disk is full
    disk = DiskFull(mosquitto, bridges, hook, tmp_path, messages, "diskdup")
    try:
        disk.fill()
        hook.status = 200
        wait_until(hook.received, WAIT, "the receiver to take a batch", disk.bridge)
        time.sleep(4.0)
        copies = Counter(msg_ids(hook.received()))
        print(
            f"\n[faults] 5d. disk full: {len(copies)} events sent {sum(copies.values())} times "
            f"in 4 s (most copies of one: {max(copies.values())})"
        )
        assert max(copies.values()) <= 2, f"sent again and again: {copies.most_common(3)}"
    finally:
        disk.publisher.close()


def test_health_port_taken_at_start_fails_clearly(
    mosquitto: Mosquitto, bridges: Bridges, hook: HookServer, tmp_path: Path
) -> None:
    """Another resource missing at start (the health port is taken): a one-line error naming
    it on stderr, a non-zero exit, no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = bridge_config(
            mosquitto, [webhook_sink(hook)], tmp_path / "state" / "spool.db", client_id="fault-hp"
        )
        cfg["health"] = {"port": port}
        bridge = bridges(cfg, "health-taken-").start()
        code = bridge.wait_exit(WAIT)
    assert code is not None, "the bridge kept running"
    stderr = bridge.stderr()
    print(f"\n[faults] 5e. health port taken: exit {code}: {stderr.strip().splitlines()[-1:]}")
    assert code != 0
    assert "Traceback" not in stderr
    assert f"{port}" in stderr


def test_jsonl_sink_starts_a_new_line_after_a_torn_one(
    mosquitto: Mosquitto, bridges: Bridges, tmp_path: Path
) -> None:
    """A kill -9 can cut a batch's write short (a SIGKILL stops a large write(2) at a page
    boundary), leaving a last line without its newline; the batch was not marked delivered,
    so it is sent again. The record sent again must land on a line of its own."""
    out = tmp_path / "out" / "customers.jsonl"
    out.parent.mkdir()
    torn = '{"op":"add","tenant":"acme","projectId":"42","msgId":"tor'
    out.write_text(torn, encoding="utf-8")
    messages = traffic(1, "torn", seed=SEED, invalid_share=0.0)
    cfg = bridge_config(
        mosquitto, [jsonl_sink(out)], tmp_path / "state" / "spool.db", client_id="fault-torn"
    )
    bridge = bridges(cfg, "torn-").start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    try:
        publisher.wait()
        wait_until(lambda: count_lines(out) >= 1, WAIT, "a line in the sink", bridge)
        assert bridge.terminate() == 0
    finally:
        publisher.close()
    output = read_jsonl(out)
    print(f"\n[faults] torn jsonl line: events {len(output.events)}, unreadable {output.broken}")
    assert msg_ids(output.events) == [messages[0].msg_id]
