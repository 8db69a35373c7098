"""What a sink receives: one downstream event per valid customer record (SPEC 7)."""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.core.records import Op
from bridge.core.topics import InboundTopic, TopicKind, topic_of


class DownstreamEvent(msgspec.Struct, frozen=True):
    """One valid customer record with the context it arrived in.

    A frozen msgspec Struct rather than a frozen dataclass: one is made per record, and a
    Struct is made in 0.1 µs against 1.4 (a frozen dataclass sets each field through
    `object.__setattr__`)."""

    op: Op
    kind: TopicKind
    tenant: str
    project_id: str
    version: str | None
    vendor: str | None
    msg_id: str | None
    report_ts: int | None
    event_ts: int | None
    customer: dict[str, Any]

    @classmethod
    def from_topic(
        cls,
        inbound: InboundTopic,
        op: Op,
        msg_id: str | None,
        report_ts: int | None,
        event_ts: int | None,
        customer: dict[str, Any],
    ) -> DownstreamEvent:
        """Build the event of a record that came on `inbound`."""
        return cls(
            op=op,
            kind=inbound.kind,
            tenant=inbound.tenant,
            project_id=inbound.project_id,
            version=inbound.version,
            vendor=inbound.vendor,
            msg_id=msg_id,
            report_ts=report_ts,
            event_ts=event_ts,
            customer=customer,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownstreamEvent:
        """Rebuild an event from its `to_dict()` form (as the spool keeps it)."""
        vendor = data.get("vendor")
        return cls(
            op=Op(data["op"]),
            kind=TopicKind.STANDARD if vendor is None else TopicKind.CUSTOMIZATION,
            tenant=data["tenant"],
            project_id=data["projectId"],
            version=data.get("version"),
            vendor=vendor,
            msg_id=data.get("msgId"),
            report_ts=data.get("reportTs"),
            event_ts=data.get("eventTs"),
            customer=data["customer"],
        )

    @property
    def error_topic(self) -> str:
        """The error topic of the topic this event came on."""
        return topic_of(self.tenant, self.project_id, self.version, self.vendor, error=True)

    @property
    def customer_id(self) -> str:
        """The record's `id` (always a non-empty string once validated)."""
        return str(self.customer.get("id", ""))

    @property
    def ordering_key(self) -> tuple[str, str, str]:
        """The key within which events must reach a sink in arrival order (SPEC 6)."""
        return (self.tenant, self.project_id, self.customer_id)

    def to_dict(self) -> dict[str, Any]:
        """The SPEC 7 object, as the jsonl sink writes it and `bridge validate` prints it."""
        return {
            "op": str(self.op),
            "tenant": self.tenant,
            "projectId": self.project_id,
            "version": self.version,
            "vendor": self.vendor,
            "msgId": self.msg_id,
            "reportTs": self.report_ts,
            "eventTs": self.event_ts,
            "customer": self.customer,
        }
