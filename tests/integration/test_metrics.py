"""/metrics of a running bridge process: every series from the start, alarms as their own
series, dead letters as stored, and names that `promtool check metrics` accepts."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import promtool
from brokers import Mosquitto
from prometheus_client.parser import text_string_to_metric_families
from test_bridge_run import (  # the fixture is used by name
    STANDARD_TOPIC,
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    publish,
    wait_until,
)

PURGE = ("purge", "--all")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(bridge: BridgeProcess) -> str:
    """The bridge's /metrics text."""
    port = bridge.wait_event("started")[0]["health_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the series is absent."""
    return samples(text).get((name, tuple(sorted(labels.items()))))


def promtool_check(text: str) -> None:
    """`promtool check metrics` finds nothing to say (skipped where promtool is missing)."""
    if promtool.promtool() is None:
        return
    result = promtool.check("check", "metrics", text=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_every_series_is_there_at_zero_before_the_first_message(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Sinks, alarm statuses, dispositions, stored dead letters, readiness, heartbeats, process
    and build info exist from the start, and promtool accepts every name and HELP text."""
    sinks = [
        {"type": "jsonl", "name": "file", "path": str(tmp_path / "out.jsonl")},
        {"type": "log", "name": "audit"},
    ]
    bridge = bridges(config(mosquitto, sinks)).start().wait_ready()
    text = scrape(bridge)
    for sink in ("file", "audit"):
        assert value(text, "bridge_records_forwarded_total", sink=sink) == 0
        assert value(text, "bridge_sink_retries_total", sink=sink) == 0
        assert value(text, "bridge_dead_letters_total", sink=sink) == 0
        assert value(text, "bridge_sink_failing", sink=sink) == 0
        assert value(text, "bridge_delivery_seconds_count", sink=sink) == 0
    for status in ("ADD", "EDIT", "DELETE", "MESSAGE"):
        for code in ("400", "502"):
            found = value(text, "bridge_alarms_total", status=f"CUSTOMER_{status}_ERROR", code=code)
            assert found == 0
    assert value(text, "bridge_messages_received_total", disposition="processed") == 0
    assert value(text, "bridge_messages_received_total", disposition="duplicate") == 0
    for kind in ("event", "alarm", "payload"):
        assert value(text, "bridge_dead_letters_stored", kind=kind) == 0
    assert value(text, "bridge_alarms_published_total") == 0
    assert value(text, "bridge_ready") == 1
    assert value(text, "bridge_ready_check", check="subscribed") == 1
    assert value(text, "bridge_heartbeat_age_seconds", component="intake") is not None
    assert (value(text, "process_resident_memory_bytes") or 0) > 0
    assert value(text, "process_start_time_seconds") is not None
    (build,) = [dict(labels) for name, labels in samples(text) if name == "bridge_build_info"]
    assert build["version"] and build["python_version"]
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?|unknown", build["commit"]), build
    assert not any(dict(labels).get("sink", "").startswith("@") for _, labels in samples(text))
    promtool_check(text)


def test_alarms_dead_letters_and_a_failing_sink_show_as_they_happen(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Alarms count as alarms (no pseudo-sink), a refused record shows as a stored dead letter
    until a purge by another process, and a failing sink shows until it delivers again."""
    healthy = tmp_path / "healthy"
    sinks = [
        {"type": "jsonl", "name": "file", "path": str(tmp_path / "out.jsonl")},
        {"type": "python", "name": "crm", "handler": "handlers:Refusing"},
        {
            "type": "python",
            "name": "flaky",
            "handler": "handlers:Flaky",
            "options": {"healthy": str(healthy)},
        },
    ]
    cfg = config(mosquitto, sinks, delivery={"initial_backoff": 0.1, "max_backoff": 0.2})
    bridge = bridges(cfg).start().wait_ready()
    publish(
        mosquitto,
        (STANDARD_TOPIC, envelope("add", [customer(id="m-1")], msg_id="m1")),
        (STANDARD_TOPIC, envelope("add", [customer(id="m-2", age=999)], msg_id="m2")),
    )
    bridge.wait_event("sink_gave_up", sink="crm")
    wait_until(
        lambda: value(scrape(bridge), "bridge_alarms_published_total") == 2,
        20,
        lambda: "both alarms (400 and 502) to be published",
        bridge,
    )
    text = scrape(bridge)
    assert value(text, "bridge_alarms_total", status="CUSTOMER_ADD_ERROR", code="400") == 1
    assert value(text, "bridge_alarms_total", status="CUSTOMER_ADD_ERROR", code="502") == 1
    assert value(text, "bridge_dead_letters_total", sink="crm") == 1
    assert value(text, "bridge_dead_letters_stored", kind="event") == 1
    assert value(text, "bridge_records_forwarded_total", sink="file") == 1
    assert value(text, "bridge_sink_failing", sink="flaky") == 1
    assert (value(text, "bridge_sink_retries_total", sink="flaky") or 0) >= 1
    assert not any(dict(labels).get("sink", "").startswith("@") for _, labels in samples(text))
    promtool_check(text)

    purge = subprocess.run(
        [sys.executable, "-m", "bridge", "dead-letters", "-c", str(bridge.config_path), *PURGE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert purge.returncode == 0, purge.stderr
    assert value(scrape(bridge), "bridge_dead_letters_stored", kind="event") == 0

    healthy.touch()
    wait_until(
        lambda: value(scrape(bridge), "bridge_sink_failing", sink="flaky") == 0,
        20,
        lambda: "the flaky sink to deliver again",
        bridge,
    )
    text = scrape(bridge)
    assert value(text, "bridge_records_forwarded_total", sink="flaky") == 1
    # Spooled rows (not the direct hand-over of a local sink) time their way to the sink.
    assert value(text, "bridge_delivery_seconds_count", sink="flaky") == 1
