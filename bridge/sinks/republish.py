"""The MQTT republish sink: each record to a templated topic on the bridge's own broker."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Literal

from pydantic import field_validator

from bridge.core.events import DownstreamEvent
from bridge.core.topics import is_safe_segment
from bridge.errors import PublishRefused, SinkError
from bridge.sinks.base import (
    Partial,
    PublishBatch,
    Refused,
    SendResult,
    SinkConfigBase,
    SinkContext,
    one_by_one,
)

PLACEHOLDERS = frozenset({"op", "tenant", "projectId", "kind", "version", "vendor", "id"})


class RepublishConfig(SinkConfigBase):
    """`type: mqtt`: publish each record's SPEC 7 object to `topic` (a template)."""

    type: Literal["mqtt"]
    topic: str = "bridge/{tenant}/{projectId}/customer/{op}"
    qos: Literal[0, 1] = 1
    retain: bool = False

    @field_validator("topic")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {sorted(PLACEHOLDERS)}"
            )
        if any(ch in value for ch in "+#\x00"):
            raise ValueError("a publish topic cannot hold '+', '#' or NUL")
        return value

    def build(self, context: SinkContext) -> RepublishSink:
        """Bind the template to the bridge's broker connection."""
        publish_many = context.publish_many or one_by_one(context.publish)
        return RepublishSink(
            self.name or f"mqtt:{self.topic}", publish_many, self.topic, self.qos, self.retain
        )


class RepublishSink:
    """Publishes each event as JSON; a segment that is unsafe in a topic is a permanent failure."""

    direct = False
    concurrent = False

    def __init__(
        self, name: str, publish_many: PublishBatch, template: str, qos: int, retain: bool
    ) -> None:
        self.name = name
        self._publish_many = publish_many
        self._template = template
        self._qos = qos
        self._retain = retain
        self._used = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]

    def topic_for(self, event: DownstreamEvent) -> str:
        """The topic an event goes to; SinkError if a value could break the topic."""
        values = {
            "op": str(event.op),
            "tenant": event.tenant,
            "projectId": event.project_id,
            "kind": str(event.kind),
            "version": event.version or "",
            "vendor": event.vendor or "",
            "id": event.customer_id,
        }
        for name in self._used:
            if not is_safe_segment(values[name]):
                raise SinkError(f"{name} is not usable in a topic", permanent=True)
        return self._template.format(**values)

    def send(self, events: Sequence[DownstreamEvent]) -> SendResult:
        """Publish the whole batch with its publishes in flight together; judge each record.

        A record refused for good (an unsafe topic, a broker refusal) is that record's alone.
        From the first whose acknowledgement was lost, the rest is retried (`Partial`).
        """
        refused: dict[int, str] = {}
        messages: list[tuple[str, bytes, int, bool]] = []
        positions: list[int] = []  # the batch position of each message
        for index, event in enumerate(events):
            try:
                topic = self.topic_for(event)
            except SinkError as exc:
                refused[index] = str(exc)
                continue
            payload = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
            messages.append((topic, payload.encode(), self._qos, self._retain))
            positions.append(index)
        outcomes = self._publish_many(messages) if messages else []
        for index, outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, PublishRefused):
                refused[index] = str(outcome)
            elif outcome is not None:
                earlier = {i: reason for i, reason in refused.items() if i < index}
                return Partial(index, outcome, earlier)
        return Refused(refused) if refused else None

    def close(self) -> None:
        """The connection belongs to the runtime; nothing to release."""
