"""The supervisor: builds the rooms of the message path, starts and stops them, reloads.

The rooms: the intake (`bridge.intake.unit`: store, then ack, in receive order) fed by the
broker connection (`bridge.intake.connection`); the targets (each sink with its delivery
worker, swapped on reload); the alarm worker publishing through `bridge.mqtt.Publisher`;
and the status (`bridge.status`), which every count, the metrics, the progress line and
sd_notify read. What is left here is life cycle, signals and reload.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from bridge import config as config_module
from bridge.config import Config
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
from bridge.errors import ConfigError
from bridge.health import HealthServer
from bridge.intake import connection as intake_connection
from bridge.intake.connection import BrokerConnection
from bridge.intake.unit import Intake
from bridge.intake.workers import DigestPool, default_processes
from bridge.metrics import Metrics
from bridge.mqtt import Publisher
from bridge.sdnotify import Notifier, Watchdog
from bridge.signals import requested as early_stop
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import WHOLE, Row, Spool
from bridge.status import Stats, Status

if TYPE_CHECKING:
    from bridge.broker import EmbeddedBroker

DRAIN_TIMEOUT = 30.0
READY_GRACE = 60.0
ALARM_BATCH = 50

__all__ = ["Bridge", "Stats"]


class Bridge:
    """The daemon: start, handle messages until asked to stop, drain, stop.

    `connection` replaces the real broker connection (tests pass a
    `bridge.testing.FakeConnection`); the publisher still needs a broker for alarms.
    """

    def __init__(
        self,
        config: Config,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        *,
        connection: Callable[[Intake], BrokerConnection] | None = None,
    ) -> None:
        self.config = config
        self.log = logger or structlog.get_logger("bridge")
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self.notifier = Notifier()
        self.watchdog = Watchdog(
            self.notifier,
            stale_after=self.notifier.watchdog_interval or 30.0,
            on_stale=self._on_stale,
        )
        self.watchdog.register("intake")
        self._stopped = threading.Event()
        selection = config.subscription.selection()
        self.pipeline = Pipeline(config.validation.rules(), selection)
        self.embedded: EmbeddedBroker | None = None
        self.publisher = Publisher(config.broker, self.log)
        spool = config.spool
        self.spool = Spool(
            spool.path,
            synchronous=spool.synchronous,
            dedup_max_keys=spool.dedup_max_keys,
            dedup_max_age=spool.dedup_max_age,
            storage=spool.storage(),
            logger=self.log,
            hold_reserve=True,
        )
        self.status = Status(
            self.metrics,
            self.notifier,
            self.log,
            pending=lambda: self.spool.pending,
            subscribed=lambda: self.connection.subscribed.is_set(),  # noqa: PLW0108 - built below
            room_ok=lambda: self.spool.room_ok,
        )
        self.targets = self._build_targets(config)
        self.workers: list[Worker | Lanes] = [self._sink_worker(t, config) for t in self.targets]
        self.workers.append(
            Worker(
                ALARMS,
                alarm_sender(self.publisher.publish_many),
                self.spool,
                config.delivery,
                threading.Event(),
                self.log,
                batch_size=ALARM_BATCH,
                gave_up=lambda _rows, _reason: [],
                kind="alarm",
                metrics=self.metrics,
                beat=self._beat_for(lane_thread(ALARMS, WHOLE)),
            )
        )
        processes = config.validation.workers
        if processes == "auto":
            processes = default_processes()
        self.pool = DigestPool(processes, config) if processes else None
        self.intake = Intake(
            self.spool,
            self.pipeline,
            self.status,
            self.log,
            targets=lambda: self.targets,
            taken_directly=self._taken_directly,
            group=spool.intake_batch,
            max_pending=spool.max_pending,
            queue_limit=config.broker.receive_maximum + spool.intake_batch,
            beat=functools.partial(self.watchdog.beat, "intake"),
            pool=self.pool,
        )
        if connection is None:
            self.connection: BrokerConnection = intake_connection.connect(
                config.broker, selection.filters(), self.intake.on_batch, self.log
            )
        else:
            self.connection = connection(self.intake)
        self.metrics.declare_sinks(
            [target.sink.name for target in self.targets], [t.lanes for t in self.targets]
        )
        self.metrics.watch(
            pending=lambda: self.spool.pending,
            oldest=self.spool.oldest_age,
            connected=self.connection.subscribed.is_set,
            backpressure=lambda: self.status.backpressure,
            readiness=self.readiness,
            dead_letters=self.spool.dead_by_kind,
            heartbeats=self.watchdog.ages,
            heartbeat_limit=self.watchdog.stale_after,
        )
        self.metrics.watch_spool(self.spool)

    @property
    def stats(self) -> Stats:
        """What the bridge has done since it started."""
        return self.status.stats

    # life cycle

    def start(self) -> None:
        """Start the embedded broker if configured, the workers, and the broker connection."""
        broker = self.config.broker
        if broker.embedded:
            # Imported only when configured: amqtt is the optional `embedded` extra.
            from bridge.broker import EmbeddedBroker  # noqa: PLC0415

            self.embedded = EmbeddedBroker(broker.host, broker.port)
            self.embedded.start()
            self.log.info("embedded_broker_started", port=self.embedded.port)
        known = {worker.name for worker in self.workers}
        orphans = {t: n for t, n in self.spool.targets().items() if t not in known}
        if orphans:
            # Rows for sinks no longer configured stay until the sink comes back (or a purge).
            self.log.warning("spool_orphans", pending=orphans)
        health = self.config.health
        if health.enabled:
            self.health = HealthServer(
                health.host, health.port, self.readiness, self.metrics.render
            )
            self.health.start()
        for worker in self.workers:
            worker.start()
        self.publisher.start()
        if self.pool is not None:
            self.log.info("workers_started", pids=self.pool.warm())
        self.intake.start(self.connection)
        self.watchdog.start()
        threading.Thread(target=self._announce_ready, name="bridge-ready", daemon=True).start()
        self.status.notify()
        self.log.info(
            "started",
            filters=self.pipeline.selection.filters(),
            sinks=[t.sink.name for t in self.targets],
            mode=str(self.pipeline.rules.mode),
            spool=str(self.spool.path),
            spool_pending=self.spool.pending,
            health_port=self.health.port if self.health else None,
        )

    def _announce_ready(self) -> None:
        # READY=1 once subscribed; but a broker that is down must not fail the start (systemd
        # kills a notify service that stays silent past TimeoutStartSec, 90 s by default), so
        # after READY_GRACE the bridge says it is up anyway, and keeps connecting.
        if self.connection.subscribed.wait(READY_GRACE):
            self.notifier.ready()
            return
        if self.intake.stopping.is_set():
            return
        self.log.warning("ready_without_broker", waited=READY_GRACE)
        self.notifier.ready()

    def readiness(self) -> dict[str, bool]:
        """What /readyz checks: connected and subscribed, spool writable, not back-pressured."""
        return {
            "subscribed": self.connection.subscribed.is_set(),
            "spool_writable": self.status.spool_writable,
            "accepting": not self.status.backpressure,
            "spool_room": self.spool.has_room(),
        }

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed."""
        return self.connection.subscribed.wait(timeout)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop taking messages, store and ack those taken, stop workers, disconnect."""
        if self._stopped.is_set():
            return
        self.notifier.stopping()
        self.watchdog.stop()
        self.log.info("stopping", queued=self.intake.queued, spool_pending=self.spool.pending)
        self.intake.stop(drain_timeout)
        if self.pool is not None:
            self.pool.close()
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(drain_timeout)
        self.connection.stop()
        self.publisher.stop()
        for target in self.targets:
            try:
                target.sink.close()
            except Exception:  # closing one sink must not keep the others open
                self.log.exception("sink_close_failed", sink=target.sink.name)
        self.spool.close()
        if self.health is not None:
            self.health.stop()
        if self.embedded is not None:
            self.embedded.stop()
        self._stopped.set()
        self.log.info("stopped", **self.summary())

    def run(self, config_path: Path | None = None) -> int:
        """Run until SIGTERM or SIGINT (SIGHUP reloads `config_path`); return the exit status."""
        requested = threading.Event()
        reload_asked = threading.Event()

        def on_stop(_signum: int, _frame: FrameType | None) -> None:
            requested.set()

        def on_hangup(_signum: int, _frame: FrameType | None) -> None:
            reload_asked.set()

        previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
        if early_stop.is_set():  # asked to stop while loading: nothing was taken, nothing is
            self.spool.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.info("stopped_before_start")
            return 0
        try:
            self.start()
            while not requested.wait(0.5):
                self.status.notify()
                self.status.progress(self.config.logging.progress_interval)
                if reload_asked.is_set():
                    reload_asked.clear()
                    if config_path is None:
                        self.log.warning("reload_ignored", reason="no config file")
                    else:
                        self.reload(config_path)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def summary(self) -> dict[str, object]:
        """The counters, for the final log line and the demo."""
        return self.status.summary({w.name: w.delivered + w.direct for w in self.workers})

    # sinks and reload

    def _build_targets(self, config: Config) -> list[Target]:
        context = SinkContext(
            publish=self.publisher.publish,
            logger=self.log,
            publish_many=self.publisher.publish_many,
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
            )
            for sink, entry in zip(sinks, config.sinks, strict=True)
        ]

    def _sink_worker(self, target: Target, config: Config) -> Worker | Lanes:
        return sink_workers(
            target,
            self.spool,
            config.delivery,
            self.log,
            gave_up=functools.partial(self._give_up_alarms, target.sink.name),
            metrics=self.metrics,
            beat_for=self._beat_for,
        )

    def _taken_directly(self, sink: str, count: int) -> None:
        worker = next((w for w in self.workers if w.name == sink), None)
        if worker is not None:
            worker.taken_directly(count)

    def _beat_for(self, name: str) -> Callable[[], None]:
        self.watchdog.register(name)
        return functools.partial(self.watchdog.beat, name)

    def _on_stale(self, silent: Mapping[str, float]) -> None:
        if silent:
            self.log.error("watchdog_withheld", silent={k: round(v, 1) for k, v in silent.items()})
        else:
            self.log.info("watchdog_resumed")

    def _give_up_alarms(self, sink: str, rows: list[Row], reason: str) -> list[NewRow]:
        if not self.config.delivery.alarm_on_give_up:
            return []
        built = gave_up_alarms(
            sink, rows, reason, now_ms=self.pipeline.now_ms(), new_id=self.pipeline.new_id
        )
        self.status.gave_up(built)
        return [alarm_row(alarm) for alarm in built]

    def reload(self, path: Path) -> bool:
        """Re-read the config and swap sinks, routes and delivery settings; keep the rest.

        A config that does not load, or sinks that cannot be built, leave everything as it
        was. The intake is paused between batches for the swap, so each message is routed
        whole by the old or the new sinks, and acknowledged once.
        """
        self.log.info("reloading", config=str(path))
        self.notifier.reloading()
        try:
            new = config_module.load(path)
            targets = self._build_targets(new)
        except ConfigError as exc:
            self.log.error("reload_rejected", reason=str(exc))
            self.notifier.ready()
            return False
        needs_restart = [
            section
            for section in ("broker", "subscription", "validation", "spool", "health", "logging")
            if getattr(new, section) != getattr(self.config, section)
        ]
        if needs_restart:
            self.log.warning("reload_needs_restart", sections=needs_restart)
        old_workers = [w for w in self.workers if w.name != ALARMS]
        with self.intake.paused():
            old_targets, self.targets = self.targets, targets
            self.config = self.config.model_copy(
                update={"sinks": new.sinks, "delivery": new.delivery}
            )
        for worker in old_workers:
            for name in worker.thread_names:
                self.watchdog.unregister(name)
            worker.stop()
        for worker in old_workers:
            worker.join(DRAIN_TIMEOUT)
        for target in old_targets:
            with contextlib.suppress(Exception):
                target.sink.close()
        self.metrics.declare_sinks(
            [target.sink.name for target in targets], [t.lanes for t in targets]
        )
        fresh = [self._sink_worker(t, self.config) for t in targets]
        self.workers = fresh + [w for w in self.workers if w.name == ALARMS]
        for worker in fresh:
            worker.start()
        self.log.info("reloaded", sinks=[t.sink.name for t in targets])
        self.notifier.ready()
        return True
