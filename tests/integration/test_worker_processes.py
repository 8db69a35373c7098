"""The bridge's worker processes in a running bridge: they take part, and never outlive it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from brokers import Mosquitto
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


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_digest_in_a_running_bridge_and_die_with_it(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two workers start with the bridge and digest a backlog in order; a kill -9 of the bridge
    takes its workers with it (none is left orphaned)."""
    out = tmp_path / "out.jsonl"
    bridge = bridges(
        config(mosquitto, [{"type": "jsonl", "path": str(out)}], validation={"workers": 2})
    ).start()
    bridge.wait_ready()
    (started,) = bridge.events("workers_started")
    workers = set(started["pids"])
    assert len(workers) == 2
    assert bridge.proc is not None
    tree = descendants(bridge.proc.pid)
    assert workers <= tree

    messages = [
        (STANDARD_TOPIC, envelope("add", [customer(id=f"c{i}")], msg_id=f"m{i}"))
        for i in range(300)
    ]
    publish(mosquitto, *messages)
    wait_until(
        lambda: out.exists() and len(out.read_text(encoding="utf-8").splitlines()) >= 300,
        30,
        lambda: "300 records",
        bridge,
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["msgId"] for line in lines] == [f"m{i}" for i in range(300)]

    bridge.kill()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if alive(pid)]
