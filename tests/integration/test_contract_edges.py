"""SPEC 1-2 edges through a running bridge: topic characters, repeated keys, big integers.

mosquitto itself disconnects a client that publishes a topic holding a control character
or a noncharacter (a malformed packet), so the refused-topic case runs on the embedded
broker, which passes such topics on; everything else runs on mosquitto.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from brokers import Mosquitto
from test_bridge_run import (  # the fixtures are used by name
    EVENT_TS,
    PROFILE,
    REPORT_TS,
    STANDARD_ERROR_TOPIC,
    STANDARD_TOPIC,
    TENANT,
    BridgeProcess,
    RecordingProbe,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    publish,
    wait_lines,
    watch,  # noqa: F401
)
from test_dead_letters import cli

from bridge.broker import EmbeddedBroker

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
VENDORS = ["ac\u00adme", f"acme{FAMILY}", "\ue000gate", "new\U0003fffd"]


def custom_topic(vendor: str) -> str:
    return f"{TENANT}/proj_42/v2-customization-{vendor}-customer"


def raw_envelope(events: str, msg_id: str) -> bytes:
    """An envelope whose `events` object is given as JSON text, written as is."""
    head = json.dumps({"msgId": msg_id, "reportTs": REPORT_TS, "profile": PROFILE})
    return f'{head[:-1]}, "events": {events}}}'.encode()


def body(*records: str) -> str:
    return f'{{"eventTs": {EVENT_TS}, "eventType": 1, "customerList": [{", ".join(records)}]}}'


def record(id_: str, extra: str = "") -> str:
    fields = json.dumps(customer(id=id_), ensure_ascii=False)[:-1]
    return f"{fields}{extra}}}"


def test_vendors_with_format_private_use_and_unassigned_characters_are_input(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    watch: Callable[[Mosquitto], RecordingProbe],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Soft hyphen, an emoji ZWJ sequence, private-use and unassigned code points: forwarded,
    and an alarm goes to the error topic with the vendor copied byte for byte."""
    probe = watch(mosquitto)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(mosquitto, [{"type": "jsonl", "path": str(out)}])).start()
    bridge.wait_ready()
    publish(
        mosquitto,
        *[
            (custom_topic(v), envelope("add", [customer(id=f"v-{n}")], msg_id=f"v{n}"))
            for n, v in enumerate(VENDORS)
        ],
    )
    lines = wait_lines(out, len(VENDORS), bridge)
    assert sorted(line["vendor"] for line in lines) == sorted(VENDORS)
    bad = customer(id="bad", age="年龄")
    publish(mosquitto, (custom_topic(VENDORS[1]), envelope("add", [bad], msg_id="zwj-bad")))
    error_topic = f"{TENANT}/proj_42/v2-customization-acme{FAMILY}-error-customer"
    (alarm,) = probe.wait_on(error_topic, 1, bridge)
    assert alarm["sourceMsgId"] == "zwj-bad"
    assert alarm["events"]["add_error"]["customerList"] == [bad]
    assert bridge.terminate() == 0


def test_a_topic_with_a_control_character_is_kept_raw_and_logged_at_warning(
    embedded_broker: EmbeddedBroker,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    watch: Callable[[EmbeddedBroker], RecordingProbe],  # noqa: F811
    tmp_path: Path,
) -> None:
    """C0/C1 controls and noncharacters: acknowledged without an alarm, counted, logged at
    warning with the topic escaped, and kept raw in the dead letters."""
    probe = watch(embedded_broker)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(embedded_broker, [{"type": "jsonl", "path": str(out)}])).start()
    bridge.wait_ready()
    refused = [
        (custom_topic("h\x01k"), envelope("add", [customer(id="r-1")], msg_id="r1")),
        (custom_topic("h\x85k"), b"not even json"),
        (custom_topic("h\ufffek"), envelope("add", [customer(id="r-3")], msg_id="r3")),
    ]
    publish(embedded_broker, *refused)
    publish(embedded_broker, (STANDARD_TOPIC, envelope("add", [customer(id="ok")], msg_id="ok")))
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "ok"
    warnings = bridge.wait_event("topic_refused", count=3)
    assert {w["level"] for w in warnings} == {"warning"}
    logged = {w["topic"] for w in warnings}
    assert custom_topic("h\\x01k") in logged and custom_topic("h\\ufffek") in logged
    time.sleep(0.3)  # an alarm would have been published before "ok" was handled
    assert [t for t, _ in probe.messages if t.endswith("-error-customer")] == []
    assert {t for t, _ in refused} <= {t for t, _ in probe.messages}
    assert bridge.terminate() == 0
    (stopped,) = bridge.events("stopped")
    assert stopped["ignored"] == {"refused_topic": 3}
    assert stopped["alarms"] == 0 and stopped["unacked"] == 0

    listed = cli(bridge.config_path, "list")
    assert listed.returncode == 0, listed.stderr
    # Not splitlines(): it would also split at the U+0085 of a topic.
    letters = [json.loads(x) for x in listed.stdout.split("\n") if x]
    assert sorted(x["topic"] for x in letters) == sorted(t for t, _ in refused)
    assert sorted(x["bytes"] for x in letters) == sorted(len(p) for _, p in refused)
    assert {x["kind"] for x in letters} == {"payload"}


def test_repeated_keys_and_big_integers_through_a_running_bridge(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    watch: Callable[[Mosquitto], RecordingProbe],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two add blocks both forwarded in order; a repeated field and a 37-digit roleId fail
    their record only; a 25-digit unknown field reaches the jsonl file digit for digit."""
    probe = watch(mosquitto)
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(mosquitto, [{"type": "jsonl", "path": str(out)}])).start()
    bridge.wait_ready()
    big = "1" + "0" * 24
    two_adds = f'{{"add": {body(record("a-0"))}, "add": {body(record("a-1"))}}}'
    twice = record("twice", ', "phone": "1"')
    big_role = record("big-role", ', "roleId": 1' + "0" * 36)
    big_extra = record("sib-2", f', "extra": {big}')
    publish(
        mosquitto,
        (STANDARD_TOPIC, raw_envelope(two_adds, "two-adds")),
        (STANDARD_TOPIC, raw_envelope(f'{{"add": {body(twice, record("sib-1"))}}}', "repeated")),
        (STANDARD_TOPIC, raw_envelope(f'{{"add": {body(big_role, big_extra)}}}', "big")),
    )
    lines = wait_lines(out, 4, bridge)
    ids = [line["customer"]["id"] for line in lines]
    assert ids.index("a-0") < ids.index("a-1")
    assert sorted(ids) == ["a-0", "a-1", "sib-1", "sib-2"]
    text = out.read_text(encoding="utf-8")
    assert f'"extra":{big}' in text.replace(" ", "")
    alarms = probe.wait_on(STANDARD_ERROR_TOPIC, 2, bridge)
    by_source = {a["sourceMsgId"]: a for a in alarms}
    assert by_source["repeated"]["errors"] == [
        {"index": 0, "field": "phone", "reason": "repeated field"}
    ]
    (role_error,) = by_source["big"]["errors"]
    assert (role_error["index"], role_error["field"]) == (0, "roleId")
    received = by_source["big"]["events"]["add_error"]["customerList"]
    assert received == [{**customer(id="big-role"), "roleId": 10**36}]
    assert bridge.terminate() == 0


def test_strict_a_20_digit_event_ts_fails_its_operation_and_the_edit_beside_it_goes_on(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    watch: Callable[[Mosquitto], RecordingProbe],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Strict: eventTs 10**20 on add is an add_error alarm; the valid edit is forwarded."""
    probe = watch(mosquitto)
    out = tmp_path / "out.jsonl"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(out)}], validation={"mode": "strict"})
    bridge = bridges(cfg).start().wait_ready()
    add = body(record("add-1")).replace(str(EVENT_TS), "1" + "0" * 20)
    events = f'{{"add": {add}, "edit": {body(record("edit-1"))}}}'
    publish(mosquitto, (STANDARD_TOPIC, raw_envelope(events, "strict-big")))
    (line,) = wait_lines(out, 1, bridge)
    assert (line["op"], line["customer"]["id"]) == ("edit", "edit-1")
    (alarm,) = probe.wait_on(STANDARD_ERROR_TOPIC, 1, bridge)
    assert list(alarm["events"]) == ["add_error"]
    assert alarm["errors"][0]["field"] == "events.add.eventTs"
    assert bridge.terminate() == 0
