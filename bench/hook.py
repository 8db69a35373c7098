"""The webhook sink's loopback receiver: `bridge.testing.Recorder`, answering 200 at once.

Counting uses the bridge's `X-Bridge-Batch-Size` header so that nothing is parsed while the
clock runs; `msg_ids()` parses the kept bodies afterwards to check for loss and duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bridge.testing import Answer, Recorder, Request

DELAY = 0.0
"""Seconds each request takes before its answer (--hook-delay): a receiver across a network."""


class HookServer(Recorder):
    """The recorder at `/hooks/customers`, with a running count of the events it took."""

    def __init__(self) -> None:
        super().__init__(path="/hooks/customers")
        self.delay = DELAY
        self.events = 0

    def respond(self, request: Request) -> Answer:
        """200, counting the batch's events from its header."""
        self.events += int(request.headers.get("x-bridge-batch-size", "0"))
        return super().respond(request)

    def msg_ids(self) -> Iterator[Any]:
        """The msgId of every event received, repeats included."""
        for request in self.recorded():
            for event in request.json()["events"]:
                yield event.get("msgId")
