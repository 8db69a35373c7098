"""mosquitto in a subprocess on a free loopback port, for tests against a real broker.

The embedded amqtt broker (`bridge.broker`) needs nothing installed; mosquitto is what most
sites run, with persistence, restarts and SIGKILL that a test can play out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from bridge.testing.process import stop_process
from bridge.testing.recorder import LOOPBACK

# sbin is often missing from PATH, and that is where Debian and Ubuntu install the broker.
_MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class MosquittoMissing(RuntimeError):
    """No mosquitto executable was found (install it, or set MOSQUITTO=/path)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether `host:port` accepted a TCP connection before `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.25):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def mosquitto_binary() -> str:
    """The mosquitto executable: `$MOSQUITTO`, on PATH, or in sbin; MosquittoMissing if none."""
    override = os.environ.get("MOSQUITTO")
    candidates = [override] if override else [shutil.which("mosquitto"), *_MOSQUITTO_PLACES]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    looked = ", ".join(c for c in candidates if c)
    raise MosquittoMissing(f"mosquitto binary not found (looked for {looked})")


class Mosquitto:
    """mosquitto in a subprocess on a loopback port, its config, log and data in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        max_queued_messages: int | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        """`max_queued_messages=0` lifts mosquitto's per-client queue limit (1000 by default)."""
        self.binary = mosquitto_binary()
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.output_path = workdir / "mosquitto.out"
        self.data_dir = workdir / "data" if persistence else None
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # As an operator should: without it each PUBACK can wait ~40 ms (Nagle + delayed ACK).
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto switches to the `mosquitto` user, who cannot write to tmp_path.
            lines.append("user root")
        if self.data_dir is not None:
            self.data_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.data_dir}/"]
        if max_queued_messages is not None:
            lines.append(f"max_queued_messages {max_queued_messages}")
        lines += extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the process and return once the port accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.output_path.open("ab") as output:
            self.proc = subprocess.Popen(  # noqa: S603 - the configured mosquitto binary
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"mosquitto exited with {code} at start:\n{self.log()}")
            # Someone else could hold the port: only count it once this run says it is running.
            running = " running" in self._log_since(log_offset)
            if running and wait_for_port(self.host, self.port, 0.1):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None and stop_process(proc, timeout) is None:
            raise RuntimeError(f"mosquitto did not stop on SIGTERM in {timeout}s; killed it")

    def kill(self) -> None:
        """SIGKILL and wait: nothing is saved since the last autosave."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (SIGTERM) and start again on the same port with the same persistence directory."""
        self.stop(timeout)
        self.start(timeout)

    def log(self) -> str:
        """Everything mosquitto logged so far, its own console output included."""
        files = (self.output_path, self.log_path)
        return "".join(f.read_text(errors="replace") for f in files if f.exists())

    def _log_since(self, offset: int) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Mosquitto({self.host}:{self.port}, {state})"
