"""The supervisor: builds the rooms of the message path, starts and stops them, reloads.

The rooms: the intake (`bridge.intake.unit`: store, then ack, in receive order) fed by the
broker connection (`bridge.intake.connection`); the targets (each sink with its delivery
worker, swapped on reload); the alarm worker publishing through `bridge.mqtt.Publisher`;
and the status (`bridge.status`), which every count, the metrics, the progress line and
sd_notify read. What is left here is life cycle, signals and reload.
"""

from __future__ import annotations

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
from bridge.core.pipeline import Pipeline
from bridge.errors import ConfigError
from bridge.health import HealthServer
from bridge.intake import connection as intake_connection
from bridge.intake.connection import BrokerConnection
from bridge.intake.unit import Intake
from bridge.intake.workers import DigestPool, start_workers
from bridge.metrics import Metrics
from bridge.mqtt import Publisher
from bridge.sdnotify import Notifier, Watchdog
from bridge.signals import requested as early_stop
from bridge.spool import Spool
from bridge.status import Stats, Status
from bridge.targets import DRAIN_TIMEOUT, Targets

if TYPE_CHECKING:
    from bridge.broker import EmbeddedBroker

READY_GRACE = 60.0

__all__ = ["Bridge", "Stats"]


class Bridge:
    """The daemon: start, handle messages until asked to stop, drain, stop.

    `connection` replaces the real broker connection (tests pass a
    `bridge.testing.FakeConnection`); the publisher still needs a broker for alarms.
    `pool` is the config's workers when already started (`start_workers`: the command line
    starts them before it imports this module, so that they load the core meanwhile).
    """

    def __init__(
        self,
        config: Config,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        *,
        connection: Callable[[Intake], BrokerConnection] | None = None,
        pool: DigestPool | None = None,
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
        self.targets = Targets(
            config,
            spool=self.spool,
            publisher=self.publisher,
            pipeline=self.pipeline,
            status=self.status,
            metrics=self.metrics,
            watchdog=self.watchdog,
            logger=self.log,
        )
        self.pool = pool if pool is not None else start_workers(config)
        self.intake = Intake(
            self.spool,
            self.pipeline,
            self.status,
            self.log,
            targets=self.targets.current,
            taken_directly=self.targets.taken_directly,
            group=spool.intake_batch,
            linger=spool.intake_linger,
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
        known = {worker.name for worker in self.targets.workers}
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
        self.targets.start()
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
            sinks=self.targets.names,
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
        self.targets.stop(drain_timeout)
        self.connection.stop()
        self.publisher.stop()
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
        return self.status.summary(self.targets.delivered())

    def _on_stale(self, silent: Mapping[str, float]) -> None:
        if silent:
            self.log.error("watchdog_withheld", silent={k: round(v, 1) for k, v in silent.items()})
        else:
            self.log.info("watchdog_resumed")

    # reload

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
            targets = self.targets.build(new)
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
        self.config = self.config.model_copy(update={"sinks": new.sinks, "delivery": new.delivery})
        self.targets.swap(targets, new.delivery, self.intake.paused)
        self.log.info("reloaded", sinks=[t.sink.name for t in targets])
        self.notifier.ready()
        return True
