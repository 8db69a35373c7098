"""What every sink shares: the Sink protocol, routing, and the base of each sink's config."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.core.events import DownstreamEvent
from bridge.core.routes import Route
from bridge.errors import BrokerError, PublishRefused


@dataclass(frozen=True, slots=True)
class Refused:
    """What `send` returns when the downstream system answered record by record.

    `records` maps the position of each record it refused for good to the reason; it
    took every other record of the batch.
    """

    records: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class Partial:
    """What `send` returns when it took the first `taken` events, then failed with `cause`.

    Returned by sinks that hand events over one at a time (MQTT publishes), so that a retry
    sends only what was not taken. `refused` names the positions among the first `taken`
    that were refused for good (with the reason) rather than taken.
    """

    taken: int
    cause: Exception
    refused: Mapping[int, str] = field(default_factory=dict)


SendResult = Refused | Partial | None
"""A sink's answer to a batch it did not raise on; None: it took every event."""


@runtime_checkable
class Sink(Protocol):
    """A downstream system. `send` takes a batch whole, returns `Refused` or `Partial`, or raises.

    A `SinkError(permanent=True)` means a retry cannot help: the delivery layer splits
    the batch to find the records refused on their own, and gives up on those alone. Any
    other exception is treated as transient. A sink whose API reports per record returns
    `Refused` instead of raising; one that stopped part-way returns `Partial`.

    Every sink class declares its capabilities, either way, as class attributes.
    """

    name: str
    direct: bool
    """True when the intake may hand the sink its events itself: while none of its rows
    wait in the spool, the intake then gives it each group's records, before the commit,
    instead of going through the outbox. Local sinks (a file, the log) are quick; a remote
    one (the webhook, with `direct`) has a budget per group (`handover_budget`)."""
    concurrent: bool
    """True when `send` (and `send_json`) may be called concurrently from different threads
    (delivery lanes), each call with the events of other customers; a sink without it gets
    one call at a time."""

    def send(self, events: Sequence[DownstreamEvent]) -> SendResult:
        """Hand a batch of events to the downstream system."""

    def close(self) -> None:
        """Release what the sink holds (files, connections)."""


@runtime_checkable
class JsonSink(Sink, Protocol):
    """A sink that also takes events as the compact SPEC 7 JSON the spool holds (one string
    per event), so that the delivery layer neither decodes them nor the sink encodes them
    again. `send_json(bodies)` must have the effect `send` has on the decoded events."""

    def send_json(self, bodies: Sequence[str]) -> SendResult:
        """Hand a batch of encoded events to the downstream system."""


@runtime_checkable
class EncodedSink(JsonSink, Protocol):
    """A sink that takes encoded events as the UTF-8 bytes a digest carries them in
    (`bridge.core.digest.Forward.body`: the intake's own encoding, which holds no NaN or
    infinity), so that a direct hand-over decodes none of them. `send_encoded(bodies)` has
    the effect of `send_json` on their text."""

    def send_encoded(self, bodies: Sequence[bytes]) -> SendResult:
        """Hand a batch of encoded events, each its UTF-8 bytes, to the downstream system."""


@runtime_checkable
class LinesSink(JsonSink, Protocol):
    """A sink that takes a batch as one block of JSON lines: each encoded event in UTF-8
    followed by a newline, as a digest carries them (`bridge.core.digest.Forward.body`), so
    the intake joins a group's events once and the sink writes them as they are.
    `send_lines(block)` has the effect of `send_json` on the lines' text, taken whole or
    not at all (it raises)."""

    def send_lines(self, block: bytes) -> None:
        """Hand a batch of encoded events, newline-terminated, to the downstream system."""


Publish = Callable[[str, bytes, int, bool], None]
"""Publish (topic, payload, qos, retain) on the bridge's broker connection, waiting for the ack."""

PublishBatch = Callable[[Sequence[tuple[str, bytes, int, bool]]], list[BrokerError | None]]
"""Publish many (topic, payload, qos, retain) at once, then wait for all their acks: one
outcome each, None when taken, `PublishRefused` when refused, another `BrokerError` when lost."""


def one_by_one(publish: Publish) -> PublishBatch:
    """A `PublishBatch` over a `Publish`, waiting for each ack; it stops at the first lost one."""

    def publish_many(messages: Sequence[tuple[str, bytes, int, bool]]) -> list[BrokerError | None]:
        outcomes: list[BrokerError | None] = []
        for topic, payload, qos, retain in messages:
            try:
                publish(topic, payload, qos, retain)
            except PublishRefused as exc:
                outcomes.append(exc)
            except BrokerError as exc:
                # What comes after was not tried: as lost, so the caller retries it.
                return outcomes + [exc] * (len(messages) - len(outcomes))
            else:
                outcomes.append(None)
        return outcomes

    return publish_many


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the runtime lends a sink when building it.

    `publish_many`, when given, keeps many publishes in flight at once; without it a sink
    publishes through `publish`, one acknowledgement at a time.
    """

    publish: Publish
    logger: structlog.typing.FilteringBoundLogger
    publish_many: PublishBatch | None = None


class SinkConfigBase(BaseModel):
    """Settings every sink has: an optional name and a route."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=64)
    route: Route = Route()
    batch_size: int = Field(default=100, ge=1, le=10_000)
    linger: float = Field(default=0.0, ge=0, le=60)
    """Seconds the delivery layer may wait for a batch to fill before sending it."""
    after_give_up: Literal["flow", "hold"] = "flow"
    """What becomes of a customer's later events once one of theirs is a dead letter here:
    `flow` sends them on; `hold` keeps them waiting until it is replayed or purged."""
    lanes: int = Field(default=1, ge=1, le=64)
    """Batches in flight at once, each lane owning the customers whose key hashes to it."""

    concurrent: ClassVar[bool] = False
    """Whether the sink built from this config takes several batches at once from several
    threads (lanes above 1). A local sink (a file) and one holding a single connection or
    session do not."""

    def handover_budget(self) -> float | None:
        """Seconds a direct hand-over of one group may take before the sink is paused, for a
        sink the intake may hand events to across a network; None for a local sink (never
        paused) and for a sink never handed events directly."""
        return None

    @model_validator(mode="after")
    def _lanes_supported(self) -> SinkConfigBase:
        if self.lanes > 1 and not self.concurrent:
            kind = getattr(self, "type", type(self).__name__)
            raise ValueError(f"lanes: a {kind} sink takes one batch at a time (lanes: 1)")
        return self


MAX_RETRY_AFTER = 24 * 3600.0
"""A `Retry-After` beyond a day is taken as a day; the delivery config caps it further."""


def retry_after_of(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The seconds a `Retry-After` header asks for (delay or HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; one without a zone is not one of them
    seconds = when.timestamp() - (time.time() if now is None else now)
    return None if math.isnan(seconds) else min(max(0.0, seconds), MAX_RETRY_AFTER)
