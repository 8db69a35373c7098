"""How a customer record becomes a platform event, for the platform sinks (Quick Audience, mobile).

The mapping is configuration: which operation gives which event code, which fields become
identities (`customerIdList`) or event attributes, and the templates of the ids that let a
platform recognise a batch sent twice (`outBizId`, a session id). The settings the platform
sinks share (base URLs, credentials, an answer made safe to log) live here too.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.errors import SinkError
from bridge.secrets import Secret

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
_DIGITS = re.compile(r"\d{5,}")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_LOGGED = 200


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


# Settings the platform sinks share.


def check_url(value: str, *, root_only: bool = False) -> str:
    """A pydantic validator body for an http(s) base URL without credentials or query."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("the URL cannot hold spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"}:
        raise ValueError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials go in their own settings, not in the URL")
    if parts.query or parts.fragment:
        raise ValueError("the URL cannot hold a query or fragment")
    if root_only and parts.path not in {"", "/"}:
        raise ValueError("the signed API lives at the root: give scheme, host and port only")
    try:
        _ = parts.port
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL):
        raise ValueError("the URL is not valid") from None
    return value


def check_text(value: str) -> str:
    """A value for a header, a query or a form: not empty, no line break or NUL."""
    if not value.strip():
        raise ValueError("the value is empty")
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("the value holds a line break or NUL")
    return value


def check_secret(value: Secret) -> Secret:
    """`check_text` for a credential, which stays masked."""
    check_text(value.reveal())
    return value


def safe_code(value: object) -> str:
    """A platform's error code as it may appear in our messages: a short token, or `?`."""
    text = str(value) if value is not None else ""
    return text if _CODE.fullmatch(text) else "?"


def scrub(value: object, secrets: Collection[str] = ()) -> str | None:
    """A platform's error text made safe to log: no secrets, digit runs or email addresses.

    A platform may quote the record it refused; the quote may hold a phone number.
    """
    if value is None:
        return None
    text = str(value)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _EMAIL.sub("***@***", text)
    text = _DIGITS.sub(lambda match: "*" * len(match.group()), text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:_MAX_LOGGED]


def answer_of(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON object a platform answered, or None when it sent something else."""
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def field_of(answer: Mapping[str, Any], name: str) -> Any:
    """A field of an answer by its lowerCamel name, or its UpperCamel form (RPC answers)."""
    if name in answer:
        return answer[name]
    return answer.get(name[:1].upper() + name[1:])
