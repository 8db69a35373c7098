"""Fault test (issue 12, observation 7): a SIGTERM in the first second of `bridge run`.

Loading the bridge takes a good part of a second; a SIGTERM then used to end the process by
the signal (-15). Now the command's first line takes it as a stop request: the bridge exits 0
having taken nothing, and the messages wait at the broker for the next start.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from brokers import Mosquitto
from faultkit import (
    DRAIN,
    AlarmProbe,
    Bridges,
    Publisher,
    all_out,
    bridge_config,
    read_jsonl,
    report,
    tally,
    traffic,
    wait_until,
)

DELAYS = [0.0] * 6 + [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
"""Seconds between the spawn and the SIGTERM, spread over the time the bridge loads."""


def spawn(config_path: Path, *, held: bool) -> subprocess.Popen[bytes]:
    """`python -m bridge run`; with `held`, SIGTERM is blocked across the exec (the child
    inherits the mask), so one sent at once waits for the bridge's first line, however early."""
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=config_path.parent,
        )
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def seen_keys(spool: Path) -> int:
    """De-duplication keys in the spool: one per message the bridge took."""
    if not spool.exists():
        return 0
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
    finally:
        db.close()


def test_sigterm_at_start_exits_0_having_taken_nothing(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, tmp_path: Path
) -> None:
    """SIGTERM right after the spawn, fourteen times at delays over the first half second:
    each exits 0; a bridge stopped before it subscribed took nothing; the next start gets all."""
    messages = traffic(300, "term", seed=7)
    spool = tmp_path / "state" / "spool.db"
    out = tmp_path / "crm.jsonl"
    cfg = bridge_config(
        mosquitto,
        [{"type": "jsonl", "name": "crm", "path": str(out)}],
        spool,
        client_id="sigterm-at-start",
    )
    session = bridges(cfg, "session-").start().wait_ready()  # the broker now queues for it
    assert session.terminate() == 0
    publisher = Publisher(mosquitto, messages).start()
    publisher.wait()
    codes: list[int] = []
    taken_early: list[int] = []
    try:
        for n, delay in enumerate(DELAYS):
            config_path = session.config_path
            before = seen_keys(spool)
            proc = spawn(config_path, held=True)
            if delay:
                time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
            codes.append(proc.returncode)
            assert proc.returncode == 0, f"run {n} (delay {delay}s): {stderr.decode()[-2000:]}"
            if b'"subscribed"' not in stdout:
                taken_early.append(seen_keys(spool) - before)
        assert taken_early and set(taken_early) == {0}, taken_early
        # Up and subscribed first: the late SIGTERMs may have delivered all already, and one
        # sent in the interpreter's own start (before any line of the bridge) is its death.
        again = bridges(cfg, "again-").start().wait_ready()
        wait_until(
            all_out(
                messages, lambda: [e["msgId"] for e in read_jsonl(out).events], alarms.source_ids
            ),
            DRAIN,
            "every message after the SIGTERMs",
            again,
        )
        assert again.terminate() == 0
    finally:
        publisher.close()
    figures = tally(
        "7. SIGTERM at start",
        messages,
        [e["msgId"] for e in read_jsonl(out).events],
        alarms.source_ids(),
    )
    report(
        figures,
        f"| {len(codes)} SIGTERMs at start, exit codes {sorted(set(codes))};"
        f" {len(taken_early)} stopped before subscribing took {sum(taken_early)} messages",
    )
    assert figures.lost == []
    assert figures.duplicated == 0


def test_sigterm_as_soon_as_the_process_can_take_it_exits_0(tmp_path: Path) -> None:
    """Without any mask: SIGTERM the moment the process shows a SIGTERM handler; it exits 0.
    Prints how long after the spawn the handler was in place."""
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(
        "broker: {host: 127.0.0.1, port: 1}\n"  # never reached: the bridge stops before
        f"spool: {{path: {tmp_path / 'spool.db'}}}\n"
        "health: {enabled: false}\n"
        f"sinks: [{{type: jsonl, path: {tmp_path / 'out.jsonl'}}}]\n",
        encoding="utf-8",
    )
    waited: list[float] = []
    for _ in range(5):
        started = time.monotonic()
        proc = spawn(config_path, held=False)
        while not catches_sigterm(proc.pid) and proc.poll() is None:
            time.sleep(0.0005)
        waited.append(time.monotonic() - started)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    print(
        f"\n[faults] 7b. SIGTERM handler in place {min(waited) * 1000:.0f}-"
        f"{max(waited) * 1000:.0f} ms after the spawn; 5 of 5 exited 0"
    )
