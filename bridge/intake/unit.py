"""The intake: store what the broker sent, then acknowledge it, in receive order.

This is the one place that turns outcomes into acks. Batches arrive from the broker
connection (one per socket read); the intake thread takes everything queued, up to
`spool.intake_batch` messages, validates it, plans it (`bridge.core.plan`), writes the outbox
rows, alarms and de-duplication keys in one spool transaction (one fsync for the whole
group), and only then acknowledges the group on the connection it came on, in the order it
came (MQTT 3.1.1 4.6.0-2). A group never waits for more messages: it is what arrived while
the previous one was being committed, and groups grow with the load. At low rates a group
would be one message, each paying a whole commit (an fsync, the sinks' hand-over, a write of
the acks): a group smaller than `linger_below` waits up to `linger` (2 ms by default) for
more, which at 1,000 msgs/s makes groups of a few messages for that much latency.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import structlog

from bridge.core.digest import Digest, Forward
from bridge.core.outbox import NewRow
from bridge.core.pipeline import Pipeline
from bridge.core.plan import Destination, plan
from bridge.delivery import Failure, Target, hand_over_group
from bridge.intake.connection import BrokerConnection
from bridge.intake.message import InboundMessage
from bridge.intake.workers import (
    BrokenProcessPool,
    DigestPool,
    Item,
    LocalShare,
    Slices,
    digest_message,
)
from bridge.spool import Spool, SpoolError
from bridge.status import Status

PRUNE_EVERY = 60.0
GROUP_BYTES = 2 * 1024 * 1024
"""The most payload one group carries (beyond its first message). The fsync is paid off
long before (a group of 100 messages does it); a bulk import (50 KB envelopes) would
otherwise make groups of hundreds of envelopes, held as documents, events and digests all
at once (docs/performance.md)."""
QUEUE_GROUPS = 4
"""Received payload the intake queues, in groups' worth of `group_bytes`, before the
connection stops reading the socket (the broker keeps the rest)."""


class _Group(NamedTuple):
    """A group taken from the queue, and its digests under way in the workers (if sent):
    the first `sent` messages go to the workers, the rest the intake digests itself.
    `deferred` holds the workers' items while they wait to be handed over."""

    batch: Sequence[InboundMessage]
    slices: Slices | None
    sent: int = 0
    deferred: Sequence[Item] | None = None


class Intake:
    """Receives batches from a `BrokerConnection`, stores them, acknowledges them.

    `targets` is read once per group (the supervisor swaps it on reload while `paused`);
    `taken_directly(sink, count)` tells a sink's worker what the intake handed over itself.
    """

    def __init__(
        self,
        spool: Spool,
        pipeline: Pipeline,
        status: Status,
        logger: structlog.typing.FilteringBoundLogger,
        *,
        targets: Callable[[], Sequence[Target]],
        taken_directly: Callable[[str, int], None],
        group: int,
        max_pending: int,
        queue_limit: int,
        beat: Callable[[], None] = lambda: None,
        pool: DigestPool | None = None,
        pool_threshold: int = 16,
        group_bytes: int | None = None,
        linger: float = 0.0,
        linger_below: int = 16,
    ) -> None:
        self.connection: BrokerConnection | None = None
        self.stopping = threading.Event()  # take no more, give up waiting for room
        self._spool = spool
        self._pipeline = pipeline
        self._status = status
        self._log = logger
        self._targets = targets
        self._taken_directly = taken_directly
        # With workers, two groups are in flight at once (one digested, one committed): each
        # takes at most half, so that both fit in the broker's window of unacknowledged
        # messages (receive_maximum, as large as intake_batch by default).
        self._group = max(group // 2, 1) if pool is not None else group
        self._max_pending = max_pending
        self._queue_limit = queue_limit
        self._beat = beat
        self._pool = pool
        self.share = LocalShare()
        """The part of each group this thread digests itself beside the workers."""
        # What one group may carry: a commit writes about four times its payload (the rows,
        # their index entries, the log), and must stay well inside the room above the floor.
        self._group_bytes = (
            group_bytes if group_bytes is not None else max(min(spool.floor // 16, GROUP_BYTES), 1)
        )
        self._queue_bytes_limit = QUEUE_GROUPS * self._group_bytes
        self._queue_bytes = 0
        self._pool_threshold = pool_threshold  # below it, a hand-off costs more than the work
        # Below 16 a group is digested here, not in the workers, and its commit's fixed cost
        # outweighs its messages' work; at 5,000 msgs/s groups are larger, and a wait there
        # only held the workers idle (docs/performance.md).
        self._linger = linger
        self._linger_below = min(linger_below, self._group)
        self._queue: collections.deque[InboundMessage] = collections.deque()
        self._ready = threading.Condition()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="bridge-intake", daemon=True)
        self._last_prune = 0.0

    # --- the connection's side ---------------------------------------------------------

    def on_batch(self, batch: list[InboundMessage]) -> None:
        """Take one read's messages (the connection's thread). Once stopping, they are left
        unacknowledged: the broker keeps them in the session and sends them again."""
        with self._ready:
            # QoS 1 traffic is bounded by the Receive Maximum; this bound holds back a QoS 0
            # flood, by not reading the socket further, instead of growing memory.
            # A bulk import fills the byte bound first: a read of 50 KB envelopes holds the
            # socket until the intake has taken most of what came before.
            while (
                len(self._queue) >= self._queue_limit
                or self._queue_bytes >= self._queue_bytes_limit
            ) and not self.stopping.is_set():
                self._ready.wait(0.5)
            if self.stopping.is_set():
                for _ in batch:
                    self._status.left_for_redelivery()
                return
            self._queue.extend(batch)
            self._queue_bytes += sum(len(m.payload) for m in batch)
            self._ready.notify_all()

    # --- life cycle --------------------------------------------------------------------

    def attach(self, connection: BrokerConnection) -> None:
        """Take acks to `connection` (done by `start`; a test driving `process` calls it)."""
        self.connection = connection

    def start(self, connection: BrokerConnection) -> None:
        """Start the intake thread, then the connection that feeds it."""
        self.attach(connection)
        self._thread.start()
        connection.start()

    def stop(self, timeout: float) -> None:
        """Take nothing new; store and acknowledge what was taken, within `timeout`."""
        self.stopping.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        """Messages received and not yet taken into a group."""
        return len(self._queue)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the intake between two groups (a reload swaps the sinks meanwhile)."""
        with self._lock:
            yield

    # --- the intake thread -------------------------------------------------------------

    def _take(self, *, wait: bool = True) -> list[InboundMessage] | None:
        """The next group: what is queued, up to `group` messages; None once stopped empty.
        Without `wait`, an empty queue gives [] at once."""
        with self._ready:
            while not self._queue:
                if self.stopping.is_set():
                    return None
                if not wait:
                    return []
                self._ready.wait(1.0)
                if not self._queue:
                    return []
            if wait and self._linger and len(self._queue) < self._linger_below:
                self._linger_for_more()
            # At most `group` messages, and (beyond the first) at most `group_bytes` of payload:
            # a commit must fit in the room the spool keeps above its free-space floor.
            batch = [self._queue.popleft()]
            size = len(batch[0].payload)
            queue, limit, budget = self._queue, self._group, self._group_bytes
            while queue and len(batch) < limit and size + len(queue[0].payload) <= budget:
                message = queue.popleft()
                size += len(message.payload)
                batch.append(message)
            self._queue_bytes -= size
            self._ready.notify_all()
            return batch

    def _linger_for_more(self) -> None:
        """Wait (holding `_ready`'s lock between waits) until `linger` has passed since now,
        enough messages are queued, or the intake stops."""
        deadline = time.monotonic() + self._linger
        while len(self._queue) < self._linger_below and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._ready.wait(remaining)

    def _work(self) -> None:
        # Two groups in flight at most: while this thread digests its share of group n, then
        # plans, stores and acks it, the workers digest their part of n and then of n+1. Group
        # n+1 is taken and handed over as soon as this thread's share of n is done, before n's
        # digests are collected, so that it waits in the worker's pipe and the worker goes from
        # one slice to the next without waiting for this thread (docs/performance.md). Groups
        # are finished, and so acknowledged, in the order taken.
        pending: _Group | None = None
        following: list[_Group] = []

        def hand_over_next() -> None:
            batch = self._take(wait=False)
            if batch:
                following.append(self._submit(batch, ahead=True))

        while True:
            self._beat()
            if pending is None:
                batch = self._take()
                if batch is None:
                    return  # everything taken was stored and acknowledged
                if not batch:
                    continue
                pending = self._submit(batch)
            group, pending = pending, None
            try:
                try:
                    digests = self._digests(group, hand_over_next)
                finally:
                    # Taken from the queue: it must be finished even if this group is not (a
                    # slice still held is then digested here, the workers' answers unread).
                    if following:
                        pending = following.pop()
                if pending is not None:
                    pending = self._hand_over_deferred(pending)
                self._wait_for_room()
                with self._lock:
                    self._finish(group.batch, digests)
                self._prune()
            except Exception:  # noqa: BLE001 - the intake must outlive any one group
                with contextlib.suppress(Exception):  # even a log line that cannot be written
                    self._log.exception("intake_failed", messages=len(group.batch))

    def _wait_for_room(self) -> None:
        spool, status, limit = self._spool, self._status, self._max_pending
        # Two reasons to wait: the outbox is full, or the spool's volume is below its free-space
        # floor (the workers go on delivering and deleting; the broker keeps what we do not take).
        while (spool.pending >= limit or not spool.has_room()) and not self.stopping.is_set():
            if not status.backpressure:
                status.backpressure = True
                self._log.warning(
                    "backpressure_on",
                    spool_pending=spool.pending,
                    limit=limit,
                    reason="spool_room" if not spool.room_ok else "max_pending",
                )
            self._beat()
            self.stopping.wait(0.2)
        if status.backpressure:
            status.backpressure = False
            self._log.info("backpressure_off", spool_pending=spool.pending)

    def process(self, batch: Sequence[InboundMessage]) -> None:
        """Validate a group, store it in one transaction, then acknowledge it in order."""
        self._finish(batch, self._digests(self._submit(batch), lambda: None))

    def _finish(self, batch: Sequence[InboundMessage], digested: Sequence[Digest]) -> None:
        """Store a digested group in one transaction, then acknowledge it in order."""
        connection = self.connection
        assert connection is not None, "attach() or start() first"
        generation = connection.generation
        # Taken on a connection that has since dropped (maybe while its digests were made):
        # the broker sends it again.
        if all(m.generation == generation for m in batch):
            current, digests = list(batch), list(digested)
        else:
            kept = [
                (m, d) for m, d in zip(batch, digested, strict=True) if m.generation == generation
            ]
            current, digests = [m for m, _ in kept], [d for _, d in kept]
        if not current:
            return
        self._status.taken(len(current))
        payloads = [m.payload for m in current]
        spool = self._spool
        seen = spool.seen(d.key for d in digests if d.key is not None)
        targets = {t.sink.name: t for t in self._targets()}
        # A caught-up local sink takes the group's events here, before the commit (so a crash
        # in between can only repeat them); the others, and what it refuses, go to the spool.
        # Not while the sink has dead letters: what overtakes them (or is held behind them)
        # is known only to rows that pass through the outbox.
        at = time.monotonic()
        caught_up = {
            name
            for name, t in targets.items()
            if t.takes_directly(at) and not spool.has_pending(name) and not spool.has_dead(name)
        }
        destinations = [Destination(name, t.route) for name, t in targets.items()]
        planned = plan(digests, payloads, seen, destinations, caught_up)
        rows = planned.rows
        for name, records in planned.direct.items():
            if records:
                rows.extend(self._deliver_direct(targets[name], records))
        if planned.writes and not self._store(rows, planned.keys, planned.raws):
            self._status.unacked(len(current))
            return
        ids = [m.mid for m in current if m.qos]
        acked = connection.ack(generation, ids) if ids else True
        if not acked:
            self._status.unacked(len(ids))
        now = time.monotonic_ns()
        self._status.finished(
            digests,
            duplicates=planned.duplicates,
            acked=acked,
            qos=[m.qos for m in current],
            elapsed=[(now - m.received_ns) / 1e9 for m in current],
        )

    def _submit(self, batch: Sequence[InboundMessage], *, ahead: bool = False) -> _Group:
        """Start digesting a group in the workers, but for this thread's share of it; a small
        group is digested here, later. `ahead`: the workers may still be busy with the group
        before, whose digests are not read yet; a slice too large to wait in a worker's pipe
        is then held until they are (`_hand_over_deferred`)."""
        pool = self._pool
        if pool is not None and len(batch) >= self._pool_threshold:
            sent = len(batch) - self.share.local(len(batch))
            items = [(m.topic, m.payload) for m in batch[:sent]]
            if ahead and not pool.can_queue(items):
                return _Group(batch, None, sent, items)
            return _Group(batch, pool.submit(items), sent)
        return _Group(batch, None)

    def _hand_over_deferred(self, group: _Group) -> _Group:
        """Hand a held slice to the workers, now that the group before was collected."""
        if group.deferred is None or self._pool is None:
            return group
        return group._replace(slices=self._pool.submit(group.deferred), deferred=None)

    def _digests(self, group: _Group, hand_over_next: Callable[[], None]) -> list[Digest]:
        """The group's digests, in order. With workers, `hand_over_next` is called once this
        thread's share is done and before the workers' part is collected."""
        pool, slices = self._pool, group.slices
        pipeline, log = self._pipeline, self._log
        if pool is not None and slices is not None:
            # This thread's share first, while the workers digest theirs; then theirs, in order.
            here = [
                digest_message(pipeline, log, m.topic, m.payload) for m in group.batch[group.sent :]
            ]
            self.share.update(workers_done=pool.ready(slices))
            hand_over_next()
            try:
                return pool.collect(slices, self._log) + here
            except BrokenProcessPool:
                # Nothing of this group was stored or acknowledged: it is digested here instead.
                self._log.error(
                    "digest_worker_died", messages=len(group.batch), restarts=pool.restarts
                )
                pool.restart(slices)
            theirs = group.batch[: group.sent]
            return [digest_message(pipeline, log, m.topic, m.payload) for m in theirs] + here
        if pool is not None:
            hand_over_next()  # a small group, digested here: the next may be large
        return [digest_message(pipeline, log, m.topic, m.payload) for m in group.batch]

    def _deliver_direct(self, target: Target, records: list[Forward]) -> list[NewRow]:
        """Hand records to a caught-up sink; return the rows of what it did not take."""
        name = target.sink.name
        started = time.monotonic()
        budget = target.budget
        handed = hand_over_group(target, records, None if budget is None else started + budget)
        now = time.monotonic()
        if target.gate.took(now - started, budget, now):
            self._log.warning(
                "sink_direct_paused",
                sink=name,
                seconds=round(now - started, 3),
                budget=budget,
                pause=target.gate.pause,
                left=len(records) - handed.taken,
            )
        # What it refused, and what it did not take, go through the outbox, whose worker
        # gives up on the first and retries the rest.
        failure, taken, refused = handed.failure, handed.taken, handed.refused
        if failure is not None:
            self._log.warning(
                "sink_failed",
                sink=name,
                reason=Failure.of(failure).reason,
                records=len(records) - taken,
                direct=True,
            )
        if taken - len(refused) > 0:
            self._taken_directly(name, taken - len(refused))
        return [
            NewRow(name, record.okey, record.body)
            for index, record in enumerate(records)
            if index >= taken or index in refused
        ]

    def _store(
        self, rows: list[NewRow], keys: list[str], raws: list[tuple[str, bytes, str]]
    ) -> bool:
        # Nothing is acknowledged until this commits; retry until it does or we stop.
        delay = 0.1
        failing = False
        while True:
            try:
                self._spool.store(rows, keys, raws)
            except SpoolError as exc:
                self._status.spool_writable = False
                if not failing:
                    self._log.error("spool_write_failed", reason=str(exc), messages=len(keys))
                    failing = True
                self._beat()
                if self.stopping.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                self._status.spool_writable = True
                self._log.info("spool_write_recovered")
            return True

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            self._spool.prune_seen()
