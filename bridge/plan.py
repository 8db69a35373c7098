"""A batch of outcomes -> what the spool stores, what goes straight to a sink, what is a repeat.

Pure: the intake asks the spool which de-duplication keys it has already seen and which
local sinks are caught up, then calls `plan`, stores what it returns in one transaction,
and acknowledges the batch in receive order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from bridge.delivery import alarm_row, encode_event, ordering_key
from bridge.events import DownstreamEvent
from bridge.pipeline import Disposition, Outcome
from bridge.sinks import Route
from bridge.spool import NewRow

FAILED_REASON = "the bridge failed on this message (a bug); see the pipeline_failed log line"


def dedup_key(msg_id: str | None, topic: str, payload: bytes) -> str:
    """The de-duplication key: the producer's msgId, else a hash of topic and payload."""
    if msg_id is not None:
        return "m:" + msg_id
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload)
    return "h:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Received:
    """One message of the batch with what the pipeline made of it, and its de-duplication
    key (None when it was not processed: there is nothing to repeat)."""

    outcome: Outcome
    payload: bytes
    key: str | None

    @classmethod
    def of(cls, outcome: Outcome, payload: bytes) -> Received:
        """The message with its key worked out."""
        key = None
        if outcome.disposition is Disposition.PROCESSED:
            key = dedup_key(outcome.msg_id, outcome.topic, payload)
        return cls(outcome, payload, key)


@dataclass(frozen=True, slots=True)
class Destination:
    """A sink by name with the route that feeds it, in config order."""

    name: str
    route: Route


@dataclass
class Plan:
    """What one batch turns into.

    `direct` holds, per caught-up local sink, the events (with their encoded body) to hand
    over before the commit; `duplicates` the positions of messages already stored once.
    """

    rows: list[NewRow] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    raws: list[tuple[str, bytes, str]] = field(default_factory=list)
    direct: dict[str, list[tuple[DownstreamEvent, str]]] = field(default_factory=dict)
    duplicates: set[int] = field(default_factory=set)

    @property
    def writes(self) -> bool:
        """Whether the spool has anything to store for this batch."""
        return bool(self.rows or self.keys or self.raws)


def plan(
    batch: Sequence[Received],
    seen: Set[str],
    destinations: Sequence[Destination],
    caught_up: Set[str],
) -> Plan:
    """Plan a batch: `seen` are the keys the spool already holds, `caught_up` the local sinks
    that may take events directly (nothing of theirs waits in the spool)."""
    result = Plan(direct={d.name: [] for d in destinations if d.name in caught_up})
    known = set(seen)
    for index, item in enumerate(batch):
        outcome = item.outcome
        if outcome.disposition is Disposition.FAILED:
            # Our own bug: keep the message raw for a fixed version, rather than drop it.
            result.raws.append((outcome.topic, item.payload, FAILED_REASON))
            continue
        key = item.key
        if key is None:
            continue
        if key in known:
            result.duplicates.add(index)
            continue
        known.add(key)
        result.keys.append(key)
        for event in outcome.forward:
            body: str | None = None
            for destination in destinations:
                if not destination.route.matches(event):
                    continue
                if body is None:
                    body = encode_event(event)  # once, whatever the number of sinks
                direct = result.direct.get(destination.name)
                if direct is not None:
                    direct.append((event, body))
                else:
                    result.rows.append(NewRow(destination.name, ordering_key(event), body))
        result.rows.extend(alarm_row(alarm) for alarm in outcome.alarms)
        if outcome.undecodable:
            reason = outcome.errors[0].reason if outcome.errors else "unreadable"
            result.raws.append((outcome.topic, item.payload, reason))
    return result
