"""SPEC 6: counts true across processes, the free-space floor, the reserve, the payload quota."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.spool import MiB, NewRow, Spool, Storage


def rows(n: int, target: str = "sink") -> list[NewRow]:
    """`n` outbox rows of distinct customers."""
    return [NewRow(target, f"k{i}", json.dumps({"n": i})) for i in range(n)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's spool lives."""
    return tmp_path / "state" / "spool.db"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    """A spool with a small payload quota: 3 raw payloads or 100 bytes, 5 metadata rows."""
    storage = Storage(unreadable_max_count=3, unreadable_max_bytes=100, unreadable_max_metadata=5)
    opened = Spool(path, synchronous="NORMAL", storage=storage, hold_reserve=True)
    try:
        yield opened
    finally:
        opened.close()


def test_pending_follows_rows_another_process_added_and_removed(path: Path, spool: Spool) -> None:
    """Rows a second connection (a CLI beside the daemon) adds or removes show in `pending`."""
    spool.store(rows(5), [])
    other = Spool(path, synchronous="NORMAL")
    try:
        other.store(rows(3, "other"), [])
        assert spool.pending == 8
        due = other.due("sink", 10)
        other.done([r.id for r in due])
        assert spool.pending == 3
        # and the first spool's own deletes keep the count right, never below zero
        spool.done([r.id for r in spool.due("other", 10)])
        assert spool.pending == 0 == other.pending
    finally:
        other.close()


def test_a_replay_beside_the_daemon_never_drives_pending_negative(path: Path, spool: Spool) -> None:
    """Letters replayed by another connection and delivered here leave `pending` exact."""
    spool.store(rows(4), [])
    due = spool.due("sink", 10)
    spool.give_up(due, "refused", kind="event")
    assert spool.pending == 0
    cli = Spool(path, synchronous="NORMAL")
    try:
        assert cli.replay_in_order(None).replayed == 4
    finally:
        cli.close()
    assert spool.pending == 4
    spool.done([r.id for r in spool.due("sink", 10)])
    assert spool.pending == 0
    assert spool.dead_by_kind() == {}


def test_unreadable_payloads_past_the_quota_keep_only_metadata(spool: Spool) -> None:
    """Three payloads are kept raw; later ones keep topic, size, digest, reason and time."""
    payloads = [("t/a", b"x" * 20 + bytes([n]), "not JSON") for n in range(6)]
    spool.store([], [], payloads)
    letters = spool.dead_letters()
    assert [bool(d.body) for d in letters] == [True, True, True, False, False, False]
    last = letters[-1]
    assert last.metadata_only
    assert (last.topic, last.size, last.reason) == ("t/a", 21, "not JSON")
    assert last.digest == hashlib.sha256(payloads[-1][1]).hexdigest()
    assert last.created > 0
    assert spool.unreadable() == {"raw": 3, "metadata": 3, "forgotten": 0}


def test_the_byte_quota_stops_raw_payloads_before_the_count_does(spool: Spool) -> None:
    """A payload that would take the raw bytes past the quota keeps its metadata only."""
    spool.store([], [], [("t", b"a" * 60, "bad"), ("t", b"b" * 60, "bad"), ("t", b"c" * 30, "bad")])
    assert [len(d.body) for d in spool.dead_letters()] == [60, 0, 30]


def test_metadata_beyond_its_bound_is_only_counted(path: Path, spool: Spool) -> None:
    """Past five metadata rows the oldest go, and the number gone is kept in the spool."""
    for n in range(12):
        spool.store([], [], [("t", b"junk" * 10 + bytes([n]), "bad")])
    assert spool.unreadable() == {"raw": 2, "metadata": 5, "forgotten": 5}
    reopened = Spool(path, synchronous="NORMAL")
    try:
        assert reopened.unreadable()["forgotten"] == 5
    finally:
        reopened.close()


def test_a_purge_makes_room_under_the_quota_again(spool: Spool) -> None:
    """Once raw payload letters are purged, the next unreadable payload is kept raw again."""
    spool.store([], [], [("t", bytes([n]) * 10, "bad") for n in range(4)])
    spool.purge(None)
    spool.store([], [], [("t", b"again", "bad")])
    assert [d.body for d in spool.dead_letters()] == [b"again"]


def test_a_purge_by_another_process_makes_room_under_the_quota(path: Path, spool: Spool) -> None:
    """The quota counts what the spool holds, also after a CLI purged letters beside it."""
    spool.store([], [], [("t", bytes([n]) * 10, "bad") for n in range(3)])
    cli = Spool(path, synchronous="NORMAL")
    try:
        cli.purge(None)
    finally:
        cli.close()
    spool.store([], [], [("t", b"fresh", "bad")])
    assert [d.body for d in spool.dead_letters()] == [b"fresh"]


def test_the_floor_sized_to_the_volume_by_default() -> None:
    """10 % of the volume between 256 KiB and 256 MiB; the reserve 2 % between 256 KiB and 16."""
    assert Storage().sized(3 * MiB) == (3 * MiB // 10, MiB // 4)
    assert Storage().sized(100 * 1024 * MiB) == (256 * MiB, 16 * MiB)
    assert Storage().sized(MiB) == (MiB // 4, MiB // 4)
    assert Storage(min_free=5, reserve=7).sized(MiB) == (5, 7)


def test_no_room_below_the_floor(path: Path) -> None:
    """With a floor above what the volume has, the intake is told there is no room."""
    spool = Spool(path, storage=Storage(min_free=1 << 60))
    try:
        room = spool.room()
        assert not room.enough
        assert not spool.has_room()
        assert "below the floor" in room.why()
    finally:
        spool.close()


def test_the_reserve_file_holds_its_space(path: Path, spool: Spool) -> None:
    """A reserve file of the reserve's size sits beside the spool while there is room."""
    reserve = path.with_name(path.name + ".reserve")
    assert reserve.stat().st_size == spool.reserve
    assert spool.room().reserve_held
    assert spool.has_room()


def test_a_spool_opened_by_the_cli_holds_no_reserve(tmp_path: Path) -> None:
    """Only the daemon holds the reserve: a CLI run beside it creates no file there."""
    other = tmp_path / "cli" / "spool.db"
    spool = Spool(other)
    try:
        assert not spool.room().reserve_held
        assert not other.with_name("spool.db.reserve").exists()
    finally:
        spool.close()


def test_free_pages_inside_the_spool_count_as_room(path: Path, spool: Spool) -> None:
    """Rows deleted leave free pages that new rows take first: they count towards the floor."""
    spool.store(rows(2000), [])
    spool.done([r.id for r in spool.due("sink", 2000, scan=5000)])
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert spool.room().reusable > 0
