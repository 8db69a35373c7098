"""Shared pieces of the benchmark: mosquitto on loopback, ports, processes, RSS, paho helpers.

Nothing here imports pytest; of the bridge only its shipped test doubles (`bridge.testing`):
the harness drives the bridge as a real process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.testing import mosquitto as testing_mosquitto
from bridge.testing import process as testing_process

ROOT = Path(__file__).resolve().parent.parent  # the repository
BENCH = ROOT / "bench"


def mosquitto_binary() -> str:
    """The mosquitto executable, or a clear error."""
    try:
        return testing_mosquitto.mosquitto_binary()
    except testing_mosquitto.MosquittoMissing as missing:
        raise SystemExit(f"{missing}: apt-get install mosquitto, or set MOSQUITTO=/path") from None


def mosquitto_version() -> str:
    """`mosquitto version 2.0.11`, or '?'."""
    try:
        out = subprocess.run(
            [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "?"


class Mosquitto(testing_mosquitto.Mosquitto):
    """mosquitto on a free loopback port that never drops a queued QoS 1 message."""

    def __init__(self, workdir: Path, extra: Sequence[str] = ()) -> None:
        mosquitto_binary()
        # The queue of an offline (or slow) persistent session is unbounded: the default of
        # 1000 would drop most of a 100,000-message backlog. The backlog lives in memory: no
        # autosave in the measurement. `information` carries the line that says it is running.
        quiet = ["max_queued_bytes 0", "log_type error", "log_type warning", "log_type information"]
        super().__init__(
            workdir, persistence=False, max_queued_messages=0, extra_config=[*quiet, *extra]
        )

    def rss_mb(self) -> float | None:
        """The broker's resident memory."""
        return rss_mb(self.proc.pid) if self.proc else None


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (the bridge's worker processes and their fork
    server), read from /proc; the consumers' figures are those of the whole tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _own_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process and its descendants in MiB (summed, so pages they
    share are counted once per process), None when it is gone."""
    parts = rss_parts_mb(pid)
    return sum(parts) if parts else None


def rss_parts_mb(pid: int) -> list[float]:
    """The resident set size of a process, then of each of its descendants, in MiB; empty
    when the process is gone."""
    own = _own_rss_mb(pid)
    if own is None:
        return []
    children = (_own_rss_mb(child) for child in process_tree(pid)[1:])
    return [own, *(r for r in children if r is not None)]


def _own_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # utime + stime, and those of children it has waited for (a worker that was replaced).
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process and its descendants have used so far."""
    own = _own_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(_own_cpu_seconds(child) or 0.0 for child in process_tree(pid)[1:])


def _host_jiffies() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class HostMeter:
    """CPU used on the whole host and by the broker between `__init__` and `stop()`.

    The machine is shared: when the host was busier than the consumer plus the broker (plus
    this harness), someone else took CPU from the measurement.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self._busy, self._total = _host_jiffies()
        pid = broker.proc.pid if broker.proc else None
        self._broker_cpu = cpu_seconds(pid) if pid else None
        self._self_cpu = time.process_time()
        self._start = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        """Cores busy on the host, by the broker and by this harness, on average."""
        busy, total = _host_jiffies()
        elapsed = max(1e-9, time.monotonic() - self._start)
        cpus = os.cpu_count() or 1
        pid = self.broker.proc.pid if self.broker.proc else None
        broker_cpu = cpu_seconds(pid) if pid else None
        broker_cores = None
        if broker_cpu is not None and self._broker_cpu is not None:
            broker_cores = round((broker_cpu - self._broker_cpu) / elapsed, 2)
        return {
            "host_busy_cores": round(cpus * (busy - self._busy) / max(1, total - self._total), 2),
            "broker_cores": broker_cores,
            "harness_cores": round((time.process_time() - self._self_cpu) / elapsed, 2),
        }


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 30.0) -> int | None:
    """SIGTERM and wait; SIGKILL after `timeout`. Returns the exit status."""
    if proc is None:
        return None
    testing_process.stop_process(proc, timeout)
    return proc.returncode


# --- paho ----------------------------------------------------------------------------------------


def prime_session(
    broker: Mosquitto,
    client_id: str,
    filters: Sequence[str],
    *,
    mqtt5: bool = True,
    expiry: int = 3600,
) -> None:
    """Create a fresh persistent session with QoS 1 subscriptions, then leave.

    The broker queues what matches while the consumer is away: the backlog of a drain.
    """
    done = threading.Event()
    acks: list[int] = []

    def on_connect(*_args: Any) -> None:
        done.set()

    def on_subscribe(_c: Any, _u: Any, mid: int, *_args: Any) -> None:
        acks.append(mid)
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311,
        clean_session=None if mqtt5 else True,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if mqtt5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        client.connect(broker.host, broker.port, 30, clean_start=True, properties=props)
    else:
        client.connect(broker.host, broker.port, 30)
    client.loop_start()
    try:
        if not done.wait(10):
            raise RuntimeError(f"{client_id}: no CONNACK")
        done.clear()
        if not mqtt5:
            # 3.1.1: the session above was clean (wiped); come back with a persistent one.
            client.disconnect()
            client.loop_stop()
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
            client.on_connect = on_connect
            client.on_subscribe = on_subscribe
            client.connect(broker.host, broker.port, 30)
            client.loop_start()
            if not done.wait(10):
                raise RuntimeError(f"{client_id}: no CONNACK")
            done.clear()
        client.subscribe([(f, 1) for f in filters])
        if not done.wait(10):
            raise RuntimeError(f"{client_id}: no SUBACK")
    finally:
        client.disconnect()
        client.loop_stop()


class Counter:
    """A persistent-session QoS 1 subscriber in this process that keeps what arrives.

    Used for the alarms (error topics): few messages, so keeping them costs nothing.
    """

    def __init__(self, broker: Mosquitto, client_id: str, filters: Sequence[str]) -> None:
        self.broker = broker
        self.filters = list(filters)
        self._lock = threading.Lock()
        self.payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message

    def open(self) -> Counter:
        """Connect, subscribe, wait for the SUBACK."""
        self.client.connect(self.broker.host, self.broker.port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("alarm probe: no SUBACK")
        return self

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    @property
    def count(self) -> int:
        """Messages received so far."""
        with self._lock:
            return len(self.payloads)

    def clear(self) -> None:
        """Forget what came so far."""
        with self._lock:
            self.payloads.clear()

    def close(self) -> None:
        """Disconnect."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def publish_all(
    broker: Mosquitto,
    messages: Sequence[tuple[str, bytes]],
    *,
    inflight: int = 1000,
    timeout: float = 600.0,
) -> float:
    """Publish every (topic, payload) at QoS 1 and wait for every PUBACK; returns seconds.

    At most `window` messages wait in paho at once: its packet ids wrap at 65,535, and a
    backlog queued in one go would reuse ids still in use (and lose messages).
    """
    window = 5 * inflight
    acked = 0
    lock = threading.Condition()

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            lock.notify_all()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port, 60)
    client.loop_start()
    started = time.monotonic()
    deadline = started + timeout
    try:
        for sent, (topic, payload) in enumerate(messages):
            with lock:
                while sent - acked >= window:
                    if not lock.wait(max(0.0, deadline - time.monotonic())):
                        raise RuntimeError(f"broker acked {acked} of {sent} publishes")
            client.publish(topic, payload, qos=1)
        with lock:
            if not lock.wait_for(
                lambda: acked >= len(messages), max(0.0, deadline - time.monotonic())
            ):
                raise RuntimeError(f"broker acked {acked} of {len(messages)} publishes")
    finally:
        client.disconnect()
        client.loop_stop()
    return time.monotonic() - started


class LineCounter:
    """Counts finished lines of a file that grows (incrementally: only new bytes are read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._offset = 0

    def poll(self) -> int:
        """Read what was appended since the last call; return the line count."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.lines
        if chunk:
            self._offset += len(chunk)
            self.lines += chunk.count(b"\n")
        return self.lines
