"""Fault-injection kit: real mosquitto, real `bridge run` processes, every message counted.

Each message carries a unique msgId. Valid ones hold one add record (so exactly one
downstream event each); about 5% hold one invalid record (so exactly one alarm each, whose
`sourceMsgId` names the message). A scenario ends by comparing what came out (the jsonl
file or the webhook receiver, and an alarm probe on a persistent session) with what was
sent, by msgId: lost, duplicated, unexpected.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from brokers import Mosquitto, MqttProbe
from paho.mqtt.enums import CallbackAPIVersion

from bridge.testing import Recorder, Request
from bridge.testing.process import BridgeProcess, wait_until

TENANT = "acme"
PROJECT = "42"
TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-customer"
ERROR_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-error-customer"
PROFILE: dict[str, Any] = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
REPORT_TS = 1661154622
EVENT_TS = 1661154622000
ALARM_BATCH = 50  # bridge.targets.ALARM_BATCH: alarm rows the alarm worker publishes per batch

FAILED = pytest.StashKey[bool]()
"""Set on a test item by tests/faults/conftest.py: whether the test body failed."""

WAIT = 20.0  # seconds for something the bridge should do promptly
DRAIN = 90.0  # seconds for a whole stream to come through (pytest times out at 120)


# --- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound message and what it should become downstream."""

    msg_id: str
    customer_id: str
    seq: int
    valid: bool
    payload: bytes
    topic: str = TOPIC


def envelope(msg_id: str, customer_id: str, seq: int, *, valid: bool) -> bytes:
    """An add envelope with one record; an invalid one has an unreadable `age`."""
    record: dict[str, Any] = {
        "id": customer_id,
        "projectId": "1117745722292428800",
        "name": "张三",
        "phone": "13800138000",
        "remark": str(seq),
    }
    if not valid:
        record["age"] = "年龄"  # not a number: rejected even in lenient mode
    document = {
        "msgId": msg_id,
        "reportTs": REPORT_TS,
        "profile": PROFILE,
        "events": {"add": {"eventTs": EVENT_TS, "eventType": 1, "customerList": [record]}},
    }
    return json.dumps(document, ensure_ascii=False).encode()


def traffic(
    count: int,
    prefix: str,
    *,
    seed: int,
    customers: int | None = None,
    invalid_share: float = 0.05,
) -> list[Message]:
    """`count` messages. Without `customers`, each record's id is `c-<msgId>`; with it,
    records cycle over `customers` ids and `remark` holds each customer's sequence number."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        msg_id = f"{prefix}-{n:05d}"
        if customers is None:
            customer_id, seq = f"c-{msg_id}", 0
        else:
            customer_id, seq = f"cust-{n % customers:03d}", n // customers
        valid = rng.random() >= invalid_share
        made.append(
            Message(
                msg_id, customer_id, seq, valid, envelope(msg_id, customer_id, seq, valid=valid)
            )
        )
    return made


# --- publishing ---------------------------------------------------------------------------------


class Publisher:
    """Publishes messages at QoS 1 from a background thread, as fast as the broker acks.

    A persistent session and paho's own queue carry it across broker restarts: messages not
    acknowledged when the connection drops are sent again (with DUP) on reconnect. `allow(n)`
    lets it publish the first `n` messages only (all by default).
    """

    def __init__(self, mosquitto: Mosquitto, messages: Sequence[Message], inflight: int = 100):
        self.messages = list(messages)
        self._allowed = len(self.messages)
        self._gate = threading.Condition()
        self._acked: set[int] = set()  # mids the broker acknowledged (5,000 never wrap)
        client_id = f"fault-pub-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self._host, self._port = mosquitto.host, mosquitto.port
        self._thread = threading.Thread(target=self._run, name="fault-publisher", daemon=True)
        self._stop = threading.Event()

    def start(self, allowed: int | None = None) -> Publisher:
        """Connect and start publishing (the first `allowed` messages, if given)."""
        if allowed is not None:
            self._allowed = allowed
        self.client.connect(self._host, self._port, 30)
        self.client.loop_start()
        self._thread.start()
        return self

    def allow(self, count: int) -> None:
        """Let the publisher go on up to message `count`."""
        with self._gate:
            self._allowed = count
            self._gate.notify_all()

    def _run(self) -> None:
        for index, message in enumerate(self.messages):
            with self._gate:
                self._gate.wait_for(lambda i=index: i < self._allowed or self._stop.is_set())
            if self._stop.is_set():
                return
            # Not connected (the broker restarting): paho keeps it and sends it on reconnect.
            self.client.publish(message.topic, message.payload, qos=1)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_args: Any) -> None:
        with self._gate:
            self._acked.add(mid)

    @property
    def acked(self) -> int:
        """How many messages the broker has acknowledged."""
        with self._gate:
            return len(self._acked)

    def wait(self, count: int | None = None, timeout: float = DRAIN) -> None:
        """Wait until the broker acknowledged `count` messages (all allowed by default)."""
        want = self._allowed if count is None else count
        deadline = time.monotonic() + timeout
        while self.acked < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"broker acked {self.acked} of {want} in {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop publishing and disconnect."""
        self._stop.set()
        with self._gate:
            self._gate.notify_all()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


class AlarmProbe(MqttProbe):
    """Subscribes to the error topic on a persistent session (so that no alarm is missed while
    it reconnects) and counts alarms by `sourceMsgId`."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        super().__init__(
            mosquitto.host,
            mosquitto.port,
            client_id=f"fault-alarms-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 2)

    def open(self) -> AlarmProbe:
        """Connect and subscribe to the error topic at QoS 1."""
        self.connect()
        self.subscribe(ERROR_TOPIC, qos=1)
        return self

    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm received so far, repeats included."""
        return [json.loads(payload) for topic, payload in self.messages if topic == ERROR_TOPIC]

    def source_ids(self) -> list[str]:
        """The `sourceMsgId` of every alarm received so far, repeats included."""
        return [alarm.get("sourceMsgId", "?") for alarm in self.alarms()]


def fault_mosquitto(workdir: Path, *extra: str) -> Mosquitto:
    """A mosquitto that persists (autosaving every second) and never drops a queued message."""
    return Mosquitto(
        workdir,
        persistence=True,
        max_queued_messages=0,
        extra_config=["autosave_interval 1", *extra],
    )


# --- the bridge ---------------------------------------------------------------------------------


def bridge_config(
    mosquitto: Mosquitto,
    sinks: list[dict[str, Any]],
    spool: Path,
    *,
    client_id: str,
    spool_options: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    broker: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A bridge config for a fault scenario: MQTT 5 persistent session, quick retries."""
    return {
        "broker": {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "protocol": "5",
            "client_id": client_id,
            "reconnect": {"min_delay": 1, "max_delay": 2},
            **(broker or {}),
        },
        "sinks": sinks,
        "spool": {"path": str(spool), **(spool_options or {})},
        "delivery": {"initial_backoff": 0.05, "max_backoff": 0.5, **(delivery or {})},
        "health": {"port": 0},  # several bridges may run at once
        "logging": {"level": "debug", "format": "json"},
    }


class Bridge(BridgeProcess):
    """One `python -m bridge run` subprocess as the fault scenarios drive it."""

    wait = WAIT

    def wait_event(self, name: str, count: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until `count` events named `name` were logged; return the last of them."""
        return self.wait_for(name, count, timeout)[count - 1]

    def terminate(self, timeout: float | None = 45.0) -> int:
        """SIGTERM and wait for the exit status (SIGKILL and fail after `timeout`)."""
        return super().terminate(timeout)


class Bridges:
    """Makes bridge processes for one test and kills those still running at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.made: list[Bridge] = []

    def __call__(self, config: dict[str, Any], name: str = "bridge") -> Bridge:
        bridge = Bridge(self.workdir, f"{name}{len(self.made)}", config)
        self.made.append(bridge)
        return bridge

    def close(self, show_logs: bool) -> None:
        """Kill the survivors; print every log if `show_logs` (the test failed)."""
        for bridge in self.made:
            if bridge.running:
                bridge.kill()
            if show_logs and bridge.proc is not None:
                print(bridge.log())


def outbox_rows(spool: Path) -> int:
    """Rows left in the spool's outbox (the database opened read-only)."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


# --- the jsonl sink's output --------------------------------------------------------------------


@dataclass
class JsonlOutput:
    """The lines of a jsonl sink's file: events, and lines that are not JSON (torn writes)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> JsonlOutput:
    """Parse every finished line of `path`; a line being written is not counted yet."""
    out = JsonlOutput()
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            out.events.append(json.loads(line))
        except ValueError:
            out.broken.append(line)
    return out


def count_lines(path: Path) -> int:
    """Finished lines in `path`, cheaply."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return f.read().count(b"\n")


# --- the webhook receiver -----------------------------------------------------------------------


class HookServer(Recorder):
    """The webhook receiver on a loopback port that can be down, fail, or take batches.

    `stop()` cuts every open keep-alive connection, so the bridge sees a receiver that is
    gone; `start()` listens on the same port again. Only requests answered 200 count: their
    events are kept in arrival order.
    """

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port=port or 0, path="/hooks/customers")
        self.refuse_event: Callable[[dict[str, Any]], bool] | None = None
        """While set, a request carrying an event it is true for is answered 400, whole."""
        self.refuse = self._carries_refused_event
        self._accepted: list[dict[str, Any]] = []
        self._parsed = 0

    def received(self) -> list[dict[str, Any]]:
        """The accepted events, in arrival order."""
        # Scenarios poll this while thousands of events arrive: parse each request once.
        requests = self.recorded()
        for request in requests[self._parsed :]:
            if request.status == 200:
                self._accepted.extend(request.json()["events"])
        self._parsed = len(requests)
        return list(self._accepted)

    def _carries_refused_event(self, request: Request) -> bool:
        refuse = self.refuse_event
        return refuse is not None and any(refuse(event) for event in request.json()["events"])


# --- counting -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """What came out of a scenario, by msgId."""

    scenario: str
    sent: int
    valid: int
    invalid: int
    forwarded: int
    alarmed: int
    lost: list[str]
    duplicated_events: int
    duplicated_alarms: int
    unexpected: list[str]

    @property
    def duplicated(self) -> int:
        """Extra copies downstream: events and alarms."""
        return self.duplicated_events + self.duplicated_alarms

    def line(self) -> str:
        """The per-scenario report line."""
        return (
            f"[faults] {self.scenario}: sent={self.sent} (valid {self.valid}, invalid "
            f"{self.invalid}) forwarded={self.forwarded} alarmed={self.alarmed} "
            f"lost={len(self.lost)} duplicated={self.duplicated} "
            f"(events {self.duplicated_events}, alarms {self.duplicated_alarms})"
        )


def tally(
    scenario: str,
    messages: Sequence[Message],
    forwarded_ids: Iterable[str | None],
    alarmed_ids: Iterable[str | None],
) -> Figures:
    """Compare what came out with what was sent; `forwarded` and `alarmed` count distinct ids."""
    valid = {m.msg_id for m in messages if m.valid}
    invalid = {m.msg_id for m in messages if not m.valid}
    events = Counter(str(i) for i in forwarded_ids)
    alarms = Counter(str(i) for i in alarmed_ids)
    lost = sorted((valid - events.keys()) | (invalid - alarms.keys()))
    unexpected = sorted((events.keys() - valid) | (alarms.keys() - invalid))
    return Figures(
        scenario=scenario,
        sent=len(messages),
        valid=len(valid),
        invalid=len(invalid),
        forwarded=len(events.keys() & valid),
        alarmed=len(alarms.keys() & invalid),
        lost=lost,
        duplicated_events=sum(n - 1 for n in events.values()),
        duplicated_alarms=sum(n - 1 for n in alarms.values()),
        unexpected=unexpected,
    )


def report(figures: Figures, extra: str = "") -> None:
    """Print the scenario's line (shown with `pytest -s`)."""
    print(f"\n{figures.line()}{(' ' + extra) if extra else ''}", flush=True)


def all_out(
    messages: Sequence[Message],
    forwarded: Callable[[], Iterable[str | None]],
    alarmed: Callable[[], Iterable[str | None]],
) -> Callable[[], bool]:
    """A probe: every valid message forwarded and every invalid one alarmed."""
    valid = {m.msg_id for m in messages if m.valid}
    invalid = {m.msg_id for m in messages if not m.valid}

    def done() -> bool:
        return valid <= set(forwarded()) and invalid <= set(alarmed())

    return done


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


def kill_while_delivering(
    mosquitto: Mosquitto,
    bridges: Bridges,
    alarms: AlarmProbe,
    hook: HookServer,
    config: dict[str, Any],
    messages: list[Message],
    *,
    name: str,
    kills: int,
    rng: random.Random,
    jitter: float,
) -> list[int]:
    """Publish `messages` to a bridge delivering to `hook`, and kill it with SIGKILL `kills`
    times at seeded points spread over the stream (up to `jitter` seconds after the receiver
    reached each), restarting it on its persistent session each time. Then wait until every
    valid message is at the receiver and every invalid one alarmed, and stop it with SIGTERM.
    Returns how many events the receiver held at each kill."""
    valid = sum(m.valid for m in messages)
    bridge = bridges(config, name).start().wait_ready()
    publisher = Publisher(mosquitto, messages).start()
    cuts: list[int] = []
    try:
        for kill in range(kills):
            low, high = (kill + 0.2) / (kills + 1), (kill + 0.8) / (kills + 1)
            target = rng.randint(int(low * valid), int(high * valid))
            wait_until(
                lambda t=target: len(hook.received()) >= t, DRAIN, f"{target} events", bridge
            )
            time.sleep(rng.uniform(0, jitter))
            assert bridge.kill() == -signal.SIGKILL
            cuts.append(len(hook.received()))
            bridge = bridges(config, name).start()
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
    return cuts
