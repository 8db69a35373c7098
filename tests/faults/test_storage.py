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
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto
from faultkit import (
    DRAIN,
    AlarmProbe,
    Bridge,
    Bridges,
    HookServer,
    Message,
    Publisher,
    all_out,
    bridge_config,
    outbox_rows,
    report,
    tally,
    traffic,
    wait_until,
)

SEED = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
MiB = 1024 * 1024


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
        spool = Spool(volume / "spool.db", synchronous="NORMAL", hold_reserve=True)
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


# --- observation 3: garbage cannot fill the disk --------------------------------------------------


def hostile(count: int, seed: int) -> list[Message]:
    """`count` distinct payloads no reader can make sense of: random bytes, torn JSON, text
    that is not UTF-8 (distinct, or the de-duplication window would drop the repeats)."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        size = rng.randrange(200, 3000)
        shape = n % 3
        if shape == 0:
            payload = rng.randbytes(size)
        elif shape == 1:
            payload = b'{"msgId": "junk-%d", "events": {"add": ' % n + b"[" * (size // 10)
        else:
            payload = ("\u5783\u573e" * (size // 6)).encode() + b"\xff\xfe%d" % n
        made.append(Message(f"junk-{n:05d}", "", 0, False, payload))
    return made


def test_a_producer_sending_garbage_fills_only_the_quota(
    mosquitto: Mosquitto, bridges: Bridges, tmp_path: Path
) -> None:
    """20,000 hostile payloads among 1,000 good messages: raw payloads stop at the quota, then
    metadata only, then only a count; the spool stays small and every good message arrives."""
    good = traffic(1000, "good", seed=SEED, invalid_share=0.0)
    junk = hostile(20000, SEED)
    mixed = good + junk
    random.Random(SEED).shuffle(mixed)
    spool = tmp_path / "state" / "spool.db"
    out = tmp_path / "crm.jsonl"
    quota = {
        "unreadable_max_count": 500,
        "unreadable_max_bytes": "256KiB",
        "unreadable_max_metadata": 5000,
    }
    cfg = bridge_config(
        mosquitto,
        [{"type": "jsonl", "name": "crm", "path": str(out)}],
        spool,
        client_id="garbage",
        spool_options=quota,
    )
    bridge = bridges(cfg, "garbage-").start().wait_ready()
    publisher = Publisher(mosquitto, mixed).start()

    def unreadable() -> dict[str, int]:
        text = health(bridge, "/metrics")[1]
        return {
            kept: int(gauge(text, "bridge_unreadable_payloads", f'{{kept="{kept}"}}'))
            for kept in ("raw", "metadata", "forgotten")
        }

    try:
        wait_until(
            lambda: sum(unreadable().values()) >= len(junk),
            DRAIN,
            lambda: f"every hostile payload accounted for ({unreadable()})",
            bridge,
        )
        wait_until(
            lambda: len({e["msgId"] for e in read_events(out)}) >= len(good),
            DRAIN,
            "every good message in the jsonl file",
            bridge,
        )
        counted = unreadable()
        assert bridge.terminate() == 0
    finally:
        publisher.close()
    size = sum(
        p.stat().st_size for p in (spool, spool.with_name(spool.name + "-wal")) if p.exists()
    )
    raw_kept = dead_letter_count(spool, "kind = 'payload' AND LENGTH(body) > 0")
    letters_bytes = dead_letter_bytes(spool)
    delivered = {e["msgId"] for e in read_events(out)}
    print(
        f"\n[faults] 3. garbage: sent={len(mixed)} (good {len(good)}, hostile {len(junk)})"
        f" delivered={len(delivered & {m.msg_id for m in good})} kept raw={counted['raw']}"
        f" metadata only={counted['metadata']} only counted={counted['forgotten']}"
        f" payload letters {letters_bytes / MiB:.2f} MiB, spool {size / MiB:.1f} MiB"
        f" (its alarms still queued included); seed {SEED}"
    )
    assert delivered >= {m.msg_id for m in good}
    assert counted["raw"] == raw_kept <= 500
    assert counted["metadata"] == 5000
    assert sum(counted.values()) == len(junk)
    # 256 KiB raw, and 5,000 rows of metadata; 61,450 raw letters once made a 91 MB spool
    assert letters_bytes < 2 * MiB


def dead_letter_bytes(spool: Path) -> int:
    """What the unreadable-payload letters keep: bodies, reasons, topics and digests."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT SUM(LENGTH(body) + LENGTH(reason) + LENGTH(topic) + LENGTH(digest) + 24)"
            " FROM dead WHERE kind = 'payload'"
        ).fetchone()
        return int(row[0] or 0)
    finally:
        db.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The jsonl sink's finished lines."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


# --- observation 6: figures true beside a CLI run ------------------------------------------------


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bridge dead-letters ...` as an operator runs it beside the daemon."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dead-letters", "-c", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_replay_beside_the_daemon_shows_at_once_in_its_figures(
    mosquitto: Mosquitto, bridges: Bridges, alarms: AlarmProbe, hook: HookServer, tmp_path: Path
) -> None:
    """Dead letters replayed by the CLI beside the running daemon: its pending gauge, dead
    letter gauge and back-pressure follow the spool at once, and the gauge is never negative."""
    first = traffic(300, "rp", seed=SEED)
    later = traffic(100, "rp-later", seed=SEED + 1)
    spool = tmp_path / "state" / "spool.db"
    cfg = bridge_config(
        mosquitto,
        [webhook_sink(hook)],
        spool,
        client_id="replay-beside",
        spool_options={"max_pending": 100, "intake_batch": 20},
        delivery={"alarm_on_give_up": False},
    )
    hook.start(400)  # refuses every record for good: each becomes a dead letter
    bridge = bridges(cfg, "replay-").start().wait_ready()
    publisher = Publisher(mosquitto, first + later).start(allowed=len(first))
    valid = sum(1 for m in first if m.valid)
    seen: list[float] = []

    def metrics() -> str:
        text = health(bridge, "/metrics")[1]
        seen.append(gauge(text, "bridge_spool_pending"))
        return text

    try:
        wait_until(
            lambda: gauge(metrics(), "bridge_dead_letters_stored", '{kind="event"}') == valid,
            DRAIN,
            "every valid record a dead letter",
            bridge,
        )
        assert gauge(metrics(), "bridge_spool_pending") == 0
        hook.status = 503  # the receiver is failing for now: what is replayed waits
        replayed = cli(bridge.config_path, "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {valid}" in replayed.stdout
        text = metrics()
        assert gauge(text, "bridge_spool_pending") == outbox_rows(spool) == valid
        assert gauge(text, "bridge_dead_letters_stored", '{kind="event"}') == 0
        pressed = bridge.count("backpressure_on")  # the first messages may have pressed too
        publisher.allow(len(first) + len(later))  # more than max_pending is waiting now
        bridge.wait_event("backpressure_on", count=pressed + 1)
        assert json.loads(health(bridge, "/readyz")[1])["checks"]["accepting"] is False
        hook.status = 200
        wait_until(
            all_out(first + later, lambda: msg_ids(hook.received()), alarms.source_ids),
            DRAIN,
            lambda: f"all out ({len(hook.received())} at the receiver)",
            bridge,
        )
        wait_until(lambda: outbox_rows(spool) == 0, WAIT_SHORT, "an empty outbox", bridge)
        assert gauge(metrics(), "bridge_spool_pending") == 0
        bridge.wait_event("backpressure_off", count=pressed + 1)
        assert bridge.terminate() == 0
    finally:
        publisher.close()
    figures = tally(
        "6. replay beside the daemon",
        first + later,
        msg_ids(hook.received()),
        alarms.source_ids(),
    )
    report(
        figures,
        f"| replayed {valid} beside it; pending gauge min {min(seen):.0f},"
        f" max {max(seen):.0f} over {len(seen)} scrapes; seed {SEED}",
    )
    assert min(seen) >= 0
    assert figures.lost == []
    assert figures.duplicated == 0


WAIT_SHORT = 20.0
