"""sd_notify against a real AF_UNIX datagram socket standing in for systemd, and the watchdog."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sdnotify import Notifier, Watchdog

USEC = 200_000  # a 0.2 s watchdog: pings every 0.1 s, a heartbeat is stale after 0.2 s


class Systemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, timeout: float = 2.0) -> str:
        """The next datagram, decoded."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram already queued."""
        got: list[str] = []
        self.sock.settimeout(0)
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got

    def collect(self, seconds: float) -> list[str]:
        """Every datagram that arrives within `seconds`."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(left))
            except TimeoutError:
                break
        return got

    def wait_for(self, prefix: str, timeout: float = 2.0) -> tuple[str, list[str]]:
        """The first datagram starting with `prefix`, and those before it."""
        before: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(deadline - time.monotonic(), 0.001))
            if message.startswith(prefix):
                return message, before
            before.append(message)


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    """A datagram socket bound in tmp_path and named by NOTIFY_SOCKET; no watchdog variables."""
    path = tmp_path / "notify"
    assert len(str(path)) < 108, "AF_UNIX paths are limited to 107 bytes"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Systemd(sock)


@pytest.fixture
def watchdog_env(systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> Systemd:
    """The same socket, with a 0.2 s watchdog meant for this process."""
    monkeypatch.setenv("WATCHDOG_USEC", str(USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return systemd


def beating(watchdog: Watchdog, name: str) -> tuple[threading.Event, threading.Thread]:
    """A thread that beats as `name` every 20 ms until the event is set."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(0.02):
            watchdog.beat(name)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return done, thread


# --- Notifier ---------------------------------------------------------------------------------


def test_ready_sends_ready(systemd: Systemd) -> None:
    """ready() sends exactly READY=1."""
    assert Notifier().ready()
    assert systemd.recv() == "READY=1"


def test_status_stopping_in_order(systemd: Systemd) -> None:
    """status() and stopping() send STATUS=<text> and STOPPING=1, one datagram each."""
    notifier = Notifier()
    assert notifier.status("subscribed to 2 filters; spool 0 pending")
    assert notifier.stopping()
    assert systemd.recv() == "STATUS=subscribed to 2 filters; spool 0 pending"
    assert systemd.recv() == "STOPPING=1"


def test_status_newline_cannot_inject_a_field(systemd: Systemd) -> None:
    """A newline in the status text is flattened rather than starting another field."""
    Notifier().status("spool failing\nREADY=1")
    assert systemd.recv() == "STATUS=spool failing READY=1"


def test_reloading_carries_monotonic_usec(systemd: Systemd) -> None:
    """reloading() sends RELOADING=1 with the current CLOCK_MONOTONIC in microseconds."""
    before = time.monotonic_ns() // 1000
    assert Notifier().reloading()
    first, second = systemd.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.monotonic_ns() // 1000


def test_watchdog_ping(watchdog_env: Systemd) -> None:
    """watchdog() sends WATCHDOG=1 when WATCHDOG_PID is this process."""
    notifier = Notifier()
    assert notifier.watchdog_interval == pytest.approx(0.2)
    assert notifier.watchdog()
    assert watchdog_env.recv() == "WATCHDOG=1"


def test_watchdog_without_pid_is_ours(
    watchdog_env: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WATCHDOG_PID, WATCHDOG_USEC alone enables the watchdog."""
    monkeypatch.delenv("WATCHDOG_PID")
    assert Notifier().watchdog()
    assert watchdog_env.recv() == "WATCHDOG=1"


@pytest.mark.parametrize("pid", [str(os.getpid() + 1), "not-a-pid"])
def test_watchdog_for_another_pid_is_off(
    watchdog_env: Systemd, monkeypatch: pytest.MonkeyPatch, pid: str
) -> None:
    """A WATCHDOG_PID other than ours disables the watchdog; other messages still go out."""
    monkeypatch.setenv("WATCHDOG_PID", pid)
    notifier = Notifier()
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    assert not Watchdog(notifier).start()
    assert notifier.ready()
    assert watchdog_env.recv() == "READY=1"
    assert watchdog_env.drain() == []


@pytest.mark.parametrize("usec", ["0", "-5", "soon"])
def test_watchdog_usec_must_be_positive(
    watchdog_env: Systemd, monkeypatch: pytest.MonkeyPatch, usec: str
) -> None:
    """A zero, negative or unreadable WATCHDOG_USEC means no watchdog."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert not Notifier().watchdog()
    assert watchdog_env.drain() == []


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    name = f"customer-bridge-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        assert Notifier().ready()
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET every call returns False and the watchdog does not start."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", str(USEC))
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    calls = [notifier.ready, notifier.stopping, notifier.reloading, notifier.watchdog]
    assert not any(call() for call in calls)
    assert not notifier.status("x")
    assert not Watchdog(notifier).start()


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_name_is_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A NOTIFY_SOCKET that is neither an absolute path nor @name is ignored."""
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not Notifier().ready()


def test_nobody_listening_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket path nobody is bound to makes the call return False rather than raise."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not Notifier().ready()


# --- Watchdog ---------------------------------------------------------------------------------


def test_watchdog_pings_while_beats_are_fresh(watchdog_env: Systemd) -> None:
    """With every component beating, WATCHDOG=1 arrives about every half timeout."""
    watchdog = Watchdog(Notifier())
    watchdog.register("intake")
    done, thread = beating(watchdog, "intake")
    try:
        assert watchdog.start()
        got = watchdog_env.collect(0.55)
    finally:
        watchdog.stop()
        done.set()
        thread.join()
    assert got.count("WATCHDOG=1") >= 4
    assert set(got) == {"WATCHDOG=1"}


def test_watchdog_withheld_when_a_component_stops_beating(watchdog_env: Systemd) -> None:
    """A silent component stops the pings (STATUS= names it) though the watchdog thread runs."""
    silences: list[dict[str, float]] = []
    notifier = Notifier()
    watchdog = Watchdog(notifier, on_stale=lambda stale: silences.append(dict(stale)))
    watchdog.register("intake")
    watchdog.register("deliver-file")
    intake, intake_thread = beating(watchdog, "intake")
    worker, worker_thread = beating(watchdog, "deliver-file")
    try:
        notifier.status("running")
        assert watchdog_env.recv() == "STATUS=running"
        assert watchdog.start()
        assert watchdog_env.collect(0.25).count("WATCHDOG=1") >= 2
        worker.set()  # the worker is stuck; the intake and the watchdog thread carry on
        worker_thread.join()
        status, _ = watchdog_env.wait_for("STATUS=")
        assert "deliver-file" in status
        assert "intake" not in status
        assert "WATCHDOG=1" not in watchdog_env.collect(0.5)  # 2.5 timeouts without a ping
        assert list(watchdog.stale()) == ["deliver-file"]
        assert [list(silence) for silence in silences] == [["deliver-file"]]
    finally:
        watchdog.stop()
        intake.set()
        intake_thread.join()


def test_watchdog_resumes_when_the_component_recovers(watchdog_env: Systemd) -> None:
    """A component that beats again before systemd acts brings the pings and the status back."""
    notifier = Notifier()
    watchdog = Watchdog(notifier)
    watchdog.register("intake")
    notifier.status("running")
    assert watchdog_env.recv() == "STATUS=running"
    try:
        assert watchdog.start()
        watchdog_env.wait_for("STATUS=watchdog withheld")
        done, thread = beating(watchdog, "intake")
        try:
            _, between = watchdog_env.wait_for("STATUS=running")
            assert "WATCHDOG=1" not in between
            assert watchdog_env.recv() == "WATCHDOG=1"
        finally:
            done.set()
            thread.join()
    finally:
        watchdog.stop()


def test_registered_but_never_beating_withholds(watchdog_env: Systemd) -> None:
    """A component registered whose loop never runs stops the pings after one timeout."""
    watchdog = Watchdog(Notifier())
    watchdog.register("deliver-alarms")
    try:
        watchdog.start()
        status, before = watchdog_env.wait_for("STATUS=")
        assert "deliver-alarms" in status
        assert len(before) <= 3  # at most the pings of the first 0.2 s
        assert watchdog_env.collect(0.4) == []
    finally:
        watchdog.stop()


def test_unregistered_component_is_not_watched(watchdog_env: Systemd) -> None:
    """unregister() lets a component end on purpose without stopping the pings."""
    watchdog = Watchdog(Notifier())
    watchdog.register("intake")
    watchdog.unregister("intake")
    try:
        watchdog.start()
        got = watchdog_env.collect(0.35)
    finally:
        watchdog.stop()
    assert got.count("WATCHDOG=1") >= 3
    assert set(got) == {"WATCHDOG=1"}


def test_stop_ends_the_pings(watchdog_env: Systemd) -> None:
    """After stop() no more pings are sent."""
    watchdog = Watchdog(Notifier())
    watchdog.start()
    assert watchdog_env.recv() == "WATCHDOG=1"
    watchdog.stop()
    watchdog_env.drain()
    assert watchdog_env.collect(0.25) == []
