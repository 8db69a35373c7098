"""The Quick Audience sink, event reporting API 3.0: each batch as one signed form POST.

`POST {endpoint}/openapi/cloud/event/detail/receive?appId=..&accessKey=..&timestamp=..`
with the form fields `accessId` and `eventMessageModelListJson` (a JSON list of
ClientEventMessageModel) and the open API's `Authorization` header.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import ConfigDict, Field, field_validator

from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.errors import SinkError
from bridge.secrets import Secret, Url
from bridge.sinks.base import SinkConfigBase, SinkContext
from bridge.sinks.http import (
    Answer,
    Endpoint,
    check_secret,
    check_text,
    check_url,
    encoding_batch,
    field_of,
    json_text,
    refusal,
    safe_code,
)
from bridge.sinks.mapping import IdentitySettings, MappingSettings, RecordMapping, event_time

PATH = "/openapi/cloud/event/detail/receive"
DEFAULT_EVENTS = {Op.ADD: "customer_add", Op.EDIT: "customer_edit", Op.DELETE: "customer_delete"}
MAX_BATCH = 100
"""The 3.0 document names no limit; the 2.0 document's limit of 100 per call is assumed."""


def authorization(access_key: str, access_secret: str, app_id: str, timestamp: str) -> str:
    """The open API's `Authorization`: hex MD5 of the sorted `key=value` pairs joined by `&`."""
    pairs = {
        "accessKey": access_key,
        "accessSecret": access_secret,
        "appId": app_id,
        "timestamp": timestamp,
    }
    text = "&".join(f"{key}={value}" for key, value in sorted(pairs.items()))
    # MD5 is what the platform's open API asks for; it is not our choice of hash.
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class QuickAudienceConfig(SinkConfigBase, MappingSettings, IdentitySettings):
    """`type: quick_audience`: report each record as a behaviour event through API 3.0.

    `app_id`, `access_key` and `access_secret` may hold `${NAME}`, read from the
    environment at start. `retry_error_codes` lists the platform `errorCode`s that are
    worth a retry; any other refusal of a batch is permanent.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["quick_audience"]
    endpoint: Url
    access_id: str
    organization_id: str
    workspace_id: str | None = None
    entity_id: str | None = None
    app_id: Secret
    access_key: Secret
    access_secret: Secret
    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    timeout: float = Field(default=10.0, gt=0)
    verify_tls: bool = True
    retry_error_codes: tuple[str, ...] = ()

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value)

    @field_validator("access_id", "organization_id", "workspace_id", "entity_id")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value)

    @field_validator("app_id", "access_key", "access_secret")
    @classmethod
    def _credential(cls, value: Secret) -> Secret:
        return check_secret(value)

    def build(self, context: SinkContext) -> QuickAudienceSink:
        """Open the HTTP client."""
        return QuickAudienceSink(
            self.name or f"quick_audience:{urlsplit(self.endpoint).hostname}",
            self.endpoint,
            access_id=self.access_id,
            organization_id=self.organization_id,
            workspace_id=self.workspace_id,
            entity_id=self.entity_id,
            app_id=self.app_id.reveal(),
            access_key=self.access_key.reveal(),
            access_secret=self.access_secret.reveal(),
            mapping=RecordMapping.of(DEFAULT_EVENTS, self, self),
            logger=context.logger,
            timeout=self.timeout,
            verify_tls=self.verify_tls,
            retry_error_codes=self.retry_error_codes,
        )


class QuickAudienceSink:
    """Sends each batch in one request.

    HTTP 200 with `success: true`: taken. 408, 429, 5xx, a network error, a timeout or an
    answer that is not JSON: transient. HTTP 200 with `success: false`: permanent unless
    its `errorCode` is in `retry_error_codes`; the code, the description (scrubbed) and the
    `traceId` are logged, and the `traceId` goes in the error. Other statuses: permanent.
    `send` may be called from several threads at once; `last_trace_id` is the last answer's.
    """

    direct = False
    concurrent = True

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        access_id: str,
        organization_id: str,
        app_id: str,
        access_key: str,
        access_secret: str,
        mapping: RecordMapping,
        logger: structlog.typing.FilteringBoundLogger,
        workspace_id: str | None = None,
        entity_id: str | None = None,
        timeout: float = 10.0,
        verify_tls: bool = True,
        retry_error_codes: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._url = endpoint.rstrip("/") + PATH
        self._access_id = access_id
        self._organization_id = organization_id
        self._workspace_id = workspace_id
        self._entity_id = entity_id
        self._app_id = app_id
        self._access_key = access_key
        self._access_secret = access_secret
        self._mapping = mapping
        self._log = logger.bind(sink=name)
        self._retry_codes = frozenset(retry_error_codes)
        self._clock = clock
        self.last_trace_id: str | None = None
        """The `traceId` of the platform's last answer, for a support request."""
        self._http = Endpoint(
            "quick_audience",
            endpoint,
            headers={"Accept": "application/json"},
            timeout=timeout,
            verify_tls=verify_tls,
            secrets=(access_key, access_secret),
        )

    def __repr__(self) -> str:
        return f"QuickAudienceSink(name={self.name!r}, host={self._http.host!r})"

    def model(self, event: DownstreamEvent) -> dict[str, Any]:
        """The ClientEventMessageModel of one event."""
        model: dict[str, Any] = {"organizationId": self._organization_id}
        if self._workspace_id is not None:
            model["workspaceId"] = self._workspace_id
        model["customerId"] = event.customer_id
        if self._entity_id is not None:
            model["entityId"] = self._entity_id
        model["eventCode"] = self._mapping.event_name(event)
        model["eventTime"] = event_time(event)
        model["extendAttributes"] = self._mapping.attribute_values(event, as_text=True)
        model["customerIdList"] = self._mapping.identity_list(event)
        model["isOrder"] = "0"
        return model

    def form(self, events: Sequence[DownstreamEvent]) -> dict[str, str]:
        """The form fields of a batch."""
        models = [self.model(event) for event in events]
        return {
            "accessId": self._access_id,
            "eventMessageModelListJson": json_text(models),
        }

    def signed_query(self) -> tuple[dict[str, str], str]:
        """The query parameters of a request made now, and its `Authorization` value."""
        timestamp = str(int(self._clock() * 1000))
        query = {"appId": self._app_id, "accessKey": self._access_key, "timestamp": timestamp}
        signature = authorization(self._access_key, self._access_secret, self._app_id, timestamp)
        return query, signature

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Send the batch in one request; an empty batch sends nothing."""
        if not events:
            return
        if len(events) > MAX_BATCH:
            raise SinkError(f"a batch of {len(events)} is over {MAX_BATCH}", permanent=True)
        with encoding_batch():
            form = self.form(events)
        query, signature = self.signed_query()
        headers = {"Authorization": signature}
        answer = self._http.exchange("POST", self._url, params=query, data=form, headers=headers)
        self._verdict(answer, len(events))

    def _verdict(self, answer: Answer, records: int) -> None:
        http, status, document = self._http, answer.status, answer.document
        answer.raise_if_later(http.where)
        trace = None if document is None else field_of(document, "traceId")
        trace_id = self.last_trace_id = safe_code(trace) if trace is not None else None
        if status == 200 and document is not None and field_of(document, "success") is True:
            return
        if status == 200 and document is None:
            raise SinkError(f"{http.where} answered 200 without a JSON object")
        code = safe_code(None if document is None else field_of(document, "errorCode"))
        description = None if document is None else field_of(document, "errorDesc")
        http.log_refusal(self._log, status, code, description, records, trace_id=trace_id)
        permanent = not (status == 200 and code in self._retry_codes)
        raise refusal(http.where, status, code, permanent=permanent, trace_id=trace_id)

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._http.close()
