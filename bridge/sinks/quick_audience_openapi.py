"""The Quick Audience 2.0 OpenAPI sink: identities and events through Alibaba Cloud RPC actions.

Per batch: `RecieveUserMessage` with the identities of the added and edited records (when
any), then `RecieveEventMessage` with every record, both of product `retailadvqa-public`,
version 2020-05-15, signed with signature version 1.0 (HMAC-SHA1). The action names keep
the API's own spelling. Every parameter travels in the form body, so that no URL carries
the access key id or the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

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

PRODUCT = "retailadvqa-public"
API_VERSION = "2020-05-15"
USER_ACTION = "RecieveUserMessage"
EVENT_ACTION = "RecieveEventMessage"
USER_LIST = "CustomerMessageModelListStr"
EVENT_LIST = "EventMessageModelListStr"
ENDPOINTS = {
    "cn-shanghai": "quicka-public.cn-shanghai.aliyuncs.com",
    "cn-shenzhen": "quicka-public.cn-shenzhen.aliyuncs.com",
    "cn-zhangjiakou": "quicka-public.cn-zhangjiakou.aliyuncs.com",
}
MAX_BATCH = 100
"""Records per call, the documented limit; the config refuses a larger `batch_size`."""
DEFAULT_EVENTS = {Op.ADD: "customer_add", Op.EDIT: "customer_edit", Op.DELETE: "customer_delete"}
# Gateway codes that a later call can get past: throttling, a reused nonce, a clock that
# has drifted (an operator fixes it without losing the batch), the service being busy.
TRANSIENT_CODES = frozenset(
    {"SignatureNonceUsed", "InvalidTimeStamp.Expired", "ServiceUnavailable", "InternalError"}
)


def percent_encode(text: str) -> str:
    """RFC 3986 encoding of UTF-8 text as the RPC signature wants it: `%20`, `%2A`, `~` kept."""
    return quote(text, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The sorted, encoded `key=value` pairs of every parameter but `Signature`."""
    pairs = sorted((key, value) for key, value in params.items() if key != "Signature")
    return "&".join(f"{percent_encode(key)}={percent_encode(value)}" for key, value in pairs)


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """`METHOD&%2F&` followed by the encoded canonical query."""
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def hmac_sha1_base64(key: str, text: str) -> str:
    """Base64 of HMAC-SHA1 of `text` under `key`, both UTF-8."""
    digest = hmac.new(key.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    """The `Signature` of a request: the key is the AccessKey secret followed by `&`."""
    return hmac_sha1_base64(secret + "&", string_to_sign(method, params))


def timestamp(now: float) -> str:
    """UTC ISO 8601 to the second, as the `Timestamp` parameter wants it."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class QuickAudienceOpenApiConfig(SinkConfigBase, MappingSettings, IdentitySettings):
    """`type: quick_audience_openapi`: identities and events through the 2.0 OpenAPI.

    `region` picks the documented endpoint; `endpoint` (scheme, host, port) replaces it,
    for a proxy or a stand-in. `access_key_id` and `access_key_secret` may hold `${NAME}`.
    `batch_size` is at most 100, the API's limit per call.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["quick_audience_openapi"]
    region: Literal["cn-shanghai", "cn-shenzhen", "cn-zhangjiakou"] = "cn-shanghai"
    endpoint: Url | None = None
    access_id: str
    organization_id: str
    workspace_id: str | None = None
    event_source_code: str | None = None
    access_key_id: Secret
    access_key_secret: Secret
    report_identities: bool = True
    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    timeout: float = Field(default=10.0, gt=0)
    verify_tls: bool = True
    retry_error_codes: tuple[str, ...] = ()

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, root_only=True)

    @field_validator("access_id", "organization_id", "workspace_id", "event_source_code")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value)

    @field_validator("access_key_id", "access_key_secret")
    @classmethod
    def _credential(cls, value: Secret) -> Secret:
        return check_secret(value)

    def url(self) -> str:
        """Where the requests go."""
        return self.endpoint or f"https://{ENDPOINTS[self.region]}/"

    def build(self, context: SinkContext) -> QuickAudienceOpenApiSink:
        """Open the HTTP client."""
        url = self.url()
        return QuickAudienceOpenApiSink(
            self.name or f"quick_audience_openapi:{urlsplit(url).hostname}",
            url,
            region=self.region,
            access_id=self.access_id,
            organization_id=self.organization_id,
            workspace_id=self.workspace_id,
            event_source_code=self.event_source_code,
            access_key_id=self.access_key_id.reveal(),
            access_key_secret=self.access_key_secret.reveal(),
            mapping=RecordMapping.of(DEFAULT_EVENTS, self, self),
            report_identities=self.report_identities,
            logger=context.logger,
            timeout=self.timeout,
            verify_tls=self.verify_tls,
            retry_error_codes=self.retry_error_codes,
        )


class QuickAudienceOpenApiSink:
    """Calls `RecieveUserMessage` (when the batch has identities), then `RecieveEventMessage`.

    A call is taken on HTTP 200 with `Success: true` (either case of the first letter).
    408, 429, 5xx, a network error, a timeout, an answer that is not JSON, and the gateway
    codes `Throttling*`, `SignatureNonceUsed`, `InvalidTimeStamp.Expired`,
    `ServiceUnavailable` and `InternalError`: transient. Any other refusal is permanent
    unless its code is in `retry_error_codes`. A retry sends both calls again: reporting
    an identity twice binds it twice, and `outBizId` lets the platform drop a second event.
    `send` may be called from several threads at once; `last_trace_id` is the last answer's.
    """

    direct = False
    concurrent = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        access_id: str,
        organization_id: str,
        access_key_id: str,
        access_key_secret: str,
        mapping: RecordMapping,
        logger: structlog.typing.FilteringBoundLogger,
        region: str = "cn-shanghai",
        workspace_id: str | None = None,
        event_source_code: str | None = None,
        report_identities: bool = True,
        timeout: float = 10.0,
        verify_tls: bool = True,
        retry_error_codes: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.name = name
        self._url = url
        self._region = region
        self._access_id = access_id
        self._organization_id = organization_id
        self._workspace_id = workspace_id
        self._event_source_code = event_source_code
        self._access_key_id = access_key_id
        self._secret = access_key_secret
        self._mapping = mapping
        self._report_identities = report_identities
        self._log = logger.bind(sink=name)
        self._retry_codes = frozenset(retry_error_codes)
        self._clock = clock
        self._nonce = nonce
        self.last_trace_id: str | None = None
        """The `TraceId` (else `RequestId`) of the platform's last answer."""
        self._http = Endpoint(
            "quick_audience_openapi",
            url,
            headers={"Accept": "application/json"},
            timeout=timeout,
            verify_tls=verify_tls,
            secrets=(access_key_id, access_key_secret),
        )

    def __repr__(self) -> str:
        return f"QuickAudienceOpenApiSink(name={self.name!r}, host={self._http.host!r})"

    def user_model(self, event: DownstreamEvent) -> dict[str, Any] | None:
        """The CustomerMessageModel of an event, or None when it reports no identity."""
        identities = self._mapping.identity_list(event)
        if not identities:
            return None
        return {
            "organizationId": self._organization_id,
            "customerId": event.customer_id,
            "customerIdList": identities,
            "v": 1,
        }

    def event_model(self, event: DownstreamEvent) -> dict[str, Any]:
        """The EventMessageModel of an event."""
        model: dict[str, Any] = {"organizationId": self._organization_id}
        if self._workspace_id is not None:
            model["workspaceId"] = self._workspace_id
        model["customerId"] = event.customer_id
        if self._event_source_code is not None:
            model["eventSourceCode"] = self._event_source_code
        model["eventCode"] = self._mapping.event_name(event)
        model["eventTime"] = event_time(event)
        model["extendAttributes"] = self._mapping.attribute_values(event, as_text=True)
        model["v"] = 1
        return model

    def parameters(self, action: str, business: Mapping[str, str]) -> dict[str, str]:
        """Every parameter of a call made now, `Signature` included."""
        params = {
            "Action": action,
            "Version": API_VERSION,
            "Format": "JSON",
            "RegionId": self._region,
            "AccessKeyId": self._access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": self._nonce(),
            "Timestamp": timestamp(self._clock()),
            "AccessId": self._access_id,
            "OrganizationId": self._organization_id,
            **business,
        }
        params["Signature"] = signature(params, self._secret)
        return params

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Report the batch's identities, then its events; an empty batch sends nothing."""
        if not events:
            return
        if len(events) > MAX_BATCH:
            raise SinkError(f"a batch of {len(events)} is over {MAX_BATCH}", permanent=True)
        with encoding_batch():
            users = [self.user_model(event) for event in events] if self._report_identities else []
            found = [user for user in users if user is not None]
            user_list = json_text(found) if found else None
            event_list = json_text([self.event_model(event) for event in events])
        if user_list is not None:
            self.call(USER_ACTION, {USER_LIST: user_list}, len(found))
        self.call(EVENT_ACTION, {EVENT_LIST: event_list}, len(events))

    def call(self, action: str, business: Mapping[str, str], records: int = 0) -> None:
        """Make one signed call; SinkError unless the platform took it."""
        params = self.parameters(action, business)
        where = f"{self._http.where} {action}"
        answer = self._http.exchange("POST", self._url, where=where, data=params)
        self._verdict(action, where, answer, records)

    def _verdict(self, action: str, where: str, answer: Answer, records: int) -> None:
        status, document = answer.status, answer.document
        trace = None
        if document is not None:
            trace = field_of(document, "traceId") or field_of(document, "requestId")
        trace_id = self.last_trace_id = safe_code(trace) if trace is not None else None
        if status == 200 and document is not None and field_of(document, "success") is True:
            return
        answer.raise_if_later(where)
        if document is None:
            if status == 200:
                raise SinkError(f"{where} answered 200 without a JSON object")
            raise SinkError(f"{where} answered {status}", permanent=True)
        # A gateway error says Code / Message; the API's own refusal errorCode / errorDesc.
        code = safe_code(field_of(document, "errorCode") or field_of(document, "code"))
        description = field_of(document, "errorDesc") or field_of(document, "message")
        self._http.log_refusal(
            self._log, status, code, description, records, action=action, trace_id=trace_id
        )
        transient = (
            code in TRANSIENT_CODES or code.startswith("Throttling") or code in self._retry_codes
        )
        raise refusal(where, status, code, permanent=not transient, trace_id=trace_id)

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._http.close()
