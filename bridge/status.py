"""The one place that counts what the bridge did: summary, Prometheus, progress line, STATUS.

The intake reports each message it finished here, the delivery side each give-up alarm; the
final summary, the `progress` log line, the metrics and the sd_notify STATUS text all read
these counters, so they cannot disagree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.core.alarms import Alarm
from bridge.core.digest import Digest
from bridge.core.pipeline import Disposition
from bridge.core.topics import escape
from bridge.metrics import Metrics, field_label
from bridge.sdnotify import Notifier

_PROCESSED = str(Disposition.PROCESSED)


@dataclass
class Stats:
    """Counters of what the bridge has done since it started."""

    received: int = 0
    forwarded: int = 0
    rejected: int = 0
    duplicates: int = 0
    alarms: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    unacked: int = 0
    left_for_redelivery: int = 0
    failed: int = 0
    """Messages the bridge failed on by its own bug (kept raw in the dead letters)."""


class Status:
    """Counts, logs each finished message, and tells systemd and the progress line."""

    def __init__(
        self,
        metrics: Metrics,
        notifier: Notifier,
        logger: structlog.typing.FilteringBoundLogger,
        *,
        pending: Callable[[], int],
        subscribed: Callable[[], bool],
        room_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self.stats = Stats()
        self.metrics = metrics
        self.spool_writable = True
        self.backpressure = False
        self._notifier = notifier
        self._log = logger
        self._pending = pending
        self._subscribed = subscribed
        self._room_ok = room_ok
        self._lock = threading.Lock()  # give-up alarms are counted from the workers' threads
        self._received_by: dict[str, Any] = {}
        # A debug line per message costs as much as validating it: built only when it shows.
        self._debug = logger.is_enabled_for(logging.DEBUG)
        self._text = ""
        self._last_progress = time.monotonic()
        self._progress_received = 0

    def taken(self, count: int) -> None:
        """`count` messages entered the intake."""
        self.stats.received += count

    def unacked(self, count: int) -> None:
        """`count` messages were stored (or not) but could not be acknowledged."""
        self.stats.unacked += count

    def left_for_redelivery(self) -> None:
        """A message arrived while stopping; the broker sends it again next time."""
        self.stats.left_for_redelivery += 1

    def finished(
        self,
        items: Sequence[Digest],
        *,
        duplicates: Set[int],
        acked: bool,
        qos: Sequence[int],
        elapsed: Sequence[float],
    ) -> None:
        """Count a group of messages the intake stored and acknowledged (`acked`: whether
        the acks were written; a QoS 0 message needs none), `elapsed[i]` seconds after
        `items[i]` was received, and log those that call for a line.

        The usual message (forwarded whole, no alarm, no line to log) is only summed; the
        others are counted one by one (docs/performance.md: a metric update per message
        cost as much as the plan of the whole group)."""
        self.metrics.latency.observe_many(elapsed)
        usual = forwarded = 0
        quiet = not self._debug
        for index, item in enumerate(items):
            if (
                quiet
                and item.processed
                and not item.alarms
                and not item.rejected
                and not item.error_fields
                and index not in duplicates
            ):
                usual += 1
                forwarded += len(item.forward)
                continue
            self._finished(
                item,
                duplicate=index in duplicates,
                acked=acked or not qos[index],
                elapsed=elapsed[index],
            )
        if usual:
            self._received(_PROCESSED).inc(usual)
            self.stats.forwarded += forwarded

    def _received(self, disposition: str) -> Any:
        received = self._received_by.get(disposition)
        if received is None:  # labels() takes a lock and a lookup: once per disposition
            received = self._received_by[disposition] = self.metrics.received.labels(
                disposition=disposition
            )
        return received

    def _finished(self, item: Digest, *, duplicate: bool, acked: bool, elapsed: float) -> None:
        """Count one message (but its latency) and log it."""
        self._received("duplicate" if duplicate else item.disposition).inc()
        stats, log = self.stats, self._log
        topic, msg_id = item.topic, item.msg_id
        if item.disposition == Disposition.FAILED:
            stats.failed += 1
            return  # logged at error, and kept in the dead letters, by the intake
        if item.disposition == Disposition.REFUSED_TOPIC:
            stats.ignored[item.disposition] += 1
            log.warning("topic_refused", topic=escape(topic), kept="dead letters", acked=acked)
            return
        if not item.processed:
            stats.ignored[item.disposition] += 1
            log.debug("ignored", topic=topic, msg_id=msg_id, outcome=item.disposition, acked=acked)
            return
        if duplicate:
            self.metrics.duplicates.inc()
            stats.duplicates += 1
            log.info("duplicate", topic=topic, msg_id=msg_id, acked=acked)
            return
        stats.forwarded += len(item.forward)
        stats.rejected += item.rejected
        if item.alarms:
            with self._lock:
                for status, _code in item.alarms:
                    stats.alarms[status] += 1
            for status, code in item.alarms:
                self.metrics.alarms.labels(status=status, code=str(code)).inc()
        for path in item.error_fields:
            self.metrics.rejections.labels(field=field_label(path)).inc()
        # Every message at debug; at info only those that raised an alarm: a line per message
        # at thousands a second would cost more than validating it, and journald's rate limit
        # (10,000 lines per 30 s by default) would drop most of them. `progress` counts the rest.
        if item.alarms:
            emit = log.info
        elif self._debug:
            emit = log.debug
        else:
            return
        emit(
            "message",
            topic=topic,
            msg_id=msg_id,
            ops=list(item.ops),
            forwarded=len(item.forward),
            rejected=item.rejected,
            alarms=len(item.alarms),
            alarm_statuses=[status for status, _code in item.alarms],
            outcome="alarmed" if item.alarms else "forwarded",
            acked=acked,
            duration_ms=round(elapsed * 1000, 2),
        )

    def gave_up(self, built: Sequence[Alarm]) -> None:
        """Count the code-502 alarms of records a sink gave up on."""
        with self._lock:
            for alarm in built:
                self.stats.alarms[alarm.status] += 1
        for alarm in built:
            self.metrics.alarms.labels(status=alarm.status, code=str(alarm.code)).inc()

    def summary(self, delivered: dict[str, int]) -> dict[str, object]:
        """The counters, for the final log line and the demo."""
        stats = self.stats
        return {
            "received": stats.received,
            "forwarded": stats.forwarded,
            "rejected": stats.rejected,
            "duplicates": stats.duplicates,
            # `alarms` is a count in every event; the break-down has its own key (one type per key).
            "alarms": sum(stats.alarms.values()),
            "alarms_by_status": dict(stats.alarms),
            "ignored": dict(stats.ignored),
            "unacked": stats.unacked,
            "left_for_redelivery": stats.left_for_redelivery,
            "failed": stats.failed,
            "delivered": delivered,
        }

    def progress(self, interval: float) -> None:
        """Log a `progress` line every `interval` seconds while messages come in."""
        now = time.monotonic()
        if now - self._last_progress < interval:
            return
        self._last_progress = now
        stats = self.stats
        if stats.received != self._progress_received:
            self._progress_received = stats.received
            self._log.info(
                "progress",
                received=stats.received,
                forwarded=stats.forwarded,
                rejected=stats.rejected,
                duplicates=stats.duplicates,
                alarms=sum(stats.alarms.values()),
                spool_pending=self._pending(),
            )

    def text(self) -> str:
        """The one-line state systemd shows (`systemctl status`)."""
        if not self.spool_writable:
            return "spool not writable; nothing is acknowledged"
        if self.backpressure and not self._room_ok():
            return "back-pressure: spool volume below its free-space floor"
        if self.backpressure:
            return f"back-pressure: spool full ({self._pending()} rows)"
        if self._subscribed():
            return f"subscribed; {self.stats.received} messages, {self._pending()} pending"
        return "connecting to the broker"

    def notify(self) -> None:
        """Send STATUS= to systemd when the text changed."""
        text = self.text()
        if text != self._text:
            self._text = text
            self._notifier.status(text)
