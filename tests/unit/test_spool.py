"""SPEC 6: the SQLite outbox, the de-duplication window and the dead letters (real files)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.spool import ALARMS, RAW_PAYLOAD_LIMIT, NewRow, Row, Spool, SpoolError

T0 = 1_700_000_000.0  # a fixed clock for the rows a test stores with `now=`


def new_row(okey: str, n: int, target: str = "sink", **extra: Any) -> NewRow:
    """An outbox row whose JSON body says which key and sequence number it carries."""
    return NewRow(target, okey, json.dumps({"key": okey, "n": n, **extra}))


def label(row: Row) -> str:
    """A row as `key:n`, to compare orders at a glance."""
    body = row.decoded()
    return f"{body['key']}:{body['n']}"


def count(path: Path, table: str) -> int:
    """Rows of `table`, read on a connection of its own (what is on disk, not in a counter)."""
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's spool lives."""
    return tmp_path / "state" / "spool.db"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    """A fresh spool in tmp_path, closed afterwards."""
    opened = Spool(path, synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


# outbox


def test_store_due_done_round_trip(spool: Spool) -> None:
    """Stored rows come back from `due` with their fields and disappear after `done`."""
    spool.store([new_row("a", 1), new_row("b", 1)], [], now=T0)

    rows = spool.due("sink", 10, now=T0 + 1)

    assert [label(r) for r in rows] == ["a:1", "b:1"]
    first = rows[0]
    assert (first.target, first.okey, first.created) == ("sink", "a", T0)
    assert (first.attempts, first.next_at) == (0, 0)
    assert spool.pending == 2
    spool.done([r.id for r in rows])
    assert spool.due("sink", 10, now=T0 + 1) == []
    assert spool.pending == 0
    assert spool.targets() == {}


def test_a_body_given_as_utf8_bytes_is_stored_and_read_back_as_its_text(spool: Spool) -> None:
    """A digest carries each event's JSON as UTF-8 bytes: the row holds the same text as a
    str body would (CJK, quotes and all), and reads back as str, also after a give-up."""
    text = json.dumps({"name": "张三", "note": 'a "quoted" word'}, ensure_ascii=False)
    spool.store([NewRow("sink", "a", text.encode()), NewRow("sink", "b", text)], [], now=T0)

    rows = spool.due("sink", 10, now=T0 + 1)

    assert [(r.okey, r.body) for r in rows] == [("a", text), ("b", text)]
    assert all(type(r.body) is str for r in rows)
    spool.give_up(rows[:1], "refused", kind="event")
    (letter,) = spool.dead_letters()
    assert letter.body == text.encode()


def test_due_returns_rows_oldest_first(spool: Spool) -> None:
    """Rows of one target come back in the order they were stored, across stores."""
    spool.store([new_row("c", 1), new_row("a", 1)], [])
    spool.store([new_row("b", 1)], [])
    spool.store([new_row("a", 2), new_row("c", 2)], [])

    assert [label(r) for r in spool.due("sink", 10)] == ["c:1", "a:1", "b:1", "a:2", "c:2"]


def test_targets_are_independent(spool: Spool) -> None:
    """One target's rows, retries and deletions never touch another target's rows."""
    spool.store([new_row("k", 1, "one"), new_row("k", 1, "two"), new_row("k", 2, "one")], [])
    one = spool.due("one", 10)
    assert [label(r) for r in one] == ["k:1", "k:2"]

    # the same ordering key waiting on target "one" does not hold back target "two"
    spool.retry([one[0].id], time.time() + 60, "down")
    assert spool.due("one", 10) == []
    assert [label(r) for r in spool.due("two", 10)] == ["k:1"]
    spool.done([r.id for r in spool.due("two", 10)])
    assert spool.targets() == {"one": 2}
    assert spool.due("other", 10) == []


def test_pending_counts_rows_through_every_change(spool: Spool, path: Path) -> None:
    """`pending` follows store, done, give_up (with alarms) and replay, and matches the file."""
    assert spool.pending == 0
    spool.store([new_row("a", 1), new_row("b", 1), new_row("c", 1)], ["m-1"])
    assert spool.pending == 3
    rows = spool.due("sink", 10)
    spool.done([rows[0].id])
    assert spool.pending == 2
    spool.give_up([rows[1]], "rejected", [new_row("", 1, ALARMS)], kind="event")
    assert spool.pending == 2  # one row left, one alarm came in
    spool.replay(None)
    assert spool.pending == 3
    assert spool.pending == count(path, "outbox")


def test_store_is_atomic(spool: Spool, path: Path) -> None:
    """A batch with a row violating NOT NULL stores nothing at all and raises SpoolError."""
    version = spool.version
    bad = NewRow("sink", "b", None)  # type: ignore[arg-type]

    with pytest.raises(SpoolError, match="cannot write the spool"):
        spool.store(
            [new_row("a", 1), bad, new_row("c", 1)],
            ["m-1", "m-2"],
            raw_payloads=[("t", b"junk", "not json")],
        )

    assert spool.pending == 0
    assert count(path, "outbox") == 0
    assert spool.seen(["m-1", "m-2"]) == set()
    assert spool.dead_count() == 0
    assert spool.version == version
    # the connection is usable again after the rollback
    spool.store([new_row("a", 1)], ["m-1"])
    assert [label(r) for r in spool.due("sink", 10)] == ["a:1"]
    assert spool.seen(["m-1"]) == {"m-1"}


# per-customer ordering


def test_due_holds_back_a_key_behind_its_row_waiting_for_retry(spool: Spool) -> None:
    """A row waits while its key's earlier row awaits its retry time; other keys flow."""
    spool.store([new_row("A", 1), new_row("B", 1), new_row("A", 2), new_row("B", 2)], [], now=T0)
    first = spool.due("sink", 10, now=T0)
    assert [label(r) for r in first] == ["A:1", "B:1", "A:2", "B:2"]

    spool.retry([first[0].id], T0 + 60, "sink down")

    assert [label(r) for r in spool.due("sink", 10, now=T0 + 59)] == ["B:1", "B:2"]
    later = spool.due("sink", 10, now=T0 + 60)
    assert [label(r) for r in later] == ["A:1", "B:1", "A:2", "B:2"]
    assert (later[0].attempts, later[0].next_at) == (1, T0 + 60)


def test_due_limit_never_lets_a_later_row_overtake(spool: Spool) -> None:
    """With `limit`, a key's row left out of the batch holds back that key's later rows."""
    spool.store([new_row("A", 1), new_row("B", 1), new_row("A", 2), new_row("C", 1)], [], now=T0)
    assert [label(r) for r in spool.due("sink", 2, now=T0)] == ["A:1", "B:1"]
    assert [label(r) for r in spool.due("sink", 1, now=T0)] == ["A:1"]

    # A:1 waits for its retry: B:1 and C:1 fill the batch, A:2 is not among them
    a1 = spool.due("sink", 1, now=T0)[0]
    spool.retry([a1.id], T0 + 60, "down")
    assert [label(r) for r in spool.due("sink", 2, now=T0)] == ["B:1", "C:1"]
    assert [label(r) for r in spool.due("sink", 1, now=T0)] == ["B:1"]


def test_draining_in_small_batches_keeps_every_key_in_order(spool: Spool) -> None:
    """Draining with a small `limit` delivers each key's rows in the order they were stored."""
    keys = ["A", "B", "A", "C", "B", "A", "C", "A", "B"]
    seq: dict[str, int] = {}
    rows = []
    for key in keys:
        seq[key] = seq.get(key, 0) + 1
        rows.append(new_row(key, seq[key]))
    spool.store(rows, [])

    delivered: list[str] = []
    for _ in range(20):
        batch = spool.due("sink", 2)
        if not batch:
            break
        delivered += [label(r) for r in batch]
        spool.done([r.id for r in batch])

    assert len(delivered) == len(keys)
    for key, last in seq.items():
        assert [d for d in delivered if d.startswith(f"{key}:")] == [
            f"{key}:{n}" for n in range(1, last + 1)
        ]


# de-duplication window


def test_seen_reports_only_stored_keys(spool: Spool) -> None:
    """`seen` answers which keys the window holds, including more than one query chunk."""
    many = [f"m-{i}" for i in range(1200)]
    spool.store([], ["m-1", *many[2:]])

    assert spool.seen([]) == set()
    assert spool.seen(["m-1", "m-0", "other"]) == {"m-1"}
    assert spool.seen(many) == set(many) - {"m-0"}


def test_prune_seen_drops_keys_older_than_max_age(path: Path) -> None:
    """`prune_seen` drops keys older than `dedup_max_age` and keeps younger ones."""
    spool = Spool(path, dedup_max_age=100.0)
    try:
        spool.store([], ["old"], now=T0)
        spool.store([], ["edge"], now=T0 + 900)
        spool.store([], ["young"], now=T0 + 950)

        assert spool.prune_seen(now=T0 + 1000) == 1
        assert spool.seen(["old", "edge", "young"]) == {"edge", "young"}
    finally:
        spool.close()


def test_prune_seen_keeps_only_the_newest_max_keys(path: Path) -> None:
    """Beyond `dedup_max_keys`, `prune_seen` drops the oldest keys first."""
    spool = Spool(path, dedup_max_keys=3)
    try:
        # stored in an order that differs from their ages: age, not insertion, decides
        stored_at = {"k0": T0 + 4, "k1": T0 + 0, "k2": T0 + 3, "k3": T0 + 1, "k4": T0 + 2}
        for key, at in stored_at.items():
            spool.store([], [key], now=at)

        assert spool.prune_seen(now=T0 + 10) == 2
        assert spool.seen(stored_at) == {"k0", "k2", "k4"}
    finally:
        spool.close()


def test_window_and_outbox_survive_reopening(path: Path) -> None:
    """The de-duplication keys, pending rows and dead letters are still there after reopening."""
    first = Spool(path)
    first.store([new_row("a", 1), new_row("b", 1)], ["m-1", "m-2"], [("t", b"x", "bad")])
    first.close()

    again = Spool(path)
    try:
        assert again.seen(["m-1", "m-2", "m-3"]) == {"m-1", "m-2"}
        assert again.pending == 2
        assert [label(r) for r in again.due("sink", 10)] == ["a:1", "b:1"]
        assert again.dead_count() == 1
    finally:
        again.close()


# dead letters


def test_give_up_moves_rows_to_dead_letters_and_queues_alarms(spool: Spool) -> None:
    """`give_up` dead-letters rows with reason, attempts and msgId, and queues the alarms."""
    spool.store(
        [new_row("a", 1, msgId="m-1"), new_row("b", 1, msgId="m-2"), new_row("c", 1)], [], now=T0
    )
    rows = spool.due("sink", 10, now=T0)
    spool.retry([rows[0].id], T0, "timeout")
    rows = spool.due("sink", 10, now=T0 + 1)
    version = spool.version
    alarm = NewRow(ALARMS, "", json.dumps({"topic": "t/err", "payload": {"code": 502}}))

    spool.give_up(rows[:2], "HTTP 400", [alarm], kind="event")

    letters = spool.dead_letters()
    assert [(d.target, d.kind, d.reason, d.msg_id, d.attempts) for d in letters] == [
        ("sink", "event", "HTTP 400", "m-1", 2),
        ("sink", "event", "HTTP 400", "m-2", 1),
    ]
    assert letters[0].body == rows[0].body.encode()
    assert letters[0].topic is None
    assert [label(r) for r in spool.due("sink", 10, now=T0 + 1)] == ["c:1"]
    assert [r.body for r in spool.due(ALARMS, 10)] == [alarm.body]
    assert spool.dead_count() == 2
    assert spool.targets() == {"sink": 1, ALARMS: 1}
    assert spool.version > version  # an alarm worker waiting on the spool wakes up
    assert spool.dead_letter(letters[1].id) == letters[1]
    assert spool.dead_letter(letters[1].id + 100) is None


def test_give_up_is_atomic(spool: Spool, path: Path) -> None:
    """When an alarm row cannot be inserted, no row is moved to the dead letters."""
    spool.store([new_row("a", 1), new_row("b", 1)], [])
    rows = spool.due("sink", 10)
    bad_alarm = NewRow(ALARMS, "", None)  # type: ignore[arg-type]

    with pytest.raises(SpoolError):
        spool.give_up(rows, "rejected", [new_row("", 1, ALARMS), bad_alarm], kind="event")

    assert spool.dead_count() == 0
    assert [label(r) for r in spool.due("sink", 10)] == ["a:1", "b:1"]
    assert spool.due(ALARMS, 10) == []
    assert spool.pending == 2 == count(path, "outbox")


def test_replay_moves_event_and_alarm_letters_back_but_not_payloads(spool: Spool) -> None:
    """`replay` puts event and alarm dead letters back in the outbox; raw payloads stay."""
    spool.store(
        [new_row("a", 1), new_row("b", 1), new_row("", 1, ALARMS)],
        [],
        raw_payloads=[("acme/proj_1/v1-business-model-customer", b"{oops", "not JSON")],
    )
    events = spool.due("sink", 10)
    spool.retry([events[0].id], 0, "flaky")
    events = spool.due("sink", 10)
    spool.give_up(events, "rejected", kind="event")
    spool.give_up(spool.due(ALARMS, 10), "refused", kind="alarm")
    letters = spool.dead_letters()
    assert [d.kind for d in letters] == ["payload", "event", "event", "alarm"]
    assert spool.pending == 0

    assert spool.replay([letters[2].id]) == 1
    assert [label(r) for r in spool.due("sink", 10)] == ["b:1"]
    assert spool.replay(None) == 2
    assert [d.kind for d in spool.dead_letters()] == ["payload"]
    replayed = spool.due("sink", 10)
    # each back at its place in arrival order, whatever order they were given up in
    assert [label(r) for r in replayed] == ["a:1", "b:1"]
    assert [(r.attempts, r.next_at) for r in replayed] == [(0, 0), (0, 0)]
    assert [r.okey for r in replayed] == ["a", "b"]
    assert [label(r) for r in spool.due(ALARMS, 10)] == [":1"]
    assert spool.pending == 3
    # the payload is never replayed, even by id
    assert spool.replay([letters[0].id]) == 0
    assert spool.dead_count() == 1


def test_purge_deletes_dead_letters(spool: Spool) -> None:
    """`purge` deletes the given dead letters, or all of them, and says how many."""
    spool.store([new_row("a", 1), new_row("b", 1)], [], [("t", b"x", "bad"), ("t", b"y", "bad")])
    spool.give_up(spool.due("sink", 10), "rejected", kind="event")
    ids = [d.id for d in spool.dead_letters()]
    assert len(ids) == 4

    assert spool.purge([ids[1], 9999]) == 1
    assert [d.id for d in spool.dead_letters()] == [ids[0], ids[2], ids[3]]
    assert spool.purge(None) == 3
    assert spool.dead_count() == 0
    assert spool.dead_letters() == []


def test_raw_payloads_are_truncated_to_4_kib(spool: Spool) -> None:
    """Unreadable payloads are kept as dead letters of kind 'payload', cut to 4096 bytes."""
    big = bytes(range(256)) * 20
    spool.store(
        [], [], raw_payloads=[("t/big", big, "too large"), ("t/small", b"\xff\xfe", "not UTF-8")]
    )

    big_letter, small_letter = spool.dead_letters()
    assert RAW_PAYLOAD_LIMIT == 4096
    assert big_letter.body == big[:4096]
    assert (big_letter.kind, big_letter.target, big_letter.topic) == ("payload", "", "t/big")
    assert big_letter.reason == "too large"
    assert (big_letter.msg_id, big_letter.attempts) == (None, 0)
    assert small_letter.body == b"\xff\xfe"
    assert spool.pending == 0


# opening


def test_open_fails_clearly_when_the_directory_cannot_be_created(tmp_path: Path) -> None:
    """A spool under a regular file raises SpoolError naming the path."""
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    where = blocker / "spool.db"

    with pytest.raises(SpoolError, match="cannot open the spool at") as caught:
        Spool(where)
    assert str(where) in str(caught.value)

    with pytest.raises(SpoolError, match="cannot open the spool at"):
        Spool(blocker / "deeper" / "spool.db")


def test_open_creates_missing_directories(tmp_path: Path) -> None:
    """Opening a spool creates its missing parent directories."""
    where = tmp_path / "a" / "b" / "spool.db"
    opened = Spool(where)
    opened.close()
    assert where.is_file()


# waiting


def test_wait_for_change_returns_at_once_after_rows_were_added(spool: Spool) -> None:
    """`wait_for_change` does not sleep when rows were added after `version` was read."""
    version = spool.version
    spool.store([new_row("a", 1)], [])

    started = time.monotonic()
    spool.wait_for_change(version, 5.0)
    assert time.monotonic() - started < 1.0


def test_wait_for_change_waits_for_the_timeout_when_nothing_changes(spool: Spool) -> None:
    """`wait_for_change` sleeps about `timeout` when no row is added (seen keys do not count)."""
    version = spool.version
    spool.store([], ["m-1"])

    started = time.monotonic()
    spool.wait_for_change(version, 0.2)
    assert 0.15 <= time.monotonic() - started < 2.0


def test_wait_for_change_wakes_when_another_thread_adds_rows(spool: Spool) -> None:
    """A waiter wakes as soon as another thread stores rows, well before its timeout."""
    version = spool.version
    timer = threading.Timer(0.1, lambda: spool.store([new_row("a", 1)], []))
    timer.start()
    try:
        started = time.monotonic()
        spool.wait_for_change(version, 5.0)
        assert time.monotonic() - started < 2.0
    finally:
        timer.join()
    assert spool.version != version


def test_a_target_waiter_sleeps_through_rows_for_other_targets(spool: Spool) -> None:
    """A worker waiting on its target is not woken by rows stored for another target."""
    version = spool.version_of("sink")
    timer = threading.Timer(0.05, lambda: spool.store([new_row("a", 1, target=ALARMS)], []))
    timer.start()
    try:
        started = time.monotonic()
        spool.wait_for_change(version, 0.4, "sink")
        assert time.monotonic() - started >= 0.35
    finally:
        timer.join()
    assert spool.version_of("sink") == version


def test_a_target_waiter_wakes_for_its_rows_and_for_poke(spool: Spool) -> None:
    """Rows for the target wake its waiter at once; so does `poke` (a stop request)."""
    for wake in (lambda: spool.store([new_row("a", 1)], []), spool.poke):
        version = spool.version_of("sink")
        timer = threading.Timer(0.05, wake)
        timer.start()
        try:
            started = time.monotonic()
            spool.wait_for_change(version, 5.0, "sink")
            assert time.monotonic() - started < 2.0
        finally:
            timer.join()


def test_has_pending_sees_rows_of_its_target_only(spool: Spool) -> None:
    """`has_pending` is true while a row of the target waits, whatever other targets hold."""
    spool.store([new_row("a", 1, target="other")], [])
    assert not spool.has_pending("sink")
    spool.store([new_row("a", 1)], [])
    assert spool.has_pending("sink")
    spool.done([row.id for row in spool.due("sink", 10)])
    assert not spool.has_pending("sink")


def test_intake_commits_at_the_configured_level_worker_commits_at_normal(path: Path) -> None:
    """`store` (which precedes acks) runs at FULL; a worker's `done` drops to NORMAL."""
    full = Spool(path, synchronous="FULL")
    try:

        def level() -> int:
            return int(full._db.execute("PRAGMA synchronous").fetchone()[0])

        full.store([new_row("a", 1)], ["m-1"])
        assert level() == 2  # FULL
        full.done([row.id for row in full.due("sink", 10)])
        assert level() == 1  # NORMAL
        full.store([new_row("a", 2)], ["m-2"])
        assert level() == 2
    finally:
        full.close()


# sizes


def test_oldest_age_targets_and_dead_count(spool: Spool) -> None:
    """`oldest_age`, `targets` and `dead_count` describe what waits in the spool."""
    assert spool.oldest_age(now=T0) == 0.0
    assert spool.targets() == {}
    assert spool.dead_count() == 0

    spool.store([new_row("a", 1, "one")], [], now=T0)
    spool.store([new_row("a", 2, "one"), new_row("a", 1, "two")], [], now=T0 + 50)

    assert spool.oldest_age(now=T0 + 100) == 100.0
    assert spool.oldest_age(now=T0 - 10) == 0.0  # never negative
    assert spool.targets() == {"one": 2, "two": 1}
    oldest = spool.due("one", 1)
    spool.give_up(oldest, "rejected", kind="event")
    assert spool.oldest_age(now=T0 + 100) == 50.0
    assert spool.targets() == {"one": 1, "two": 1}
    assert spool.dead_count() == 1


def test_next_due_is_the_earliest_retry_time(spool: Spool) -> None:
    """`next_due` is None for an empty target and the retry time of a waiting row."""
    assert spool.next_due("sink") is None
    spool.store([new_row("a", 1), new_row("b", 1)], [])
    rows = spool.due("sink", 10)
    spool.retry([rows[0].id], T0 + 60, "down")
    spool.retry([rows[1].id], T0 + 30, "down")

    assert spool.next_due("sink") == T0 + 30


def test_next_due_ignores_rows_blocked_behind_a_retry(spool: Spool) -> None:
    """`next_due` is the retry time of the row holding its key back, not 0 for a blocked row."""
    spool.store([new_row("a", 1), new_row("a", 2)], [])
    first = spool.due("sink", 10)[0]
    retry_at = time.time() + 60
    spool.retry([first.id], retry_at, "down")
    assert spool.due("sink", 10) == []

    assert spool.next_due("sink") == retry_at
