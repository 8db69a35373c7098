"""systemd's notify protocol from a running bridge: READY, STATUS, WATCHDOG driven by progress."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def drain(sock: socket.socket, into: list[str]) -> list[str]:
    """Read every datagram waiting on `sock` into `into`."""
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except TimeoutError:
            return into


def test_ready_status_watchdog_and_stopping(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    notify_socket: socket.socket,
    tmp_path: Path,
) -> None:
    """READY=1 at start, STATUS lines, WATCHDOG=1 while every thread makes progress, none
    once a sink is stuck, and STOPPING=1 on SIGTERM."""
    entered = tmp_path / "entered"
    stuck = {
        "type": "python",
        "name": "stuck",
        "handler": "handlers:Blocking",
        "options": {"entered": str(entered), "release": str(tmp_path / "never"), "limit": 8},
    }
    bridge = bridges(config(mosquitto, [stuck])).start(
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000"
    )
    bridge.wait_ready()
    seen: list[str] = []
    wait_until(
        lambda: sum("WATCHDOG=1" in d for d in drain(notify_socket, seen)) >= 3,
        10,
        lambda: f"watchdog pings, got {seen}",
        bridge,
    )
    assert any("READY=1" in d for d in seen)
    assert any(d.startswith("STATUS=") for d in seen)

    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [customer()], msg_id="stuck-1")))
    wait_until(entered.exists, 10, lambda: "the sink to get stuck", bridge)
    bridge.wait_event("watchdog_withheld", timeout=10)
    time.sleep(0.6)  # let a ping already in flight arrive
    drain(notify_socket, [])
    quiet: list[str] = []
    time.sleep(2)
    drain(notify_socket, quiet)
    assert not [d for d in quiet if "WATCHDOG=1" in d], quiet

    assert bridge.proc is not None
    bridge.proc.terminate()
    bridge.proc.wait(40)
    assert any("STOPPING=1" in d for d in drain(notify_socket, []))


def test_ready_waits_for_the_first_subscribe(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    notify_socket: socket.socket,
    tmp_path: Path,
) -> None:
    """With the broker down at start the bridge keeps connecting without READY=1 (STATUS says
    so); READY=1 comes once the broker is back and the bridge has subscribed."""
    mosquitto.stop()
    cfg = config(mosquitto, [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])
    bridge = bridges(cfg).start(NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    seen: list[str] = []
    wait_until(
        lambda: any(d.startswith("STATUS=connecting") for d in drain(notify_socket, seen)),
        10,
        lambda: f"a STATUS line, got {seen}",
        bridge,
    )
    time.sleep(1.5)
    drain(notify_socket, seen)
    assert not any("READY=1" in d for d in seen), seen

    mosquitto.start()
    bridge.wait_event("subscribed", timeout=15)
    wait_until(
        lambda: any("READY=1" in d for d in drain(notify_socket, seen)),
        5,
        lambda: f"READY=1 after the subscribe, got {seen}",
        bridge,
    )
