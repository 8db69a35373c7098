"""SIGHUP reloads sinks and routing in a running bridge; a bad config is refused."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from brokers import Mosquitto, MqttProbe
from test_bridge_run import (  # the fixture is used by name
    STANDARD_TOPIC,
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    read_jsonl,
    wait_lines,
)


def rewrite(bridge: BridgeProcess, document: dict[str, object]) -> None:
    """Replace the bridge's config file (keeping the spool and health the harness chose)."""
    current = yaml.safe_load(bridge.config_path.read_text(encoding="utf-8"))
    document = {**document, "spool": current["spool"], "health": current["health"]}
    bridge.config_path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")


def hangup(bridge: BridgeProcess) -> None:
    """Send SIGHUP."""
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)


def test_sighup_swaps_sinks_without_losing_or_doubling(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Messages flowing across a reload reach the old or the new sinks, each exactly once;
    the new routing applies after the reload."""
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    client_id = "it-reload"
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(first_out)}], client_id=client_id)
    bridge = bridges(cfg).start().wait_ready()

    ids = [f"r-{n}" for n in range(300)]
    publishing = threading.Thread(
        target=lambda: _publish_all(mosquitto, ids), name="publisher", daemon=True
    )
    publishing.start()
    wait_lines(first_out, 20, bridge)
    new = config(
        mosquitto,
        [
            {"type": "jsonl", "path": str(second_out)},
            {
                "type": "jsonl",
                "name": "deletes",
                "path": str(tmp_path / "deletes.jsonl"),
                "route": {"ops": ["delete"]},
            },
        ],
        client_id=client_id,
    )
    rewrite(bridge, new)
    hangup(bridge)
    bridge.wait_event("reloaded")
    publishing.join(60)
    before = [line["msgId"] for line in read_jsonl(first_out)]
    after = wait_lines(second_out, len(ids) - len(before), bridge)
    forwarded = before + [line["msgId"] for line in after]
    assert sorted(forwarded) == sorted(ids), "a message was lost or forwarded twice"
    assert before and after, "the reload should fall in the middle of the stream"
    assert not (tmp_path / "deletes.jsonl").exists()
    assert len(bridge.events("message")) == len(ids)  # each acknowledged once


def test_bad_config_on_sighup_keeps_the_old_one(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A config that does not load is refused with one clear line; the old sinks go on."""
    out = tmp_path / "out.jsonl"
    bridge = bridges(config(mosquitto, [{"type": "jsonl", "path": str(out)}])).start()
    bridge.wait_ready()
    bridge.config_path.write_text("sinks: [{type: jsonl, bogus: 1}]\n", encoding="utf-8")
    hangup(bridge)
    (rejected,) = bridge.wait_event("reload_rejected")
    assert "sinks[0]" in rejected["reason"]
    with MqttProbe(mosquitto.host, mosquitto.port) as publisher:
        publisher.publish(STANDARD_TOPIC, envelope("add", [customer()], msg_id="after-bad"))
    (line,) = wait_lines(out, 1, bridge)
    assert line["msgId"] == "after-bad"
    assert bridge.running


def _publish_all(server: Mosquitto, ids: list[str]) -> None:
    with MqttProbe(server.host, server.port) as publisher:
        for msg_id in ids:
            publisher.publish(STANDARD_TOPIC, envelope("add", [customer(id=msg_id)], msg_id=msg_id))
            time.sleep(0.01)  # spread over a few seconds so the reload falls in the middle
