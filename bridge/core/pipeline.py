"""One MQTT message -> one outcome: records to forward, alarms to publish, or nothing (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from enum import StrEnum

import msgspec

from bridge.core import alarms
from bridge.core.alarms import Alarm
from bridge.core.events import DownstreamEvent
from bridge.core.topics import InboundTopic, ParsedTopic, Selection, TopicRole, parse
from bridge.core.validate import FieldError, Rules, validate

TOPIC_CACHE_SIZE = 4096


class Disposition(StrEnum):
    """What became of a message, as logs and metrics name it."""

    PROCESSED = "processed"
    ERROR_TOPIC = "ignored_error_topic"
    UNRECOGNISED = "ignored_unrecognised"
    NOT_SELECTED = "ignored_not_selected"
    FAILED = "failed_in_bridge"
    """The bridge's own bug: the message is kept raw in the dead letters."""
    REFUSED_TOPIC = "refused_topic"
    """An inbound topic holding a control character or noncharacter: kept raw, logged at warning."""


REFUSED_TOPIC_REASON = "the topic holds a control character or a noncharacter (SPEC 1)"


class Outcome(msgspec.Struct, frozen=True):
    """The result of one message. Ignored messages carry nothing to forward or publish.

    A frozen Struct, as the other objects made per message (`DownstreamEvent`)."""

    topic: str
    disposition: Disposition
    inbound: InboundTopic | None = None
    msg_id: str | None = None
    ops: tuple[str, ...] = ()
    forward: tuple[DownstreamEvent, ...] = ()
    alarms: tuple[Alarm, ...] = ()
    rejected: int = 0
    errors: tuple[FieldError, ...] = ()
    floats: bool = True
    """Whether a forwarded record may hold a float (False: the payload held none)."""

    @property
    def undecodable(self) -> bool:
        """The payload could not be read as an envelope (it belongs in the dead letters)."""
        return any(alarm.op == alarms.UNKNOWN for alarm in self.alarms) and not self.ops


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _new_id() -> str:
    return str(uuid.uuid4())


class Pipeline:
    """Validates inbound payloads and turns them into outcomes."""

    def __init__(
        self,
        rules: Rules,
        selection: Selection,
        *,
        now_ms: Callable[[], int] = _now_ms,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.rules = rules
        self.selection = selection
        self.now_ms = now_ms
        self.new_id = new_id
        # Topics recur: parsing one and matching it to the selection is done once.
        self._topics: dict[str, tuple[ParsedTopic, bool]] = {}

    def inbound(self, topic: str) -> InboundTopic | None:
        """The parsed topic when its payload is one to validate (`process_inbound`), else None."""
        parsed, accepted = self._topics.get(topic) or self._learn(topic)
        if accepted and parsed.role is TopicRole.INBOUND:
            return parsed.inbound
        return None

    def _learn(self, topic: str) -> tuple[ParsedTopic, bool]:
        parsed = parse(topic)
        accepted = parsed.inbound is not None and self.selection.accepts(parsed.inbound)
        if len(self._topics) >= TOPIC_CACHE_SIZE:
            self._topics.clear()  # a flood of distinct topics must not grow memory
        known = self._topics[topic] = (parsed, accepted)
        return known

    def process(self, topic: str, payload: bytes) -> Outcome:
        """Decide what one message becomes. Never raises for any topic or payload."""
        known = self._topics.get(topic)
        parsed, accepted = known or self._learn(topic)
        if parsed.role is TopicRole.ERROR:
            return Outcome(topic, Disposition.ERROR_TOPIC)
        if parsed.inbound is None:
            return Outcome(topic, Disposition.UNRECOGNISED)
        if not accepted:
            return Outcome(topic, Disposition.NOT_SELECTED, parsed.inbound)
        if parsed.role is TopicRole.REFUSED:
            # No alarm: its error topic would hold the same character (SPEC 1).
            return Outcome(topic, Disposition.REFUSED_TOPIC, parsed.inbound)
        return self.process_inbound(parsed.inbound, payload)

    def process_inbound(self, inbound: InboundTopic, payload: bytes) -> Outcome:
        """Validate a payload that arrived on an inbound topic."""
        result = validate(payload, self.rules, customization=inbound.customization)
        forward: list[DownstreamEvent] = []
        raised: list[Alarm] = []
        errors: list[FieldError] = list(result.message_errors)
        rejected = 0
        now = self.now_ms()
        if result.message_errors:
            raised.append(
                alarms.build(
                    error_topic=inbound.error_topic,
                    op=alarms.UNKNOWN,
                    code=alarms.CODE_INVALID,
                    msg=alarms.describe(result.message_errors),
                    records=(),
                    errors=result.message_errors,
                    source_msg_id=result.msg_id,
                    now_ms=now,
                    alarm_id=self.new_id(),
                )
            )
        for op in result.ops:
            forward.extend(
                DownstreamEvent.from_topic(
                    inbound, op.op, result.msg_id, result.report_ts, op.event_ts, record
                )
                for record in op.accepted
            )
            if op.errors:
                rejected += len(op.rejected)
                errors.extend(op.errors)
                raised.append(
                    alarms.build(
                        error_topic=inbound.error_topic,
                        op=str(op.op),
                        code=alarms.CODE_INVALID,
                        msg=alarms.describe(op.errors),
                        records=op.rejected,
                        errors=op.errors,
                        source_msg_id=result.msg_id,
                        now_ms=now,
                        alarm_id=self.new_id(),
                    )
                )
        return Outcome(
            topic=inbound.topic,
            disposition=Disposition.PROCESSED,
            inbound=inbound,
            msg_id=result.msg_id,
            ops=tuple(str(op.op) for op in result.ops),
            forward=tuple(forward),
            alarms=tuple(raised),
            rejected=rejected,
            errors=tuple(errors),
            floats=result.floats,
        )
