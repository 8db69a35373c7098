"""Fault tests of storage (issue 12, observations 2, 3 and 6): a spool volume that fills up
heals by itself, garbage cannot fill it, and the figures stay true beside a CLI run.

The full-volume scenarios mount a small tmpfs of their own for the spool (they need root and
are skipped with the reason otherwise) and never free space by hand: the bridge must stop at
its floor, keep delivering and deleting once the sink is back, and take messages again itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto
from faultkit import (
    DRAIN,
    FAILED,
    AlarmProbe,
    Bridge,
    Bridges,
    HookServer,
    Message,
    Publisher,
    all_out,
    bridge_config,
    fault_mosquitto,
    outbox_rows,
    report,
    tally,
    traffic,
    wait_until,
)

SEED = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
MiB = 1024 * 1024


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Overrides the shared fixture: autosave every second, unlimited queues."""
    server = fault_mosquitto(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bridges(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bridges]:
    """Bridge processes; the survivors are killed at the end, the logs printed on failure."""
    made = Bridges(tmp_path)
    yield made
    made.close(show_logs=request.node.stash.get(FAILED, True))


@pytest.fixture
def alarms(mosquitto: Mosquitto) -> Iterator[AlarmProbe]:
    """A probe on the error topic with a persistent session, connected before any bridge."""
    probe = AlarmProbe(mosquitto).open()
    yield probe
    probe.close()


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver, not listening until the test starts it."""
    server = HookServer()
    yield server
    server.stop()


@contextlib.contextmanager
def small_volume(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `where` for the test, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test mounts a small tmpfs to fill the spool's volume")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def padded(messages: list[Message], pad: int = 1500) -> list[Message]:
    """The same messages with an unknown field of `pad` bytes in each record (lenient mode
    keeps it), so that a few thousand fill a small volume."""
    out = []
    for message in messages:
        document = json.loads(message.payload)
        for record in document["events"]["add"]["customerList"]:
            record["note"] = "x" * pad
        payload = json.dumps(document, ensure_ascii=False).encode()
        out.append(
            Message(message.msg_id, message.customer_id, message.seq, message.valid, payload)
        )
    return out


def webhook_sink(hook: HookServer) -> dict[str, Any]:
    """A webhook sink to `hook` with a short timeout."""
    return {"type": "webhook", "name": "crm", "url": hook.url, "timeout": 2.0, "batch_size": 100}


def msg_ids(events: list[dict[str, Any]]) -> list[str | None]:
    """The msgId of each downstream event."""
    return [event.get("msgId") for event in events]


def health(bridge: Bridge, path: str) -> tuple[int, str]:
    """GET one of the bridge's health endpoints: status and body."""
    port = bridge.wait_event("started")["health_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as refused:
        return int(refused.code), refused.read().decode()


def gauge(text: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text exposition."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} not exported"
    return float(match.group(1))


def dead_letter_count(spool: Path, where: str = "1") -> int:
    """Dead letters in the spool, read on a connection of the test's own."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM dead WHERE {where}").fetchone()[0])
    finally:
        db.close()


# --- observation 2: a full spool volume ----------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "count"), [(12 * MiB, 8000), (3 * MiB, 2000)], ids=["12MiB", "3MiB"]
)
def test_a_full_spool_volume_drains_by_itself_once_the_sink_is_back(
    mosquitto: Mosquitto,
    bridges: Bridges,
    alarms: AlarmProbe,
    hook: HookServer,
    tmp_path: Path,
    size: int,
    count: int,
) -> None:
    """Webhook down until the spool's volume reaches its floor: the intake stops (readiness and
    metrics say why), the broker keeps the rest; webhook back: every message arrives, in the
    same process, with no space freed by hand."""
    messages = padded(traffic(count, f"vol{size // MiB}", seed=SEED))
    with small_volume(tmp_path / "volume", size) as volume:
        spool = volume / "spool.db"
        cfg = bridge_config(mosquitto, [webhook_sink(hook)], spool, client_id=f"vol-{size}")
        bridge = bridges(cfg, "vol-").start().wait_ready()
        publisher = Publisher(mosquitto, messages).start()
        try:
            bridge.wait_event("spool_room_low", timeout=DRAIN)
            bridge.wait_event("backpressure_on")
            time.sleep(1.0)
            taken = bridge.count("message") + bridge.count("ignored")
            status, body = health(bridge, "/readyz")
            assert status == 503
            assert json.loads(body)["checks"]["spool_room"] is False
            metrics = health(bridge, "/metrics")[1]
            assert gauge(metrics, "bridge_spool_room") == 0
            assert gauge(metrics, "bridge_backpressure") == 1
            free_at_floor = gauge(metrics, "bridge_spool_free_bytes")
            floor = gauge(metrics, "bridge_spool_floor_bytes")
            time.sleep(1.5)
            assert bridge.count("message") + bridge.count("ignored") == taken, (
                "the bridge went on taking messages below its floor"
            )
            healing = time.monotonic()
            hook.start(200)
            wait_until(
                all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
                DRAIN,
                lambda: f"all out ({len(hook.received())} events at the receiver)",
                bridge,
            )
            healed = time.monotonic() - healing
            bridge.wait_event("backpressure_off")
            assert bridge.running, "the same process drains the volume"
            assert health(bridge, "/readyz")[0] == 200
            assert bridge.terminate() == 0
        finally:
            publisher.close()
        assert outbox_rows(spool) == 0
    stuck = bridge.count("spool_write_failed")
    figures = tally(
        f"2. spool volume {size // MiB} MiB full",
        messages,
        msg_ids(hook.received()),
        alarms.source_ids(),
    )
    report(
        figures,
        f"| taken at the floor: {taken} of {len(messages)}; available {free_at_floor:.0f} B,"
        f" floor {floor:.0f} B; time to heal {healed:.1f}s; spool_write_failed {stuck};"
        f" reserve released {bridge.count('spool_reserve_released')}; seed {SEED}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.unexpected == []
    assert figures.duplicated == 0


def test_a_volume_another_program_filled_to_the_last_byte_still_drains(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """3 MiB volume: at the floor, another file takes every byte left; once the webhook is back
    the reserve is given up so deleting works, and every message arrives while that file stays."""
    messages = padded(traffic(2000, "filled", seed=SEED))
    with small_volume(tmp_path / "volume", 3 * MiB) as volume:
        spool = volume / "spool.db"
        cfg = bridge_config(mosquitto, [webhook_sink(hook)], spool, client_id="vol-filled")
        bridge = bridges(cfg, "filled-").start().wait_ready()
        publisher = Publisher(mosquitto, messages).start()
        try:
            bridge.wait_event("backpressure_on", timeout=DRAIN)
            filler = volume / "other-program.log"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                with contextlib.suppress(OSError):  # until the volume has not a byte left
                    while True:
                        os.write(fd, b"x" * 4096)
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"x")
            finally:
                os.close(fd)
            assert os.statvfs(volume).f_bavail == 0
            healing = time.monotonic()
            hook.start(200)
            wait_until(
                all_out(messages, lambda: msg_ids(hook.received()), alarms.source_ids),
                DRAIN,
                lambda: f"all out ({len(hook.received())} events at the receiver)",
                bridge,
            )
            healed = time.monotonic() - healing
            assert filler.exists()
            assert bridge.running
            assert bridge.terminate() == 0
        finally:
            publisher.close()
        assert outbox_rows(spool) == 0
    figures = tally(
        "2b. 3 MiB volume filled by another program",
        messages,
        msg_ids(hook.received()),
        alarms.source_ids(),
    )
    report(
        figures,
        f"| time to heal {healed:.1f}s; reserve released {bridge.count('spool_reserve_released')};"
        f" spool_write_failed {bridge.count('spool_write_failed')}; seed {SEED}",
    )
    assert figures.lost == [], f"lost: {figures.lost[:20]}"
    assert figures.duplicated == 0


def test_deleting_delivered_rows_works_on_a_volume_filled_past_the_floor(tmp_path: Path) -> None:
    """Rows written until the volume is full (as if the floor were ignored): the reserve is
    given up at the first delete that finds the disk full, and every row can be deleted."""
    from bridge.spool import NewRow, Spool  # noqa: PLC0415 - the spool alone, in this test

    with small_volume(tmp_path / "volume", 3 * MiB) as volume:
        spool = Spool(volume / "spool.db", synchronous="NORMAL")
        try:
            assert spool.reserve_held
            body = json.dumps({"customer": {"id": "c", "note": "x" * 1500}})
            stored = 0
            with contextlib.suppress(Exception):  # SpoolError: database or disk is full
                while True:
                    spool.store([NewRow("crm", f"k{n % 50}", body) for n in range(50)], [])
                    stored += 50
            assert os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize < 64 * 1024
            while due := spool.due("crm", 100):
                spool.done([row.id for row in due])
            assert spool.pending == 0
            assert not spool.reserve_held, "the reserve was never needed: the volume was not full"
            assert spool.has_room()
        finally:
            spool.close()
    print(f"\n[faults] 2c. {stored} rows on a full 3 MiB volume all deleted after the reserve")
