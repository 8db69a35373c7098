"""SPEC 6 (order across a give-up): dead letters keep their place; holding; old spools drain."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.spool import ALARMS, NewRow, Row, Spool

# The schema of spools written before dead letters had a place in arrival order: a spool
# a running bridge left behind must still drain after an upgrade.
SCHEMA_BEFORE_ORDER = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    okey TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX outbox_by_target ON outbox (target, id);
CREATE TABLE seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX seen_by_age ON seen (at);
CREATE TABLE dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    okey TEXT NOT NULL DEFAULT '',
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    topic TEXT,
    msg_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""


def new_row(okey: str, n: int, target: str = "sink") -> NewRow:
    """An outbox row whose body says which key and sequence number it carries."""
    return NewRow(target, okey, json.dumps({"key": okey, "n": n}))


def label(row: Row) -> str:
    """A row as `key:n`."""
    body = row.decoded()
    return f"{body['key']}:{body['n']}"


def every(spool: Spool, target: str = "sink", *, hold: bool = False) -> list[str]:
    """The labels of every row of `target` that `due` offers now, oldest first."""
    return [label(r) for r in spool.due(target, 1000, hold=hold)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A fresh spool in tmp_path, closed afterwards."""
    opened = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


def test_a_spool_from_before_the_migration_opens_and_drains(tmp_path: Path) -> None:
    """A spool with the old dead-letter table gains its columns; its rows drain and its
    old dead letters list and replay (at the end, having no recorded place)."""
    path = tmp_path / "spool.db"
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        db.executescript(SCHEMA_BEFORE_ORDER)
        db.execute(
            "INSERT INTO outbox (target, okey, body, created) VALUES ('sink', 'a', ?, 1.0)",
            (json.dumps({"key": "a", "n": 2}),),
        )
        db.execute(
            "INSERT INTO dead (target, kind, okey, body, reason, created)"
            " VALUES ('sink', 'event', 'a', ?, 'HTTP 400', 1.0)",
            (json.dumps({"key": "a", "n": 1}).encode(),),
        )
        db.commit()

    spool = Spool(path, synchronous="NORMAL")
    try:
        (letter,) = spool.dead_letters()
        assert (letter.okey, letter.seq, letter.overtaken_at) == ("a", None, None)
        rows = spool.due("sink", 10, hold=False)
        assert [label(r) for r in rows] == ["a:2"]
        spool.done([r.id for r in rows])
        assert spool.pending == 0
        assert spool.replay_in_order(None).replayed == 1
        assert every(spool) == ["a:1"]
    finally:
        spool.close()
    # opening it again finds the columns in place
    Spool(path, synchronous="NORMAL").close()
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(dead)")]
    assert columns.count("seq") == 1
    assert columns.count("overtaken_at") == 1


def test_hold_blocks_only_customers_with_an_event_dead_letter_at_that_sink(spool: Spool) -> None:
    """`due(hold=True)` leaves out a customer dead-lettered at this sink; other customers,
    other sinks and alarm dead letters hold nothing."""
    spool.store([new_row("a", 1), new_row("b", 1), new_row("a", 1, "other")], [])
    (first,) = [r for r in spool.due("sink", 10) if r.okey == "a"]
    spool.give_up([first], "HTTP 400", kind="event")
    spool.store([new_row("a", 2), NewRow(ALARMS, "", json.dumps({"key": "", "n": 0}))], [])
    (alarm,) = spool.due(ALARMS, 10)
    spool.give_up([alarm], "refused", kind="alarm")

    assert every(spool, hold=True) == ["b:1"]
    assert every(spool, hold=False) == ["b:1", "a:2"]
    assert every(spool, "other", hold=True) == ["a:1"]
    assert spool.has_dead("sink") is True
    assert spool.has_dead("other") is False


def test_a_delivered_later_event_marks_the_dead_letter_it_overtakes(spool: Spool) -> None:
    """Delivering a later row of the same customer at the same sink marks its dead letter;
    an earlier row, another customer or another sink does not."""
    spool.store([new_row("a", 1), new_row("a", 1, "other"), new_row("b", 1)], [])
    first = spool.due("sink", 10)[0]
    spool.give_up([first], "HTTP 400", kind="event")
    spool.done([r.id for r in spool.due("other", 10)])
    spool.done([r.id for r in spool.due("sink", 10)])  # b:1
    assert spool.dead_letters()[0].overtaken_at is None

    spool.store([new_row("a", 2)], [])
    spool.done([r.id for r in spool.due("sink", 10)])

    (letter,) = spool.dead_letters()
    assert letter.overtaken_at is not None
    assert letter.seq == first.id


def test_replay_puts_a_letter_back_at_its_place_before_the_held_events(spool: Spool) -> None:
    """A replayed letter takes its old outbox id again, so it goes before the customer's
    later events that waited behind it; replay reports nothing overtaken."""
    spool.store([new_row("a", 1), new_row("b", 1), new_row("a", 2)], [])
    first = spool.due("sink", 1)[0]
    spool.give_up([first], "HTTP 400", kind="event")
    spool.store([new_row("a", 3)], [])

    done = spool.replay_in_order(None)

    assert (done.replayed, done.overtaken, done.dropped) == (1, [], 0)
    assert every(spool) == ["a:1", "b:1", "a:2", "a:3"]
    assert spool.due("sink", 1)[0].id == first.id
    assert spool.pending == 4


def test_replay_reports_overtaken_letters_in_arrival_order(spool: Spool) -> None:
    """Letters come back in arrival order whatever order they were given up in; those a
    later event overtook are reported (and kept, without `skip_overtaken`)."""
    spool.store([new_row("a", 1), new_row("b", 1), new_row("c", 1)], [])
    a, b, c = spool.due("sink", 10)
    spool.give_up([c], "HTTP 400", kind="event")
    spool.give_up([a], "HTTP 400", kind="event")
    spool.done([b.id])
    spool.store([new_row("c", 2)], [])
    spool.done([r.id for r in spool.due("sink", 10)])  # c:2 overtakes c:1
    overtaken = [d.id for d in spool.dead_letters() if d.okey == "c"]

    done = spool.replay_in_order(None)

    assert (done.replayed, done.overtaken) == (2, overtaken)
    assert every(spool) == ["a:1", "c:1"]


def test_hasten_makes_waiting_retries_due_now(spool: Spool) -> None:
    """`hasten` clears the retry time of the rows of one sink only."""
    spool.store([new_row("a", 1), new_row("a", 1, "other")], [])
    for target in ("sink", "other"):
        spool.retry([r.id for r in spool.due(target, 10)], 9e12, "HTTP 503")
    assert every(spool) == []

    assert spool.hasten("sink") == 1

    assert every(spool) == ["a:1"]
    assert every(spool, "other") == []
