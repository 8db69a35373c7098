"""One message's outcome, reduced to what the intake stores, hands over and counts (pure).

An `Outcome` holds rich objects (events, alarms, field errors); a `Digest` holds strings and
numbers only: the encoded body of each record to forward with what its route needs, the
encoded alarms, the de-duplication key, and the counts. It is what a worker process sends
back to the intake, a whole slice of them as one msgpack frame (msgspec writes and reads
it in C, with no Python call per message or record, where pickling these as NamedTuples
cost 23 µs a message), and what the intake plans and counts from in one
process too, so both paths are the same code.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Protocol, cast

import msgspec

from bridge.core.encoding import alarm_body, encode_event, ordering_key
from bridge.core.events import DownstreamEvent
from bridge.core.pipeline import REFUSED_TOPIC_REASON, Disposition, Outcome

FAILED_REASON = "the bridge failed on this message (a bug); see the pipeline_failed log line"


class _Hash(Protocol):
    def hexdigest(self) -> str: ...


def _sha256() -> Callable[[bytes], _Hash]:
    """CPython's own SHA-256 (`_sha2` from 3.12, `_sha256` in 3.11): the digest hashlib gives,
    without loading OpenSSL's libcrypto into each worker process (3.7 MB of RSS in each;
    a worker has no other use for it). hashlib's where neither exists."""
    for name in ("_sha2", "_sha256"):
        try:
            return cast("Callable[[bytes], _Hash]", importlib.import_module(name).sha256)
        except (ImportError, AttributeError):
            continue
    import hashlib  # noqa: PLC0415 - only where CPython's own module is missing

    return hashlib.sha256


_SHA256 = _sha256()


def dedup_key(msg_id: str | None, topic: str, payload: bytes) -> str:
    """The de-duplication key: the producer's msgId, else a hash of topic and payload."""
    if msg_id is not None:
        return "m:" + msg_id
    digest = _SHA256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload)
    return "h:" + digest.hexdigest()


class Forward(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A valid record to forward: what a route looks at, its ordering key and its body.

    `op` and `kind` are the plain values of `Op` and `TopicKind` (equal to them).
    """

    op: str
    kind: str
    tenant: str
    project_id: str
    vendor: str | None
    okey: str
    body: bytes
    """The event's compact SPEC 7 JSON, UTF-8: what a jsonl line holds, what a row stores."""

    def event(self) -> DownstreamEvent:
        """The event again, for a sink that takes events rather than encoded JSON."""
        return DownstreamEvent.from_dict(json.loads(self.body))


class Digest(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What became of one message, in plain values.

    `raw` is the reason to keep the payload raw in the dead letters (unreadable, or the
    bridge's own bug), else None; `alarms` pairs each alarm's status and code, in the order
    of `alarm_bodies`; `error_fields` are the paths of the rejected fields.
    """

    topic: str
    disposition: str
    msg_id: str | None
    ops: tuple[str, ...]
    key: str | None
    forward: tuple[Forward, ...]
    alarm_bodies: tuple[str, ...]
    alarms: tuple[tuple[str, int], ...]
    rejected: int
    error_fields: tuple[str, ...]
    raw: str | None

    @property
    def processed(self) -> bool:
        """Whether the message was one of ours (not ignored, not failed on)."""
        return self.disposition == Disposition.PROCESSED


def digest(outcome: Outcome, payload: bytes) -> Digest:
    """Reduce `outcome` (of a message carrying `payload`) to its digest."""
    disposition = outcome.disposition
    raw: str | None = None
    key: str | None = None
    if disposition is Disposition.FAILED:
        raw = FAILED_REASON
    elif disposition is Disposition.REFUSED_TOPIC:
        raw = REFUSED_TOPIC_REASON
    elif disposition is Disposition.PROCESSED:
        key = dedup_key(outcome.msg_id, outcome.topic, payload)
        if outcome.undecodable:
            raw = outcome.errors[0].reason if outcome.errors else "unreadable"
    floats = outcome.floats
    forward = tuple(
        Forward(
            str(event.op),
            str(event.kind),
            event.tenant,
            event.project_id,
            event.vendor,
            ordering_key(event),
            encode_event(event, floats=floats).encode(),
        )
        for event in outcome.forward
    )
    return Digest(
        outcome.topic,
        str(disposition),
        outcome.msg_id,
        outcome.ops,
        key,
        forward,
        tuple(alarm_body(alarm, floats=floats) for alarm in outcome.alarms),
        tuple((alarm.status, alarm.code) for alarm in outcome.alarms),
        outcome.rejected,
        tuple(error.field for error in outcome.errors),
        raw,
    )
