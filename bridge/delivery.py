"""Delivery workers: threads per sink (and one for alarms) draining the spool's outbox.

Each worker takes the oldest rows its target may send now, hands them over, and
deletes them once taken. A sink with `lanes` has that many workers, each owning the
customers whose ordering key hashes to it, so that several batches are in flight while
each customer's rows still go one batch after another through a single lane.

A transient failure schedules a retry with capped exponential backoff and full jitter
(or the sink's `Retry-After`); the customer's later rows wait behind it while other
customers keep flowing, and once the sink takes a batch again (in any lane) every
waiting retry falls due at once. A batch refused for good is split in halves, down to
single records, so that only the records refused on their own go to the dead letters
(with a code-502 alarm each); so does a row past its attempts or age.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog

from bridge.config import DeliveryConfig
from bridge.core import alarms
from bridge.core.digest import Forward
from bridge.core.encoding import alarm_body, alarm_message, encode_event, ordering_key
from bridge.core.events import DownstreamEvent
from bridge.core.outbox import NewRow, alarm_outbox_row
from bridge.errors import BrokerError, PublishRefused, SinkError
from bridge.metrics import Metrics
from bridge.sinks import EncodedSink, JsonSink, LinesSink, Partial, Refused, Route, SendResult, Sink
from bridge.sinks.base import PublishBatch
from bridge.spool import WHOLE, Lane, Row, Spool, SpoolError

Publish = Callable[[str, bytes, int, bool], None]


DIRECT_PAUSE = 30.0
"""Seconds a sink goes through the outbox after a direct hand-over took longer than its budget."""


@dataclass(slots=True)
class Gate:
    """When the intake may hand a remote sink its events itself again.

    A receiver that answers slowly would hold the intake (every other sink, and the acks)
    while it waits. A group's hand-over that takes longer than the sink's budget pauses the
    direct path for `pause` seconds: the sink's events go through the outbox (its worker,
    retries) meanwhile, and once the pause is over and the outbox drained the intake tries
    again.
    """

    pause: float = DIRECT_PAUSE
    until: float = 0.0

    def open(self, now: float) -> bool:
        """Whether the direct path is open at `now` (monotonic seconds)."""
        return now >= self.until

    def took(self, seconds: float, budget: float | None, now: float) -> bool:
        """Note a hand-over of `seconds`; True when it was over `budget` and the gate closed."""
        if budget is None or seconds <= budget:
            return False
        self.until = now + self.pause
        return True


@dataclass(frozen=True, slots=True)
class Target:
    """A sink with the route that feeds it and its batch size.

    `lock` is held for every hand-over to a sink of one lane, so the intake's direct
    deliveries and the worker's never reach the sink at the same time; a sink with lanes
    takes hand-overs at once, and is never direct.
    """

    sink: Sink
    route: Route
    batch_size: int = 100
    linger: float = 0.0
    hold: bool = False
    """Whether a customer's later events wait behind its dead letter at this sink."""
    lanes: int = 1
    """Workers delivering to this sink at once, each for its own share of the customers."""
    budget: float | None = None
    """Seconds a direct hand-over of one group may take before the sink is paused (`Gate`);
    None for a local sink, which is never paused."""
    gate: Gate = field(default_factory=Gate, compare=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    json: bool = field(init=False, compare=False, repr=False)
    """Whether the sink takes encoded JSON (`takes_json`), found once: the check is a
    runtime protocol check, about 18 µs, which a small group would pay twice per hand-over."""
    lines: bool = field(init=False, compare=False, repr=False)
    """Whether the sink takes a block of JSON lines (`LinesSink`), found once likewise."""
    encoded: bool = field(init=False, compare=False, repr=False)
    """Whether the sink takes encoded events as bytes (`EncodedSink`), found once likewise."""

    @property
    def direct(self) -> bool:
        """Whether the intake may hand events to this sink itself while nothing of it waits.

        Only sinks that say so (local and quick: a file, the log), and only without a
        linger, which asks for batches the intake would not make.
        """
        return self.sink.direct and self.linger == 0

    def takes_directly(self, now: float) -> bool:
        """Whether the intake may hand events to this sink itself now: `direct`, and not
        paused for a hand-over that took longer than its budget."""
        return self.direct and self.gate.open(now)

    def __post_init__(self) -> None:
        object.__setattr__(self, "json", takes_json(self.sink))
        object.__setattr__(self, "lines", isinstance(self.sink, LinesSink))
        object.__setattr__(self, "encoded", isinstance(self.sink, EncodedSink))
        # A direct hand-over by the intake waits for nothing of the sink in the spool, which
        # with lanes would be another lane's rows: the config refuses lanes for such sinks.
        if self.lanes > 1 and self.direct:
            raise ValueError(f"sink {self.sink.name} is handed events directly: one lane only")
        if self.lanes > 1 and not self.sink.concurrent:
            raise ValueError(f"sink {self.sink.name} takes one batch at a time: one lane only")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a hand-over failed, as the worker acts on it."""

    reason: str
    permanent: bool
    retry_after: float | None = None

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """Judge an exception a sink (or the broker) raised."""
        if isinstance(exc, SinkError):
            return cls(str(exc), exc.permanent, exc.retry_after)
        if isinstance(exc, PublishRefused):
            return cls(str(exc), True)
        if isinstance(exc, BrokerError):
            return cls(str(exc), False)
        # A sink's bug must not stop the stream: retried, never taken for a refusal.
        return cls(f"{type(exc).__name__} in sink", False)


def backoff(attempt: int, config: DeliveryConfig, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number `attempt` (1-based): capped exponential, full jitter."""
    # The exponent is capped first: 2.0 ** 1024 overflows after a long outage.
    exponent = min(attempt - 1, 60)
    ceiling: float = min(config.max_backoff, config.initial_backoff * 2.0**exponent)
    return ceiling * rand()


def event_row(target: str, event: DownstreamEvent) -> NewRow:
    """The outbox row that carries `event` to `target`."""
    return NewRow(target, ordering_key(event), encode_event(event))


def takes_json(sink: Sink) -> bool:
    """Whether `sink` takes events as their encoded JSON (`send_json`), sparing the decode."""
    return isinstance(sink, JsonSink)


def hand_over(
    sink: Sink, events: Sequence[DownstreamEvent], bodies: Sequence[str], *, as_json: bool
) -> SendResult:
    """Give a batch to a sink: as encoded JSON to a sink that takes it (`as_json`, which
    `takes_json` tells), else as events."""
    return answered(cast(JsonSink, sink).send_json(bodies) if as_json else sink.send(events))


def answered(answer: object) -> SendResult:
    """A sink's answer as the delivery layer reads it: anything but `Refused` or `Partial`
    (from an operator's code) means it took the batch whole."""
    return answer if isinstance(answer, Refused | Partial) else None


def hand_over_records(target: Target, records: Sequence[Forward]) -> SendResult:
    """Give digested records to `target`'s sink, under its lock: a lines sink gets their
    bodies joined as they are, an encoded sink their bytes, a JSON sink their text, any
    other sink the events."""
    sink = target.sink
    if target.lines:
        block = [r.body for r in records]
        block.append(b"")  # each line ends with its newline
        with target.lock:
            cast(LinesSink, sink).send_lines(b"\n".join(block))
        return None
    if target.encoded:
        encoded = [r.body for r in records]
        with target.lock:
            return answered(cast(EncodedSink, sink).send_encoded(encoded))
    events = [] if target.json else [r.event() for r in records]
    bodies = [r.body.decode() for r in records] if target.json else []
    with target.lock:
        return hand_over(sink, events, bodies, as_json=target.json)


@dataclass(frozen=True, slots=True)
class Handed:
    """What a sink did with records handed to it directly: the first `taken` went out (but
    the `refused` among them, by index), and `failure` stopped the rest, if anything did."""

    taken: int
    refused: frozenset[int]
    failure: BaseException | None


def hand_over_group(
    target: Target, records: Sequence[Forward], deadline: float | None = None
) -> Handed:
    """Give a group's records to `target`'s sink directly: a lines sink in one block, any
    other in batches of the sink's `batch_size` (a webhook's request size), in order, up to
    the first that fails, or the first that ends past `deadline` (monotonic seconds): what
    is left then goes through the outbox, so that a slow receiver holds the intake for
    one request past its budget at most."""
    size = len(records) if target.lines else target.batch_size
    refused: set[int] = set()
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        try:
            answer = hand_over_records(target, chunk)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the worker retries it
            return Handed(start, frozenset(refused), exc)
        if isinstance(answer, Partial):
            refused.update(start + index for index in answer.refused)
            return Handed(start + answer.taken, frozenset(refused), answer.cause)
        if answer is not None:
            refused.update(start + index for index in answer.records)
        if deadline is not None and time.monotonic() > deadline:
            return Handed(start + len(chunk), frozenset(refused), None)
    return Handed(len(records), frozenset(refused), None)


def alarm_row(alarm: alarms.Alarm) -> NewRow:
    """The outbox row of an alarm."""
    return alarm_outbox_row(alarm_body(alarm))


class Worker:
    """Drains one target of the outbox on its own thread."""

    def __init__(
        self,
        name: str,
        send: Callable[[Sequence[Row]], SendResult],
        spool: Spool,
        config: DeliveryConfig,
        stopping: threading.Event,
        logger: structlog.typing.FilteringBoundLogger,
        *,
        batch_size: int,
        gave_up: Callable[[Sequence[Row], str], list[NewRow]],
        kind: str,
        rand: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        beat: Callable[[], None] = lambda: None,
        linger: float = 0.0,
        hold: bool = False,
        lane: Lane = WHOLE,
        retrying: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.lane = lane
        self._send = send
        self._spool = spool
        self._config = config
        self._stopping = stopping
        self._log = (
            logger.bind(sink=name) if lane.count == 1 else logger.bind(sink=name, lane=lane.index)
        )
        self._batch_size = batch_size
        self._gave_up = gave_up
        self._kind = kind
        self._rand = rand
        self._metrics = metrics
        self._beat = beat
        self._linger = linger
        self._hold = hold
        self._undeleted: list[int] = []
        # Set once a retry is scheduled, so that it is hastened once the sink answers again;
        # shared by a sink's lanes, since any lane's delivery says the sink answers.
        self._retrying = retrying or threading.Event()
        self._given_up_now: set[str] = set()  # customers dead-lettered in the batch in hand
        self.delivered = 0
        self.direct = 0
        self.retries = 0
        self.dead = 0
        self.thread_name = lane_thread(name, lane)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    @property
    def thread_names(self) -> list[str]:
        """The worker's thread, as the watchdog knows it."""
        return [self.thread_name]

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to stop after the batch in hand."""
        self._stopping.set()
        self._spool.poke()

    def join(self, timeout: float) -> None:
        """Wait for the worker to finish its current batch after `stopping` is set."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._beat()  # the watchdog hears from us at least once a second, even idle
            try:
                if not self.step():
                    self._idle()
            except SpoolError as exc:
                self._log.error("spool_failed", reason=str(exc))
                self._stopping.wait(1.0)
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch
                self._log.exception("delivery_failed")
                self._stopping.wait(1.0)

    def _idle(self) -> None:
        version = self._spool.version_of(self.name)
        next_at = self._spool.next_due(self.name, self.lane)
        # A short floor: a retry already due but blocked behind another must not spin.
        timeout = 1.0 if next_at is None else min(1.0, max(0.05, next_at - time.time()))
        self._spool.wait_for_change(version, timeout, self.name)

    def step(self) -> bool:
        """Send one batch if one is due; False when there was nothing to do."""
        if self._undeleted:
            # Delivered, but the spool could not record it: finish that before sending
            # anything, or the same batch would go out again every second.
            self._spool.done(self._undeleted)
            self._undeleted = []
        rows = self._spool.due(self.name, self._batch_size, hold=self._hold, lane=self.lane)
        if not rows:
            return False
        if self._linger > 0:
            rows = self._fill(rows)
        self._given_up_now = set()
        self._settle(rows)
        return True

    def _settle(self, rows: Sequence[Row]) -> bool:
        """Send `rows`, splitting a batch refused for good until each refusal stands alone.

        False once a transient failure scheduled a retry: the rest is left untried as it
        was, so that no customer's later record overtakes the one that waits.
        """
        if not rows:
            return True
        try:
            answer = self._hand_over(rows)
        except Exception as exc:  # noqa: BLE001 - judged by Failure.of, never lost
            failure = Failure.of(exc)
            if not failure.permanent:
                self._failed(rows, failure)
                return False
            if len(rows) == 1:
                self._refused(rows, failure.reason)
                return True
            middle = len(rows) // 2
            self._log.info("batch_split", reason=failure.reason, records=len(rows))
            return self._settle(rows[:middle]) and self._settle(self._unheld(rows[middle:]))
        if isinstance(answer, Partial):
            # The first rows went out: record them, so a retry does not send them twice.
            self._answered(rows[: answer.taken], answer.refused)
            rest = rows[answer.taken :]
            failure = Failure.of(answer.cause)
            if not failure.permanent:
                self._failed(rest, failure)
                return False
            # A sink that hands records over one by one names the one refused: it alone.
            self._refused(rest[:1], failure.reason)
            return self._settle(self._unheld(rest[1:]))
        self._answered(rows, answer.records if answer is not None else {})
        return True

    def _answered(self, rows: Sequence[Row], refused: Mapping[int, str]) -> None:
        """Rows the sink answered record by record: give up on the refused, deliver the rest."""
        if not refused:
            self._delivered(rows)
            return
        good = [row for index, row in enumerate(rows) if index not in refused]
        by_reason: dict[str, list[Row]] = {}
        for index, reason in sorted(refused.items()):
            by_reason.setdefault(reason, []).append(rows[index])
        for reason, given_up in by_reason.items():
            self._refused(given_up, reason)
        self._delivered(good)

    def _hand_over(self, rows: Sequence[Row]) -> SendResult:
        if self._metrics is None:
            return self._send(rows)
        self._metrics.sending(self.name, self._kind, 1)
        try:
            return self._send(rows)
        finally:
            self._metrics.sending(self.name, self._kind, -1)

    def _unheld(self, rows: Sequence[Row]) -> Sequence[Row]:
        # With holding, a customer just dead-lettered sends nothing more of this batch: its
        # later rows stay in the outbox, held by the dead letter (see Spool.due).
        if not self._hold or not self._given_up_now:
            return rows
        return [row for row in rows if row.okey not in self._given_up_now]

    def _delivered(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        try:
            self._spool.done([row.id for row in rows])
        except SpoolError:
            self._undeleted = [row.id for row in rows]
            raise
        self.delivered += len(rows)
        if self._metrics is not None:
            oldest = time.time() - min(row.created for row in rows)
            self._metrics.delivered(self.name, self._kind, len(rows), oldest)
        self._log.debug("delivered", records=len(rows), attempt=rows[0].attempts + 1)
        if self._retrying.is_set():
            # The sink answers again: what waits for a retry goes now, not when its timer ends.
            self._retrying.clear()
            hastened = self._spool.hasten(self.name)
            if hastened:
                self._log.info("retries_hastened", records=hastened)

    def taken_directly(self, records: int) -> None:
        """Count records the intake handed to this worker's sink itself."""
        self.direct += records
        if self._metrics is not None:
            self._metrics.taken_directly(self.name, records)
        self._log.debug("delivered", records=records, attempt=1, direct=True)

    def _fill(self, rows: list[Row]) -> list[Row]:
        # Wait up to `linger` after the oldest row was stored for the batch to fill.
        deadline = min(row.created for row in rows) + self._linger
        while len(rows) < self._batch_size and not self._stopping.is_set():
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            version = self._spool.version_of(self.name)
            self._spool.wait_for_change(version, min(remaining, 1.0), self.name)
            self._beat()
            rows = self._spool.due(self.name, self._batch_size, hold=self._hold, lane=self.lane)
        return rows

    def _exhausted(self, row: Row, now: float) -> bool:
        limit = self._config.max_attempts
        too_many = limit is not None and row.attempts + 1 >= limit
        return too_many or now - row.created >= self._config.max_age

    def _refused(self, rows: Sequence[Row], reason: str) -> None:
        """Give up on rows the sink refused for good, at once: a later event of the customer
        delivered in the same batch then finds the dead letter it overtakes."""
        self._give_up(rows, reason, permanent=True)

    def _give_up(self, rows: Sequence[Row], reason: str, *, permanent: bool) -> None:
        self._spool.give_up(rows, reason, self._gave_up(rows, reason), kind=self._kind)
        self._given_up_now.update(row.okey for row in rows)
        self.dead += len(rows)
        if self._metrics is not None:
            self._metrics.gave_up(self.name, self._kind, len(rows))
        self._log.error(
            "sink_gave_up",
            reason=reason,
            permanent=permanent,
            attempts=max(r.attempts for r in rows) + 1,
            records=len(rows),
        )

    def _failed(self, rows: Sequence[Row], failure: Failure) -> None:
        """Schedule a retry of rows after a transient failure; give up on the exhausted."""
        now = time.time()
        # Judged row by row: a fresh record batched with an old one keeps its own tries.
        doomed = [r for r in rows if self._exhausted(r, now)]
        if doomed:
            self._give_up(doomed, failure.reason, permanent=False)
        retrying = [r for r in rows if r not in doomed]
        if not retrying:
            return
        attempts = max(row.attempts for row in retrying) + 1
        if failure.retry_after is not None:
            delay = min(failure.retry_after, self._config.max_retry_after)
        else:
            delay = backoff(attempts, self._config, self._rand)
        self._spool.retry([row.id for row in retrying], now + delay, failure.reason)
        self._retrying.set()
        self.retries += 1
        if self._metrics is not None:
            self._metrics.retried(self.name, self._kind)
        self._log.warning(
            "sink_failed",
            reason=failure.reason,
            attempt=attempts,
            retry_in=round(delay, 3),
            retry_after=failure.retry_after,
            records=len(retrying),
        )


def lane_thread(name: str, lane: Lane) -> str:
    """The thread (and watchdog component) of a lane: `deliver-NAME`, `deliver-NAME/1`, ..."""
    return f"deliver-{name}" if lane.index == 0 else f"deliver-{name}/{lane.index}"


class Lanes:
    """The workers of one sink, one per lane, seen from outside as one worker."""

    def __init__(
        self,
        name: str,
        make: Callable[[Lane, threading.Event, threading.Event], Worker],
        count: int,
    ) -> None:
        self.name = name
        stopping = threading.Event()
        retrying = threading.Event()
        self.lanes = [make(Lane(index, count), stopping, retrying) for index in range(count)]

    @property
    def thread_names(self) -> list[str]:
        """The lanes' threads, as the watchdog knows them."""
        return [lane.thread_name for lane in self.lanes]

    @property
    def delivered(self) -> int:
        """Records the lanes delivered from the spool."""
        return sum(lane.delivered for lane in self.lanes)

    @property
    def direct(self) -> int:
        """Records the intake handed to the sink itself."""
        return sum(lane.direct for lane in self.lanes)

    @property
    def retries(self) -> int:
        """Retries the lanes scheduled."""
        return sum(lane.retries for lane in self.lanes)

    @property
    def dead(self) -> int:
        """Records the lanes gave up on."""
        return sum(lane.dead for lane in self.lanes)

    def step(self) -> bool:
        """Send one batch in each lane that has one due; False when none had."""
        stepped = [lane.step() for lane in self.lanes]  # every lane, not up to the first
        return any(stepped)

    def taken_directly(self, records: int) -> None:
        """Count records the intake handed to the sink itself (one lane only, see Target)."""
        self.lanes[0].taken_directly(records)

    def start(self) -> None:
        """Start every lane."""
        for lane in self.lanes:
            lane.start()

    def stop(self) -> None:
        """Ask every lane to stop after the batch in hand."""
        for lane in self.lanes:
            lane.stop()

    def join(self, timeout: float) -> None:
        """Wait, `timeout` in all, for the lanes to finish their batches."""
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.join(max(0.0, deadline - time.monotonic()))


def sink_workers(
    target: Target,
    spool: Spool,
    config: DeliveryConfig,
    logger: structlog.typing.FilteringBoundLogger,
    *,
    gave_up: Callable[[Sequence[Row], str], list[NewRow]],
    metrics: Metrics | None = None,
    beat_for: Callable[[str], Callable[[], None]] = lambda _thread: lambda: None,
) -> Worker | Lanes:
    """The worker of a target, or its lanes: one worker per lane, sharing a stop and the
    knowledge that a retry waits."""
    # One lane keeps the lock the intake's direct hand-overs share; lanes send at once.
    send = sink_sender(target.sink, target.lock if target.lanes == 1 else None)
    name = target.sink.name

    def lane_worker(
        lane: Lane, stopping: threading.Event, retrying: threading.Event | None = None
    ) -> Worker:
        return Worker(
            name,
            send,
            spool,
            config,
            stopping,
            logger,
            batch_size=target.batch_size,
            gave_up=gave_up,
            kind="event",
            metrics=metrics,
            beat=beat_for(lane_thread(name, lane)),
            linger=target.linger,
            hold=target.hold,
            lane=lane,
            retrying=retrying,
        )

    if target.lanes == 1:
        return lane_worker(WHOLE, threading.Event())
    return Lanes(name, lane_worker, target.lanes)


def sink_sender(
    sink: Sink, lock: threading.Lock | None = None
) -> Callable[[Sequence[Row]], SendResult]:
    """Hand rows to a sink: as their stored JSON to a sink that takes it, else as events.

    `lock` is held for each hand-over; without one, hand-overs may overlap (lanes).
    """
    json_only = takes_json(sink)
    guard: contextlib.AbstractContextManager[object] = lock or contextlib.nullcontext()

    def send(rows: Sequence[Row]) -> SendResult:
        # Rows are decoded into events only for a sink that wants events.
        events = [] if json_only else [DownstreamEvent.from_dict(row.decoded()) for row in rows]
        with guard:
            return hand_over(sink, events, [row.body for row in rows], as_json=json_only)

    return send


def alarm_sender(publish_many: PublishBatch) -> Callable[[Sequence[Row]], SendResult]:
    """Publish alarm rows, QoS 1, not retained, all in flight at once; judge them row by row."""

    def send(rows: Sequence[Row]) -> SendResult:
        messages: list[tuple[str, bytes, int, bool]] = []
        for row in rows:
            topic, payload = alarm_message(row.body)
            messages.append((topic, payload, 1, False))
        return judged(publish_many(messages))

    return send


def judged(outcomes: Sequence[BrokerError | None]) -> SendResult:
    """The worker's view of a batch's publish outcomes (see `Publisher.publish_many`).

    A refusal is that row's alone. From the first row whose acknowledgement did not come,
    the rest is retried: the broker acknowledges in publish order, so on one connection
    nothing after a lost acknowledgement was taken either.
    """
    refused: dict[int, str] = {}
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, PublishRefused):
            refused[index] = str(outcome)
        elif outcome is not None:
            return Partial(index, outcome, refused)
    return Refused(refused) if refused else None


def give_up_alarms(
    sink: str, rows: Sequence[Row], reason: str, *, now_ms: int, new_id: Callable[[], str]
) -> list[NewRow]:
    """The outbox rows of the code-502 alarms for events a sink gave up on."""
    return [
        alarm_row(alarm)
        for alarm in gave_up_alarms(sink, rows, reason, now_ms=now_ms, new_id=new_id)
    ]


def gave_up_alarms(
    sink: str, rows: Sequence[Row], reason: str, *, now_ms: int, new_id: Callable[[], str]
) -> list[alarms.Alarm]:
    """Code-502 alarms for events a sink gave up on: one per message and operation."""
    groups: dict[tuple[str, str, str | None], list[DownstreamEvent]] = {}
    for row in rows:
        event = DownstreamEvent.from_dict(row.decoded())
        groups.setdefault((event.error_topic, str(event.op), event.msg_id), []).append(event)
    return [
        alarms.build(
            error_topic=topic,
            op=op,
            code=alarms.CODE_SINK_GAVE_UP,
            msg=f"sink {sink} gave up: {reason}",
            records=[event.customer for event in events],
            errors=(),
            source_msg_id=msg_id,
            now_ms=now_ms,
            alarm_id=new_id(),
        )
        for (topic, op, msg_id), events in groups.items()
    ]
