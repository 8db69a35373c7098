"""How a customer record becomes a platform event, for the platform sinks (Quick Audience, mobile).

The mapping is configuration: which operation gives which event code, which fields become
identities (`customerIdList`) or event attributes, and the templates of the ids that let a
platform recognise a batch sent twice (`outBizId`, a session id). What the platform sinks
share as HTTP clients (base URLs, credentials, an answer made safe to log) is in `http`.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.errors import SinkError

ATTRIBUTE_CONTEXT = frozenset(
    {"@tenant", "@projectId", "@op", "@kind", "@version", "@vendor", "@msgId"}
    | {"@eventTs", "@reportTs"}
)
"""Attribute sources taken from the event's context rather than from the customer record."""
PLACEHOLDERS = frozenset(
    {"op", "id", "tenant", "projectId", "version", "vendor", "msgId", "eventTs", "reportTs"}
    | {"digest"}
)
"""What the `out_biz_id` and `session_id` templates may use; see `RecordMapping.render`."""
OUT_BIZ_ID = "outBizId"
DEFAULT_ATTRIBUTES = {"tenant": "@tenant", "projectId": "@projectId"}
DEFAULT_IDENTITIES = {"phone": "MOBILE", "email": "EMAIL"}
DEFAULT_OUT_BIZ_ID = "{msgId}:{op}:{id}"
# Below this an epoch is in seconds: 10**11 ms is March 1973, 10**11 s the year 5138.
_SECONDS_BELOW = 10**11


def placeholders(template: str) -> set[str]:
    """The names a `str.format` template uses; ValueError if it is malformed."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(value: str, *, per_record: bool) -> str:
    try:
        names = placeholders(value)
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(PLACEHOLDERS)}")
    if per_record and not names & {"id", "digest"}:
        # Without the record, every record of a message would get the same id and the
        # platform would drop all of them but one as duplicates.
        raise ValueError("the template must use {id} or {digest}, so that each record differs")
    return value


class MappingSettings(BaseModel):
    """What every platform sink takes to map a record: event names, attributes, `outBizId`.

    `events` overrides the sink's event name per operation (the others keep the default).
    `attributes` maps an attribute name to a customer field, or to `@tenant`, `@projectId`,
    `@op`, `@kind`, `@version`, `@vendor`, `@msgId`, `@eventTs` or `@reportTs`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: dict[Op, str] = Field(default_factory=dict)
    attributes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))
    out_biz_id: str = DEFAULT_OUT_BIZ_ID

    @field_validator("events")
    @classmethod
    def _event_names(cls, value: dict[Op, str]) -> dict[Op, str]:
        for op, name in value.items():
            if not name.strip():
                raise ValueError(f"the event name of {op} is empty")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_sources(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if not name:
                raise ValueError("an attribute name is empty")
            if name == OUT_BIZ_ID:
                raise ValueError(f"the sink sets {OUT_BIZ_ID} itself (see out_biz_id)")
            if not source:
                raise ValueError(f"the source of attribute {name} is empty")
            if source.startswith("@") and source not in ATTRIBUTE_CONTEXT:
                raise ValueError(f"unknown source {source}; use {sorted(ATTRIBUTE_CONTEXT)}")
        return value

    @field_validator("out_biz_id")
    @classmethod
    def _out_biz_id(cls, value: str) -> str:
        return _check_template(value, per_record=True)


class IdentitySettings(BaseModel):
    """Which customer fields are reported as identities (`customerIdList`), with their type code.

    The platform's preset ID type codes are upper case (`MOBILE`, `EMAIL`); its older
    document writes them lower case. Identities go with the operations in `identity_ops`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    identities: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_IDENTITIES))
    identity_ops: tuple[Op, ...] = (Op.ADD, Op.EDIT)

    @field_validator("identities")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, code in value.items():
            if not name or not code.strip():
                raise ValueError("an identity needs a field and an ID type code")
        return value


def session_template(value: str) -> str:
    """Validate a `session_id` template (it may be per message: no `{id}` needed)."""
    return _check_template(value, per_record=False)


@dataclass(frozen=True, slots=True)
class RecordMapping:
    """The mapping of one sink, ready to apply to events."""

    events: Mapping[Op, str]
    attributes: Mapping[str, str]
    out_biz_id: str = DEFAULT_OUT_BIZ_ID
    identities: Mapping[str, str] = field(default_factory=dict)
    identity_ops: frozenset[Op] = frozenset({Op.ADD, Op.EDIT})

    @classmethod
    def of(
        cls,
        defaults: Mapping[Op, str],
        settings: MappingSettings,
        identities: IdentitySettings | None = None,
    ) -> RecordMapping:
        """Combine a sink's default event names with its config."""
        return cls(
            events={**defaults, **settings.events},
            attributes=dict(settings.attributes),
            out_biz_id=settings.out_biz_id,
            identities=dict(identities.identities) if identities else {},
            identity_ops=frozenset(identities.identity_ops) if identities else frozenset(),
        )

    def event_name(self, event: DownstreamEvent) -> str:
        """The platform event code (or name) of the event's operation."""
        return self.events[event.op]

    def identity_list(self, event: DownstreamEvent) -> list[dict[str, str]]:
        """`[{customerId, idMapping}]` for the record's identity fields that hold a value."""
        if event.op not in self.identity_ops:
            return []
        found: list[dict[str, str]] = []
        for name, code in self.identities.items():
            value = event.customer.get(name)
            if isinstance(value, bool) or not isinstance(value, str | int):
                continue
            text = str(value).strip()
            if text:
                found.append({"customerId": text, "idMapping": code})
        return found

    def attribute_values(self, event: DownstreamEvent, *, as_text: bool) -> dict[str, Any]:
        """The configured attributes that hold a value, plus `outBizId`.

        `as_text` renders every value as a string (a `Map<String, String>` on the platform):
        numbers as written, booleans as `true` / `false`, lists and objects as JSON.
        """
        values: dict[str, Any] = {}
        for name, source in self.attributes.items():
            value = (
                _context(event, source) if source.startswith("@") else event.customer.get(source)
            )
            if value is not None:
                values[name] = text_of(value) if as_text else value
        values[OUT_BIZ_ID] = self.out_biz_id_of(event)
        return values

    def out_biz_id_of(self, event: DownstreamEvent) -> str:
        """The record's business id: the same every time the record is sent."""
        return self.render(self.out_biz_id, event)

    @staticmethod
    def render(template: str, event: DownstreamEvent) -> str:
        """Fill a template; `{msgId}` falls back to a digest of the message when it had none.

        `{digest}` is a digest of the whole record with its context, for templates that
        must differ per record without naming it.
        """
        values = {
            "op": str(event.op),
            "id": event.customer_id,
            "tenant": event.tenant,
            "projectId": event.project_id,
            "version": event.version or "",
            "vendor": event.vendor or "",
            "msgId": message_key(event),
            "eventTs": "" if event.event_ts is None else str(event.event_ts),
            "reportTs": "" if event.report_ts is None else str(event.report_ts),
        }
        if "{digest" in template:
            values["digest"] = record_digest(event)
        return template.format(**values)


def _context(event: DownstreamEvent, source: str) -> Any:
    return {
        "@tenant": event.tenant,
        "@projectId": event.project_id,
        "@op": str(event.op),
        "@kind": str(event.kind),
        "@version": event.version,
        "@vendor": event.vendor,
        "@msgId": event.msg_id,
        "@eventTs": event.event_ts,
        "@reportTs": event.report_ts,
    }[source]


def text_of(value: Any) -> str:
    """A JSON value as the text a string-to-string attribute map carries."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def message_key(event: DownstreamEvent) -> str:
    """The inbound msgId, or a digest of what the records of one message share."""
    if event.msg_id is not None:
        return event.msg_id
    shared: list[object] = [event.tenant, event.project_id, event.version, event.vendor]
    shared += [event.report_ts, event.event_ts]
    return "h" + _digest(shared)[:24]


def record_digest(event: DownstreamEvent) -> str:
    """A digest of the record with its context: equal for a record sent again."""
    return _digest(event.to_dict())[:32]


def _digest(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def event_time(event: DownstreamEvent) -> int:
    """The event time in epoch milliseconds: `eventTs`, else `reportTs`; seconds are scaled.

    SinkError (permanent) when the record carries neither.
    """
    for value in (event.event_ts, event.report_ts):
        if value is not None:
            return value * 1000 if 0 <= value < _SECONDS_BELOW else value
    raise SinkError("a record has neither eventTs nor reportTs", permanent=True)
