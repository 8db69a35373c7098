"""Dead letters end to end: a sink gives up, an operator lists, shows, replays and purges."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brokers import Mosquitto
from test_bridge_run import (  # the fixtures are used by name
    STANDARD_ERROR_TOPIC,
    STANDARD_TOPIC,
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


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `bridge dead-letters -c CONFIG ARGS` in the directory the bridge ran in."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dead-letters", "-c", str(config_path), *args],
        capture_output=True,
        text=True,
        cwd=config_path.parent,
        timeout=30,
        check=False,
    )


def test_dead_letters_list_show_replay_purge(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    watch: Callable[[Mosquitto], RecordingProbe],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Refused records become dead letters with a 502 alarm; replay delivers them once the
    sink (same name) takes them; list never prints record content; purge empties."""
    probe = watch(mosquitto)
    client_id = "it-dead"
    refusing = {"type": "python", "name": "crm", "handler": "handlers:Refusing"}
    first = bridges(config(mosquitto, [refusing], client_id=client_id), "refusing")
    first.start().wait_ready()
    secret_phone = "13912345678"
    publish(
        mosquitto,
        (STANDARD_TOPIC, envelope("add", [customer(id="d-1", phone=secret_phone)], msg_id="d1")),
        (STANDARD_TOPIC, envelope("edit", [customer(id="d-2")], msg_id="d2")),
        (STANDARD_TOPIC, b"\xff not json"),
    )
    first.wait_event("sink_gave_up", sink="crm")  # one batch or two
    alarms = probe.wait_on(STANDARD_ERROR_TOPIC, 3, first)
    codes = sorted(
        (body["code"], body["status"], alarm.get("sourceMsgId"))
        for alarm in alarms
        for body in alarm["events"].values()
    )
    assert codes == [
        (400, "CUSTOMER_MESSAGE_ERROR", None),
        (502, "CUSTOMER_ADD_ERROR", "d1"),
        (502, "CUSTOMER_EDIT_ERROR", "d2"),
    ]
    assert first.terminate() == 0

    listed = cli(first.config_path, "list")
    assert listed.returncode == 0, listed.stderr
    letters: list[dict[str, Any]] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((x["kind"], x["sink"], x["msgId"]) for x in letters) == [
        ("event", "crm", "d1"),
        ("event", "crm", "d2"),
        ("payload", "", None),
    ]
    assert secret_phone not in listed.stdout

    event_letter = next(x for x in letters if x["msgId"] == "d1")
    shown = cli(first.config_path, "show", str(event_letter["id"]))
    assert shown.returncode == 0, shown.stderr
    assert secret_phone not in shown.stdout  # masked unless the operator asks to see it
    assert json.loads(shown.stdout)["content"]["customer"]["id"]
    revealed = cli(first.config_path, "show", "--reveal", str(event_letter["id"]))
    assert json.loads(revealed.stdout)["content"]["customer"]["phone"] == secret_phone

    replayed = cli(first.config_path, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 2" in replayed.stdout

    out = tmp_path / "crm.jsonl"
    taking = {"type": "jsonl", "name": "crm", "path": str(out)}
    second = bridges(config(mosquitto, [taking], client_id=client_id), "taking").start()
    lines = wait_lines(out, 2, second)
    assert sorted(line["msgId"] for line in lines) == ["d1", "d2"]
    assert second.terminate() == 0

    remaining = cli(first.config_path, "list")
    assert [json.loads(line)["kind"] for line in remaining.stdout.splitlines()] == ["payload"]
    purged = cli(first.config_path, "purge", "--all")
    assert "purged 1" in purged.stdout
    assert cli(first.config_path, "list").stdout == ""
