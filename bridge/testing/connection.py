"""An in-memory broker connection: a test delivers messages as the broker would, drops and
re-opens the connection, and reads the acknowledgements the intake sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from bridge.intake.message import InboundMessage

OnBatch = Callable[[list[InboundMessage]], None]


class FakeConnection:
    """A broker connection with no broker: batches in by `deliver`, acks out to `acks`.

    Packet ids count up per connection, as a broker's do; `drop` ends the current
    connection (acks on it are refused from then on) and `reconnect` opens the next one.
    `on_ack`, when set, runs before each ack is taken, so a test can look at the spool at
    that moment.
    """

    def __init__(self, on_batch: OnBatch) -> None:
        self.subscribed = threading.Event()
        self.acks: list[tuple[int, list[int]]] = []
        self.refused_acks: list[tuple[int, list[int]]] = []
        self.on_ack: Callable[[int, Sequence[int]], None] | None = None
        self.started = False
        self.stopped = False
        self._on_batch = on_batch
        self._generation = 0
        self._next_id = 1
        self._lock = threading.Lock()

    @classmethod
    def of(cls, intake: object) -> FakeConnection:
        """A connection feeding `intake` (anything with `on_batch`): `Bridge(connection=...)`."""
        return cls(intake.on_batch)  # type: ignore[attr-defined]

    @property
    def generation(self) -> int:
        """The number of the current connection (0 before the first)."""
        return self._generation

    @property
    def acked(self) -> list[int]:
        """Every packet id acknowledged, in the order the acks were sent."""
        return [mid for _, ids in self.acks for mid in ids]

    def start(self) -> None:
        """Open the first connection."""
        self.started = True
        self.reconnect()

    def stop(self) -> None:
        """Close the connection."""
        self.stopped = True
        self.drop()

    def drop(self) -> None:
        """The connection ends: its packet ids mean nothing any more."""
        self.subscribed.clear()

    def reconnect(self) -> None:
        """A new connection: a new generation, packet ids from 1 again."""
        with self._lock:
            self._generation += 1
            self._next_id = 1
        self.subscribed.set()

    def message(self, topic: str | None, payload: bytes, *, qos: int = 1) -> InboundMessage:
        """A message as the current connection would hand it over (not delivered yet)."""
        with self._lock:
            mid = self._next_id if qos else 0
            if qos:
                self._next_id += 1
            return InboundMessage(topic, payload, mid, qos, self._generation, time.monotonic_ns())

    def deliver(self, *messages: InboundMessage) -> list[InboundMessage]:
        """Hand `messages` to the intake as one read's batch."""
        self._on_batch(list(messages))
        return list(messages)

    def ack(self, generation: int, packet_ids: Sequence[int]) -> bool:
        """Take the acks if `generation` is the open connection, as a real one does."""
        if self.on_ack is not None:
            self.on_ack(generation, packet_ids)
        if generation != self._generation or not self.subscribed.is_set():
            self.refused_acks.append((generation, list(packet_ids)))
            return False
        self.acks.append((generation, list(packet_ids)))
        return True
