"""SPEC 6: delivery workers draining the spool: retries, backoff, dead letters, 502 alarms."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from factories import (
    CUSTOM_ERROR_TOPIC,
    NOW_MS,
    PROFILE,
    PROJECT,
    STANDARD_ERROR_TOPIC,
    TENANT,
    VENDOR,
    customer,
    expected_id,
    sequential_ids,
)

from bridge.config import DeliveryConfig
from bridge.core import alarms
from bridge.core.alarms import CODE_SINK_GAVE_UP
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.delivery import (
    Worker,
    alarm_row,
    alarm_sender,
    backoff,
    event_row,
    give_up_alarms,
    sink_sender,
)
from bridge.errors import BrokerError, PublishRefused, SinkError
from bridge.sinks import Partial, Refused, SendResult
from bridge.sinks.base import one_by_one
from bridge.sinks.python import PythonSink
from bridge.sinks.republish import RepublishSink
from bridge.spool import ALARMS, NewRow, Row, Spool

SINK = "crm"
LOG = structlog.get_logger()


def event(
    customer_id: str = "c-1",
    n: int = 1,
    *,
    op: Op = Op.ADD,
    msg_id: str | None = "m-1",
    custom: bool = False,
    tenant: str = TENANT,
) -> DownstreamEvent:
    """A downstream event of one customer; `n` marks its place in that customer's stream."""
    return DownstreamEvent(
        op=op,
        kind=TopicKind.CUSTOMIZATION if custom else TopicKind.STANDARD,
        tenant=tenant,
        project_id=PROJECT,
        version="v2" if custom else None,
        vendor=VENDOR if custom else None,
        msg_id=msg_id,
        report_ts=1661154622,
        event_ts=1661154622000 + n,
        customer=customer(id=customer_id, remark=f"n={n}"),
    )


def label(item: DownstreamEvent | Row) -> str:
    """An event (or the row carrying one) as `customer:n`."""
    ev = item if isinstance(item, DownstreamEvent) else DownstreamEvent.from_dict(item.decoded())
    return f"{ev.customer_id}:{ev.customer['remark'].removeprefix('n=')}"


class FakeSender:
    """A sink sender that records each batch, then raises the next queued failure, or
    returns it when it is a `Partial`, if any."""

    def __init__(self, *failures: BaseException | Partial | None) -> None:
        self.batches: list[list[str]] = []
        self.failures = list(failures)

    def __call__(self, rows: Sequence[Row]) -> SendResult:
        self.batches.append([label(r) for r in rows])
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Partial):
                return failure
            if failure is not None:
                raise failure
        return None


class RefusingSender:
    """A sink that refuses, for good, any batch holding a record it cannot take (as a
    webhook answering 400 for the whole request does), and takes every other batch."""

    def __init__(self, *bad: str) -> None:
        self.bad = set(bad)
        self.batches: list[list[str]] = []
        self.taken: list[str] = []

    def __call__(self, rows: Sequence[Row]) -> Refused | None:
        labels = [label(r) for r in rows]
        self.batches.append(labels)
        if any(item in self.bad or item.split(":")[0] in self.bad for item in labels):
            raise SinkError("HTTP 400: bad phone", permanent=True)
        self.taken.extend(labels)
        return None


class GaveUp:
    """A `gave_up` callback that records its calls and builds the real 502 alarms."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self._build = functools.partial(
            give_up_alarms, SINK, now_ms=NOW_MS, new_id=sequential_ids()
        )

    def __call__(self, rows: Sequence[Row], reason: str) -> list[NewRow]:
        self.calls.append(([label(r) for r in rows], reason))
        return self._build(rows, reason)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A fresh spool file in tmp_path, closed afterwards."""
    opened = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


def worker(
    spool: Spool,
    send: Callable[[Sequence[Row]], SendResult],
    config: DeliveryConfig | None = None,
    *,
    name: str = SINK,
    batch_size: int = 10,
    gave_up: Callable[[Sequence[Row], str], list[NewRow]] | None = None,
    kind: str = "event",
    rand: Callable[[], float] = lambda: 1.0,
    stopping: threading.Event | None = None,
    hold: bool = False,
) -> Worker:
    """A worker over `spool`, driven by `step()` unless the test starts its thread."""
    return Worker(
        name,
        send,
        spool,
        config or DeliveryConfig(initial_backoff=10.0, max_backoff=60.0),
        stopping or threading.Event(),
        LOG,
        batch_size=batch_size,
        gave_up=gave_up or (lambda _rows, _reason: []),
        kind=kind,
        rand=rand,
        hold=hold,
    )


def put(spool: Spool, *events: DownstreamEvent, now: float | None = None) -> None:
    """Store events for SINK, as the intake does."""
    spool.store([event_row(SINK, e) for e in events], [], now=now)


def all_rows(spool: Spool, target: str = SINK) -> list[Row]:
    """Every row of `target`, retrying or not (as if the clock were far ahead)."""
    return spool.due(target, 1000, now=time.time() + 10 * 24 * 3600)


def as_row(ev: DownstreamEvent, row_id: int = 1) -> Row:
    """The outbox row that would carry `ev` to SINK."""
    new = event_row(SINK, ev)
    return Row(row_id, new.target, new.okey, new.body, 0.0, 0, 0.0)


def an_alarm_row() -> NewRow:
    """A queued 502 alarm, as a sink's give-up would produce it."""
    (alarm,) = give_up_alarms(SINK, [as_row(event())], "x", now_ms=NOW_MS, new_id=sequential_ids())
    return alarm


def last_errors(spool: Spool) -> list[str | None]:
    """The `last_error` column of the outbox, read from the file."""
    with contextlib.closing(sqlite3.connect(str(spool.path))) as db:
        return [e for (e,) in db.execute("SELECT last_error FROM outbox ORDER BY id")]


# backoff


@pytest.mark.parametrize("attempt", range(1, 15))
@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_backoff_stays_within_full_jitter_bounds(attempt: int, draw: float) -> None:
    """backoff(n) lies in [0, min(max_backoff, initial * 2**(n-1))], scaled by the draw."""
    config = DeliveryConfig(initial_backoff=0.5, max_backoff=30.0)
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))

    delay = backoff(attempt, config, lambda: draw)

    assert 0.0 <= delay <= ceiling
    assert delay == pytest.approx(ceiling * draw)


def test_backoff_grows_then_is_capped() -> None:
    """The ceiling doubles per attempt from `initial_backoff` and stops at `max_backoff`."""
    config = DeliveryConfig(initial_backoff=0.5, max_backoff=30.0)
    ceilings = [backoff(n, config, lambda: 1.0) for n in range(1, 10)]

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff(200, config, lambda: 1.0) == 30.0


def test_backoff_is_capped_for_any_attempt_count() -> None:
    """A very high attempt number still gives at most `max_backoff`, never an error."""
    config = DeliveryConfig(initial_backoff=0.5, max_backoff=30.0)

    assert backoff(5000, config, lambda: 1.0) == 30.0


def test_worker_keeps_retrying_after_a_thousand_attempts(spool: Spool) -> None:
    """A row that failed 1100 times is rescheduled like any other transient failure."""
    put(spool, event("A", 1))
    row = all_rows(spool)[0]
    spool.retry([row.id] * 1100, 0.0, "down")  # one increment per id listed

    assert worker(spool, FakeSender(RuntimeError("down"))).step()

    (again,) = all_rows(spool)
    assert again.attempts == 1101
    assert again.next_at > time.time()


# Worker.step


def test_step_reports_when_nothing_is_due(spool: Spool) -> None:
    """step() is False, and sends nothing, when the target has no due row."""
    send = FakeSender()

    assert worker(spool, send).step() is False
    assert send.batches == []


def test_success_deletes_the_rows(spool: Spool) -> None:
    """A batch the sender takes is deleted from the outbox, in stored order."""
    put(spool, event("A", 1), event("B", 1), event("A", 2))
    send = FakeSender()
    w = worker(spool, send)

    assert w.step() is True

    assert send.batches == [["A:1", "B:1", "A:2"]]
    assert spool.pending == 0
    assert all_rows(spool) == []
    assert w.delivered == 3
    assert w.step() is False


def test_batch_size_limits_each_send(spool: Spool) -> None:
    """Each step sends at most `batch_size` rows."""
    put(spool, *(event(f"c{i}") for i in range(5)))
    send = FakeSender()
    w = worker(spool, send, batch_size=2)

    while w.step():
        pass

    assert [len(b) for b in send.batches] == [2, 2, 1]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (RuntimeError("secret 13800138000"), "RuntimeError in sink"),
        (SinkError("HTTP 503"), "HTTP 503"),
        (SinkError("HTTP 429", permanent=False), "HTTP 429"),
        (BrokerError("not connected"), "not connected"),
    ],
)
def test_transient_failure_schedules_a_retry(spool: Spool, failure: Exception, reason: str) -> None:
    """A transient failure keeps the rows, counts the attempt and sets a future retry time."""
    put(spool, event("A", 1), event("B", 1))
    gave_up = GaveUp()
    w = worker(spool, FakeSender(failure), gave_up=gave_up)
    before = time.time()

    assert w.step() is True

    rows = all_rows(spool)
    assert [label(r) for r in rows] == ["A:1", "B:1"]
    assert [r.attempts for r in rows] == [1, 1]
    # initial_backoff 10 s and a draw of 1.0: retry number 1 waits 10 s
    assert all(before + 10.0 <= r.next_at <= time.time() + 10.0 for r in rows)
    assert last_errors(spool) == [reason, reason]
    assert spool.due(SINK, 10) == []
    assert w.step() is False
    assert spool.dead_count() == 0
    assert gave_up.calls == []
    assert (w.retries, w.dead, w.delivered) == (1, 0, 0)


@pytest.mark.parametrize(
    "failure",
    [SinkError("HTTP 400: bad phone", permanent=True), PublishRefused("HTTP 400: bad phone")],
)
def test_permanent_failure_dead_letters_rows_and_queues_alarms(
    spool: Spool, failure: Exception
) -> None:
    """A sink refusing every record for good: each is tried alone, then all are dead letters."""
    put(spool, event("A", 1), event("B", 1))
    gave_up = GaveUp()
    send = FakeSender(failure, failure, failure)
    w = worker(spool, send, gave_up=gave_up)

    assert w.step() is True

    assert send.batches == [["A:1", "B:1"], ["A:1"], ["B:1"]]
    assert all_rows(spool) == []
    letters = spool.dead_letters()
    assert [(d.target, d.kind, d.reason, d.attempts, d.msg_id) for d in letters] == [
        (SINK, "event", "HTTP 400: bad phone", 1, "m-1"),
        (SINK, "event", "HTTP 400: bad phone", 1, "m-1"),
    ]
    assert [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in letters] == [
        "A:1",
        "B:1",
    ]
    # each refused alone, each given up (and alarmed) on its own
    assert gave_up.calls == [(["A:1"], "HTTP 400: bad phone"), (["B:1"], "HTTP 400: bad phone")]
    queued = [r.decoded() for r in spool.due(ALARMS, 10)]
    assert len(queued) == 2
    for alarm in queued:
        assert alarm["topic"] == STANDARD_ERROR_TOPIC
        assert alarm["payload"]["events"]["add_error"]["code"] == CODE_SINK_GAVE_UP
    assert (w.dead, w.retries, w.delivered) == (2, 0, 0)


def test_max_attempts_exhaustion_dead_letters(spool: Spool) -> None:
    """After `max_attempts` failed tries the rows go to the dead letters with their alarm."""
    put(spool, event("A", 1))
    config = DeliveryConfig(max_attempts=3, initial_backoff=1.0)
    gave_up = GaveUp()
    send = FakeSender(*[SinkError("HTTP 503")] * 5)
    w = worker(spool, send, config, gave_up=gave_up, rand=lambda: 0.0)  # retry at once

    assert w.step() and w.step()
    assert [r.attempts for r in all_rows(spool)] == [2]
    assert spool.dead_count() == 0
    assert w.step()

    assert len(send.batches) == 3
    assert all_rows(spool) == []
    (letter,) = spool.dead_letters()
    assert (letter.reason, letter.attempts) == ("HTTP 503", 3)
    assert len(gave_up.calls) == 1
    assert len(spool.due(ALARMS, 10)) == 1
    assert w.step() is False


def test_max_age_exhaustion_dead_letters(spool: Spool) -> None:
    """A transient failure of rows older than `max_age` sends them to the dead letters."""
    put(spool, event("A", 1), event("B", 1), now=time.time() - 120)
    gave_up = GaveUp()
    w = worker(
        spool, FakeSender(BrokerError("down")), DeliveryConfig(max_age=60.0), gave_up=gave_up
    )

    assert w.step()

    assert all_rows(spool) == []
    assert [(d.reason, d.attempts) for d in spool.dead_letters()] == [("down", 1), ("down", 1)]
    assert gave_up.calls == [(["A:1", "B:1"], "down")]
    assert len(spool.due(ALARMS, 10)) == 1


def test_max_age_is_judged_per_row(spool: Spool) -> None:
    """Only the row older than `max_age` is dead-lettered; a young row of its batch is retried."""
    put(spool, event("A", 1), now=time.time() - 120)
    put(spool, event("B", 1))
    gave_up = GaveUp()
    w = worker(
        spool, FakeSender(BrokerError("down")), DeliveryConfig(max_age=60.0), gave_up=gave_up
    )

    assert w.step()

    assert [(label(r), r.attempts) for r in all_rows(spool)] == [("B:1", 1)]
    assert [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in spool.dead_letters()] == [
        "A:1"
    ]
    assert gave_up.calls == [(["A:1"], "down")]


def test_max_attempts_is_judged_per_row(spool: Spool) -> None:
    """Only the row that used up `max_attempts` is dead-lettered; a first try is retried."""
    put(spool, event("A", 1))
    config = DeliveryConfig(max_attempts=3)
    w = worker(spool, FakeSender(*[SinkError("HTTP 503")] * 3), config, rand=lambda: 0.0)
    assert w.step() and w.step()  # A:1 has failed twice
    put(spool, event("B", 1))

    assert w.step()  # A:1's third try, B:1's first, in one batch

    assert [(label(r), r.attempts) for r in all_rows(spool)] == [("B:1", 1)]
    assert [(d.attempts, d.reason) for d in spool.dead_letters()] == [(3, "HTTP 503")]


def test_young_rows_are_retried_within_max_age(spool: Spool) -> None:
    """Rows younger than `max_age` and under `max_attempts` are retried, not dead-lettered."""
    put(spool, event("A", 1), now=time.time() - 30)
    w = worker(spool, FakeSender(BrokerError("down")), DeliveryConfig(max_age=60.0))

    assert w.step()

    assert [r.attempts for r in all_rows(spool)] == [1]
    assert spool.dead_count() == 0


def test_one_customer_waits_behind_its_retry_while_others_flow(spool: Spool) -> None:
    """Customer A's second event waits while A's first retries; customer B is delivered."""
    config = DeliveryConfig(initial_backoff=0.2, max_backoff=1.0)
    send = FakeSender(SinkError("HTTP 503"))
    w = worker(spool, send, config)
    put(spool, event("A", 1))
    assert w.step()  # A:1 fails, retry in 0.2 s
    put(spool, event("A", 2), event("B", 1), event("B", 2))

    assert w.step()  # B goes; the sink answers again, so A:1's retry falls due at once
    assert send.batches == [["A:1"], ["B:1", "B:2"]]
    assert [label(r) for r in all_rows(spool)] == ["A:1", "A:2"]
    assert w.step()
    assert send.batches[-1] == ["A:1", "A:2"]  # A:2 never overtakes A:1
    assert spool.pending == 0


def test_idle_worker_does_not_spin_while_a_customer_waits(tmp_path: Path) -> None:
    """A worker whose only rows wait behind a retry sleeps instead of polling the spool."""

    class CountingSpool(Spool):
        polls = 0

        def due(
            self,
            target: str,
            limit: int,
            now: float | None = None,
            scan: int = 5000,
            *,
            hold: bool = False,
        ) -> Any:
            CountingSpool.polls += 1
            return super().due(target, limit, now, scan, hold=hold)

    spool = CountingSpool(tmp_path / "spool.db", synchronous="NORMAL")
    stopping = threading.Event()
    try:
        put(spool, event("A", 1), event("A", 2))
        first = all_rows(spool)[0]
        spool.retry([first.id], time.time() + 60, "down")
        w = worker(spool, FakeSender(), stopping=stopping)
        w.start()
        time.sleep(0.3)
    finally:
        stopping.set()
        w.join(5.0)
        spool.close()

    assert CountingSpool.polls < 20


def test_worker_thread_delivers_rows_stored_later(spool: Spool) -> None:
    """A started worker wakes when rows are stored, delivers them, and stops when asked."""
    delivered = threading.Event()
    batches: list[list[str]] = []

    def send(rows: Sequence[Row]) -> None:
        batches.append([label(r) for r in rows])
        delivered.set()

    stopping = threading.Event()
    w = worker(spool, send, stopping=stopping)
    w.start()
    try:
        time.sleep(0.05)
        put(spool, event("A", 1))
        assert delivered.wait(5.0)
    finally:
        stopping.set()
        w.join(5.0)
    assert batches == [["A:1"]]
    assert spool.pending == 0


def test_sink_sender_hands_over_downstream_events(spool: Spool) -> None:
    """sink_sender gives the sink the DownstreamEvents that were stored, in order."""

    class Sink:
        name = SINK

        def __init__(self) -> None:
            self.events: list[DownstreamEvent] = []

        def send(self, events: Sequence[DownstreamEvent]) -> None:
            self.events.extend(events)

        def close(self) -> None:
            """Nothing to release."""

    stored = [event("A", 1), event("B", 1, custom=True, op=Op.DELETE, msg_id=None)]
    put(spool, *stored)
    sink = Sink()

    assert worker(spool, sink_sender(sink)).step()

    assert sink.events == stored


# the alarm worker


def test_alarm_worker_publishes_qos1_not_retained(spool: Spool) -> None:
    """Alarm rows are published on their topic, QoS 1, not retained, then deleted."""
    alarms_out = give_up_alarms(
        SINK, [as_row(event("A", 1))], "HTTP 400", now_ms=NOW_MS, new_id=sequential_ids()
    )
    spool.store(alarms_out, [])
    published: list[tuple[str, dict[str, Any], int, bool]] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        published.append((topic, json.loads(payload), qos, retain))

    w = worker(spool, alarm_sender(one_by_one(publish)), name=ALARMS, kind="alarm")
    assert w.step()

    assert [(t, q, r) for t, _, q, r in published] == [(STANDARD_ERROR_TOPIC, 1, False)]
    assert published[0][1] == json.loads(alarms_out[0].body)["payload"]
    assert spool.pending == 0


def test_broker_error_is_transient_for_alarms(spool: Spool) -> None:
    """An alarm whose publish fails for want of a broker is kept for a retry."""
    spool.store([an_alarm_row()], [])

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        raise BrokerError("not connected")

    w = worker(spool, alarm_sender(one_by_one(publish)), name=ALARMS, kind="alarm")
    assert w.step()

    assert [r.attempts for r in all_rows(spool, ALARMS)] == [1]
    assert spool.dead_count() == 0


def test_publish_refused_dead_letters_the_alarm(spool: Spool) -> None:
    """An alarm the broker refuses goes to the dead letters at once, raising no new alarm."""
    spool.store([an_alarm_row()], [])

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        raise PublishRefused("not authorized")

    w = worker(spool, alarm_sender(one_by_one(publish)), name=ALARMS, kind="alarm")
    assert w.step()

    assert all_rows(spool, ALARMS) == []
    (letter,) = spool.dead_letters()
    assert (letter.target, letter.kind, letter.reason) == (ALARMS, "alarm", "not authorized")
    assert spool.pending == 0


def test_alarm_batch_is_judged_row_by_row(spool: Spool) -> None:
    """Taken alarms are deleted, a refused one dead-lettered alone, the lost tail retried."""
    spool.store([alarm_numbered(n) for n in range(5)], [])
    batches: list[list[int]] = []
    outcomes: list[BrokerError | None] = [
        None,
        PublishRefused("not authorized"),
        None,
        BrokerError("disconnected before the acknowledgement"),
        None,  # after a lost ack on one connection: retried, never taken for delivered
    ]

    def publish_many(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
        batches.append([json.loads(payload)["n"] for _, payload, _, _ in messages])
        return outcomes[: len(messages)]

    w = worker(spool, alarm_sender(publish_many), name=ALARMS, kind="alarm")
    assert w.step()

    assert batches == [[0, 1, 2, 3, 4]]
    assert [json.loads(r.body)["payload"]["n"] for r in all_rows(spool, ALARMS)] == [3, 4]
    assert [r.attempts for r in all_rows(spool, ALARMS)] == [1, 1]
    (letter,) = spool.dead_letters()
    assert (letter.kind, letter.reason) == ("alarm", "not authorized")
    assert json.loads(letter.body)["payload"]["n"] == 1


def test_alarm_batch_all_taken_deletes_every_row(spool: Spool) -> None:
    """A batch whose every publish is acknowledged leaves no row and no dead letter."""
    spool.store([alarm_numbered(n) for n in range(3)], [])

    def publish_many(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
        return [None] * len(messages)

    w = worker(spool, alarm_sender(publish_many), name=ALARMS, kind="alarm")
    assert w.step()

    assert spool.pending == 0
    assert spool.dead_count() == 0


def test_republish_sink_judges_each_record(spool: Spool) -> None:
    """The MQTT sink: a refused record is dead-lettered alone; from a lost ack on, retried."""
    put(spool, event("A", 1), event("B", 1), event("C", 1), event("D", 1))
    published: list[str] = []

    def publish_many(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
        published.extend(topic for topic, _, _, _ in messages)
        return [None, PublishRefused("not authorized"), BrokerError("lost"), None]

    sink = RepublishSink(SINK, publish_many, "out/{id}", 1, False)
    w = worker(spool, sink_sender(sink))
    assert w.step()

    assert published == ["out/A", "out/B", "out/C", "out/D"]
    assert [label(r) for r in all_rows(spool)] == ["C:1", "D:1"]
    (letter,) = spool.dead_letters()
    assert label_of_letter(letter.body) == "B:1"


def test_republish_sink_refuses_an_unsafe_topic_alone(spool: Spool) -> None:
    """A record whose id cannot be a topic segment is refused; the rest of the batch goes out."""
    put(spool, event("A", 1), event("a/b", 1), event("C", 1))
    published: list[str] = []

    def publish_many(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
        published.extend(topic for topic, _, _, _ in messages)
        return [None] * len(messages)

    sink = RepublishSink(SINK, publish_many, "out/{id}", 1, False)
    w = worker(spool, sink_sender(sink))
    assert w.step()

    assert published == ["out/A", "out/C"]
    assert all_rows(spool) == []
    (letter,) = spool.dead_letters()
    assert label_of_letter(letter.body) == "a/b:1"


def alarm_numbered(n: int) -> NewRow:
    """An alarm row whose payload carries `n`, to follow it through a batch."""
    return NewRow(ALARMS, "", json.dumps({"topic": f"t/{n % 2}", "payload": {"n": n}}))


def label_of_letter(body: bytes) -> str:
    """A dead letter's event as `customer:n`."""
    return label(DownstreamEvent.from_dict(json.loads(body)))


# give_up_alarms


def test_give_up_alarm_is_a_code_502_envelope() -> None:
    """One 502 alarm carries the given-up records, sourceMsgId, empty errors and the sink name."""
    rows = [as_row(event("A", 1), 1), as_row(event("B", 1), 2)]

    (built,) = give_up_alarms(SINK, rows, "HTTP 400", now_ms=NOW_MS, new_id=sequential_ids())

    assert (built.target, built.okey) == (ALARMS, "")
    body = json.loads(built.body)
    assert body["topic"] == STANDARD_ERROR_TOPIC
    payload = body["payload"]
    assert payload == {
        "msgId": expected_id(1),
        "reportTs": NOW_MS,
        "profile": PROFILE,
        "events": {
            "add_error": {
                "eventTs": NOW_MS,
                "eventType": 2,
                "msg": payload["events"]["add_error"]["msg"],
                "status": "CUSTOMER_ADD_ERROR",
                "code": 502,
                "customerList": [customer(id="A", remark="n=1"), customer(id="B", remark="n=1")],
            }
        },
        "sourceMsgId": "m-1",
        "errors": [],
    }
    msg = payload["events"]["add_error"]["msg"]
    assert SINK in msg
    assert "HTTP 400" in msg


def test_give_up_alarms_group_by_topic_operation_and_message() -> None:
    """There is one alarm per (error topic, op, msgId), each on its error topic."""
    rows = [
        as_row(event("A", 1, msg_id="m-1"), 1),
        as_row(event("B", 1, msg_id="m-1"), 2),
        as_row(event("A", 2, msg_id="m-1", op=Op.DELETE), 3),
        as_row(event("A", 3, msg_id="m-2"), 4),
        as_row(event("C", 1, msg_id="m-1", custom=True), 5),
        as_row(event("D", 1, msg_id=None, op=Op.EDIT, custom=True), 6),
    ]

    built = give_up_alarms(SINK, rows, "gone", now_ms=NOW_MS, new_id=sequential_ids())

    summary = []
    for new in built:
        body = json.loads(new.body)
        ((key, inner),) = body["payload"]["events"].items()
        summary.append(
            (
                body["topic"],
                key,
                inner["status"],
                body["payload"].get("sourceMsgId"),
                [c["id"] for c in inner["customerList"]],
            )
        )
    assert summary == [
        (STANDARD_ERROR_TOPIC, "add_error", "CUSTOMER_ADD_ERROR", "m-1", ["A", "B"]),
        (STANDARD_ERROR_TOPIC, "delete_error", "CUSTOMER_DELETE_ERROR", "m-1", ["A"]),
        (STANDARD_ERROR_TOPIC, "add_error", "CUSTOMER_ADD_ERROR", "m-2", ["A"]),
        (CUSTOM_ERROR_TOPIC, "add_error", "CUSTOMER_ADD_ERROR", "m-1", ["C"]),
        (CUSTOM_ERROR_TOPIC, "edit_error", "CUSTOMER_EDIT_ERROR", None, ["D"]),
    ]
    # every alarm has its own new id; an event without msgId gets no sourceMsgId key
    ids = [json.loads(n.body)["payload"]["msgId"] for n in built]
    assert ids == [expected_id(i) for i in range(1, 6)]
    assert "sourceMsgId" not in json.loads(built[-1].body)["payload"]


def test_alarm_row_keeps_topic_and_payload() -> None:
    """alarm_row stores an alarm's topic and payload for the alarm worker, all under one key."""
    alarm = alarms.build(
        error_topic=CUSTOM_ERROR_TOPIC,
        op="add",
        code=CODE_SINK_GAVE_UP,
        msg="sink crm gave up: x",
        records=[customer()],
        errors=(),
        source_msg_id="m-1",
        now_ms=NOW_MS,
        alarm_id=expected_id(1),
    )

    new = alarm_row(alarm)

    assert (new.target, new.okey) == (ALARMS, "")
    assert json.loads(new.body) == {"topic": CUSTOM_ERROR_TOPIC, "payload": alarm.payload}


# events


@pytest.mark.parametrize("custom", [False, True], ids=["standard", "customization"])
def test_downstream_event_round_trips_through_its_dict(custom: bool) -> None:
    """DownstreamEvent.from_dict(e.to_dict()) == e, directly and through the spool's JSON."""
    original = event("A", 7, custom=custom, op=Op.EDIT)

    assert DownstreamEvent.from_dict(original.to_dict()) == original
    body = event_row(SINK, original).body
    assert DownstreamEvent.from_dict(json.loads(body)) == original
    assert set(original.to_dict()) == {
        "op",
        "tenant",
        "projectId",
        "version",
        "vendor",
        "msgId",
        "reportTs",
        "eventTs",
        "customer",
    }


def test_event_rows_share_an_ordering_key_per_customer() -> None:
    """Rows of one (tenant, projectId, id) share an ordering key; other customers differ."""
    key = event_row(SINK, event("A", 1)).okey

    assert event_row(SINK, event("A", 2, op=Op.DELETE, msg_id="m-9")).okey == key
    assert event_row(SINK, event("B", 1)).okey != key
    assert event_row(SINK, event("A", 1, tenant="other")).okey != key


def test_linger_waits_for_a_batch_to_fill(spool: Spool) -> None:
    """With `linger`, rows stored shortly after the first one go out in the same batch."""
    put(spool, event("A", 1))
    sender = FakeSender()
    w = Worker(
        SINK, sender, spool, DeliveryConfig(), threading.Event(),
        structlog.get_logger(), batch_size=3, gave_up=lambda _r, _w: [], kind="event",
        linger=2.0,
    )  # fmt: skip
    later = threading.Timer(0.1, lambda: put(spool, event("B", 1), event("C", 1)))
    later.start()
    started = time.monotonic()
    assert w.step()
    later.join()
    assert sender.batches == [["A:1", "B:1", "C:1"]]
    assert time.monotonic() - started < 1.5  # sent once full, not at the deadline


def test_linger_sends_a_partial_batch_at_its_deadline(spool: Spool) -> None:
    """A batch that does not fill goes out `linger` seconds after its oldest row."""
    put(spool, event("A", 1))
    sender = FakeSender()
    w = Worker(
        SINK, sender, spool, DeliveryConfig(), threading.Event(),
        structlog.get_logger(), batch_size=3, gave_up=lambda _r, _w: [], kind="event",
        linger=0.3,
    )  # fmt: skip
    started = time.monotonic()
    assert w.step()
    assert sender.batches == [["A:1"]]
    assert 0.15 <= time.monotonic() - started < 1.0


def test_partial_delivery_sends_only_the_rest_again(spool: Spool) -> None:
    """A sender that took the first row and then failed: that row is done, the rest retried."""
    put(spool, event("A", 1), event("B", 1), event("C", 1))
    sender = FakeSender(Partial(1, BrokerError("connection lost")))
    w = worker(spool, sender)
    assert w.step()
    left = all_rows(spool)
    assert [label(r) for r in left] == ["B:1", "C:1"]
    assert all(r.attempts == 1 for r in left)
    assert w.delivered == 1


# batch isolation (SPEC 6: no collateral damage)


def test_one_refused_record_dead_letters_it_alone_and_delivers_the_batch(spool: Spool) -> None:
    """A batch refused for good because of one record: the batch is halved until that record
    stands alone; it alone is a dead letter, with one alarm, and every other record goes."""
    put(spool, *(event(c, 1) for c in "ABCDEFGHIJ"))
    gave_up = GaveUp()
    send = RefusingSender("D:1")
    w = worker(spool, send, gave_up=gave_up, batch_size=10)

    assert w.step() is True

    assert sorted(send.taken) == sorted(f"{c}:1" for c in "ABCEFGHIJ")
    assert [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in spool.dead_letters()] == [
        "D:1"
    ]
    assert gave_up.calls == [(["D:1"], "HTTP 400: bad phone")]
    assert len(spool.due(ALARMS, 10)) == 1
    assert all_rows(spool) == []
    assert (w.delivered, w.dead, w.retries) == (9, 1, 0)
    # halving: 10 -> 5 + 5 -> (2 + 3) ... never more requests than 2n - 1
    assert len(send.batches) <= 2 * 10 - 1


def test_a_refused_customer_never_dead_letters_another_across_batches(spool: Spool) -> None:
    """A backlog where one customer's every record is refused: only that customer's records
    are dead letters, each other customer receives all of its records in order."""
    customers = [f"c{i}" for i in range(7)]
    stream = [event(customers[n % 7], n) for n in range(70)]
    put(spool, *stream)
    send = RefusingSender("c3")
    w = worker(spool, send, batch_size=16)

    while w.step():
        pass

    dead = [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in spool.dead_letters()]
    assert dead == [label(e) for e in stream if e.customer_id == "c3"]
    for name in customers:
        if name != "c3":
            mine = [item for item in send.taken if item.startswith(f"{name}:")]
            assert mine == [label(e) for e in stream if e.customer_id == name]
    assert spool.pending == 0


def test_a_per_record_answer_gives_up_on_the_named_records_without_splitting(
    spool: Spool,
) -> None:
    """A sink answering `Refused` by position: one request, the named rows are dead letters
    with their own reason, the others are delivered."""
    put(spool, event("A", 1), event("B", 1), event("C", 1))
    batches: list[list[str]] = []

    def send(rows: Sequence[Row]) -> Refused | None:
        batches.append([label(r) for r in rows])
        return Refused({1: "INVALID_PARAMETER: user is required"})

    gave_up = GaveUp()
    w = worker(spool, send, gave_up=gave_up)

    assert w.step() is True

    assert batches == [["A:1", "B:1", "C:1"]]
    assert [(d.reason, d.okey) for d in spool.dead_letters()] == [
        ("INVALID_PARAMETER: user is required", "\x1f".join((TENANT, PROJECT, "B")))
    ]
    assert gave_up.calls == [(["B:1"], "INVALID_PARAMETER: user is required")]
    assert all_rows(spool) == []
    assert (w.delivered, w.dead) == (2, 1)


def test_a_transient_failure_while_splitting_leaves_the_rest_untried(spool: Spool) -> None:
    """Halving stops at a transient failure: that half waits for its retry, the records not
    yet tried keep their attempts, nothing of a customer overtakes its waiting record."""
    put(spool, event("A", 1), event("B", 1), event("C", 1), event("D", 1))
    refused = SinkError("HTTP 400", permanent=True)
    send = FakeSender(refused, refused, refused, None, SinkError("HTTP 503"))
    w = worker(spool, send)

    assert w.step() is True

    assert send.batches == [
        ["A:1", "B:1", "C:1", "D:1"],
        ["A:1", "B:1"],
        ["A:1"],
        ["B:1"],
        [
            "C:1",
            "D:1",
        ],
    ]
    assert [d.reason for d in spool.dead_letters()] == ["HTTP 400"]
    assert [(label(r), r.attempts) for r in all_rows(spool)] == [("C:1", 1), ("D:1", 1)]
    assert (w.delivered, w.dead, w.retries) == (1, 1, 1)


def test_an_item_by_item_sink_refusing_one_record_gives_up_on_that_one(spool: Spool) -> None:
    """`Partial` with a permanent cause names the record refused: the ones before it were
    taken, it alone is a dead letter, the ones after it are sent on."""
    put(spool, event("A", 1), event("B", 1), event("C", 1))
    send = FakeSender(Partial(1, PublishRefused("not authorised")))
    w = worker(spool, send)

    assert w.step() is True

    assert send.batches == [["A:1", "B:1", "C:1"], ["C:1"]]
    assert [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in spool.dead_letters()] == [
        "B:1"
    ]
    assert all_rows(spool) == []


# order across a give-up


def test_hold_keeps_a_customers_later_events_behind_its_dead_letter(spool: Spool) -> None:
    """With holding, the refused customer's later events wait (others flow); replayed, its
    dead letter goes first and the held events follow in arrival order."""
    put(spool, event("A", 1), event("B", 1), event("A", 2), event("B", 2))
    send = RefusingSender("A:1")
    w = worker(spool, send, hold=True)

    assert w.step() is True
    assert w.step() is False  # A:2 is held, not sent and not retried

    assert send.taken == ["B:1", "B:2"]
    # A:2 went out only inside the first, refused, request of the whole batch
    assert not any("A:2" in batch for batch in send.batches[1:])
    assert [(label(r), r.attempts) for r in all_rows(spool)] == [("A:2", 0)]
    put(spool, event("A", 3))
    assert w.step() is False
    send.bad.clear()  # the receiver is fixed

    done = spool.replay_in_order(None)

    assert (done.replayed, done.overtaken) == (1, [])
    assert w.step() is True
    assert send.batches[-1] == ["A:1", "A:2", "A:3"]
    assert spool.pending == 0


def test_purging_the_dead_letter_releases_a_held_customer(spool: Spool) -> None:
    """A purged dead letter no longer holds its customer: the later events go."""
    put(spool, event("A", 1), event("A", 2))
    send = RefusingSender("A:1")
    w = worker(spool, send, hold=True)
    assert w.step() is True
    assert w.step() is False

    assert spool.purge(None) == 1

    assert w.step() is True
    assert send.taken == ["A:2"]


def test_flowing_by_default_marks_the_dead_letter_overtaken(spool: Spool) -> None:
    """Without holding the customer's later event goes on, and its dead letter is reported as
    overtaken by the replay; `skip_overtaken` drops it instead of sending a stale event."""
    put(spool, event("A", 1), event("B", 1), event("A", 2))
    send = RefusingSender("A:1")
    w = worker(spool, send)
    assert w.step() is True
    assert send.taken == ["B:1", "A:2"]
    (letter,) = spool.dead_letters()
    assert letter.overtaken_at is not None

    done = spool.replay_in_order(None, skip_overtaken=True)

    assert (done.replayed, done.overtaken, done.dropped) == (0, [letter.id], 1)
    assert spool.dead_count() == 0
    assert spool.pending == 0


# retry timing


@pytest.mark.parametrize(("asked", "waited"), [(7.0, 7.0), (0.0, 0.0), (10_000.0, 120.0)])
def test_retry_after_sets_the_wait_up_to_its_cap(spool: Spool, asked: float, waited: float) -> None:
    """A sink's `Retry-After` replaces the backoff, cut to `max_retry_after`."""
    put(spool, event("A", 1))
    config = DeliveryConfig(initial_backoff=10.0, max_backoff=60.0, max_retry_after=120.0)
    w = worker(spool, FakeSender(SinkError("HTTP 429", retry_after=asked)), config)
    before = time.time()

    assert w.step() is True

    (row,) = all_rows(spool)
    assert before + waited <= row.next_at <= time.time() + waited


def test_waiting_retries_fall_due_once_the_sink_takes_a_batch(spool: Spool) -> None:
    """Records waiting out their backoff go as soon as the sink takes a batch again."""
    put(spool, event("A", 1), event("B", 1))
    send = FakeSender(SinkError("HTTP 503"))
    w = worker(spool, send)  # a first retry waits 10 s
    assert w.step() is True
    assert spool.due(SINK, 10) == []
    put(spool, event("C", 1))

    assert w.step() is True  # C goes: the sink answers again
    assert w.step() is True  # A and B at once, not 10 s later

    assert send.batches == [["A:1", "B:1"], ["C:1"], ["A:1", "B:1"]]
    assert spool.pending == 0


class RefusingHandler:
    """An operator's handler that raises a permanent SinkError for any batch with customer X,
    or, with `by_position`, returns `Refused` naming X's records."""

    def __init__(self, *, by_position: bool = False) -> None:
        self.by_position = by_position
        self.taken: list[str] = []

    def send(self, events: list[DownstreamEvent]) -> Refused | None:
        bad = {i: "X refused" for i, e in enumerate(events) if e.customer_id == "X"}
        if bad and not self.by_position:
            raise SinkError("X refused", permanent=True)
        self.taken.extend(label(e) for i, e in enumerate(events) if i not in bad)
        return Refused(bad) if bad else None


@pytest.mark.parametrize("by_position", [False, True])
def test_a_python_handler_refusing_one_customer_dead_letters_it_alone(
    spool: Spool, by_position: bool
) -> None:
    """A handler refusing customer X (by raising, or by position): X alone is a dead letter."""
    handler = RefusingHandler(by_position=by_position)
    sink = PythonSink("handler", handler)
    put(spool, event("A", 1), event("X", 1), event("B", 1), event("X", 2), event("C", 1))

    w = worker(spool, sink_sender(sink))
    while w.step():
        pass

    assert handler.taken == ["A:1", "B:1", "C:1"]
    assert [label(DownstreamEvent.from_dict(json.loads(d.body))) for d in spool.dead_letters()] == [
        "X:1",
        "X:2",
    ]


def test_a_python_handler_naming_positions_outside_the_batch_is_retried() -> None:
    """`Refused` with a position the batch does not have is a transient error, not trusted."""

    class Wrong:
        def send(self, events: list[DownstreamEvent]) -> Refused:
            return Refused({len(events): "?"})

    with pytest.raises(SinkError) as caught:
        PythonSink("handler", Wrong()).send([event("A", 1)])

    assert caught.value.permanent is False


def test_a_python_handler_that_stopped_part_way_has_only_the_rest_sent_again(
    spool: Spool,
) -> None:
    """A handler returning `Partial(2, ...)` once: its first two records count as delivered,
    the rest is retried, and nothing it took is handed over twice."""

    class OneAtATime:
        def __init__(self) -> None:
            self.taken: list[str] = []
            self.calls = 0

        def send(self, events: list[DownstreamEvent]) -> Partial | None:
            self.calls += 1
            if self.calls == 1:
                self.taken.extend(label(e) for e in events[:2])
                return Partial(2, ConnectionError("downstream went away"))
            self.taken.extend(label(e) for e in events)
            return None

    handler = OneAtATime()
    put(spool, event("A", 1), event("B", 1), event("C", 1), event("D", 1))
    # No jitter: the retry is due at once.
    w = worker(spool, sink_sender(PythonSink("handler", handler)), rand=lambda: 0.0)

    assert w.step()
    assert [label(r) for r in all_rows(spool)] == ["C:1", "D:1"]
    assert (w.delivered, w.retries) == (2, 1)
    assert w.step()
    assert handler.taken == ["A:1", "B:1", "C:1", "D:1"]


def test_a_python_handler_claiming_a_part_beyond_the_batch_is_retried() -> None:
    """`Partial` taking as many records as the batch has, or more, is not trusted."""

    class Wrong:
        def send(self, events: list[DownstreamEvent]) -> Partial:
            return Partial(len(events), ConnectionError("?"))

    with pytest.raises(SinkError) as caught:
        PythonSink("handler", Wrong()).send([event("A", 1)])

    assert caught.value.permanent is False
