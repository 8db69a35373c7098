"""Wiring: broker connection, intake thread, spool, delivery workers, signals.

The intake thread is the one place that turns outcomes into acks: it takes the
messages the broker has sent (in arrival order), validates them, writes their
outbox rows, alarms and de-duplication keys to the spool in one transaction,
and only then acknowledges them, in the same order (MQTT 3.1.1 4.6.0-2). A
delivery worker per sink, and one for alarms, drains the spool.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from bridge import config as config_module
from bridge.broker import EmbeddedBroker
from bridge.config import Config
from bridge.delivery import (
    Target,
    Worker,
    alarm_row,
    alarm_sender,
    encode_event,
    give_up_alarms,
    hand_over,
    ordering_key,
    sink_sender,
)
from bridge.errors import ConfigError, Partial, SinkError
from bridge.events import DownstreamEvent
from bridge.health import HealthServer
from bridge.intake.message import InboundMessage
from bridge.metrics import Metrics, field_label
from bridge.mqtt import MqttClient
from bridge.pipeline import REFUSED_TOPIC_REASON, Disposition, Outcome, Pipeline
from bridge.sdnotify import Notifier, Watchdog
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import ALARMS, NewRow, Row, Spool, SpoolError
from bridge.topics import escape

DRAIN_TIMEOUT = 30.0
PRUNE_EVERY = 60.0
READY_GRACE = 60.0
ALARM_BATCH = 50
FAILED_REASON = "the bridge failed on this message (a bug); see the pipeline_failed log line"


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


def status_of_row(row: NewRow) -> str:
    """The status of the alarm an outbox row carries."""
    events = json.loads(row.body)["payload"]["events"]
    return str(next(iter(events.values()))["status"])


def dedup_key(msg_id: str | None, topic: str, payload: bytes) -> str:
    """The de-duplication key: the producer's msgId, else a hash of topic and payload."""
    if msg_id is not None:
        return "m:" + msg_id
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload)
    return "h:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Plan:
    message: InboundMessage
    outcome: Outcome
    key: str | None
    started: float
    duplicate: bool = False


class Bridge:
    """The daemon: start, handle messages until asked to stop, drain, stop."""

    def __init__(
        self, config: Config, logger: structlog.typing.FilteringBoundLogger | None = None
    ) -> None:
        self.config = config
        self.log = logger or structlog.get_logger("bridge")
        self.stats = Stats()
        self.stopping = threading.Event()  # intake: take no more, give up waiting for room
        self.backpressure = False
        self.spool_writable = True
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self.notifier = Notifier()
        self.watchdog = Watchdog(
            self.notifier,
            stale_after=self.notifier.watchdog_interval or 30.0,
            on_stale=self._on_stale,
        )
        self.watchdog.register("intake")
        self._status = ""
        self._stopped = threading.Event()
        self._queue: queue.Queue[InboundMessage | None] = queue.Queue(
            maxsize=2 * config.spool.intake_batch
        )
        selection = config.subscription.selection()
        self.pipeline = Pipeline(config.validation.rules(), selection)
        self.embedded: EmbeddedBroker | None = None
        self.mqtt = MqttClient(config.broker, selection.filters(), self._enqueue, self.log)
        self.targets = self._build_targets(config)
        spool = config.spool
        self.spool = Spool(
            spool.path,
            synchronous=spool.synchronous,
            dedup_max_keys=spool.dedup_max_keys,
            dedup_max_age=spool.dedup_max_age,
        )
        self._intake_lock = threading.Lock()
        self.workers = [self._sink_worker(t, config) for t in self.targets]
        self.workers.append(
            Worker(
                ALARMS,
                alarm_sender(self.mqtt.publish),
                self.spool,
                config.delivery,
                threading.Event(),
                self.log,
                batch_size=ALARM_BATCH,
                gave_up=lambda _rows, _reason: [],
                kind="alarm",
                metrics=self.metrics,
                beat=self._beat_for(ALARMS),
            )
        )
        self.metrics.watch(
            pending=lambda: self.spool.pending,
            oldest=self.spool.oldest_age,
            connected=self.mqtt.subscribed.is_set,
            backpressure=lambda: self.backpressure,
        )
        self._intake = threading.Thread(target=self._work, name="bridge-intake", daemon=True)
        self._last_prune = 0.0
        self._last_progress = time.monotonic()
        self._received_by: dict[str, Any] = {}
        self._progress_received = 0

    # life cycle

    def start(self) -> None:
        """Start the embedded broker if configured, the workers, and the broker connection."""
        broker = self.config.broker
        if broker.embedded:
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
        self._intake.start()
        self.mqtt.start()
        self.watchdog.start()
        threading.Thread(target=self._announce_ready, name="bridge-ready", daemon=True).start()
        self._update_status()
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
        if self.mqtt.subscribed.wait(READY_GRACE):
            self.notifier.ready()
            return
        if self.stopping.is_set():
            return
        self.log.warning("ready_without_broker", waited=READY_GRACE)
        self.notifier.ready()

    def readiness(self) -> dict[str, bool]:
        """What /readyz checks: connected and subscribed, spool writable, not back-pressured."""
        return {
            "subscribed": self.mqtt.subscribed.is_set(),
            "spool_writable": self.spool_writable,
            "accepting": not self.backpressure,
        }

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed."""
        return self.mqtt.subscribed.wait(timeout)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop taking messages, store and ack those taken, stop workers, disconnect."""
        if self._stopped.is_set():
            return
        self.notifier.stopping()
        self.watchdog.stop()
        self.log.info("stopping", queued=self._queue.qsize(), spool_pending=self.spool.pending)
        self.stopping.set()
        with contextlib.suppress(queue.Full):  # a full queue: the intake stops at `stopping`
            self._queue.put(None, timeout=1.0)
        if self._intake.is_alive():
            self._intake.join(drain_timeout)
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(drain_timeout)
        self.mqtt.stop()
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
        try:
            self.start()
            while not requested.wait(0.5):
                self._update_status()
                self._progress()
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
        return {
            "received": self.stats.received,
            "forwarded": self.stats.forwarded,
            "rejected": self.stats.rejected,
            "duplicates": self.stats.duplicates,
            "alarms": dict(self.stats.alarms),
            "ignored": dict(self.stats.ignored),
            "unacked": self.stats.unacked,
            "left_for_redelivery": self.stats.left_for_redelivery,
            "failed": self.stats.failed,
            "delivered": {w.name: w.delivered + w.direct for w in self.workers},
        }

    # sinks and reload

    def _build_targets(self, config: Config) -> list[Target]:
        context = SinkContext(publish=self.mqtt.publish, logger=self.log)
        sinks = build_sinks(config.sinks, context)
        return [
            Target(sink, entry.route, entry.batch_size, entry.linger, entry.after_give_up == "hold")
            for sink, entry in zip(sinks, config.sinks, strict=True)
        ]

    def _sink_worker(self, target: Target, config: Config) -> Worker:
        return Worker(
            target.sink.name,
            sink_sender(target.sink, target.lock),
            self.spool,
            config.delivery,
            threading.Event(),
            self.log,
            batch_size=target.batch_size,
            gave_up=functools.partial(self._give_up_alarms, target.sink.name),
            kind="event",
            metrics=self.metrics,
            beat=self._beat_for(target.sink.name),
            linger=target.linger,
            hold=target.hold,
        )

    def _beat_for(self, worker: str) -> Callable[[], None]:
        name = f"deliver-{worker}"
        self.watchdog.register(name)
        return functools.partial(self.watchdog.beat, name)

    def _on_stale(self, silent: Mapping[str, float]) -> None:
        if silent:
            self.log.error("watchdog_withheld", silent={k: round(v, 1) for k, v in silent.items()})
        else:
            self.log.info("watchdog_resumed")

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.config.logging.progress_interval:
            return
        self._last_progress = now
        if self.stats.received != self._progress_received:
            self._progress_received = self.stats.received
            self.log.info(
                "progress",
                received=self.stats.received,
                forwarded=self.stats.forwarded,
                rejected=self.stats.rejected,
                duplicates=self.stats.duplicates,
                alarms=sum(self.stats.alarms.values()),
                spool_pending=self.spool.pending,
            )

    def _update_status(self) -> None:
        if not self.spool_writable:
            text = "spool not writable; nothing is acknowledged"
        elif self.backpressure:
            text = f"back-pressure: spool full ({self.spool.pending} rows)"
        elif self.mqtt.subscribed.is_set():
            text = f"subscribed; {self.stats.received} messages, {self.spool.pending} pending"
        else:
            text = "connecting to the broker"
        if text != self._status:
            self._status = text
            self.notifier.status(text)

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
        with self._intake_lock:
            old_targets, self.targets = self.targets, targets
            self.config = self.config.model_copy(
                update={"sinks": new.sinks, "delivery": new.delivery}
            )
        for worker in old_workers:
            self.watchdog.unregister(f"deliver-{worker.name}")
            worker.stop()
        for worker in old_workers:
            worker.join(DRAIN_TIMEOUT)
        for target in old_targets:
            with contextlib.suppress(Exception):
                target.sink.close()
        fresh = [self._sink_worker(t, self.config) for t in targets]
        self.workers = fresh + [w for w in self.workers if w.name == ALARMS]
        for worker in fresh:
            worker.start()
        self.log.info("reloaded", sinks=[t.sink.name for t in targets])
        self.notifier.ready()
        return True

    # intake

    def _enqueue(self, message: InboundMessage) -> None:
        # Runs on paho's thread. Once stopping, new messages are left unacknowledged:
        # the broker keeps them in the session and sends them again next time.
        # The queue is bounded: a broker that sends past our Receive Maximum (mosquitto does
        # once acks flow) is held back here, in paho's thread, instead of growing memory.
        while not self.stopping.is_set():
            try:
                self._queue.put(message, timeout=0.5)
            except queue.Full:
                continue
            return
        self.stats.left_for_redelivery += 1

    def _work(self) -> None:
        done = False
        while not done:
            self.watchdog.beat("intake")
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self.stopping.is_set():
                    return  # everything taken was stored and acknowledged
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < self.config.spool.intake_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            try:
                self._wait_for_room()
                with self._intake_lock:
                    self.intake(batch)
                self._prune()
            except Exception:  # the intake must outlive any one batch
                with contextlib.suppress(Exception):  # even a log line that cannot be written
                    self.log.exception("intake_failed", messages=len(batch))

    def _wait_for_room(self) -> None:
        limit = self.config.spool.max_pending
        while self.spool.pending >= limit and not self.stopping.is_set():
            if not self.backpressure:
                self.backpressure = True
                self.log.warning("backpressure_on", spool_pending=self.spool.pending, limit=limit)
            self.watchdog.beat("intake")
            self.stopping.wait(0.2)
        if self.backpressure:
            self.backpressure = False
            self.log.info("backpressure_off", spool_pending=self.spool.pending)

    def intake(self, batch: list[InboundMessage]) -> None:
        """Validate a batch, store it in the spool in one transaction, then ack it in order."""
        generation = self.mqtt.generation
        plans: list[_Plan] = []
        for message in batch:
            if message.generation != generation:
                continue  # taken on a connection that has since dropped; the broker resends it
            started = time.perf_counter()
            self.stats.received += 1
            outcome = self._outcome(message)
            key = None
            if outcome.disposition is Disposition.PROCESSED:
                key = dedup_key(outcome.msg_id, outcome.topic, message.payload)
            plans.append(_Plan(message, outcome, key, started))
        known = self.spool.seen(p.key for p in plans if p.key is not None)
        rows: list[NewRow] = []
        keys: list[str] = []
        raws: list[tuple[str, bytes, str]] = []
        # A caught-up local sink takes the batch's events here, before the commit (so a crash
        # in between can only repeat them); the others, and what it refuses, go to the spool.
        # Not while the sink has dead letters: what overtakes them (or is held behind them)
        # is known only to rows that pass through the outbox.
        direct: dict[str, tuple[Target, list[tuple[DownstreamEvent, str]]]] = {
            t.sink.name: (t, [])
            for t in self.targets
            if t.direct
            and not self.spool.has_pending(t.sink.name)
            and not self.spool.has_dead(t.sink.name)
        }
        for index, plan in enumerate(plans):
            if plan.outcome.disposition is Disposition.FAILED:
                # Our own bug: keep the message raw for a fixed version, rather than drop it.
                raws.append((plan.outcome.topic, plan.message.payload, FAILED_REASON))
            elif plan.outcome.disposition is Disposition.REFUSED_TOPIC:
                raws.append((plan.outcome.topic, plan.message.payload, REFUSED_TOPIC_REASON))
            if plan.key is None:
                continue
            if plan.key in known:
                plans[index] = _Plan(plan.message, plan.outcome, plan.key, plan.started, True)
                continue
            known.add(plan.key)
            keys.append(plan.key)
            outcome = plan.outcome
            for event in outcome.forward:
                body: str | None = None
                for target in self.targets:
                    if not target.route.matches(event):
                        continue
                    if body is None:
                        body = encode_event(event)  # once, whatever the number of sinks
                    name = target.sink.name
                    if name in direct:
                        direct[name][1].append((event, body))
                    else:
                        rows.append(NewRow(name, ordering_key(event), body))
            rows.extend(alarm_row(alarm) for alarm in outcome.alarms)
            if outcome.undecodable:
                reason = outcome.errors[0].reason if outcome.errors else "unreadable"
                raws.append((outcome.topic, plan.message.payload, reason))
        for target, items in direct.values():
            if items:
                rows.extend(self._deliver_direct(target, items))
        if (rows or keys or raws) and not self._store(rows, keys, raws):
            self.stats.unacked += len(plans)
            return
        for plan in plans:
            self._finish(plan)

    def _deliver_direct(
        self, target: Target, items: list[tuple[DownstreamEvent, str]]
    ) -> list[NewRow]:
        """Hand events to a caught-up local sink; return the rows of what it did not take."""
        name = target.sink.name
        taken = 0
        refused: set[int] = set()
        try:
            with target.lock:
                try:
                    answer = hand_over(target.sink, [e for e, _ in items], [b for _, b in items])
                except Partial as partial:
                    taken = partial.taken
                    raise partial.cause from None
            # What it refused goes through the outbox, whose worker gives up on it.
            refused = set(answer.records) if answer is not None else set()
            taken = len(items)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the worker retries it
            reason = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__} in sink"
            self.log.warning(
                "sink_failed", sink=name, reason=reason, records=len(items) - taken, direct=True
            )
        if taken - len(refused) > 0:
            worker = next((w for w in self.workers if w.name == name), None)
            if worker is not None:
                worker.taken_directly(taken - len(refused))
        return [
            NewRow(name, ordering_key(event), body)
            for index, (event, body) in enumerate(items)
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
                self.spool.store(rows, keys, raws)
            except SpoolError as exc:
                self.spool_writable = False
                if not failing:
                    self.log.error("spool_write_failed", reason=str(exc), messages=len(keys))
                    failing = True
                self.watchdog.beat("intake")
                if self.stopping.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                self.spool_writable = True
                self.log.info("spool_write_recovered")
            return True

    def _finish(self, plan: _Plan) -> None:
        outcome = plan.outcome
        acked = self._ack(plan.message)
        self.metrics.latency.observe(time.perf_counter() - plan.started)
        disposition = "duplicate" if plan.duplicate else str(outcome.disposition)
        received = self._received_by.get(disposition)
        if received is None:  # labels() takes a lock and a lookup: once per disposition
            received = self._received_by[disposition] = self.metrics.received.labels(
                disposition=disposition
            )
        received.inc()
        log = self.log
        topic, msg_id = outcome.topic, outcome.msg_id
        if outcome.disposition is Disposition.FAILED:
            self.stats.failed += 1
            return  # logged at error, and kept in the dead letters, by the intake
        if outcome.disposition is Disposition.REFUSED_TOPIC:
            self.stats.ignored[outcome.disposition] += 1
            log.warning("topic_refused", topic=escape(topic), kept="dead letters", acked=acked)
            return
        if outcome.disposition is not Disposition.PROCESSED:
            self.stats.ignored[outcome.disposition] += 1
            log.debug(
                "ignored", topic=topic, msg_id=msg_id, outcome=str(outcome.disposition), acked=acked
            )
            return
        if plan.duplicate:
            self.metrics.duplicates.inc()
            self.stats.duplicates += 1
            log.info("duplicate", topic=topic, msg_id=msg_id, acked=acked)
            return
        self.stats.forwarded += len(outcome.forward)
        self.stats.rejected += outcome.rejected
        for alarm in outcome.alarms:
            self.stats.alarms[alarm.status] += 1
            self.metrics.alarms.labels(status=alarm.status, code=str(alarm.code)).inc()
        for error in outcome.errors:
            self.metrics.rejections.labels(field=field_label(error.field)).inc()
        # Every message at debug; at info only those that raised an alarm: a line per message
        # at thousands a second would cost more than validating it, and journald's rate limit
        # (10,000 lines per 30 s by default) would drop most of them. `progress` counts the rest.
        emit = log.info if outcome.alarms else log.debug
        emit(
            "message",
            topic=topic,
            msg_id=msg_id,
            ops=list(outcome.ops),
            forwarded=len(outcome.forward),
            rejected=outcome.rejected,
            alarms=[a.status for a in outcome.alarms],
            outcome="alarmed" if outcome.alarms else "forwarded",
            acked=acked,
            duration_ms=round((time.perf_counter() - plan.started) * 1000, 2),
        )

    def _outcome(self, message: InboundMessage) -> Outcome:
        if message.topic is None:
            return Outcome("", Disposition.UNRECOGNISED)
        try:
            return self.pipeline.process(message.topic, message.payload)
        except Exception as exc:  # noqa: BLE001 - a bug in validation must not crash-loop
            # The traceback's text may quote the payload (personal data): its type and place.
            frame = exc.__traceback__
            while frame is not None and frame.tb_next is not None:
                frame = frame.tb_next
            where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
            self.log.error(
                "pipeline_failed",
                topic=message.topic,
                error=type(exc).__name__,
                where=where,
                kept="dead letters",
            )
            return Outcome(message.topic, Disposition.FAILED)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            self.spool.prune_seen()

    def _give_up_alarms(self, sink: str, rows: list[Row], reason: str) -> list[NewRow]:
        if not self.config.delivery.alarm_on_give_up:
            return []
        built = give_up_alarms(
            sink, rows, reason, now_ms=self.pipeline.now_ms(), new_id=self.pipeline.new_id
        )
        for row in built:
            status = status_of_row(row)
            self.stats.alarms[status] += 1
            self.metrics.alarms.labels(status=status, code="502").inc()
        return built

    def _ack(self, message: InboundMessage) -> bool:
        acked = self.mqtt.ack(message)
        if not acked:
            self.stats.unacked += 1
        return acked
