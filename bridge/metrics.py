"""Prometheus metrics of the bridge, in a registry of its own (no process-global state).

Labels never carry personal data: sinks and statuses are configuration, and rejected fields
are reduced to the names of the field tables. Every series an operator alerts on exists from
the start (at 0), so `rate()` and `absent()` work before the first event. Sections below
follow the path of a message: intake, alarms, delivery, spool, process health.
"""

from __future__ import annotations

import bisect
import math
import platform
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from bridge.spool import Spool

from bridge import __version__, version
from bridge.core.alarms import CODE_INVALID, CODE_SINK_GAVE_UP, MESSAGE_STATUS, status_of
from bridge.core.pipeline import Disposition
from bridge.core.records import ADD_EDIT_FIELDS, DELETE_FIELDS, Op

_KNOWN_FIELDS = frozenset(ADD_EDIT_FIELDS) | frozenset(DELETE_FIELDS)
_ENVELOPE_FIELD = re.compile(r"events\.(add|edit|delete)\.(eventTs|eventType|customerList)")
_INDEX = re.compile(r"\[\d+\]")
_ENVELOPE_LABELS = ("msgId", "reportTs", "events", "payload", "profile", "other")
REJECTION_FIELDS = tuple(
    sorted(_KNOWN_FIELDS | {*_ENVELOPE_LABELS, "eventTs", "eventType", "customerList"})
)
"""Every value `field_label` gives: a bounded set, created at 0 like the other series."""

DISPOSITIONS = (*(str(d) for d in Disposition), "duplicate")
ALARM_STATUSES = (*(status_of(str(op)) for op in Op), MESSAGE_STATUS)
ALARM_CODES = (str(CODE_INVALID), str(CODE_SINK_GAVE_UP))
DEAD_LETTER_KINDS = ("event", "alarm", "payload")
READINESS_CHECKS = ("subscribed", "spool_writable", "accepting", "spool_room")
ALARM_KIND = "alarm"
"""The delivery kind of the worker that publishes alarms: counted as alarms, not as a sink."""


def field_label(path: str) -> str:
    """A bounded label for a rejected field path (`spaceIds[3]` -> `spaceIds`)."""
    bare = _INDEX.sub("", path)
    if bare in _KNOWN_FIELDS or bare in ("msgId", "reportTs", "events", ""):
        return bare or "payload"
    if bare.startswith("profile."):
        return "profile"
    match = _ENVELOPE_FIELD.fullmatch(bare)
    if match:
        return match.group(2)
    return "other"


class _Scraped(Collector):
    """Gauges read from the runtime at scrape time: readiness, dead letters, heartbeats."""

    def __init__(self) -> None:
        self.readiness: Callable[[], Mapping[str, bool]] | None = None
        self.dead_letters: Callable[[], Mapping[str, int]] | None = None
        self.heartbeats: Callable[[], Mapping[str, float]] | None = None
        self.heartbeat_limit: float | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families({}, {}, {}))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = dict(self.readiness()) if self.readiness else {}
        dead = dict(self.dead_letters()) if self.dead_letters else {}
        beats = dict(self.heartbeats()) if self.heartbeats else {}
        return list(self._families(ready, dead, beats))

    def _families(
        self, ready: Mapping[str, bool], dead: Mapping[str, int], beats: Mapping[str, float]
    ) -> Iterator[GaugeMetricFamily]:
        overall = GaugeMetricFamily("bridge_ready", "1 while /readyz answers 200")
        overall.add_metric([], float(bool(ready) and all(ready.values())))
        yield overall
        checks = GaugeMetricFamily(
            "bridge_ready_check", "1 while a readiness check passes, by check", labels=["check"]
        )
        for check in sorted({*READINESS_CHECKS, *ready}):
            checks.add_metric([check], float(ready.get(check, False)))
        yield checks
        stored = GaugeMetricFamily(
            "bridge_dead_letters_stored",
            "Dead letters kept in the spool, by kind (event, alarm, payload)",
            labels=["kind"],
        )
        for kind in sorted({*DEAD_LETTER_KINDS, *dead}):
            stored.add_metric([kind], float(dead.get(kind, 0)))
        yield stored
        ages = GaugeMetricFamily(
            "bridge_heartbeat_age_seconds",
            "Seconds since each watched thread last showed progress",
            labels=["component"],
        )
        for component, age in sorted(beats.items()):
            ages.add_metric([component], age)
        yield ages
        limit = GaugeMetricFamily(
            "bridge_heartbeat_limit_seconds",
            "Heartbeat age past which the systemd watchdog is no longer pinged",
        )
        if self.heartbeat_limit is not None:
            limit.add_metric([], self.heartbeat_limit)
        yield limit


class GroupHistogram(Collector):
    """A histogram without labels observed a group of values at a time.

    The intake finishes messages in groups of hundreds: a `prometheus_client.Histogram`
    takes two locks per value (its sum, then its bucket), this one a bisect per value and
    one lock per group. The exposition is the same (`_bucket` by `le`, cumulative, with
    `+Inf`, then `_count`, `_sum` and `_created`).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*sorted(float(b) for b in buckets if b != math.inf), math.inf)
        # The library's own spelling of a bound (`1.0`, `+Inf`), as its Histogram writes it.
        self._labels = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one value."""
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        """Count each of `values`: in the first bucket whose bound it does not exceed."""
        counts = [0] * len(self._bounds)
        bounds, total = self._bounds, 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for label, count in zip(self._labels, counts, strict=True):
            running += count
            cumulative.append((label, float(running)))
        family = HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=total
        )
        family.samples.append(Sample(f"{self._name}_created", {}, self._created))
        yield family


class Metrics:
    """Every metric the bridge exports."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            # process_* (CPU, memory, open files, start time), python_info and python_gc_*.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.build_info = Gauge(
            "bridge_build_info",
            "Always 1; the labels say which bridge (version, git commit) and Python run",
            ["version", "commit", "python_version"],
            registry=r,
        )
        self.build_info.labels(
            version=__version__, commit=version.commit(), python_version=platform.python_version()
        ).set(1)

        # intake
        self.received = Counter(
            "bridge_messages_received",
            "MQTT messages taken, by what became of them",
            ["disposition"],
            registry=r,
        )
        self.rejections = Counter(
            "bridge_rejections", "Validation problems, by field", ["field"], registry=r
        )
        self.duplicates = Counter(
            "bridge_dedup_hits", "Messages dropped as redeliveries", registry=r
        )
        self.latency = GroupHistogram(
            "bridge_processing_seconds",
            "Seconds from receipt to acknowledgement, per message",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            r,
        )
        for disposition in DISPOSITIONS:
            self.received.labels(disposition=disposition)
        for field in REJECTION_FIELDS:
            self.rejections.labels(field=field)

        # alarms: raised by validation or a give-up, then published by their own worker
        self.alarms = Counter(
            "bridge_alarms",
            "Alarms queued for publishing, by status and code",
            ["status", "code"],
            registry=r,
        )
        self.alarms_published = Counter(
            "bridge_alarms_published", "Alarms the broker has taken", registry=r
        )
        self.alarm_retries = Counter(
            "bridge_alarm_retries", "Failed alarm publishes that were scheduled again", registry=r
        )
        self.alarms_given_up = Counter(
            "bridge_alarms_given_up", "Alarms moved to the dead letters unpublished", registry=r
        )
        for status in ALARM_STATUSES:
            for code in ALARM_CODES:
                self.alarms.labels(status=status, code=code)

        # delivery, per sink
        self.forwarded = Counter(
            "bridge_records_forwarded", "Records a sink has taken", ["sink"], registry=r
        )
        self.retries = Counter(
            "bridge_sink_retries",
            "Failed sends to a sink that were scheduled again",
            ["sink"],
            registry=r,
        )
        self.dead_letters = Counter(
            "bridge_dead_letters", "Records a sink gave up on", ["sink"], registry=r
        )
        self.failing = Gauge(
            "bridge_sink_failing",
            "1 from a failed send to a sink until its next delivery",
            ["sink"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bridge_sink_in_flight",
            "Batches handed to a sink and not yet answered",
            ["sink"],
            registry=r,
        )
        self.lanes = Gauge(
            "bridge_sink_lanes",
            "Delivery lanes of a sink: how many batches it may have in flight at once",
            ["sink"],
            registry=r,
        )
        self.delivery_age = Histogram(
            "bridge_delivery_seconds",
            "Seconds from spooling to delivery, per batch, of its oldest record",
            ["sink"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )

        # spool and broker
        self.spool_pending = Gauge(
            "bridge_spool_pending", "Outbox rows waiting for their sink", registry=r
        )
        self.spool_oldest = Gauge(
            "bridge_spool_oldest_age_seconds",
            "Seconds the oldest waiting outbox row has waited",
            registry=r,
        )
        self.connected = Gauge(
            "bridge_broker_connected", "1 while connected and subscribed", registry=r
        )
        self.backpressure = Gauge(
            "bridge_backpressure", "1 while the spool is full and nothing is taken", registry=r
        )

        # readiness, dead letters stored, heartbeats: read at scrape time
        self._scraped = _Scraped()
        r.register(self._scraped)

    def declare_sinks(self, names: Sequence[str], lanes: Sequence[int] = ()) -> None:
        """Create every series of these sinks at 0, so that they exist before any event;
        `lanes` gives each sink's lane count (1 for those it does not reach)."""
        counts = list(lanes) + [1] * (len(names) - len(lanes))
        for name, count in zip(names, counts, strict=True):
            self.in_flight.labels(sink=name).set(0)
            self.lanes.labels(sink=name).set(count)
            self.forwarded.labels(sink=name)
            self.retries.labels(sink=name)
            self.dead_letters.labels(sink=name)
            self.failing.labels(sink=name).set(0)
            self.delivery_age.labels(sink=name)

    def delivered(self, target: str, kind: str, records: int, oldest_age: float) -> None:
        """A worker's target took `records`; the oldest of them was spooled `oldest_age` ago."""
        if kind == ALARM_KIND:
            self.alarms_published.inc(records)
            return
        self.forwarded.labels(sink=target).inc(records)
        self.failing.labels(sink=target).set(0)
        self.delivery_age.labels(sink=target).observe(max(0.0, oldest_age))

    def sending(self, target: str, kind: str, change: int) -> None:
        """A batch was handed to the target (`change` 1) or answered (-1)."""
        if kind != ALARM_KIND:
            self.in_flight.labels(sink=target).inc(change)

    def taken_directly(self, target: str, records: int) -> None:
        """The intake handed `records` to a local sink itself (no spool row, no retry)."""
        self.forwarded.labels(sink=target).inc(records)

    def retried(self, target: str, kind: str) -> None:
        """A send failed and its rows wait for a retry."""
        if kind == ALARM_KIND:
            self.alarm_retries.inc()
            return
        self.retries.labels(sink=target).inc()
        self.failing.labels(sink=target).set(1)

    def gave_up(self, target: str, kind: str, records: int) -> None:
        """`records` went to the dead letters."""
        if kind == ALARM_KIND:
            self.alarms_given_up.inc(records)
            return
        self.dead_letters.labels(sink=target).inc(records)

    def watch(
        self,
        pending: Callable[[], float],
        oldest: Callable[[], float],
        connected: Callable[[], bool],
        backpressure: Callable[[], bool],
        *,
        readiness: Callable[[], Mapping[str, bool]] | None = None,
        dead_letters: Callable[[], Mapping[str, int]] | None = None,
        heartbeats: Callable[[], Mapping[str, float]] | None = None,
        heartbeat_limit: float | None = None,
    ) -> None:
        """Read the gauges from the runtime at scrape time."""
        self.spool_pending.set_function(pending)
        self.spool_oldest.set_function(oldest)
        self.connected.set_function(lambda: float(connected()))
        self.backpressure.set_function(lambda: float(backpressure()))
        self._scraped.readiness = readiness
        self._scraped.dead_letters = dead_letters
        self._scraped.heartbeats = heartbeats
        self._scraped.heartbeat_limit = heartbeat_limit

    def watch_spool(self, spool: Spool) -> None:
        """Export what the spool holds, read from the spool at scrape time (true across
        processes), and the room on its volume."""
        self.registry.register(_SpoolCollector(spool))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _SpoolCollector(Collector):
    """Unreadable payloads and free space, read from the spool when scraped (the dead letters
    by kind are exported with the other watched figures)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """No samples at registration: the spool is read at scrape time only."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One read of the spool per scrape."""
        spool = self._spool
        unreadable = GaugeMetricFamily(
            "bridge_unreadable_payloads",
            "Unreadable payloads: kept raw, as metadata only past the quota, or only counted",
            labels=["kept"],
        )
        for kept, n in spool.unreadable().items():
            unreadable.add_metric([kept], n)
        yield unreadable
        room = spool.room()
        yield GaugeMetricFamily(
            "bridge_spool_free_bytes",
            "Bytes new rows can take: free on the spool's volume plus free inside the spool",
            value=room.available,
        )
        yield GaugeMetricFamily(
            "bridge_spool_floor_bytes",
            "Below this the intake takes nothing (the broker keeps the messages)",
            value=room.floor,
        )
        yield GaugeMetricFamily(
            "bridge_spool_room",
            "1 while the volume is above the floor, 0 while the intake waits for room",
            value=float(room.enough),
        )
        yield GaugeMetricFamily(
            "bridge_spool_reserve_held",
            "1 while the reserve file holds its space; 0 once a full disk made it give it up",
            value=float(room.reserve_held),
        )
