"""systemd's notification protocol (sd_notify) and a watchdog fed by the bridge's own threads.

`Notifier` sends READY=1, STATUS=, STOPPING=1, RELOADING=1 and WATCHDOG=1 datagrams to the
socket named by NOTIFY_SOCKET; without it (a terminal, a container, the tests) every call is a
no-op. It never raises and logs nothing: the bridge must run the same with or without systemd.

`Watchdog` pings systemd only while every registered component (the intake, each delivery
worker) has beaten recently, so a thread stuck in a sink or in SQLite gets the whole process
killed and restarted even though the watchdog thread itself is fine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

StaleCallback = Callable[[Mapping[str, float]], None]
"""Told the silent components and their silence in seconds; an empty mapping: all beat again."""


def _address(value: str) -> str | bytes | None:
    # systemd names its socket by an absolute path, or "@name" for the abstract namespace.
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    # The same rules as sd_watchdog_enabled(3): a positive WATCHDOG_USEC, meant for this process.
    pid = environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """An sd_notify client built from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

    Every method returns True when the datagram was sent and False otherwise (no socket, an
    error); none raises.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        usec = _watchdog_usec(env) if self._address is not None else None
        self.watchdog_usec: int | None = usec
        """The watchdog timeout systemd enforces, in microseconds; None when it is off."""
        self.last_status: str | None = None
        """The last text sent with status(), so that it can be restored."""

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when systemd does not expect pings."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1_000_000

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram."""
        if self._address is None:
            return False
        try:
            data = "\n".join(fields).encode("utf-8", "replace")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self._address)
        except (OSError, ValueError):
            return False
        return True

    def ready(self) -> bool:
        """READY=1: start-up (or a reload) is complete."""
        return self.notify("READY=1")

    def stopping(self) -> bool:
        """STOPPING=1: the bridge has begun to shut down."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC=, as Type=notify-reload (systemd 253+) expects.

        Send ready() when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by `systemctl status`."""
        line = " ".join(text.splitlines())  # a newline would start another field
        self.last_status = line
        return self.notify(f"STATUS={line}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: still alive. Prefer a `Watchdog`, which pings only while threads beat."""
        if self.watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")


class Watchdog:
    """Pings systemd's watchdog every half timeout while each registered heartbeat is fresh.

    Components `register(name)` before their thread starts, then `beat(name)` from their loop
    (at least once a second, idle or not). A heartbeat older than `stale_after` (the watchdog
    timeout by default) stops the pings, and STATUS= says which component is silent; systemd
    then kills the bridge and Restart=on-failure starts it again. Pings resume if it recovers
    in time. Without a watchdog from systemd, `start()` does nothing and beats are cheap.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        stale_after: float | None = None,
        on_stale: StaleCallback | None = None,
    ) -> None:
        self._notifier = notifier
        self._interval = notifier.watchdog_interval
        self._stale_after = stale_after if stale_after is not None else self._interval
        self._on_stale = on_stale
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._silent: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        """Whether systemd expects pings from this process."""
        return self._interval is not None

    def register(self, name: str) -> None:
        """Watch `name` from now on, as if it had just beaten."""
        self.beat(name)

    def unregister(self, name: str) -> None:
        """Stop watching `name` (a component that ended on purpose)."""
        with self._lock:
            self._beats.pop(name, None)

    def beat(self, name: str) -> None:
        """`name` is making progress. An unknown name is registered."""
        now = time.monotonic()
        with self._lock:
            self._beats[name] = now

    @property
    def stale_after(self) -> float | None:
        """The silence (s) past which a component counts as stale; None: never."""
        return self._stale_after

    def ages(self) -> dict[str, float]:
        """Seconds since each registered component last beat."""
        now = time.monotonic()
        with self._lock:
            return {name: now - beaten for name, beaten in self._beats.items()}

    def stale(self) -> dict[str, float]:
        """The registered components silent for longer than allowed, with their silence (s)."""
        if self._stale_after is None:
            return {}
        return {name: age for name, age in self.ages().items() if age > self._stale_after}

    def start(self) -> bool:
        """Start pinging on a daemon thread; False (and no thread) without a watchdog."""
        if self._interval is None:
            return False
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, args=(self._interval / 2,), name="sd-watchdog", daemon=True
            )
            self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging (call it before the components stop beating on shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, period: float) -> None:
        while True:
            stale = self.stale()
            self._report(stale)
            if not stale:
                self._notifier.watchdog()
            if self._stop.wait(period):
                return

    def _report(self, stale: dict[str, float]) -> None:
        silent = frozenset(stale)
        if silent == self._silent:
            return
        self._silent = silent
        if silent:
            names = ", ".join(f"{name} ({age:.0f}s)" for name, age in sorted(stale.items()))
            line = f"watchdog withheld: no heartbeat from {names}; systemd will restart the bridge"
            self._notifier.notify(f"STATUS={line}")  # not status(): keep the line to restore
        else:
            self._notifier.notify(f"STATUS={self._notifier.last_status or ''}")
        if self._on_stale is not None:
            with contextlib.suppress(Exception):  # the pings must outlive a faulty callback
                self._on_stale(stale)
