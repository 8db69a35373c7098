"""The real bridge (`python -m bridge run`) in a subprocess against real brokers on loopback.

Each test writes a YAML config in tmp_path, starts the bridge, waits for its `subscribed`
log event, publishes with a paho probe and watches the jsonl sink, the error topics and the
JSON log. A failing test shows each bridge's log (in "Captured stdout teardown").
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest
from brokers import Mosquitto, MqttProbe

from bridge import testing
from bridge.broker import EmbeddedBroker
from bridge.testing.process import wait_until

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "bridge" / "samples"

PROFILE: dict[str, Any] = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
REPORT_TS = 1661154622
EVENT_TS = 1661154622000
DATE_TIME = "2022-08-22 15:50:22"  # EVENT_TS in Asia/Shanghai
TENANT = "acme"
PROJECT = "42"
VENDOR = "海康威视"
STANDARD_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-customer"
STANDARD_ERROR_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-error-customer"
CUSTOM_TOPIC = f"{TENANT}/proj_{PROJECT}/v2-customization-{VENDOR}-customer"
CUSTOM_ERROR_TOPIC = f"{TENANT}/proj_{PROJECT}/v2-customization-{VENDOR}-error-customer"
EVENT_KEYS = {
    "op",
    "tenant",
    "projectId",
    "version",
    "vendor",
    "msgId",
    "reportTs",
    "eventTs",
    "customer",
}

Server = EmbeddedBroker | Mosquitto

# Seconds a test waits for something the bridge should do (polling, so usually far less).
WAIT = 10.0


# --- payloads ---------------------------------------------------------------------------------


def customer(**fields: Any) -> dict[str, Any]:
    """A valid add/edit record with the required fields, plus `fields`."""
    record: dict[str, Any] = {
        "id": "c-1",
        "projectId": "1117745722292428800",
        "name": "张三",
        "phone": "13800138000",
    }
    record.update(fields)
    return record


def envelope(
    op: str = "add",
    records: list[Any] | None = None,
    *,
    msg_id: str | None = None,
    event_ts: Any = EVENT_TS,
    **ops: list[Any],
) -> bytes:
    """An inbound eventType 1 envelope holding `op` (and any further ops given as keywords)."""
    events = {
        op: {
            "eventTs": event_ts,
            "eventType": 1,
            "customerList": records if records is not None else [customer()],
        }
    }
    for name, more in ops.items():
        events[name] = {"eventTs": event_ts, "eventType": 1, "customerList": more}
    document: dict[str, Any] = {"reportTs": REPORT_TS, "profile": PROFILE, "events": events}
    if msg_id is not None:
        document["msgId"] = msg_id
    return json.dumps(document, ensure_ascii=False).encode()


# --- the bridge in a subprocess ---------------------------------------------------------------


class BridgeProcess(testing.BridgeProcess):
    """A `bridge run` of these tests: a spool per client id, a free health port, and
    tests/integration on PYTHONPATH so that `handlers:` sinks import."""

    wait = WAIT

    def __init__(self, workdir: Path, name: str, config: dict[str, Any]) -> None:
        # One spool per client id: a restart with the same id finds what it left behind.
        client_id = config.get("broker", {}).get("client_id", "bridge")
        spool = workdir / f"state-{client_id}" / "spool.db"
        config = {**config, "spool": {"path": str(spool), **config.get("spool", {})}}
        # Several bridges may run at once: each health listener takes a free port.
        config["health"] = {"port": 0, **config.get("health", {})}
        super().__init__(workdir, name, config)

    def start(self, **env_vars: str) -> Self:  # type: ignore[override]
        """Start the bridge with `env_vars` added to the environment."""
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        return super().start(env={**env_vars, "PYTHONPATH": path})

    def wait_event(
        self, name: str, count: int = 1, timeout: float = WAIT, **fields: Any
    ) -> list[dict[str, Any]]:
        """Wait until `count` events named `name` (with `fields`) were logged; return them."""
        return self.wait_for(name, count, timeout, **fields)


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Make bridge processes; kills those still running at the end and prints every log."""
    made: list[BridgeProcess] = []

    def make(config: dict[str, Any], name: str = "bridge") -> BridgeProcess:
        bridge = BridgeProcess(tmp_path, f"{name}{len(made)}", config)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        if bridge.running:
            bridge.kill()
        if bridge.proc is not None:
            print(bridge.log())  # shown by pytest only when the test failed


def config(
    server: Server,
    sinks: list[dict[str, Any]],
    *,
    client_id: str | None = None,
    protocol: str | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A bridge config for `server`: MQTT 5 on mosquitto, 3.1.1 on the embedded broker."""
    if protocol is None:
        protocol = "3.1.1" if isinstance(server, EmbeddedBroker) else "5"
    broker = {
        "host": server.host,
        "port": server.port,
        "protocol": protocol,
        "client_id": client_id or f"it-{uuid.uuid4().hex[:12]}",
        "reconnect": {"min_delay": 1, "max_delay": 2},
    }
    broker.update(sections.pop("broker", {}))
    document = {"broker": broker, "sinks": sinks, "logging": {"level": "debug", "format": "json"}}
    document.update(sections)
    return document


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a jsonl sink's file (none if it does not exist yet)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    # A line being written may be incomplete: only count finished lines.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_lines(
    path: Path, count: int, bridge: BridgeProcess, timeout: float = WAIT
) -> list[dict[str, Any]]:
    """Wait until the jsonl file holds at least `count` lines."""
    return wait_until(
        lambda: lines if len(lines := read_jsonl(path)) >= count else None,
        timeout,
        lambda: f"{count} lines in {path} (have {len(read_jsonl(path))})\n{bridge.log()}",
        bridge,
    )


class RecordingProbe(MqttProbe):
    """An MqttProbe that also keeps each message's QoS and retain flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: list[tuple[str, int, bool]] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.flags.append((message.topic, message.qos, bool(message.retain)))
        super()._on_message(client, userdata, message)

    def on(self, topic: str) -> list[dict[str, Any]]:
        """The JSON payloads received on `topic`."""
        return [json.loads(payload) for t, payload in self.messages if t == topic]

    def wait_on(self, topic: str, count: int, bridge: BridgeProcess) -> list[dict[str, Any]]:
        """Wait until `count` messages arrived on `topic`; return their payloads."""
        return wait_until(
            lambda: found if len(found := self.on(topic)) >= count else None,
            WAIT,
            lambda: f"{count} message(s) on {topic!r}; got {self.messages!r}\n{bridge.log()}",
            bridge,
        )


@pytest.fixture
def watch() -> Iterator[Callable[[Server], RecordingProbe]]:
    """Probes subscribed to every three-level topic (all inbound and error topics)."""
    probes: list[RecordingProbe] = []

    def make(server: Server) -> RecordingProbe:
        probe = RecordingProbe(server.host, server.port)
        probe.connect()
        probes.append(probe)
        probe.subscribe("+/+/+", qos=1)
        return probe

    yield make
    for probe in probes:
        probe.close()


def publish(server: Server, *messages: tuple[str, bytes]) -> None:
    """Publish each (topic, payload) at QoS 1 from a fresh clean-session client."""
    with MqttProbe(server.host, server.port) as publisher:
        for topic, payload in messages:
            publisher.publish(topic, payload, qos=1)


def assert_alarm(
    alarm: dict[str, Any],
    *,
    op: str,
    records: list[Any],
    source_msg_id: str | None,
    fields: list[str],
) -> None:
    """`alarm` is exactly the SPEC 5 envelope for `records` failing `op` on `fields`."""
    expected_keys = {"msgId", "reportTs", "profile", "events", "errors"}
    if source_msg_id is not None:
        expected_keys.add("sourceMsgId")
    assert set(alarm) == expected_keys
    assert uuid.UUID(alarm["msgId"]).version == 4
    assert alarm["msgId"] != source_msg_id
    now_ms = time.time() * 1000
    assert isinstance(alarm["reportTs"], int)
    assert len(str(alarm["reportTs"])) == 13
    assert abs(alarm["reportTs"] - now_ms) < 60_000
    assert alarm["profile"] == PROFILE
    assert list(alarm["events"]) == [f"{op}_error"]
    body = alarm["events"][f"{op}_error"]
    assert set(body) == {"eventTs", "eventType", "msg", "status", "code", "customerList"}
    assert body["eventType"] == 2
    assert body["code"] == 400
    assert body["status"] == (
        "CUSTOMER_MESSAGE_ERROR" if op == "unknown" else f"CUSTOMER_{op.upper()}_ERROR"
    )
    assert isinstance(body["eventTs"], int)
    assert len(str(body["eventTs"])) == 13
    assert body["customerList"] == records
    assert isinstance(body["msg"], str)
    assert body["msg"]
    for field in fields:
        assert field in body["msg"]
    if source_msg_id is not None:
        assert alarm["sourceMsgId"] == source_msg_id
    assert isinstance(alarm["errors"], list)
    assert alarm["errors"]


# --- 1. forwarding ----------------------------------------------------------------------------


def test_valid_records_reach_jsonl_sink_as_spec7(
    broker: Server, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """Valid records on a standard and a non-ASCII customization topic become SPEC 7 lines."""
    out = tmp_path / "out" / "customers.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    standard = customer(
        id="c-std", projectId=1117745722292428800, age="30", sex="1", remark=None, extra="kept"
    )
    custom = customer(id="c-cus", name="李四", meta={"楼栋": "A座"})
    publish(
        broker,
        (STANDARD_TOPIC, envelope("add", [standard], msg_id="m-std")),
        (CUSTOM_TOPIC, envelope("edit", [custom], msg_id="m-cus")),
        (STANDARD_TOPIC, (SAMPLES / "standard-delete.json").read_bytes()),
        # a date-time eventTs is read in Asia/Shanghai: 15:50:22 there is EVENT_TS
        (CUSTOM_TOPIC, envelope("delete", [{"id": "d-1"}], msg_id="m-dt", event_ts=DATE_TIME)),
    )
    lines = wait_lines(out, 4, bridge)
    assert len(lines) == 4
    for line in lines:
        assert set(line) == EVENT_KEYS
    assert lines[0] == {
        "op": "add",
        "tenant": TENANT,
        "projectId": PROJECT,  # from the topic, not from the record
        "version": None,
        "vendor": None,
        "msgId": "m-std",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": {
            "id": "c-std",
            "projectId": "1117745722292428800",
            "name": "张三",
            "phone": "13800138000",
            "age": 30,
            "sex": 1,
            "remark": None,
            "extra": "kept",
        },
    }
    assert lines[1] == {
        "op": "edit",
        "tenant": TENANT,
        "projectId": PROJECT,
        "version": "v2",
        "vendor": VENDOR,
        "msgId": "m-cus",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": custom,
    }
    assert lines[2] == {
        "op": "delete",
        "tenant": TENANT,
        "projectId": PROJECT,
        "version": None,
        "vendor": None,
        "msgId": None,
        "reportTs": REPORT_TS,
        "eventTs": 148813512323,  # the sample's 12 digits, accepted as is in lenient mode
        "customer": {"phone": "手机号", "id": "来源方主键id"},
    }
    assert lines[3] == {
        "op": "delete",
        "tenant": TENANT,
        "projectId": PROJECT,
        "version": "v2",
        "vendor": VENDOR,
        "msgId": "m-dt",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": {"id": "d-1"},
    }


def test_mqtt_sink_republishes_spec7_objects(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
) -> None:
    """The mqtt sink publishes each valid record's SPEC 7 object on its templated topic."""
    probe = watch(broker)
    sink = {"type": "mqtt", "topic": "out/{tenant}/{op}"}
    bridge = bridges(config(broker, [sink])).start().wait_ready()
    # out/{tenant}/{op} has three levels: the probe's +/+/+ already covers it.
    publish(broker, (CUSTOM_TOPIC, envelope("add", [customer()], msg_id="m-1")))
    (event,) = probe.wait_on(f"out/{TENANT}/add", 1, bridge)
    assert event == {
        "op": "add",
        "tenant": TENANT,
        "projectId": PROJECT,
        "version": "v2",
        "vendor": VENDOR,
        "msgId": "m-1",
        "reportTs": REPORT_TS,
        "eventTs": EVENT_TS,
        "customer": customer(),
    }


SELECTIONS = {
    # literal leaves: the broker only sends the selected vendor's topic (UTF-8 filter)
    "literal": {"tenants": [TENANT], "customization": {"versions": ["v2"], "vendors": [VENDOR]}},
    # any version: the bridge subscribes acme/+/+ and drops other vendors itself
    "local": {"tenants": [TENANT], "customization": {"versions": ["+"], "vendors": [VENDOR]}},
}


@pytest.mark.parametrize("selection", SELECTIONS.values(), ids=SELECTIONS.keys())
def test_subscription_selection_limits_what_is_forwarded(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
    selection: dict[str, Any],
) -> None:
    """Only the configured tenants and vendors are forwarded; others raise no alarm."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    cfg = config(broker, [{"type": "jsonl", "path": str(out)}], subscription=selection)
    bridge = bridges(cfg).start().wait_ready()
    other_vendor = f"{TENANT}/proj_{PROJECT}/v2-customization-大华-customer"
    other_tenant = f"other/proj_{PROJECT}/v1-business-model-customer"
    publish(
        broker,
        (other_vendor, envelope("add", [customer(age="年龄")], msg_id="other-vendor")),
        (other_tenant, envelope("add", [customer(age="年龄")], msg_id="other-tenant")),
        (STANDARD_TOPIC, envelope("add", [customer(id="std")], msg_id="std")),
        (CUSTOM_TOPIC, envelope("add", [customer(id="cus")], msg_id="cus")),
    )
    lines = wait_lines(out, 2, bridge)
    assert [line["msgId"] for line in lines] == ["std", "cus"]
    assert bridge.terminate() == 0
    assert [line["msgId"] for line in read_jsonl(out)] == ["std", "cus"]
    assert not [t for t, _ in probe.messages if t.endswith("-error-customer")]
    (stopped,) = bridge.events("stopped")
    assert stopped["alarms"] == 0 and stopped["alarms_by_status"] == {}


def test_sink_giving_up_raises_502_alarm(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """A sink refusing valid records for good gets a 502 alarm naming it; other sinks take them."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    refusing = {"type": "python", "name": "crm", "handler": "handlers:Refusing"}
    cfg = config(broker, [{"type": "jsonl", "path": str(out)}, refusing])
    bridge = bridges(cfg).start().wait_ready()
    record = customer(id="r-1", age="30")
    publish(broker, (STANDARD_TOPIC, envelope("edit", [record], msg_id="refused")))
    (alarm,) = probe.wait_on(STANDARD_ERROR_TOPIC, 1, bridge)
    assert set(alarm) == {"msgId", "reportTs", "profile", "events", "sourceMsgId", "errors"}
    assert alarm["sourceMsgId"] == "refused"
    assert alarm["profile"] == PROFILE
    body = alarm["events"]["edit_error"]
    assert body["eventType"] == 2
    assert body["code"] == 502
    assert body["status"] == "CUSTOMER_EDIT_ERROR"
    assert "crm" in body["msg"]
    assert [r["id"] for r in body["customerList"]] == ["r-1"]
    (line,) = wait_lines(out, 1, bridge)
    assert line["customer"] == {**record, "age": 30}
    bridge.wait_event("sink_gave_up", sink="crm", permanent=True)


def test_transient_sink_failure_is_retried_then_delivered(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """A sink failing twice is retried with backoff; the records then go through, no alarm."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    flaky = {
        "type": "python",
        "name": "flaky",
        "handler": "handlers:Flaky",
        "options": {"failures": 2},
    }
    cfg = config(
        broker,
        [flaky, {"type": "jsonl", "path": str(out)}],
        delivery={"initial_backoff": 0.05, "max_backoff": 0.2, "max_attempts": 5},
    )
    bridge = bridges(cfg).start().wait_ready()
    publish(broker, (STANDARD_TOPIC, envelope("add", [customer()], msg_id="retried")))
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "retried"
    bridge.wait_event("delivered", sink="flaky", attempt=3)
    failures = bridge.events("sink_failed")
    assert [f["attempt"] for f in failures] == [1, 2]
    assert all(f["sink"] == "flaky" for f in failures)
    bridge.wait_event("message", msg_id="retried", outcome="forwarded", acked=True)
    assert not [t for t, _ in probe.messages if t.endswith("-error-customer")]


def test_jsonl_written_by_the_intake_falls_back_to_the_spool_and_keeps_order(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """A caught-up jsonl sink is written by the intake itself; when that write fails the events
    go to the spool and are retried there, and the customer's later events wait behind them
    until the spool is drained, then go direct again."""
    blocker = tmp_path / "out"
    blocker.write_text("a file where the sink's directory should be\n")
    out = blocker / "customers.jsonl"
    cfg = config(
        mosquitto,
        [{"type": "jsonl", "name": "file", "path": str(out)}],
        delivery={"initial_backoff": 0.2, "max_backoff": 0.5, "max_attempts": 1000},
    )
    bridge = bridges(cfg).start().wait_ready()
    for n in (1, 2, 3):
        publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(age=n)], msg_id=f"o-{n}")))
    bridge.wait_event("sink_failed", sink="file", direct=True)
    bridge.wait_event("message", msg_id="o-3", acked=True)  # acked once spooled
    bridge.wait_event("sink_failed", sink="file", attempt=1)  # the worker's own try

    blocker.unlink()
    lines = wait_lines(out, 3, bridge)
    assert [line["msgId"] for line in lines] == ["o-1", "o-2", "o-3"]
    bridge.wait_event("delivered", sink="file")
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(age=4)], msg_id="o-4")))
    lines = wait_lines(out, 4, bridge)
    assert [line["msgId"] for line in lines] == ["o-1", "o-2", "o-3", "o-4"]
    bridge.wait_event("delivered", sink="file", direct=True)


def test_info_level_logs_alarmed_messages_and_progress_not_each_forwarded_one(
    broker: Server, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """At info a forwarded message gets no line of its own (a `progress` line counts it); one
    that raised an alarm does."""
    out = tmp_path / "out.jsonl"
    cfg = config(broker, [{"type": "jsonl", "path": str(out)}])
    cfg["logging"] = {"level": "info", "format": "json", "progress_interval": 0.5}
    bridge = bridges(cfg).start().wait_ready()
    publish(broker, (STANDARD_TOPIC, envelope("add", [customer()], msg_id="fine")))
    publish(broker, (STANDARD_TOPIC, envelope("add", [customer(age="年龄")], msg_id="bad")))
    wait_lines(out, 1, bridge)
    (alarmed,) = bridge.wait_event("message", msg_id="bad")
    assert alarmed["level"] == "info" and alarmed["alarm_statuses"] == ["CUSTOMER_ADD_ERROR"]
    bridge.wait_event("progress", forwarded=1, alarms=1)  # received counts the alarm too
    assert not bridge.events("message")[:-1]  # "fine" was forwarded without a line


def test_sigterm_during_sink_retries_leaves_message_for_next_start(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """SIGTERM while a sink is being retried exits 0 at once; the spool keeps the record and the
    next start delivers it."""
    down = {
        "type": "python",
        "name": "crm",
        "handler": "handlers:Flaky",
        "options": {"healthy": str(tmp_path / "never")},
    }
    client_id = f"it-retry-{uuid.uuid4().hex[:8]}"
    first_cfg = config(
        mosquitto,
        [down],
        client_id=client_id,
        delivery={"initial_backoff": 0.2, "max_backoff": 1.0, "max_attempts": 1000},
    )
    first = bridges(first_cfg, "retrying").start().wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer()], msg_id="pending")))
    first.wait_event("sink_failed", count=2)
    started = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - started < 5
    first.wait_event("message", msg_id="pending", acked=True)  # acked once spooled

    out = tmp_path / "out.jsonl"
    crm_back = {"type": "jsonl", "name": "crm", "path": str(out)}  # same name: same spool rows
    second_cfg = config(mosquitto, [crm_back], client_id=client_id)
    second = bridges(second_cfg, "recovered").start()
    (line,) = wait_lines(out, 1, second)
    assert line["msgId"] == "pending"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"], ids=["mqtt5", "mqtt311"])
def test_bridge_waits_for_a_broker_that_is_not_up_yet(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path, protocol: str
) -> None:
    """Started before its broker, the bridge keeps retrying and works once the broker is up."""
    mosquitto.stop()
    out = tmp_path / "out.jsonl"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(out)}], protocol=protocol)
    bridge = bridges(cfg).start()
    bridge.wait_event("connect_failed")
    mosquitto.start()
    bridge.wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer()], msg_id="late")))
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "late"
    assert bridge.terminate() == 0


def test_sigterm_without_broker_exits_promptly(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """SIGTERM stops a bridge that never reached its broker: exit 0 within a few seconds."""
    mosquitto.stop()
    bridge = bridges(config(mosquitto, [{"type": "jsonl", "path": str(tmp_path / "o.jsonl")}]))
    bridge.start().wait_event("connect_failed")
    started = time.monotonic()
    assert bridge.terminate() == 0
    assert time.monotonic() - started < 5
    assert bridge.events("stopped")


# --- 2-4. alarms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "error_topic", "op", "bad", "field"),
    [
        (STANDARD_TOPIC, STANDARD_ERROR_TOPIC, "add", customer(age="年龄", projectId=7), "age"),
        (CUSTOM_TOPIC, CUSTOM_ERROR_TOPIC, "delete", {"phone": "138001380001"}, "id"),
    ],
    ids=["standard-add", "customization-delete"],
)
def test_invalid_record_alarmed_on_error_topic(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
    topic: str,
    error_topic: str,
    op: str,
    bad: dict[str, Any],
    field: str,
) -> None:
    """An invalid record gets the exact SPEC 5 alarm, QoS 1 and not retained, on its error topic."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    publish(broker, (topic, envelope(op, [bad], msg_id="src-1")))
    (alarm,) = probe.wait_on(error_topic, 1, bridge)
    assert_alarm(alarm, op=op, records=[bad], source_msg_id="src-1", fields=[field])
    assert [e["index"] for e in alarm["errors"]] == [0] * len(alarm["errors"])
    assert field in {e["field"] for e in alarm["errors"]}
    assert (error_topic, 1, False) in probe.flags
    bridge.wait_event("message", topic=topic, forwarded=0, rejected=1)
    assert read_jsonl(out) == []


def test_alarm_without_inbound_msgid_has_no_source_msgid(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """An alarm about an inbound message without msgId carries no sourceMsgId key."""
    probe = watch(broker)
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(tmp_path / "o.jsonl")}]))
    bridge.start().wait_ready()
    sample = (SAMPLES / "standard-add.json").read_bytes()  # "age": "年龄" fails in lenient mode
    publish(broker, (STANDARD_TOPIC, sample))
    (alarm,) = probe.wait_on(STANDARD_ERROR_TOPIC, 1, bridge)
    records = json.loads(sample)["events"]["add"]["customerList"]
    assert_alarm(alarm, op="add", records=records, source_msg_id=None, fields=["age"])


def test_partial_batch_forwards_valid_and_alarms_invalid_once(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """Valid records of a batch are forwarded; the invalid ones share one alarm, as received."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    bad_phone = customer(id="c-2", phone="1380013800012345")  # 16 > 15 characters
    bad_age = customer(id="c-4", age=201)
    records = [customer(id="c-1"), bad_phone, customer(id="c-3"), bad_age]
    publish(broker, (CUSTOM_TOPIC, envelope("add", records, msg_id="batch-1")))
    (alarm,) = probe.wait_on(CUSTOM_ERROR_TOPIC, 1, bridge)
    assert_alarm(
        alarm, op="add", records=[bad_phone, bad_age], source_msg_id="batch-1", fields=["phone"]
    )
    assert {(e["index"], e["field"]) for e in alarm["errors"]} == {(1, "phone"), (3, "age")}
    lines = wait_lines(out, 2, bridge)
    assert [line["customer"]["id"] for line in lines] == ["c-1", "c-3"]
    assert {line["msgId"] for line in lines} == {"batch-1"}
    bridge.wait_event("message", topic=CUSTOM_TOPIC, forwarded=2, rejected=2)
    assert len(probe.on(CUSTOM_ERROR_TOPIC)) == 1


def test_each_operation_of_an_envelope_gets_its_own_alarm(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """Two failing operations in one envelope give one alarm each; valid records still go on."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    bad_add = customer(id="c-2", name="")
    bad_delete = {"id": "d-1", "phone": "138001380001"}  # 12 > 11 characters
    payload = envelope(
        "add", [customer(id="c-1"), bad_add], msg_id="two-ops", delete=[bad_delete, {"id": "d-2"}]
    )
    publish(broker, (STANDARD_TOPIC, payload))
    alarms = probe.wait_on(STANDARD_ERROR_TOPIC, 2, bridge)
    by_op = {next(iter(alarm["events"])): alarm for alarm in alarms}
    assert set(by_op) == {"add_error", "delete_error"}
    assert_alarm(
        by_op["add_error"], op="add", records=[bad_add], source_msg_id="two-ops", fields=["name"]
    )
    assert_alarm(
        by_op["delete_error"],
        op="delete",
        records=[bad_delete],
        source_msg_id="two-ops",
        fields=["phone"],
    )
    lines = wait_lines(out, 2, bridge)
    assert [(line["op"], line["customer"]["id"]) for line in lines] == [
        ("add", "c-1"),
        ("delete", "d-2"),
    ]


def _nested(depth: int) -> bytes:
    """An envelope-shaped object nested `depth` levels deep."""
    return b'{"reportTs": 1, "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


UNREADABLE = {
    "not-json": b"{this is not json",
    "not-utf8": b"\xff\xfe\x00",
    "nan": b'{"reportTs": NaN}',
    "array": b'[{"events": {}}]',
    "string": b'"events"',
    "too-big": b'{"pad": "' + b"x" * 2048 + b'"}',  # max_payload_bytes is 1024 below
    "too-deep": _nested(40),
    "no-events": json.dumps({"reportTs": REPORT_TS, "profile": PROFILE}).encode(),
    "no-operation": json.dumps({"reportTs": REPORT_TS, "profile": PROFILE, "events": {}}).encode(),
}


def test_unreadable_payloads_alarm_unknown_error_and_bridge_goes_on(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """Non-JSON, non-UTF-8, non-object, oversized, too deep or op-less payloads: unknown_error."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    cfg = config(
        broker, [{"type": "jsonl", "path": str(out)}], validation={"max_payload_bytes": 1024}
    )
    bridge = bridges(cfg).start().wait_ready()
    publish(broker, *((CUSTOM_TOPIC, payload) for payload in UNREADABLE.values()))
    alarms = probe.wait_on(CUSTOM_ERROR_TOPIC, len(UNREADABLE), bridge)
    for alarm in alarms:
        assert_alarm(alarm, op="unknown", records=[], source_msg_id=None, fields=[])
    # The raw payload is never published.
    assert all("this is not json" not in json.dumps(a) for a in alarms)
    publish(broker, (CUSTOM_TOPIC, envelope("add", [customer(id="after")], msg_id="after")))
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "after"
    assert len(probe.on(CUSTOM_ERROR_TOPIC)) == len(UNREADABLE)


def test_unknown_operation_alarmed_beside_known_one(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """An unknown operation key gets an unknown_error alarm; the known operation goes on."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    payload = envelope("add", [customer(id="kept")], msg_id="mixed", upsert=[customer(id="x")])
    publish(broker, (STANDARD_TOPIC, payload))
    (alarm,) = probe.wait_on(STANDARD_ERROR_TOPIC, 1, bridge)
    assert_alarm(alarm, op="unknown", records=[], source_msg_id="mixed", fields=["upsert"])
    (line,) = wait_lines(out, 1, bridge)
    assert (line["op"], line["customer"]["id"]) == ("add", "kept")


def test_events_of_one_customer_reach_sink_in_order(
    broker: Server, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """Successive events of the same customers reach the sink in the order they were published."""
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    sent = [(f"c-{n % 2}", f"seq-{n}") for n in range(30)]
    publish(
        broker,
        *(
            (STANDARD_TOPIC, envelope("edit", [customer(id=cid, name=seq)], msg_id=seq))
            for cid, seq in sent
        ),
    )
    lines = wait_lines(out, len(sent), bridge)
    got = [(line["customer"]["id"], line["customer"]["name"]) for line in lines]
    for cid in ("c-0", "c-1"):
        assert [g for g in got if g[0] == cid] == [s for s in sent if s[0] == cid]


# --- 5. error and unrecognised topics ---------------------------------------------------------


def test_error_and_unrecognised_topics_are_dropped_without_alarm(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """Messages on error or unrecognised topics raise no alarm, are acked, and stop nothing."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(broker, [{"type": "jsonl", "path": str(out)}])).start().wait_ready()
    garbage = b"{not json"
    ignored = [
        (STANDARD_ERROR_TOPIC, garbage),
        (CUSTOM_ERROR_TOPIC, garbage),
        (STANDARD_ERROR_TOPIC, envelope("add", [customer(age="年龄")], msg_id="on-error-topic")),
        (f"{TENANT}/proj_{PROJECT}/v1-business-model-customers", garbage),
        (f"{TENANT}/project_{PROJECT}/v1-business-model-customer", garbage),
        (f"{TENANT}/proj_{PROJECT}/hello", envelope("add", [customer(age="年龄")])),
    ]
    after = (STANDARD_TOPIC, envelope("add", [customer(id="after")], msg_id="after"))
    publish(broker, *ignored)
    publish(broker, after)
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "after"
    bridge.wait_event("ignored", outcome="ignored_error_topic", count=3)
    bridge.wait_event("ignored", outcome="ignored_unrecognised", count=3)
    time.sleep(0.3)  # an alarm would have been published before "after" was handled
    assert sorted(probe.messages) == sorted([*ignored, after])  # ours only: no alarm
    assert bridge.terminate() == 0
    (stopped,) = bridge.events("stopped")
    assert stopped["alarms"] == 0 and stopped["alarms_by_status"] == {}
    assert stopped["unacked"] == 0
    assert stopped["ignored"] == {"ignored_error_topic": 3, "ignored_unrecognised": 3}


# --- 6-8. sessions, redelivery, draining (mosquitto keeps sessions; amqtt does not) ------------

PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"], ids=["mqtt5", "mqtt311"])


@PROTOCOLS
def test_messages_published_while_down_are_delivered_on_restart(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path, protocol: str
) -> None:
    """QoS 1 messages published while the bridge is down reach it on restart (kept session)."""
    out = tmp_path / "out.jsonl"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(out)}], protocol=protocol)
    first = bridges(cfg, "first").start().wait_ready()
    assert first.terminate() == 0
    ids = [f"offline-{n}" for n in range(3)]
    publish(
        mosquitto, *((STANDARD_TOPIC, envelope("add", [customer(id=i)], msg_id=i)) for i in ids)
    )
    second = bridges(cfg, "second").start()
    (connected,) = second.wait_event("connected")
    assert connected["session_present"] is True
    lines = wait_lines(out, 3, second)
    assert [line["msgId"] for line in lines] == ids


@PROTOCOLS
def test_unacked_message_redelivered_after_kill_9(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path, protocol: str
) -> None:
    """A record whose sink never finished is delivered by the next bridge after SIGKILL."""
    entered, release = tmp_path / "entered", tmp_path / "release-never-created"
    blocking = {
        "type": "python",
        "name": "crm",
        "handler": "handlers:Blocking",
        "options": {"entered": str(entered), "release": str(release)},
    }
    client_id = f"it-kill-{uuid.uuid4().hex[:8]}"
    first = bridges(config(mosquitto, [blocking], client_id=client_id, protocol=protocol), "held")
    first.start().wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="held")], msg_id="held-1")))
    wait_until(
        entered.exists, WAIT, lambda: f"the blocking sink to get the batch\n{first.log()}", first
    )
    assert first.kill() == -signal.SIGKILL

    out = tmp_path / "out.jsonl"
    crm_back = {"type": "jsonl", "name": "crm", "path": str(out)}  # same name: same spool rows
    cfg = config(mosquitto, [crm_back], client_id=client_id, protocol=protocol)
    second = bridges(cfg, "after-kill").start()
    (line,) = wait_lines(out, 1, second)
    assert line["msgId"] == "held-1"
    assert line["customer"]["id"] == "held"
    assert second.wait_event("connected")[0]["session_present"] is True


@PROTOCOLS
def test_sigterm_drains_in_flight_and_loses_nothing(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path, protocol: str
) -> None:
    """SIGTERM finishes the batch in flight and exits 0; the spool keeps the rest for the next
    start; in the end every sink has every record exactly once."""
    out = tmp_path / "out.jsonl"
    taken = tmp_path / "taken"
    slow = {
        "type": "python",
        "name": "slow",
        "handler": "handlers:Slow",
        "options": {"delay": 0.3, "record": str(taken)},
        "batch_size": 1,
    }
    client_id = f"it-term-{uuid.uuid4().hex[:8]}"
    first_cfg = config(
        mosquitto,
        [slow, {"type": "jsonl", "path": str(out)}],
        client_id=client_id,
        protocol=protocol,
        broker={"receive_maximum": 2},
    )
    first = bridges(first_cfg, "slow").start().wait_ready()
    ids = [f"drain-{n}" for n in range(8)]
    publish(
        mosquitto, *((STANDARD_TOPIC, envelope("add", [customer(id=i)], msg_id=i)) for i in ids)
    )
    wait_until(taken.exists, WAIT, lambda: f"the slow sink to take a batch\n{first.log()}", first)
    started = time.monotonic()
    assert first.terminate(timeout=15) == 0
    drain_seconds = time.monotonic() - started
    assert first.events("stopping")
    assert first.events("stopped")
    assert drain_seconds < 8, f"drain took {drain_seconds:.1f}s"
    slow_first = [json.loads(line)[0] for line in taken.read_text().splitlines()]
    assert len(slow_first) < len(ids), "the slow sink should still have had work left"

    quick = {**slow, "options": {"delay": 0.0, "record": str(taken)}}
    second_cfg = config(
        mosquitto,
        [quick, {"type": "jsonl", "path": str(out)}],
        client_id=client_id,
        protocol=protocol,
    )
    second = bridges(second_cfg, "resumed").start().wait_ready()
    wait_until(lambda: len(taken.read_text().splitlines()) >= len(ids), WAIT, second.log, second)
    wait_lines(out, len(ids), second)
    assert second.terminate() == 0
    for name, forwarded in (
        ("slow", [json.loads(line)[0] for line in taken.read_text().splitlines()]),
        ("jsonl", [line["msgId"] for line in read_jsonl(out)]),
    ):
        assert sorted(forwarded) == sorted(ids), f"{name}: lost or doubled: {forwarded}"


@PROTOCOLS
def test_broker_restart_loses_nothing(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path, protocol: str
) -> None:
    """After a broker restart the bridge reconnects to its session and misses no message."""
    out = tmp_path / "out.jsonl"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(out)}], protocol=protocol)
    bridge = bridges(cfg).start().wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="a")], msg_id="before")))
    wait_lines(out, 1, bridge)
    mosquitto.restart()
    # Most likely before the bridge is back: the broker queues it in the bridge's session.
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="b")], msg_id="during")))
    bridge.wait_event("subscribed", count=2)
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="c")], msg_id="after")))
    lines = wait_lines(out, 3, bridge)
    assert [line["msgId"] for line in lines] == ["before", "during", "after"]
    assert bridge.events("connected")[1]["session_present"] is True


def test_share_group_splits_traffic_between_bridges(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """Two bridges in one share group each take part of the traffic, together all of it once."""
    outs = [tmp_path / "one.jsonl", tmp_path / "two.jsonl"]
    pair = [
        bridges(
            config(
                mosquitto,
                [{"type": "jsonl", "path": str(out)}],
                subscription={"share_group": "bridges"},
            ),
            f"shared-{n}",
        ).start()
        for n, out in enumerate(outs)
    ]
    for bridge in pair:
        (subscribed,) = bridge.wait_ready().events("subscribed")
        assert subscribed["filters"] == ["$share/bridges/+/+/+"]
    ids = [f"share-{n}" for n in range(20)]
    publish(
        mosquitto, *((STANDARD_TOPIC, envelope("add", [customer(id=i)], msg_id=i)) for i in ids)
    )
    wait_until(
        lambda: sum(len(read_jsonl(out)) for out in outs) >= len(ids),
        WAIT,
        lambda: f"{len(ids)} lines in {outs}\n{pair[0].log()}\n{pair[1].log()}",
    )
    for bridge in pair:
        assert bridge.terminate() == 0
    per_bridge = [[line["msgId"] for line in read_jsonl(out)] for out in outs]
    assert all(per_bridge), f"one bridge got nothing: {per_bridge}"
    assert sorted(per_bridge[0] + per_bridge[1]) == sorted(ids)


def test_redelivered_msgid_is_forwarded_once(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """A msgId (or, without one, topic+payload) seen before is dropped, across a restart too."""
    out = tmp_path / "out.jsonl"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(out)}], client_id="it-dedup")
    again = envelope("add", [customer(id="dup")], msg_id="dup-1")
    no_id = (SAMPLES / "standard-delete.json").read_bytes()
    first = bridges(cfg, "dedup").start().wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, again), (STANDARD_TOPIC, no_id))
    publish(mosquitto, (STANDARD_TOPIC, again), (STANDARD_TOPIC, no_id))
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="m1")], msg_id="mark-1")))
    first.wait_event("message", msg_id="mark-1")
    assert first.terminate() == 0
    second = bridges(cfg, "dedup-again").start().wait_ready()
    publish(mosquitto, (STANDARD_TOPIC, again), (STANDARD_TOPIC, no_id))
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer(id="m2")], msg_id="mark-2")))
    second.wait_event("message", msg_id="mark-2")
    assert second.terminate() == 0
    forwarded = [(line["msgId"], line["customer"]["id"]) for line in read_jsonl(out)]
    assert forwarded == [
        ("dup-1", "dup"),
        (None, "来源方主键id"),
        ("mark-1", "m1"),
        ("mark-2", "m2"),
    ]


def test_bridge_survives_a_log_line_it_cannot_write(
    mosquitto: Mosquitto, bridges: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """A log line that cannot be written (ASCII-only stdout) does not stop message handling."""
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(mosquitto, [{"type": "jsonl", "path": str(out)}]))
    bridge.start(PYTHONIOENCODING="ascii").wait_ready()
    publish(
        mosquitto,
        (CUSTOM_TOPIC, envelope("add", [customer(id="first")], msg_id="first")),
        (STANDARD_TOPIC, envelope("add", [customer(id="second")], msg_id="second")),
    )
    lines = wait_lines(out, 2, bridge, timeout=3)
    assert [line["msgId"] for line in lines] == ["first", "second"]


# --- 9. strict mode ---------------------------------------------------------------------------


def test_strict_mode_alarms_sample_delete(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
) -> None:
    """In strict mode (config) the sample delete, with a 12-digit eventTs, is alarmed."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    cfg = config(broker, [{"type": "jsonl", "path": str(out)}], validation={"mode": "strict"})
    bridge = bridges(cfg).start().wait_ready()
    started = bridge.events("started")
    assert started[0]["mode"] == "strict"
    sample = (SAMPLES / "standard-delete.json").read_bytes()
    publish(broker, (STANDARD_TOPIC, sample))
    (alarm,) = probe.wait_on(STANDARD_ERROR_TOPIC, 1, bridge)
    records = json.loads(sample)["events"]["delete"]["customerList"]
    assert_alarm(alarm, op="delete", records=records, source_msg_id=None, fields=["eventTs"])
    assert {e["field"] for e in alarm["errors"]} == {"events.delete.eventTs"}
    bridge.wait_event("message", topic=STANDARD_TOPIC, forwarded=0)
    assert read_jsonl(out) == []


# --- 11. personal data ------------------------------------------------------------------------

SECRETS = {
    "phone": "13800138000",
    "idNumber": "110101199003071234",
    "facePhoto": "https://faces.example.invalid/p/9f8e7d6c5b4a.jpg",
    "contractPhone": "13912345678",
    "email": "zhang.san@example.invalid",
}


def _secret_records(id_: str, **overrides: Any) -> dict[str, Any]:
    record = customer(id=id_, **SECRETS)
    record.update(overrides)
    return record


@pytest.mark.parametrize("redact", [True, False], ids=["redacted", "redaction-off"])
def test_personal_data_never_logged_in_clear(
    broker: Server,
    bridges: Callable[..., BridgeProcess],
    watch: Callable[[Server], RecordingProbe],
    tmp_path: Path,
    redact: bool,
) -> None:
    """Phone, idNumber, facePhoto, ... never appear in the log in clear unless redaction is off."""
    probe = watch(broker)
    out = tmp_path / "out.jsonl"
    sinks = [{"type": "jsonl", "path": str(out)}, {"type": "log", "name": "audit"}]
    cfg = config(broker, sinks, logging={"level": "debug", "format": "json", "redact": redact})
    bridge = bridges(cfg).start().wait_ready()
    publish(
        broker,
        (STANDARD_TOPIC, envelope("add", [_secret_records("pii-std")], msg_id="pii-1")),
        (
            CUSTOM_TOPIC,
            envelope(
                "edit",
                [_secret_records("pii-cus", meta={"phone": SECRETS["phone"]})],
                msg_id="pii-2",
                delete=[{"id": "pii-del", "phone": SECRETS["phone"]}],
            ),
        ),
        # rejected records and a broken payload holding personal data
        (STANDARD_TOPIC, envelope("add", [_secret_records("pii-bad", age="年龄")], msg_id="pii-3")),
        (STANDARD_TOPIC, f'{{"phone": "{SECRETS["phone"]}", '.encode()),
        (STANDARD_ERROR_TOPIC, envelope("add", [_secret_records("pii-err")], msg_id="pii-4")),
    )
    wait_lines(out, 3, bridge)
    probe.wait_on(STANDARD_ERROR_TOPIC, 3, bridge)  # ours, the add_error and the unknown_error
    bridge.wait_event("ignored", topic=STANDARD_ERROR_TOPIC, count=3)
    assert bridge.terminate() == 0
    logged = bridge.events("customer_event")
    assert {e["customer"]["id"] for e in logged} == {"pii-std", "pii-cus", "pii-del"}
    assert SECRETS["phone"] in out.read_text(encoding="utf-8")  # the sink itself gets the data
    log = bridge.log()
    if redact:
        for name, value in SECRETS.items():
            assert value not in log, f"{name} logged in clear"
        assert all("facePhoto" not in e["customer"] for e in logged)
    else:
        assert SECRETS["phone"] in log
