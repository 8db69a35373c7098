"""The de-duplication window: recent keys appended, then folded into the index in key order."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from bridge import spool as spool_module
from bridge.spool import Spool

T0 = 1_700_000_000.0


def on_disk(path: Path) -> tuple[int, int]:
    """(keys in `seen`, keys in `seen_recent`) read on a connection of their own."""
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        indexed = int(db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
        recent = int(db.execute("SELECT COUNT(*) FROM seen_recent").fetchone()[0])
    return indexed, recent


@pytest.fixture
def small_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold after 40 keys, in steps of 100 (the smallest step a volume gets)."""
    monkeypatch.setattr(spool_module, "RECENT_KEYS", 40)
    monkeypatch.setattr(spool_module, "FOLD_CHUNK", 100)


def keys(start: int, stop: int) -> list[str]:
    # Not in key order: a fold must sort them.
    return [f"m:{(n * 7919) % 100_003:06d}-{n}" for n in range(start, stop)]


@pytest.mark.usefixtures("small_fold")
def test_every_key_is_seen_before_during_and_after_a_fold(tmp_path: Path) -> None:
    """Keys are found while recent, while a fold is under way, and once folded; the fold
    empties `seen_recent` in its last step, and nothing is found that was not stored."""
    path = tmp_path / "spool.db"
    spool = Spool(path, synchronous="NORMAL")
    try:
        stored: list[str] = []
        for group in range(5):  # 5 x 30 = 150 keys: a fold of 60, then one of 60
            batch = keys(group * 30, group * 30 + 30)
            spool.store([], batch, now=T0 + group)
            stored += batch
            assert spool.seen(stored) == set(stored)
            while spool.fold_seen():
                assert spool.seen(stored) == set(stored)
            assert spool.seen(["m:never"]) == set()
        indexed, recent = on_disk(path)
        assert indexed + recent == len(stored)
        assert indexed >= 120
        assert spool.fold_seen(force=True)
        assert on_disk(path) == (len(stored), 0)
        assert not spool.fold_seen(force=True)  # nothing left
    finally:
        spool.close()


def test_a_fold_cut_short_leaves_every_key_found_and_folds_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold stopped after its first step (a crash) leaves keys in both tables; reopened,
    the spool finds every key, and the next fold leaves each once in `seen`."""
    monkeypatch.setattr(spool_module, "RECENT_KEYS", 10)
    monkeypatch.setattr(spool_module, "FOLD_CHUNK", 100)
    path = tmp_path / "spool.db"
    stored = keys(0, 250)
    first = Spool(path, synchronous="NORMAL")
    first.store([], stored, now=T0)
    assert first.fold_seen()  # one step of three: 100 keys in `seen`, 250 still recent
    assert on_disk(path) == (100, 250)
    first.close()

    again = Spool(path, synchronous="NORMAL")
    try:
        assert again.seen(stored) == set(stored)
        while again.fold_seen():
            pass
        assert on_disk(path) == (250, 0)
        assert again.seen(stored) == set(stored)
    finally:
        again.close()


def test_keys_stored_by_another_process_are_seen(tmp_path: Path) -> None:
    """A second connection's keys (another process on the same file) are found by the first,
    which reads the recent keys again when the file changed under it."""
    path = tmp_path / "spool.db"
    one, other = Spool(path, synchronous="NORMAL"), Spool(path, synchronous="NORMAL")
    try:
        one.store([], ["m:a"], now=T0)
        other.store([], ["m:b"], now=T0)
        assert one.seen(["m:a", "m:b"]) == {"m:a", "m:b"}
        assert other.seen(["m:a", "m:b"]) == {"m:a", "m:b"}
    finally:
        one.close()
        other.close()


@pytest.mark.usefixtures("small_fold")
def test_the_size_limit_drops_the_oldest_across_folded_and_recent_keys(tmp_path: Path) -> None:
    """With keys both folded and recent, the window keeps the newest `dedup_max_keys` of
    all, by age: the oldest folded ones go first, then the oldest recent ones."""
    path = tmp_path / "spool.db"
    spool = Spool(path, synchronous="NORMAL", dedup_max_keys=50, dedup_max_age=1e9)
    try:
        old, new = keys(0, 40), keys(40, 70)
        spool.store([], old, now=T0)
        while spool.fold_seen():
            pass
        spool.store([], new, now=T0 + 10)
        assert on_disk(path) == (40, 30)

        assert spool.prune_seen(now=T0 + 20) == 20
        assert spool.seen(new) == set(new)
        assert len(spool.seen(old)) == 20

        spool2 = Spool(path, synchronous="NORMAL", dedup_max_keys=10, dedup_max_age=1e9)
        try:
            assert spool2.prune_seen(now=T0 + 20) == 40
            assert spool2.seen(old) == set()
            assert len(spool2.seen(new)) == 10
            assert on_disk(path) == (0, 10)
        finally:
            spool2.close()
    finally:
        spool.close()


def test_recent_keys_past_the_age_limit_are_dropped(tmp_path: Path) -> None:
    """A key waiting for its fold (a low rate) still leaves the window at its age."""
    path = tmp_path / "spool.db"
    spool = Spool(path, synchronous="NORMAL", dedup_max_age=100.0)
    try:
        spool.store([], ["m:old"], now=T0)
        spool.store([], ["m:young"], now=T0 + 950)
        assert spool.prune_seen(now=T0 + 1000) == 1
        assert spool.seen(["m:old", "m:young"]) == {"m:young"}
        assert on_disk(path) == (0, 1)
    finally:
        spool.close()
