"""Wiring: broker connection, worker thread, sinks, signals. Turns each outcome into ack / alarm.

One worker thread handles messages in arrival order, so acknowledgements leave
in the order the broker sent the messages (MQTT 3.1.1 4.6.0-2) and the events of
one customer reach each sink in order.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType

import structlog

from bridge import alarms
from bridge.alarms import Alarm
from bridge.broker import EmbeddedBroker
from bridge.config import Config
from bridge.delivery import Delivery, GiveUp, Interrupted, Target
from bridge.errors import BrokerError
from bridge.mqtt import InboundMessage, MqttClient
from bridge.pipeline import Disposition, Outcome, Pipeline
from bridge.sinks import SinkContext, build_sinks

DRAIN_TIMEOUT = 30.0


@dataclass
class Stats:
    """Counters of what the bridge has done since it started."""

    received: int = 0
    forwarded: int = 0
    rejected: int = 0
    alarms: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    unacked: int = 0
    left_for_redelivery: int = 0


class Bridge:
    """The daemon: start, handle messages until asked to stop, drain, stop."""

    def __init__(
        self, config: Config, logger: structlog.typing.FilteringBoundLogger | None = None
    ) -> None:
        self.config = config
        self.log = logger or structlog.get_logger("bridge")
        self.stats = Stats()
        self.stopping = threading.Event()
        self._stopped = threading.Event()
        self._queue: queue.Queue[InboundMessage | None] = queue.Queue()
        selection = config.subscription.selection()
        self.pipeline = Pipeline(config.validation.rules(), selection)
        self.embedded: EmbeddedBroker | None = None
        self.mqtt = MqttClient(config.broker, selection.filters(), self._enqueue, self.log)
        context = SinkContext(publish=self.mqtt.publish, logger=self.log)
        sinks = build_sinks(config.sinks, context)
        self.delivery = Delivery(
            [Target(sink, entry.route) for sink, entry in zip(sinks, config.sinks, strict=True)],
            config.delivery,
            self.stopping,
            self.log,
        )
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)

    # life cycle

    def start(self) -> None:
        """Start the embedded broker if configured, the worker, and the broker connection."""
        broker = self.config.broker
        if broker.embedded:
            self.embedded = EmbeddedBroker(broker.host, broker.port)
            self.embedded.start()
            self.log.info("embedded_broker_started", port=self.embedded.port)
        self._worker.start()
        self.mqtt.start()
        self.log.info(
            "started",
            filters=self.pipeline.selection.filters(),
            sinks=[t.sink.name for t in self.delivery.targets],
            mode=str(self.pipeline.rules.mode),
        )

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed."""
        return self.mqtt.subscribed.wait(timeout)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop taking messages, finish those taken, disconnect, close sinks."""
        if self._stopped.is_set():
            return
        self.log.info("stopping", queued=self._queue.qsize())
        self.stopping.set()
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(drain_timeout)
        self.mqtt.stop()
        for target in self.delivery.targets:
            try:
                target.sink.close()
            except Exception:  # closing one sink must not keep the others open
                self.log.exception("sink_close_failed", sink=target.sink.name)
        if self.embedded is not None:
            self.embedded.stop()
        self._stopped.set()
        self.log.info("stopped", **self.summary())

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        requested = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not requested.wait(1.0):
                pass
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
            "alarms": dict(self.stats.alarms),
            "ignored": dict(self.stats.ignored),
            "unacked": self.stats.unacked,
            "left_for_redelivery": self.stats.left_for_redelivery,
        }

    # message path

    def _enqueue(self, message: InboundMessage) -> None:
        # Runs on paho's thread. Once stopping, new messages are left unacknowledged:
        # the broker keeps them in the session and sends them again next time.
        if self.stopping.is_set():
            self.stats.left_for_redelivery += 1
        else:
            self._queue.put(message)

    def _work(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                self.handle(message)
            except Exception:  # the worker must outlive any one message
                with contextlib.suppress(Exception):  # even a log line that cannot be written
                    self.log.exception("message_failed", topic=message.topic)

    def handle(self, message: InboundMessage) -> None:
        """Turn one message into its outcome, act on it, and acknowledge it once."""
        if message.generation != self.mqtt.generation:
            # Taken on a connection that has since dropped; the broker sends it again.
            return
        started = time.perf_counter()
        self.stats.received += 1
        outcome = self._outcome(message)
        log = self.log.bind(topic=outcome.topic, msg_id=outcome.msg_id)
        if outcome.disposition is not Disposition.PROCESSED:
            self.stats.ignored[outcome.disposition] += 1
            log.debug("ignored", outcome=str(outcome.disposition))
            self._ack(message)
            return
        try:
            for alarm in outcome.alarms:
                self._publish_alarm(alarm)
            give_ups = self.delivery.deliver(outcome.forward)
            for alarm in self._give_up_alarms(outcome, give_ups):
                self._publish_alarm(alarm)
        except Interrupted:
            log.info("message_abandoned", reason="stopping")
            self.stats.unacked += 1
            return
        except BrokerError as exc:
            log.warning("message_abandoned", reason=str(exc))
            self.stats.unacked += 1
            return
        acked = self._ack(message)
        forwarded = len(outcome.forward) - sum(len(g.events) for g in give_ups)
        self.stats.forwarded += len(outcome.forward)
        self.stats.rejected += outcome.rejected
        log.info(
            "message",
            ops=list(outcome.ops),
            forwarded=forwarded,
            rejected=outcome.rejected,
            alarms=[a.status for a in outcome.alarms],
            gave_up=[g.sink for g in give_ups],
            outcome="alarmed" if outcome.alarms or give_ups else "forwarded",
            acked=acked,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def _outcome(self, message: InboundMessage) -> Outcome:
        if message.topic is None:
            return Outcome("", Disposition.UNRECOGNISED)
        try:
            return self.pipeline.process(message.topic, message.payload)
        except Exception:  # a bug in validation must not become a crash loop
            self.log.exception("pipeline_failed", topic=message.topic)
            return Outcome(message.topic, Disposition.UNRECOGNISED)

    def _publish_alarm(self, alarm: Alarm) -> None:
        payload = json.dumps(alarm.payload, ensure_ascii=False, separators=(",", ":"))
        self.mqtt.publish(alarm.topic, payload.encode(), 1, False)
        self.stats.alarms[alarm.status] += 1

    def _give_up_alarms(self, outcome: Outcome, give_ups: list[GiveUp]) -> list[Alarm]:
        if not self.config.delivery.alarm_on_give_up or outcome.inbound is None:
            return []
        built: list[Alarm] = []
        for give_up in give_ups:
            for op in dict.fromkeys(event.op for event in give_up.events):
                records = [e.customer for e in give_up.events if e.op == op]
                built.append(
                    alarms.build(
                        error_topic=outcome.inbound.error_topic,
                        op=str(op),
                        code=alarms.CODE_SINK_GAVE_UP,
                        msg=f"sink {give_up.sink} gave up: {give_up.reason}",
                        records=records,
                        errors=(),
                        source_msg_id=outcome.msg_id,
                        now_ms=self.pipeline.now_ms(),
                        alarm_id=self.pipeline.new_id(),
                    )
                )
        return built

    def _ack(self, message: InboundMessage) -> bool:
        acked = self.mqtt.ack(message)
        if not acked:
            self.stats.unacked += 1
        return acked
