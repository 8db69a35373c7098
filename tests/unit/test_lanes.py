"""Delivery lanes: customers split over a sink's lanes by key, each lane claiming its own rows in
order, retries and holds kept per customer, and the claim query on the outbox index."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import structlog

from bridge.config import DeliveryConfig, parse
from bridge.delivery import Lanes, Target, Worker, lane_thread
from bridge.errors import ConfigError, SinkError
from bridge.sinks import Refused, Route
from bridge.sinks.jsonl import JsonlSink
from bridge.spool import _BY_ID, _DUE_PAGE, _IN_LANE, _NEXT_RETRY, WHOLE, Lane, NewRow, Row, Spool
from bridge.spool import lane_of as spool_lane_of

SINK = "crm"
LOG = structlog.get_logger()
CUSTOMERS = [f"acme\x1f42\x1fc-{n:03}" for n in range(40)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A fresh spool file in tmp_path, closed afterwards."""
    opened = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


def put(spool: Spool, *items: tuple[str, int]) -> None:
    """Store rows for SINK: (ordering key, place in that customer's stream)."""
    spool.store([NewRow(SINK, key, json.dumps({"c": key, "n": n})) for key, n in items], [])


def label(row: Row) -> tuple[str, int]:
    """A row as (customer key, place)."""
    body = row.decoded()
    return body["c"], body["n"]


def interleaved(per_customer: int, customers: Sequence[str] = CUSTOMERS) -> list[tuple[str, int]]:
    """Every customer's events 1..n, interleaved the way the intake stores a busy stream."""
    return [(key, n) for n in range(1, per_customer + 1) for key in customers]


class Recorder:
    """A sender that records each batch it is given and raises the failures it is told to."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.fail: dict[str, BaseException] = {}
        """While set, a batch holding this customer raises the exception."""
        self._lock = threading.Lock()

    def __call__(self, rows: Sequence[Row]) -> Refused | None:
        labels = [label(r) for r in rows]
        with self._lock:
            self.batches.append(labels)
        for key, failure in self.fail.items():
            if any(k == key for k, _ in labels):
                raise failure
        return None

    def taken(self) -> list[tuple[str, int]]:
        """Everything handed over, in the order the batches came."""
        return [item for batch in self.batches for item in batch]


def lanes_of(
    spool: Spool, send: Recorder, count: int, *, hold: bool = False, batch_size: int = 10
) -> Lanes:
    """A sink's lanes over `spool`, driven by `step()`."""

    def make(lane: Lane, stopping: threading.Event, retrying: threading.Event) -> Worker:
        return Worker(
            SINK, send, spool, DeliveryConfig(initial_backoff=30.0, max_backoff=60.0),
            stopping, LOG, batch_size=batch_size, gave_up=lambda _rows, _reason: [],
            kind="event", rand=lambda: 1.0, hold=hold, lane=lane, retrying=retrying,
        )  # fmt: skip

    return Lanes(SINK, make, count)


# lane assignment


def test_a_customer_always_has_the_same_lane() -> None:
    """The lane is a CRC-32 of the key: pinned, so it is the same in every process and run."""
    assert spool_lane_of("acme\x1f42\x1fc-001", 4) == spool_lane_of("acme\x1f42\x1fc-001", 4)
    # 0xCBF43926, the CRC-32 check value of "123456789", is 3421780262 = 7 * 488825751 + 5.
    assert spool_lane_of("123456789", 7) == 5
    assert spool_lane_of("123456789", 64) == 0x26 % 64
    assert {spool_lane_of(key, 1) for key in CUSTOMERS} == {0}


def test_customers_spread_over_the_lanes() -> None:
    """A thousand customers over four lanes: each lane gets a fair share, none is left empty."""
    keys = [f"acme\x1f42\x1f{n}" for n in range(1000)]
    shares = Counter(spool_lane_of(key, 4) for key in keys)
    assert sorted(shares) == [0, 1, 2, 3]
    assert all(200 <= count <= 300 for count in shares.values()), shares


def test_a_lane_is_one_of_its_count() -> None:
    """A lane index outside 0..count-1 is a bug, refused where it is made."""
    with pytest.raises(ValueError, match="not one of"):
        Lane(4, 4)
    assert Lane(3, 4).owns(next(k for k in CUSTOMERS if spool_lane_of(k, 4) == 3))


# per-lane claim


def test_each_lane_claims_only_its_customers_in_arrival_order(spool: Spool) -> None:
    """The lanes' claims split the due rows without overlap or gap, each in id order."""
    put(spool, *interleaved(5))
    whole = spool.due(SINK, 1000)
    claims = [spool.due(SINK, 1000, lane=Lane(i, 4)) for i in range(4)]
    assert sorted(r.id for claim in claims for r in claim) == [r.id for r in whole]
    for index, claim in enumerate(claims):
        assert claim, f"lane {index} got nothing"
        assert all(Lane(index, 4).owns(r.okey) for r in claim)
        assert [r.id for r in claim] == sorted(r.id for r in claim)


def test_a_retry_blocks_only_its_customer_in_its_lane(spool: Spool) -> None:
    """A customer waiting for a retry holds back its own later rows; its lane's other customers
    and every other lane go on."""
    put(spool, *interleaved(3))
    waiting = CUSTOMERS[0]
    lane = Lane(spool_lane_of(waiting, 4), 4)
    first = next(r for r in spool.due(SINK, 1000, lane=lane) if r.okey == waiting)
    spool.retry([first.id], time.time() + 60, "503")
    mine = spool.due(SINK, 1000, lane=lane)
    assert waiting not in {r.okey for r in mine}
    assert mine, "the lane's other customers are due"
    others = [spool.due(SINK, 1000, lane=Lane(i, 4)) for i in range(4) if i != lane.index]
    assert sum(len(claim) for claim in others) == sum(
        1 for key, _ in interleaved(3) if spool_lane_of(key, 4) != lane.index
    )
    assert spool.next_due(SINK, lane) == pytest.approx(time.time() + 60, abs=5)
    assert all(spool.next_due(SINK, Lane(i, 4)) is None for i in range(4) if i != lane.index)


def test_a_held_customer_is_held_in_its_lane_only(spool: Spool) -> None:
    """With holding, a dead letter holds its customer's later rows; nothing else in any lane."""
    put(spool, *interleaved(2))
    held = CUSTOMERS[1]
    lane = Lane(spool_lane_of(held, 4), 4)
    first = next(r for r in spool.due(SINK, 1000, lane=lane) if r.okey == held)
    spool.give_up([first], "400", kind="event")
    claimed = [r for i in range(4) for r in spool.due(SINK, 1000, hold=True, lane=Lane(i, 4))]
    assert held not in {r.okey for r in claimed}
    assert len(claimed) == len(interleaved(2)) - 2


def test_the_claim_with_a_lane_walks_the_outbox_index(spool: Spool) -> None:
    """EXPLAIN QUERY PLAN of the lane claim and of the lane's next retry: a search of the
    (target, id) index, never a scan of the outbox."""
    db = sqlite3.connect(spool.path)
    db.create_function("lane_of", 2, spool_lane_of, deterministic=True)
    try:
        plans = [
            db.execute(f"EXPLAIN QUERY PLAN {query}", args).fetchall()
            for query, args in (
                (_DUE_PAGE + _IN_LANE + _BY_ID, (SINK, 0, 4, 1, 200)),
                (_NEXT_RETRY + _IN_LANE, (SINK, 4, 1)),
            )
        ]
    finally:
        db.close()
    for plan in plans:
        details = " ".join(str(step[3]) for step in plan)
        assert "USING INDEX outbox_by_target" in details, details
        assert "SCAN" not in details, details


# lanes of a worker


def test_each_batch_holds_one_lanes_customers_and_order_holds(spool: Spool) -> None:
    """Four lanes drain the spool: every batch carries customers of a single lane, and each
    customer's events come in their order, each once."""
    put(spool, *interleaved(6))
    send = Recorder()
    lanes = lanes_of(spool, send, 4)
    while lanes.step():
        pass
    for batch in send.batches:
        assert len({spool_lane_of(key, 4) for key, _ in batch}) == 1, batch
    for key in CUSTOMERS:
        assert [n for k, n in send.taken() if k == key] == [1, 2, 3, 4, 5, 6]
    assert lanes.delivered == len(interleaved(6))
    assert spool.pending == 0


def test_a_retry_in_one_lane_is_hastened_by_a_delivery_in_another(spool: Spool) -> None:
    """A lane's transient failure waits for its retry; once any lane of the sink delivers, the
    sink answers again and the retry falls due at once, in order."""
    failing = CUSTOMERS[0]
    own = spool_lane_of(failing, 4)
    other = next(k for k in CUSTOMERS if spool_lane_of(k, 4) != own)
    put(spool, (failing, 1), (failing, 2))
    send = Recorder()
    send.fail[failing] = SinkError("503", permanent=False)
    lanes = lanes_of(spool, send, 4)
    assert lanes.step()
    assert lanes.retries == 1
    assert not lanes.step(), "the retry waits its backoff"
    send.fail.clear()
    put(spool, (other, 1))
    assert lanes.step()  # the other lane delivers: the retry is hastened
    assert lanes.step()
    assert [n for k, n in send.taken() if k == failing] == [1, 2, 1, 2]
    assert spool.pending == 0


def test_lanes_name_their_threads_for_the_watchdog(spool: Spool) -> None:
    """Lane 0 keeps the one-lane thread name, so a sink without lanes is watched as before."""
    lanes = lanes_of(spool, Recorder(), 3)
    assert lanes.thread_names == ["deliver-crm", "deliver-crm/1", "deliver-crm/2"]
    assert lane_thread("crm", WHOLE) == "deliver-crm"


# configuration


def test_lanes_default_to_one_and_a_webhook_takes_more() -> None:
    """`lanes` is 1 unless set, a webhook's too; a webhook takes any count up to 64."""
    config = parse(
        {
            "sinks": [
                {"type": "jsonl", "path": "/tmp/x.jsonl"},
                {"type": "webhook", "url": "http://127.0.0.1:9/h"},
                {"type": "webhook", "name": "one", "url": "http://127.0.0.1:9/h", "lanes": 1},
                {"type": "webhook", "name": "many", "url": "http://127.0.0.1:9/h", "lanes": 8},
            ]
        }
    )
    assert [sink.lanes for sink in config.sinks] == [1, 1, 1, 8]


@pytest.mark.parametrize("kind", ["jsonl", "log"])
def test_a_sink_that_takes_one_batch_at_a_time_refuses_lanes(kind: str) -> None:
    """Lanes on a local sink (handed events directly, one file) are a config error."""
    entry: dict[str, object] = {"type": kind, "lanes": 2}
    if kind == "jsonl":
        entry["path"] = "/tmp/x.jsonl"
    with pytest.raises(ConfigError, match="one batch at a time"):
        parse({"sinks": [entry]})


def test_a_direct_target_cannot_have_lanes(tmp_path: Path) -> None:
    """Built past the config, a direct sink with lanes is refused: the intake's hand-over
    would not see the rows waiting in the other lanes."""
    sink = JsonlSink("out", tmp_path / "out.jsonl")
    try:
        assert Target(sink, Route()).direct
        with pytest.raises(ValueError, match="one lane only"):
            Target(sink, Route(), lanes=2)
    finally:
        sink.close()
