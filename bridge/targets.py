"""The sinks and their delivery workers, with the alarm worker: built from the config, swapped
whole on reload, the room between the spool and the systems downstream.

The intake reads `current()` to route each message; a reload builds the new sinks first (a
config whose sinks cannot be built changes nothing), swaps them while the intake is paused
between batches, then stops the old workers and starts the new ones.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from bridge.config import Config, DeliveryConfig
from bridge.core.outbox import ALARMS, NewRow
from bridge.core.pipeline import Pipeline
from bridge.delivery import (
    Lanes,
    Target,
    Worker,
    alarm_row,
    alarm_sender,
    gave_up_alarms,
    lane_thread,
    sink_workers,
)
from bridge.metrics import Metrics
from bridge.mqtt import Publisher
from bridge.sdnotify import Watchdog
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import WHOLE, Row, Spool
from bridge.status import Status

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

ALARM_BATCH = 50
"""Alarm rows published per batch, all in flight at once (capped by the broker's window)."""

DRAIN_TIMEOUT = 30.0
"""Seconds a worker may take to finish its batch when it is stopped."""


class Targets:
    """Every configured sink as a `Target` with its worker (or lanes), and the alarm worker."""

    def __init__(
        self,
        config: Config,
        *,
        spool: Spool,
        publisher: Publisher,
        pipeline: Pipeline,
        status: Status,
        metrics: Metrics,
        watchdog: Watchdog,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._pipeline = pipeline
        self._status = status
        self._metrics = metrics
        self._watchdog = watchdog
        self._log = logger
        self._delivery = config.delivery
        self._targets = self.build(config)
        self._workers = [self._worker(target) for target in self._targets]
        self._alarms = Worker(
            ALARMS,
            alarm_sender(publisher.publish_many),
            spool,
            config.delivery,
            threading.Event(),
            logger,
            batch_size=ALARM_BATCH,
            gave_up=lambda _rows, _reason: [],
            kind="alarm",
            metrics=metrics,
            beat=self._beat_for(lane_thread(ALARMS, WHOLE)),
        )
        self._declare()

    def __iter__(self) -> Iterator[Target]:
        return iter(self._targets)

    def current(self) -> list[Target]:
        """The targets the intake routes to now."""
        return self._targets

    @property
    def names(self) -> list[str]:
        """The configured sinks' names, in config order."""
        return [target.sink.name for target in self._targets]

    @property
    def workers(self) -> list[Worker | Lanes]:
        """The sinks' workers, then the alarm worker."""
        return [*self._workers, self._alarms]

    def build(self, config: Config) -> list[Target]:
        """The targets of `config`'s sinks, not yet in use; ConfigError if one cannot be built."""
        context = SinkContext(
            publish=self._publisher.publish,
            logger=self._log,
            publish_many=self._publisher.publish_many,
        )
        sinks = build_sinks(config.sinks, context)
        return [
            Target(
                sink,
                entry.route,
                entry.batch_size,
                entry.linger,
                entry.after_give_up == "hold",
                entry.lanes,
                entry.handover_budget(),
            )
            for sink, entry in zip(sinks, config.sinks, strict=True)
        ]

    def start(self) -> None:
        """Start every worker's thread."""
        for worker in self.workers:
            worker.start()

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop every worker, wait for each to finish its batch, then close the sinks."""
        workers = self.workers
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(drain_timeout)
        for target in self._targets:
            try:
                target.sink.close()
            except Exception:  # noqa: BLE001 - closing one sink must not keep the others open
                self._log.exception("sink_close_failed", sink=target.sink.name)

    def swap(
        self,
        targets: list[Target],
        delivery: DeliveryConfig,
        paused: Callable[[], AbstractContextManager[object]],
    ) -> None:
        """Put `targets` in place of the current ones while `paused()` holds the intake, then
        stop the old workers, close the old sinks and start the new workers."""
        old_workers = self._workers
        with paused():
            old_targets, self._targets = self._targets, targets
            self._delivery = delivery
        for worker in old_workers:
            for name in worker.thread_names:
                self._watchdog.unregister(name)
            worker.stop()
        for worker in old_workers:
            worker.join(DRAIN_TIMEOUT)
        for target in old_targets:
            with contextlib.suppress(Exception):
                target.sink.close()
        self._declare()
        self._workers = [self._worker(target) for target in targets]
        for worker in self._workers:
            worker.start()

    def taken_directly(self, sink: str, count: int) -> None:
        """Count records the intake handed to `sink` itself."""
        worker = next((w for w in self._workers if w.name == sink), None)
        if worker is not None:
            worker.taken_directly(count)

    def delivered(self) -> dict[str, int]:
        """Records delivered per worker, from the spool or directly."""
        return {worker.name: worker.delivered + worker.direct for worker in self.workers}

    def _worker(self, target: Target) -> Worker | Lanes:
        return sink_workers(
            target,
            self._spool,
            self._delivery,
            self._log,
            gave_up=functools.partial(self._give_up_alarms, target.sink.name),
            metrics=self._metrics,
            beat_for=self._beat_for,
        )

    def _declare(self) -> None:
        self._metrics.declare_sinks(self.names, [target.lanes for target in self._targets])

    def _beat_for(self, name: str) -> Callable[[], None]:
        self._watchdog.register(name)
        return functools.partial(self._watchdog.beat, name)

    def _give_up_alarms(self, sink: str, rows: list[Row], reason: str) -> list[NewRow]:
        if not self._delivery.alarm_on_give_up:
            return []
        built = gave_up_alarms(
            sink, rows, reason, now_ms=self._pipeline.now_ms(), new_id=self._pipeline.new_id
        )
        self._status.gave_up(built)
        return [alarm_row(alarm) for alarm in built]
