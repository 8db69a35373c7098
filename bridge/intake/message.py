"""What the intake connection hands over: one received message, free of any MQTT library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message as received. `topic` is None when the topic was not UTF-8.

    `generation` counts connections: an ack only makes sense on the connection
    the message came on, since packet ids are reused across connections.
    """

    topic: str | None
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_ns: int
