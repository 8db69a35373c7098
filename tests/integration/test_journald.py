"""Log levels reach journald: a real systemd-journald (in a namespace of its own) stores each
line of `customer-bridge run` at the priority its level says, so `journalctl -p warning` works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import free_port

from bridge.logs import PRIORITIES

JOURNALD = next(
    (
        p
        for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
        if Path(p).exists()
    ),
    None,
)
ENTRY_POINT = Path(sys.executable).with_name("customer-bridge")


class Journal:
    """systemd-journald serving namespace `name`: its sockets under /run/systemd/journal.NAME."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sockets = Path(f"/run/systemd/journal.{name}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start journald and wait for its stdout socket."""
        assert JOURNALD is not None
        self.proc = subprocess.Popen(
            [JOURNALD, self.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not (self.sockets / "stdout").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("systemd-journald does not start here")
            time.sleep(0.05)

    def stream(self, identifier: str) -> socket.socket:
        """A stream connection as systemd makes for a unit's stdout (SyslogLevelPrefix=yes)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.sockets / "stdout"))
        # identifier, unit id, default priority (info), level prefix on, no syslog/kmsg/console
        conn.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
        return conn

    def entries(self, *args: str) -> list[dict[str, Any]]:
        """What `journalctl --namespace NAME -o json ARGS` shows."""
        shown = subprocess.run(
            ["journalctl", f"--namespace={self.name}", "-o", "json", "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]

    def stop(self) -> None:
        """Stop journald and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        shutil.rmtree(self.sockets, ignore_errors=True)
        machine = (
            Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        )
        for base in (Path("/var/log/journal"), Path("/run/log/journal")):
            shutil.rmtree(base / f"{machine}.{self.name}", ignore_errors=True)


@pytest.fixture
def journal() -> Iterator[Journal]:
    """A throwaway journald namespace (needs root and the systemd-journald binary)."""
    if JOURNALD is None or not shutil.which("journalctl"):
        pytest.skip("systemd-journald is not installed")
    if os.geteuid() != 0:
        pytest.skip("systemd-journald needs root")
    server = Journal(f"cbtest{uuid.uuid4().hex[:10]}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path) -> Path:
    # No broker listens on the port: the bridge logs at info (started), error (cannot
    # connect) and debug, which is all this needs.
    document = {
        "broker": {"port": free_port(), "reconnect": {"min_delay": 1, "max_delay": 1}},
        "sinks": [{"type": "log"}],
        "spool": {"path": str(tmp_path / "spool.db")},
        "health": {"port": 0},
        "logging": {"level": "debug", "format": "json"},
    }
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _run_into(journal: Journal, cfg: Path, seconds: float) -> None:
    conn = journal.stream("customer-bridge")
    found = os.fstat(conn.fileno())
    # What systemd sets for a unit whose stdout is the journal stream.
    env = {**os.environ, "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}
    with subprocess.Popen(
        [str(ENTRY_POINT), "run", "-c", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=conn.fileno(),
        stderr=conn.fileno(),
        cwd=cfg.parent,
        env=env,
    ) as proc:
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    conn.close()


def _bridge_entries(journal: Journal, *args: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        entries = [
            e for e in journal.entries(*args) if e.get("SYSLOG_IDENTIFIER") == "customer-bridge"
        ]
        if (
            any(
                json.loads(e["MESSAGE"]).get("event") == "stopped"
                for e in entries
                if e["MESSAGE"].startswith("{")
            )
            or time.monotonic() > deadline
        ):
            return entries
        time.sleep(0.2)


def test_journald_stores_each_line_at_the_priority_of_its_level(
    journal: Journal, tmp_path: Path
) -> None:
    """Every JSON line lands with PRIORITY = its level's syslog number, the <N> stripped."""
    _run_into(journal, _config(tmp_path), seconds=3.0)
    entries = _bridge_entries(journal)
    levels: set[str] = set()
    for entry in entries:
        message = entry["MESSAGE"]
        assert not message.startswith("<"), message  # journald took the prefix off
        logged = json.loads(message)
        levels.add(logged["level"])
        assert int(entry["PRIORITY"]) == PRIORITIES[logged["level"]], entry
    assert {"debug", "info"} <= levels, levels
    assert levels & {"warning", "error"}, levels


def test_journalctl_priority_filter_shows_only_warnings_and_worse(
    journal: Journal, tmp_path: Path
) -> None:
    """`journalctl -p warning` (the operator's filter) shows warnings and errors, no info."""
    _run_into(journal, _config(tmp_path), seconds=3.0)
    _bridge_entries(journal)  # wait until the whole run is stored
    warnings = [
        e
        for e in journal.entries("-p", "warning")
        if e.get("SYSLOG_IDENTIFIER") == "customer-bridge"
    ]
    assert warnings
    assert {json.loads(e["MESSAGE"])["level"] for e in warnings} <= {"warning", "error", "critical"}


def test_no_prefix_when_stdout_is_not_the_journal_stream(tmp_path: Path) -> None:
    """JOURNAL_STREAM naming another file (stdout redirected in the unit): plain JSON lines."""
    cfg = _config(tmp_path)
    out = tmp_path / "out.log"
    with (
        out.open("wb") as sink,
        subprocess.Popen(
            [str(ENTRY_POINT), "run", "-c", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
            env={**os.environ, "JOURNAL_STREAM": "1:1"},
        ) as proc,
    ):
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines
    assert all(line.startswith("{") for line in lines), lines[:3]


def test_the_reason_a_start_fails_is_stored_as_an_error(journal: Journal, tmp_path: Path) -> None:
    """A config error (printed before logging starts, on stderr) lands at priority 3 (err)."""
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("broker: {hots: 127.0.0.1}\nsinks: [{type: log}]\n", encoding="utf-8")
    conn = journal.stream("customer-bridge")
    found = os.fstat(conn.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}
    status = subprocess.run(
        [str(ENTRY_POINT), "run", "-c", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=conn.fileno(),
        stderr=conn.fileno(),
        cwd=tmp_path,
        env=env,
        timeout=30,
        check=False,
    ).returncode
    conn.close()
    assert status == 78
    deadline = time.monotonic() + 20
    while True:
        errors = [
            e
            for e in journal.entries("-p", "err")
            if e.get("SYSLOG_IDENTIFIER") == "customer-bridge" and "config error" in e["MESSAGE"]
        ]
        if errors or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert errors, journal.entries()
    assert int(errors[0]["PRIORITY"]) == 3
    assert "broker.hots" in errors[0]["MESSAGE"]
