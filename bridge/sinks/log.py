"""The log sink: one structured log line per record; the log pipeline masks personal data
(bridge.core.masking: named fields at any depth, phones, ID numbers and e-mail in any value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import structlog

from bridge.core.events import DownstreamEvent
from bridge.sinks.base import SinkConfigBase, SinkContext


class LogConfig(SinkConfigBase):
    """`type: log`: log each record at `level`."""

    type: Literal["log"]
    level: Literal["debug", "info", "warning"] = "info"

    def build(self, context: SinkContext) -> LogSink:
        """Bind the sink to the bridge's logger."""
        return LogSink(self.name or "log", context.logger, self.level)


class LogSink:
    """Logs each event as `customer_event`, with the record under `customer`."""

    direct = True
    """Local and quick: the intake may hand it events itself while none of its rows wait."""
    concurrent = False

    def __init__(
        self, name: str, logger: structlog.typing.FilteringBoundLogger, level: str
    ) -> None:
        self.name = name
        self._log = getattr(logger.bind(sink=name), level)

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Log the batch; cannot fail."""
        for event in events:
            self._log("customer_event", **event.to_dict())

    def close(self) -> None:
        """Nothing to release."""
