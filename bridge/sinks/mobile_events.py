"""The mobile event reporting sink: each batch as one `POST {base_url}/v2/users/report/events`.

Body `{"events": [{"name", "user", "sessionId", "extra"}]}`, authenticated by `X-API-KEY`
with the app headers the API requires (`X-USER-ID`, `User-Agent`, `X-APP-ID`, `X-PLATFORM`,
`X-VERSION`). The v1 path (`/users/report/events`) takes the same request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import ConfigDict, Field, field_validator

from bridge import __version__
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.secrets import Secret, Url
from bridge.sinks.base import SinkConfigBase, SinkContext
from bridge.sinks.http import (
    Answer,
    Endpoint,
    check_secret,
    check_text,
    check_url,
    encoding_batch,
    json_text,
    refusal,
    safe_code,
)
from bridge.sinks.mapping import MappingSettings, RecordMapping, session_template

PATHS = {"v1": "/users/report/events", "v2": "/v2/users/report/events"}
DEFAULT_EVENTS = {
    Op.ADD: "customer_added",
    Op.EDIT: "customer_updated",
    Op.DELETE: "customer_deleted",
}
TAKEN = frozenset({"success", "ok"})
PERMANENT_CODES = frozenset({"INVALID_API_KEY", "MISSING_REQUIRED_HEADER", "INVALID_PARAMETER"})
CONTENT_TYPE = "application/json"
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")  # the document's naming rule: lower snake case


class MobileEventsConfig(SinkConfigBase, MappingSettings):
    """`type: mobile_events`: report each record as a named event of the record's user.

    `api_key` may hold `${NAME}`. `session_id` is a template (default: the message's id,
    so the records of one message share a session); event names are lower snake case.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["mobile_events"]
    base_url: Url
    api_version: Literal["v1", "v2"] = "v2"
    api_key: Secret
    app_id: Secret
    platform: str
    user_id: str = "customer-bridge"
    sdk_version: str = __version__
    user_agent: str = f"customer-bridge/{__version__}"
    session_id: str = "{msgId}"
    timeout: float = Field(default=10.0, gt=0)
    verify_tls: bool = True

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("api_key", "app_id")
    @classmethod
    def _credential(cls, value: Secret) -> Secret:
        return check_secret(value)

    @field_validator("platform", "user_id", "sdk_version", "user_agent")
    @classmethod
    def _header_value(cls, value: str) -> str:
        return check_text(value)

    @field_validator("session_id")
    @classmethod
    def _session(cls, value: str) -> str:
        return session_template(value)

    @field_validator("events")
    @classmethod
    def _snake_case(cls, value: dict[Op, str]) -> dict[Op, str]:
        for op, name in value.items():
            if not _EVENT_NAME.fullmatch(name):
                raise ValueError(f"the event name of {op} must be lower snake case")
        return value

    def build(self, context: SinkContext) -> MobileEventsSink:
        """Open the HTTP client."""
        return MobileEventsSink(
            self.name or f"mobile_events:{urlsplit(self.base_url).hostname}",
            self.base_url.rstrip("/") + PATHS[self.api_version],
            api_key=self.api_key.reveal(),
            headers={
                "X-USER-ID": self.user_id,
                "User-Agent": self.user_agent,
                "X-APP-ID": self.app_id.reveal(),
                "X-PLATFORM": self.platform,
                "X-VERSION": self.sdk_version,
            },
            mapping=RecordMapping.of(DEFAULT_EVENTS, self),
            session_id=self.session_id,
            logger=context.logger,
            timeout=self.timeout,
            verify_tls=self.verify_tls,
        )


class MobileEventsSink:
    """Sends each batch in one request.

    A 2xx answer whose `status` is `success` or `ok`: taken. 408, 429, 5xx, a network error,
    a timeout, or a 2xx answer that is neither taken nor a known refusal: transient. The
    codes `INVALID_API_KEY`, `MISSING_REQUIRED_HEADER`, `INVALID_PARAMETER` and `*_REQUIRED`,
    and any other 4xx: permanent. `send` may be called from several threads at once.
    """

    direct = False
    concurrent = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        api_key: str,
        headers: Mapping[str, str],
        mapping: RecordMapping,
        logger: structlog.typing.FilteringBoundLogger,
        session_id: str = "{msgId}",
        timeout: float = 10.0,
        verify_tls: bool = True,
    ) -> None:
        self.name = name
        self._url = url
        self._mapping = mapping
        self._session_id = session_id
        self._log = logger.bind(sink=name)
        self._http = Endpoint(
            "mobile_events",
            url,
            headers={
                **headers,
                "X-API-KEY": api_key,
                "Content-Type": CONTENT_TYPE,
                "Accept": CONTENT_TYPE,
            },
            timeout=timeout,
            verify_tls=verify_tls,
            secrets=(api_key,),
        )

    def __repr__(self) -> str:
        return f"MobileEventsSink(name={self.name!r}, host={self._http.host!r})"

    def item(self, event: DownstreamEvent) -> dict[str, Any]:
        """The API's event object of one record."""
        return {
            "name": self._mapping.event_name(event),
            "user": event.customer_id,
            "sessionId": self._mapping.render(self._session_id, event),
            "extra": self._mapping.attribute_values(event, as_text=False),
        }

    def body(self, events: Sequence[DownstreamEvent]) -> bytes:
        """The request body of a batch, UTF-8 JSON."""
        return json_text({"events": [self.item(event) for event in events]}).encode("utf-8")

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Send the batch in one request; an empty batch sends nothing."""
        if not events:
            return
        with encoding_batch():
            body = self.body(events)
        self._verdict(self._http.exchange("POST", self._url, content=body), len(events))

    def _verdict(self, answer: Answer, records: int) -> None:
        http, document = self._http, answer.document
        state = str(document.get("status", "")).lower() if document is not None else ""
        if answer.ok and state in TAKEN:
            return
        answer.raise_if_later(http.where)
        code = safe_code(None if document is None else document.get("code"))
        if document is not None:
            http.log_refusal(self._log, answer.status, code, document.get("message"), records)
        known = code in PERMANENT_CODES or code.endswith("_REQUIRED")
        raise refusal(http.where, answer.status, code, permanent=known or not answer.ok)

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._http.close()
