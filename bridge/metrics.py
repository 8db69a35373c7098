"""Prometheus metrics of the bridge, in a registry of its own (no process-global state).

Labels never carry personal data: sinks and statuses are configuration, and
rejected fields are reduced to the names of the field tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bridge.spool import Spool

from bridge.records import ADD_EDIT_FIELDS, DELETE_FIELDS

_KNOWN_FIELDS = frozenset(ADD_EDIT_FIELDS) | frozenset(DELETE_FIELDS)
_ENVELOPE_FIELD = re.compile(r"events\.(add|edit|delete)\.(eventTs|eventType|customerList)")
_INDEX = re.compile(r"\[\d+\]")


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


class Metrics:
    """Every metric the bridge exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "bridge_messages_received",
            "MQTT messages taken, by what became of them",
            ["disposition"],
            registry=r,
        )
        self.forwarded = Counter(
            "bridge_records_forwarded", "Records a sink has taken", ["sink"], registry=r
        )
        self.alarms = Counter(
            "bridge_alarms",
            "Alarms queued for publishing, by status and code",
            ["status", "code"],
            registry=r,
        )
        self.rejections = Counter(
            "bridge_rejections", "Validation problems, by field", ["field"], registry=r
        )
        self.retries = Counter(
            "bridge_sink_retries",
            "Failed attempts that were scheduled again",
            ["sink"],
            registry=r,
        )
        self.dead_letters = Counter(
            "bridge_dead_letters", "Records a sink gave up on", ["sink"], registry=r
        )
        self.duplicates = Counter(
            "bridge_dedup_hits", "Messages dropped as redeliveries", registry=r
        )
        self.latency = Histogram(
            "bridge_processing_seconds",
            "From receipt to acknowledgement, per message",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.spool_pending = Gauge(
            "bridge_spool_pending", "Outbox rows waiting for their sink", registry=r
        )
        self.spool_oldest = Gauge(
            "bridge_spool_oldest_age_seconds", "Age of the oldest waiting outbox row", registry=r
        )
        self.connected = Gauge(
            "bridge_broker_connected", "1 while connected and subscribed", registry=r
        )
        self.backpressure = Gauge(
            "bridge_backpressure", "1 while the spool is full and nothing is taken", registry=r
        )

    def watch(
        self,
        pending: Callable[[], float],
        oldest: Callable[[], float],
        connected: Callable[[], bool],
        backpressure: Callable[[], bool],
    ) -> None:
        """Read the gauges from the runtime at scrape time."""
        self.spool_pending.set_function(pending)
        self.spool_oldest.set_function(oldest)
        self.connected.set_function(lambda: float(connected()))
        self.backpressure.set_function(lambda: float(backpressure()))

    def watch_spool(self, spool: Spool) -> None:
        """Export what the spool holds, read from the spool at scrape time (true across
        processes), and the room on its volume."""
        self.registry.register(_SpoolCollector(spool))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _SpoolCollector(Collector):
    """Dead letters, unreadable payloads and free space, counted in the spool when scraped."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """No samples at registration: the spool is read at scrape time only."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One read of the spool per scrape."""
        spool = self._spool
        stored = GaugeMetricFamily(
            "bridge_dead_letters_stored", "Dead letters in the spool, by kind", labels=["kind"]
        )
        counts = spool.dead_counts()
        for kind in ("event", "alarm", "payload"):
            stored.add_metric([kind], counts.get(kind, 0))
        yield stored
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
