"""Hand forwarded events to every routed sink, retrying transient failures with backoff.

This first version delivers in the worker thread, so a retrying sink holds the
stream (back-pressure: nothing is acknowledged meanwhile) and ordering per
customer follows from arrival order.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from bridge.config import DeliveryConfig
from bridge.errors import BridgeError, SinkError
from bridge.events import DownstreamEvent
from bridge.sinks import Route, Sink


class Interrupted(BridgeError):
    """Delivery was abandoned because the bridge is stopping; do not acknowledge."""


@dataclass(frozen=True, slots=True)
class Target:
    """A sink with the route that feeds it."""

    sink: Sink
    route: Route


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A sink gave up on these events (permanent rejection, or retries exhausted)."""

    sink: str
    events: tuple[DownstreamEvent, ...]
    reason: str


def backoff(attempt: int, config: DeliveryConfig, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number `attempt` (1-based): capped exponential, full jitter."""
    ceiling: float = min(config.max_backoff, config.initial_backoff * 2.0 ** (attempt - 1))
    return ceiling * rand()


class Delivery:
    """Delivers the forwarded events of one message to every sink whose route takes them."""

    def __init__(
        self,
        targets: Sequence[Target],
        config: DeliveryConfig,
        stopping: threading.Event,
        logger: structlog.typing.FilteringBoundLogger,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.targets = list(targets)
        self._config = config
        self._stopping = stopping
        self._log = logger
        self._rand = rand

    def deliver(self, events: Sequence[DownstreamEvent]) -> list[GiveUp]:
        """Deliver; return what sinks gave up on. Raises Interrupted when stopping mid-retry."""
        give_ups: list[GiveUp] = []
        for target in self.targets:
            routed = tuple(event for event in events if target.route.matches(event))
            if routed:
                failure = self._send(target.sink, routed)
                if failure is not None:
                    give_ups.append(GiveUp(target.sink.name, routed, failure))
        return give_ups

    def _send(self, sink: Sink, events: tuple[DownstreamEvent, ...]) -> str | None:
        attempt = 0
        while True:
            attempt += 1
            try:
                sink.send(events)
            except SinkError as exc:
                reason, permanent = str(exc), exc.permanent
            except Exception as exc:  # noqa: BLE001 - a sink's bug must not stop the stream
                reason, permanent = f"{type(exc).__name__} in sink", False
            else:
                return None
            if permanent or attempt >= self._config.max_attempts:
                self._log.error(
                    "sink_gave_up",
                    sink=sink.name,
                    attempts=attempt,
                    reason=reason,
                    permanent=permanent,
                    records=len(events),
                )
                return reason
            delay = backoff(attempt, self._config, self._rand)
            self._log.warning(
                "sink_failed",
                sink=sink.name,
                attempt=attempt,
                reason=reason,
                retry_in=round(delay, 3),
            )
            if self._stopping.wait(delay):
                raise Interrupted(sink.name)
