"""The platform sinks against the stand-ins of `bridge.testing`, on loopback.

Each stand-in refuses what its platform's document says the platform refuses (a wrong
signature or Authorization, a missing header, more than 100 models, a malformed list
field) and records every request, so the tests assert on the exact requests.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from bridge.config import DeliveryConfig, parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.delivery import Worker, event_row, sink_sender
from bridge.errors import BrokerError, ConfigError, SinkError
from bridge.sinks import SinkContext, build_sinks
from bridge.sinks.mapping import IdentitySettings, MappingSettings, RecordMapping
from bridge.sinks.mobile_events import MobileEventsConfig, MobileEventsSink
from bridge.sinks.quick_audience import QuickAudienceConfig, QuickAudienceSink
from bridge.sinks.quick_audience_openapi import (
    DEFAULT_EVENTS,
    EVENT_ACTION,
    EVENT_LIST,
    QuickAudienceOpenApiConfig,
    QuickAudienceOpenApiSink,
)
from bridge.spool import Spool
from bridge.testing import (
    QUICK_AUDIENCE_PATH,
    MobileEventsStandIn,
    QuickAudienceOpenApiStandIn,
    QuickAudienceStandIn,
)

APP_ID = "app-9"
ACCESS_ID = "retailadvqa-cn-test"
ORGANIZATION = "org-56621289"
ACCESS_KEY = "ak-0123456789"
ACCESS_SECRET = "sk-secret-abcdef"
API_KEY = "mobile-api-key-xyz"
PHONE = "13800138000"
EMAIL = "li.lei@example.com"
PERSONAL = (PHONE, EMAIL, "110101199001011234")
SECRETS = (ACCESS_SECRET, API_KEY)


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("the platform sinks do not publish")


def context() -> SinkContext:
    """What the runtime lends a sink; built per sink so that capture_logs sees its logger."""
    return SinkContext(publish=_no_publish, logger=structlog.get_logger())


def event(
    customer_id: str = "c-1", op: Op = Op.ADD, *, msg_id: str | None = "msg-1"
) -> DownstreamEvent:
    """A downstream event of tenant acme, project 42, with personal data in the record."""
    customer: dict[str, Any] = {"id": customer_id}
    if op is not Op.DELETE:
        customer |= {"projectId": "42", "name": "李雷", "phone": PHONE, "email": EMAIL}
        customer |= {"idNumber": PERSONAL[2], "age": 30}
    return DownstreamEvent(
        op=op,
        kind=TopicKind.STANDARD,
        tenant="acme",
        project_id="42",
        version=None,
        vendor=None,
        msg_id=msg_id,
        report_ts=1661154622,
        event_ts=1661154622000,
        customer=customer,
    )


BATCH = [event("c-1", Op.ADD), event("c-2", Op.EDIT), event("c-3", Op.DELETE)]


def send_error(sink: Any, events: list[DownstreamEvent] | None = None) -> SinkError:
    """The SinkError that sending a batch raises."""
    with pytest.raises(SinkError) as caught:
        sink.send(events or [event()])
    return caught.value


def assert_clean(*texts: str) -> None:
    """None of the texts holds a secret, a signature-worthy key or personal data."""
    for text in texts:
        for hidden in (*SECRETS, *PERSONAL):
            assert hidden not in text, (hidden, text)


# Loopback requests must not be sent to a proxy from the environment.
pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.fixture
def qa() -> Iterator[QuickAudienceStandIn]:
    """The API 3.0 stand-in."""
    with QuickAudienceStandIn(
        app_id=APP_ID,
        access_key=ACCESS_KEY,
        access_secret=ACCESS_SECRET,
        access_id=ACCESS_ID,
        organization_id=ORGANIZATION,
    ) as server:
        yield server


@pytest.fixture
def openapi() -> Iterator[QuickAudienceOpenApiStandIn]:
    """The 2.0 OpenAPI stand-in."""
    with QuickAudienceOpenApiStandIn(
        access_key_id=ACCESS_KEY,
        access_key_secret=ACCESS_SECRET,
        access_id=ACCESS_ID,
        organization_id=ORGANIZATION,
    ) as server:
        yield server


@pytest.fixture
def mobile() -> Iterator[MobileEventsStandIn]:
    """The mobile event API stand-in."""
    with MobileEventsStandIn(api_key=API_KEY) as server:
        yield server


def qa_sink(url: str, **settings: Any) -> QuickAudienceSink:
    """An API 3.0 sink built from config as the runtime builds it."""
    config = {
        "type": "quick_audience",
        "endpoint": url,
        "access_id": ACCESS_ID,
        "organization_id": ORGANIZATION,
        "app_id": APP_ID,
        "access_key": ACCESS_KEY,
        "access_secret": ACCESS_SECRET,
        **settings,
    }
    return QuickAudienceConfig.model_validate(config).build(context())


def openapi_sink(url: str, **settings: Any) -> QuickAudienceOpenApiSink:
    """A 2.0 OpenAPI sink built from config, pointed at `url`."""
    config = {
        "type": "quick_audience_openapi",
        "endpoint": url,
        "access_id": ACCESS_ID,
        "organization_id": ORGANIZATION,
        "access_key_id": ACCESS_KEY,
        "access_key_secret": ACCESS_SECRET,
        **settings,
    }
    return QuickAudienceOpenApiConfig.model_validate(config).build(context())


def mobile_sink(url: str, **settings: Any) -> MobileEventsSink:
    """A mobile events sink built from config."""
    config = {
        "type": "mobile_events",
        "base_url": url,
        "api_key": API_KEY,
        "app_id": "io.example.bridge",
        "platform": "server",
        **settings,
    }
    return MobileEventsConfig.model_validate(config).build(context())


IDENTITIES = [
    {"customerId": PHONE, "idMapping": "MOBILE"},
    {"customerId": EMAIL, "idMapping": "EMAIL"},
]


def qa_model(customer_id: str, op: str, code: str) -> dict[str, Any]:
    """The ClientEventMessageModel the tests expect for one record of BATCH."""
    return {
        "organizationId": ORGANIZATION,
        "customerId": customer_id,
        "eventCode": code,
        "eventTime": 1661154622000,
        "extendAttributes": {
            "tenant": "acme",
            "projectId": "42",
            "outBizId": f"msg-1:{op}:{customer_id}",
        },
        "customerIdList": IDENTITIES if op != "delete" else [],
        "isOrder": "0",
    }


# --- Quick Audience API 3.0 -------------------------------------------------------------------


def test_qa_request_is_the_documented_signed_form(qa: QuickAudienceStandIn) -> None:
    """One POST: appId/accessKey/timestamp query, MD5 Authorization, the two form fields."""
    sink = qa_sink(qa.url)
    before = int(time.time() * 1000)
    try:
        sink.send(BATCH)
    finally:
        sink.close()
    [request] = qa.requests
    assert (request.method, request.path, request.status) == ("POST", QUICK_AUDIENCE_PATH, 200)
    assert set(request.query) == {"appId", "accessKey", "timestamp"}
    assert (request.query["appId"], request.query["accessKey"]) == (APP_ID, ACCESS_KEY)
    stamp = request.query["timestamp"]
    assert before <= int(stamp) <= int(time.time() * 1000)
    plain = f"accessKey={ACCESS_KEY}&accessSecret={ACCESS_SECRET}&appId={APP_ID}&timestamp={stamp}"
    assert request.headers["authorization"] == hashlib.md5(plain.encode()).hexdigest()
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = request.form()
    assert set(form) == {"accessId", "eventMessageModelListJson"}
    assert form["accessId"] == ACCESS_ID
    assert json.loads(form["eventMessageModelListJson"]) == [
        qa_model("c-1", "add", "customer_add"),
        qa_model("c-2", "edit", "customer_edit"),
        qa_model("c-3", "delete", "customer_delete"),
    ]
    assert qa.accepted == json.loads(form["eventMessageModelListJson"])
    assert sink.last_trace_id == request.answer["traceId"]


def test_qa_optional_model_fields_and_mapping_options(qa: QuickAudienceStandIn) -> None:
    """workspaceId, entityId, chosen attributes, identity codes and event codes are sent."""
    sink = qa_sink(
        qa.url,
        workspace_id="ws-1",
        entity_id="car",
        attributes={"age": "age", "op": "@op"},
        identities={"phone": "mobile"},
        events={"add": "member_join"},
    )
    try:
        sink.send([event()])
    finally:
        sink.close()
    [model] = qa.accepted
    assert model["workspaceId"] == "ws-1"
    assert model["entityId"] == "car"
    assert model["eventCode"] == "member_join"
    assert model["extendAttributes"] == {"age": "30", "op": "add", "outBizId": "msg-1:add:c-1"}
    assert model["customerIdList"] == [{"customerId": PHONE, "idMapping": "mobile"}]


def test_qa_wrong_secret_is_refused_for_good(qa: QuickAudienceStandIn) -> None:
    """A wrong secret fails the Authorization check: permanent, code and traceId kept."""
    with capture_logs() as logs:
        sink = qa_sink(qa.url, access_secret="not-the-secret")
        try:
            error = send_error(sink, BATCH)
        finally:
            sink.close()
    [request] = qa.requests
    assert request.answer["errorCode"] == "ES0110000002"
    assert error.permanent
    trace = request.answer["traceId"]
    assert str(error) == (
        f"quick_audience 127.0.0.1 refused the batch: 200 ES0110000002, traceId {trace}"
    )
    [logged] = [entry for entry in logs if entry["event"] == "platform_refused"]
    assert logged["error_code"] == "ES0110000002"
    assert logged["error_desc"] == "Authentication failed!"
    assert logged["trace_id"] == trace
    assert logged["records"] == 3
    assert_clean(str(error), json.dumps(logs, default=str))
    assert "not-the-secret" not in str(error)


def test_qa_a_resend_is_dropped_by_out_biz_id(qa: QuickAudienceStandIn) -> None:
    """Sending a batch again (a retry) gives the platform the same outBizIds to drop."""
    sink = qa_sink(qa.url)
    try:
        sink.send(BATCH)
        sink.send(BATCH)
    finally:
        sink.close()
    assert len(qa.requests) == 2
    assert len(qa.accepted) == 3
    assert qa.duplicates == 3


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_qa_transient_statuses_are_retried(qa: QuickAudienceStandIn, status: int) -> None:
    """408, 429 and 5xx are transient; the same batch is taken once the platform recovers."""
    qa.answer_next(status, {"success": False})
    sink = qa_sink(qa.url)
    try:
        error = send_error(sink)
        sink.send([event()])
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == f"quick_audience 127.0.0.1 answered {status}"
    assert len(qa.accepted) == 1


def test_qa_refusal_codes_can_be_made_transient(qa: QuickAudienceStandIn) -> None:
    """A `success: false` whose errorCode is in retry_error_codes is transient; others are not."""
    refusal = {"success": False, "errorCode": "SYSTEM_BUSY", "errorDesc": "busy", "traceId": "t-1"}
    qa.answer_next(200, refusal)
    qa.answer_next(200, {**refusal, "errorCode": "OTHER"})
    sink = qa_sink(qa.url, retry_error_codes=["SYSTEM_BUSY"])
    try:
        first, second = send_error(sink), send_error(sink)
    finally:
        sink.close()
    assert not first.permanent
    assert second.permanent
    assert str(first).endswith("200 SYSTEM_BUSY, traceId t-1")


def test_qa_an_answer_without_success_is_not_taken(qa: QuickAudienceStandIn) -> None:
    """HTTP 200 whose body lacks `success: true` is a refusal, not a success."""
    qa.answer_next(200, {"data": True})
    sink = qa_sink(qa.url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.permanent
    assert qa.accepted == []


def test_qa_platform_that_is_down_is_transient() -> None:
    """Connection refused is transient and its message names the host only."""
    server = QuickAudienceStandIn(
        app_id=APP_ID, access_key=ACCESS_KEY, access_secret=ACCESS_SECRET, access_id=ACCESS_ID
    )
    url = server.url
    server.stop()
    sink = qa_sink(url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == "quick_audience 127.0.0.1 failed: ConnectError"


def _qa_post(
    qa: QuickAudienceStandIn,
    models: Any,
    *,
    secret: str = ACCESS_SECRET,
    stamp: int | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Post to the stand-in by hand, signed with `secret`; its answer with the status."""
    stamp = int(time.time() * 1000) if stamp is None else stamp
    params = {"appId": APP_ID, "accessKey": ACCESS_KEY, "timestamp": str(stamp)}
    if query is not None:
        params = query
    plain = f"accessKey={ACCESS_KEY}&accessSecret={secret}&appId={APP_ID}&timestamp={stamp}"
    text = models if isinstance(models, str) else json.dumps(models)
    response = httpx.post(
        qa.url + QUICK_AUDIENCE_PATH,
        params=params,
        data={"accessId": ACCESS_ID, "eventMessageModelListJson": text},
        headers={"Authorization": hashlib.md5(plain.encode()).hexdigest()},
    )
    return {"status": response.status_code, **response.json()}


def test_qa_stand_in_enforces_the_contract(qa: QuickAudienceStandIn) -> None:
    """The stand-in refuses a wrong Authorization, a stale or missing timestamp, bad models."""
    good = qa_model("c-1", "add", "customer_add")
    assert _qa_post(qa, [good])["success"] is True
    assert _qa_post(qa, [good], secret="wrong")["errorCode"] == "ES0110000002"
    stale = int((time.time() - 3600) * 1000)
    assert _qa_post(qa, [good], stamp=stale)["errorCode"] == "TIMESTAMP_EXPIRED"
    missing = _qa_post(qa, [good], query={"appId": APP_ID, "accessKey": ACCESS_KEY})
    assert (missing["status"], missing["errorCode"]) == (400, "MISSING_PARAMETER")
    malformed = {
        "numeric attribute": {**good, "extendAttributes": {"age": 30}},
        "no customerId": {k: v for k, v in good.items() if k != "customerId"},
        "time in seconds as text": {**good, "eventTime": "1661154622"},
        "identity without type": {**good, "customerIdList": [{"customerId": PHONE}]},
        "unknown field": {**good, "eventSourceCode": "x"},
        "other organization": {**good, "organizationId": "someone-else"},
    }
    for what, model in malformed.items():
        answer = _qa_post(qa, [model])
        assert answer["errorCode"] == "INVALID_PARAMETER", what
    assert _qa_post(qa, "not json")["errorCode"] == "INVALID_PARAMETER"
    assert _qa_post(qa, [])["errorCode"] == "INVALID_PARAMETER"
    assert _qa_post(qa, [good] * 101)["errorCode"] == "BATCH_TOO_LARGE"
    assert len(qa.accepted) == 1


# --- Quick Audience 2.0 OpenAPI ---------------------------------------------------------------

COMMON_KEYS = {
    "Action",
    "Version",
    "Format",
    "RegionId",
    "AccessKeyId",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
    "Signature",
    "AccessId",
    "OrganizationId",
}


def openapi_event(customer_id: str, op: str, code: str) -> dict[str, Any]:
    """The EventMessageModel the tests expect for one record of BATCH."""
    return {
        "organizationId": ORGANIZATION,
        "customerId": customer_id,
        "eventCode": code,
        "eventTime": 1661154622000,
        "extendAttributes": {
            "tenant": "acme",
            "projectId": "42",
            "outBizId": f"msg-1:{op}:{customer_id}",
        },
        "v": 1,
    }


def test_openapi_reports_identities_then_events(openapi: QuickAudienceOpenApiStandIn) -> None:
    """RecieveUserMessage carries add/edit identities, then RecieveEventMessage every record."""
    sink = openapi_sink(openapi.url)
    try:
        sink.send(BATCH)
    finally:
        sink.close()
    users, events = openapi.requests
    assert openapi.actions == ["RecieveUserMessage", "RecieveEventMessage"]
    for request in (users, events):
        assert (request.method, request.path, request.query, request.status) == (
            "POST",
            "/",
            {},
            200,
        )
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    user_form, event_form = users.form(), events.form()
    assert set(user_form) == COMMON_KEYS | {"CustomerMessageModelListStr"}
    assert set(event_form) == COMMON_KEYS | {"EventMessageModelListStr"}
    fixed = {
        "Version": "2020-05-15",
        "Format": "JSON",
        "RegionId": "cn-shanghai",
        "AccessKeyId": ACCESS_KEY,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "AccessId": ACCESS_ID,
        "OrganizationId": ORGANIZATION,
    }
    assert {k: user_form[k] for k in fixed} == fixed
    assert {k: event_form[k] for k in fixed} == fixed
    assert user_form["SignatureNonce"] != event_form["SignatureNonce"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event_form["Timestamp"])
    assert json.loads(user_form["CustomerMessageModelListStr"]) == [
        {"organizationId": ORGANIZATION, "customerId": c, "customerIdList": IDENTITIES, "v": 1}
        for c in ("c-1", "c-2")
    ]
    assert json.loads(event_form["EventMessageModelListStr"]) == [
        openapi_event("c-1", "add", "customer_add"),
        openapi_event("c-2", "edit", "customer_edit"),
        openapi_event("c-3", "delete", "customer_delete"),
    ]
    assert len(openapi.identities) == 2
    assert len(openapi.accepted) == 3
    assert sink.last_trace_id == events.answer["TraceId"]


def test_openapi_without_identities_makes_one_call(openapi: QuickAudienceOpenApiStandIn) -> None:
    """A batch of deletes, or report_identities off, calls RecieveEventMessage only."""
    sink = openapi_sink(openapi.url)
    quiet = openapi_sink(openapi.url, report_identities=False, event_source_code="app-key-1")
    try:
        sink.send([event("c-3", Op.DELETE)])
        quiet.send([event("c-4", Op.ADD)])
    finally:
        sink.close()
        quiet.close()
    assert openapi.actions == ["RecieveEventMessage", "RecieveEventMessage"]
    assert openapi.accepted[1]["eventSourceCode"] == "app-key-1"


def test_openapi_signs_text_that_needs_encoding(openapi: QuickAudienceOpenApiStandIn) -> None:
    """Spaces, `*`, `~`, `+` and Chinese in a value pass the stand-in's own signature check."""
    sink = openapi_sink(openapi.url, attributes={"remark": "remark"})
    record = event()
    record.customer["remark"] = "a b*c~d+e/张三"
    try:
        sink.send([record])
    finally:
        sink.close()
    assert [request.status for request in openapi.requests] == [200, 200]
    assert openapi.accepted[0]["extendAttributes"]["remark"] == "a b*c~d+e/张三"


def test_openapi_wrong_secret_is_a_signature_mismatch(
    openapi: QuickAudienceOpenApiStandIn,
) -> None:
    """A wrong secret is SignatureDoesNotMatch: permanent, and the gateway's echo is scrubbed."""
    with capture_logs() as logs:
        sink = openapi_sink(openapi.url, access_key_secret="not-the-secret")
        try:
            error = send_error(sink, BATCH)
        finally:
            sink.close()
    [request] = openapi.requests
    assert request.answer["Code"] == "SignatureDoesNotMatch"
    assert PHONE in request.answer["Message"]  # the gateway quotes what it signed
    assert error.permanent
    assert str(error).startswith(
        "quick_audience_openapi 127.0.0.1 RecieveUserMessage refused the batch: "
        "400 SignatureDoesNotMatch, traceId "
    )
    [logged] = [entry for entry in logs if entry["event"] == "platform_refused"]
    assert logged["error_code"] == "SignatureDoesNotMatch"
    assert_clean(str(error), json.dumps(logs, default=str))
    assert openapi.accepted == []


def test_openapi_unknown_access_key_id_is_permanent(openapi: QuickAudienceOpenApiStandIn) -> None:
    """An AccessKey id the gateway does not know is permanent."""
    sink = openapi_sink(openapi.url, access_key_id="someone-else")
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.permanent
    assert "404 InvalidAccessKeyId.NotFound" in str(error)


def test_openapi_reused_nonce_is_transient(openapi: QuickAudienceOpenApiStandIn) -> None:
    """A nonce the gateway saw before is refused; a retry with a fresh nonce can pass."""
    sink = QuickAudienceOpenApiSink(
        "fixed-nonce",
        openapi.url,
        access_id=ACCESS_ID,
        organization_id=ORGANIZATION,
        access_key_id=ACCESS_KEY,
        access_key_secret=ACCESS_SECRET,
        mapping=RecordMapping.of(DEFAULT_EVENTS, MappingSettings(), IdentitySettings()),
        logger=structlog.get_logger(),
        nonce=lambda: "always-the-same",
    )
    try:
        sink.send([event("c-9", Op.DELETE)])
        error = send_error(sink, [event("c-9", Op.DELETE)])
    finally:
        sink.close()
    assert not error.permanent
    assert "400 SignatureNonceUsed" in str(error)


def test_openapi_clock_far_off_is_transient(openapi: QuickAudienceOpenApiStandIn) -> None:
    """A timestamp outside the gateway's window is transient: fixing the clock loses nothing."""
    sink = QuickAudienceOpenApiSink(
        "late-clock",
        openapi.url,
        access_id=ACCESS_ID,
        organization_id=ORGANIZATION,
        access_key_id=ACCESS_KEY,
        access_key_secret=ACCESS_SECRET,
        mapping=RecordMapping.of(DEFAULT_EVENTS, MappingSettings(), IdentitySettings()),
        logger=structlog.get_logger(),
        clock=lambda: time.time() - 3600,
    )
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert not error.permanent
    assert "InvalidTimeStamp.Expired" in str(error)


@pytest.mark.parametrize(
    ("status", "answer", "permanent"),
    [
        (400, {"Code": "Throttling.User", "Message": "slow down"}, False),
        (503, {"Code": "ServiceUnavailable"}, False),
        (429, {}, False),
        (200, {"Success": False, "ErrorCode": "ES0110000002", "TraceId": "t-9"}, True),
        (403, {"Code": "Forbidden.RAM"}, True),
    ],
)
def test_openapi_answers_are_classified(
    openapi: QuickAudienceOpenApiStandIn, status: int, answer: dict[str, Any], permanent: bool
) -> None:
    """Throttling, 429 and 5xx are transient; API refusals and other 4xx are permanent."""
    openapi.answer_next(status, answer)
    sink = openapi_sink(openapi.url)
    try:
        error = send_error(sink, [event("c-5", Op.DELETE)])
    finally:
        sink.close()
    assert error.permanent is permanent


def test_openapi_batch_limit(openapi: QuickAudienceOpenApiStandIn) -> None:
    """Config refuses batch_size 101; the sink refuses 101 events; the stand-in 101 models."""
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [{"type": "quick_audience_openapi", "batch_size": 101}]})
    assert caught.value.path == "sinks[0].batch_size"
    sink = openapi_sink(openapi.url)
    try:
        too_many = [event(f"c-{n}", Op.DELETE) for n in range(101)]
        assert send_error(sink, too_many).permanent
        assert openapi.requests == []
        model = openapi_event("c-1", "delete", "customer_delete")
        with pytest.raises(SinkError) as over:
            sink.call(EVENT_ACTION, {EVENT_LIST: json.dumps([model] * 101)})
        sink.call(EVENT_ACTION, {EVENT_LIST: json.dumps([model] * 100)})
    finally:
        sink.close()
    assert over.value.permanent
    assert "BATCH_TOO_LARGE" in str(over.value)
    assert len(openapi.accepted) == 1  # 100 models of one outBizId: the rest are duplicates


@pytest.mark.parametrize(
    "change",
    [
        {"extendAttributes": {"outBizId": "x", "age": 30}},
        {"extendAttributes": {"tenant": "acme"}},
        {"eventTime": "now"},
        {"customerIdList": [{"customerId": PHONE, "idMapping": "PHONE"}]},
        {"isOrder": "0"},
    ],
    ids=["numeric-attribute", "no-outBizId", "text-time", "unknown-id-type", "3.0-only-field"],
)
def test_openapi_stand_in_refuses_malformed_lists(
    openapi: QuickAudienceOpenApiStandIn, change: dict[str, Any]
) -> None:
    """A list field that breaks the model is refused by the API (permanent for the sink)."""
    sink = openapi_sink(openapi.url)
    model = {**openapi_event("c-1", "add", "customer_add"), **change}
    try:
        with pytest.raises(SinkError) as caught:
            sink.call(EVENT_ACTION, {EVENT_LIST: json.dumps([model])})
    finally:
        sink.close()
    assert caught.value.permanent
    assert "INVALID_PARAMETER" in str(caught.value)
    assert openapi.accepted == []


def test_openapi_identity_codes_the_api_does_not_list_are_refused(
    openapi: QuickAudienceOpenApiStandIn,
) -> None:
    """An identity type outside the documented list fails RecieveUserMessage for good."""
    sink = openapi_sink(openapi.url, identities={"phone": "PHONE"})
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.permanent
    assert "RecieveUserMessage refused the batch: 200 INVALID_PARAMETER" in str(error)


def test_openapi_region_picks_the_documented_endpoint() -> None:
    """Without `endpoint`, the region names the host; an endpoint must be the root URL."""
    config = {
        "type": "quick_audience_openapi",
        "access_id": ACCESS_ID,
        "organization_id": ORGANIZATION,
        "access_key_id": ACCESS_KEY,
        "access_key_secret": ACCESS_SECRET,
    }
    for region in ("cn-shanghai", "cn-shenzhen", "cn-zhangjiakou"):
        built = QuickAudienceOpenApiConfig.model_validate({**config, "region": region})
        assert built.url() == f"https://quicka-public.{region}.aliyuncs.com/"
        sink = built.build(context())
        assert sink.name == f"quick_audience_openapi:quicka-public.{region}.aliyuncs.com"
        sink.close()
    for bad in ({"region": "cn-beijing"}, {"endpoint": "http://127.0.0.1:1/api"}):
        with pytest.raises(ConfigError) as caught:
            parse({"sinks": [{**config, **bad}]})
        assert caught.value.path == f"sinks[0].{next(iter(bad))}"


# --- Mobile event reporting -------------------------------------------------------------------


def test_mobile_request_is_the_documented_one(mobile: MobileEventsStandIn) -> None:
    """POST /v2/users/report/events with the required headers and `{"events": [...]}`."""
    sink = mobile_sink(mobile.url)
    try:
        sink.send(BATCH)
    finally:
        sink.close()
    [request] = mobile.requests
    assert (request.method, request.path, request.status) == (
        "POST",
        "/v2/users/report/events",
        200,
    )
    expected_headers = {
        "x-api-key": API_KEY,
        "x-user-id": "customer-bridge",
        "x-app-id": "io.example.bridge",
        "x-platform": "server",
        "content-type": "application/json",
        "accept": "application/json",
    }
    assert {k: request.headers[k] for k in expected_headers} == expected_headers
    assert request.headers["user-agent"].startswith("customer-bridge/")
    assert request.headers["x-version"]
    names = ["customer_added", "customer_updated", "customer_deleted"]
    assert request.json() == {
        "events": [
            {
                "name": name,
                "user": customer_id,
                "sessionId": "msg-1",
                "extra": {
                    "tenant": "acme",
                    "projectId": "42",
                    "outBizId": f"msg-1:{op}:{customer_id}",
                },
            }
            for name, customer_id, op in zip(
                names, ("c-1", "c-2", "c-3"), ("add", "edit", "delete"), strict=True
            )
        ]
    }
    assert request.answer == {"status": "success", "message": "Events reported successfully"}


def test_mobile_v1_path_names_and_session_template(mobile: MobileEventsStandIn) -> None:
    """api_version v1, custom event names and a session template reach the stand-in."""
    sink = mobile_sink(
        mobile.url,
        api_version="v1",
        events={"add": "member_joined"},
        session_id="{tenant}-{msgId}",
        attributes={"age": "age"},
        user_id="bridge-01",
    )
    try:
        sink.send([event()])
    finally:
        sink.close()
    [request] = mobile.requests
    assert request.path == "/users/report/events"
    assert request.headers["x-user-id"] == "bridge-01"
    assert mobile.accepted == [
        {
            "name": "member_joined",
            "user": "c-1",
            "sessionId": "acme-msg-1",
            "extra": {"age": 30, "outBizId": "msg-1:add:c-1"},
        }
    ]


def test_mobile_wrong_api_key_is_permanent(mobile: MobileEventsStandIn) -> None:
    """A key the API does not know is 401 INVALID_API_KEY: permanent, key not repeated."""
    with capture_logs() as logs:
        sink = mobile_sink(mobile.url, api_key="not-the-key")
        try:
            error = send_error(sink)
        finally:
            sink.close()
    assert error.permanent
    assert str(error) == "mobile_events 127.0.0.1 refused the batch: 401 INVALID_API_KEY"
    assert_clean(str(error), json.dumps(logs, default=str))
    assert "not-the-key" not in json.dumps(logs, default=str)


@pytest.mark.parametrize(
    ("status", "answer", "outcome"),
    [
        (200, {"status": "ok"}, "taken"),
        (200, {"status": "SUCCESS"}, "taken"),
        (400, {"status": "error", "code": "INVALID_PARAMETER"}, "permanent"),
        (400, {"status": "error", "code": "MISSING_REQUIRED_HEADER"}, "permanent"),
        (400, {"status": "error", "code": "SESSION_ID_REQUIRED"}, "permanent"),
        (200, {"status": "error", "code": "EVENT_NAME_REQUIRED"}, "permanent"),
        (404, {}, "permanent"),
        (429, {"status": "error", "code": "RATE_LIMITED"}, "transient"),
        (502, {}, "transient"),
        (200, {"status": "error", "code": "SOMETHING_NEW"}, "transient"),
    ],
)
def test_mobile_answers_are_classified(
    mobile: MobileEventsStandIn, status: int, answer: dict[str, Any], outcome: str
) -> None:
    """`success`/`ok` is taken; the documented codes and 4xx are permanent; 429/5xx transient."""
    mobile.answer_next(status, answer)
    sink = mobile_sink(mobile.url)
    try:
        if outcome == "taken":
            sink.send([event()])
        else:
            assert send_error(sink).permanent is (outcome == "permanent")
    finally:
        sink.close()


def test_mobile_stand_in_enforces_the_contract(mobile: MobileEventsStandIn) -> None:
    """Each missing header, a wrong key, and each missing event field get their code."""
    headers = {
        "X-API-KEY": API_KEY,
        "X-USER-ID": "u",
        "User-Agent": "ua/1",
        "X-APP-ID": "app",
        "X-PLATFORM": "iOS",
        "X-VERSION": "1.0.0",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    good = {"name": "app_opened", "user": "u-1", "sessionId": "s-1", "extra": {"a": 1}}

    def post(body: Any, drop: str | None = None, **changed: str) -> tuple[int, str | None]:
        # http.client adds no User-Agent or Accept of its own, so a dropped header is absent.
        sent = {k: v for k, v in headers.items() if k != drop} | changed
        connection = http.client.HTTPConnection("127.0.0.1", mobile.port, timeout=5)
        try:
            connection.request("POST", "/v2/users/report/events", json.dumps(body), sent)
            response = connection.getresponse()
            return response.status, json.loads(response.read()).get("code")
        finally:
            connection.close()

    assert post({"events": [good]}) == (200, None)
    for name in headers:
        if name != "X-API-KEY":
            assert post({"events": [good]}, drop=name) == (400, "MISSING_REQUIRED_HEADER"), name
    assert post({"events": [good]}, drop="X-API-KEY") == (400, "MISSING_REQUIRED_HEADER")
    assert post({"events": [good]}, **{"X-API-KEY": "wrong"}) == (401, "INVALID_API_KEY")
    for key, code in (
        ("name", "EVENT_NAME_REQUIRED"),
        ("user", "USER_REQUIRED"),
        ("sessionId", "SESSION_ID_REQUIRED"),
    ):
        missing = {k: v for k, v in good.items() if k != key}
        assert post({"events": [missing]}) == (400, code)
    assert post({"events": []}) == (400, "INVALID_PARAMETER")
    assert post({"events": [{**good, "extra": "text"}]}) == (400, "INVALID_PARAMETER")
    assert len(mobile.accepted) == 1


def test_mobile_platform_that_is_down_is_transient() -> None:
    """Connection refused is transient."""
    server = MobileEventsStandIn(api_key=API_KEY)
    url = server.url
    server.stop()
    sink = mobile_sink(url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == "mobile_events 127.0.0.1 failed: ConnectError"


# --- all three ---------------------------------------------------------------------------------


def test_config_builds_all_three_with_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    qa: QuickAudienceStandIn,
    openapi: QuickAudienceOpenApiStandIn,
    mobile: MobileEventsStandIn,
) -> None:
    """`bridge.config.parse` takes the three types; `${NAME}` secrets work; dumps mask them."""
    monkeypatch.setenv("QA_SECRET", ACCESS_SECRET)
    monkeypatch.setenv("MOBILE_KEY", API_KEY)
    account = {"access_id": ACCESS_ID, "organization_id": ORGANIZATION}
    document = {
        "sinks": [
            {
                "type": "quick_audience",
                "endpoint": qa.url,
                "app_id": APP_ID,
                "access_key": ACCESS_KEY,
                "access_secret": "${QA_SECRET}",
                **account,
            },
            {
                "type": "quick_audience_openapi",
                "endpoint": openapi.url,
                "access_key_id": ACCESS_KEY,
                "access_key_secret": ACCESS_SECRET,  # a literal, masked in dumps
                **account,
            },
            {
                "type": "mobile_events",
                "base_url": mobile.url,
                "api_key": "${MOBILE_KEY}",
                "app_id": "a",
                "platform": "server",
            },
        ]
    }
    cfg = parse(document)
    dumped = json.dumps(cfg.model_dump(mode="json"))
    assert '"access_secret": "***"' in dumped
    assert_clean(dumped, repr(cfg), str(cfg))
    with capture_logs() as logs:
        sinks = build_sinks(cfg.sinks, context())
        try:
            for sink in sinks:
                sink.send(BATCH)
            assert [s.name for s in sinks] == [
                "quick_audience:127.0.0.1",
                "quick_audience_openapi:127.0.0.1",
                "mobile_events:127.0.0.1",
            ]
            assert_clean(*(repr(s) for s in sinks))
        finally:
            for sink in sinks:
                sink.close()
    assert logs == []
    assert (len(qa.accepted), len(openapi.accepted), len(mobile.accepted)) == (3, 3, 3)
    monkeypatch.delenv("QA_SECRET")
    with pytest.raises(ConfigError) as caught:
        parse(document)
    assert caught.value.path == "sinks[0].access_secret"


def test_unknown_keys_and_bad_urls_are_config_errors() -> None:
    """Each sink rejects unknown keys, and URLs with credentials, queries or other schemes."""
    sinks = [
        {
            "type": "quick_audience",
            "endpoint": "https://qa.example.com",
            "access_id": "a",
            "organization_id": "o",
            "app_id": "p",
            "access_key": "k",
            "access_secret": "s",
        },
        {
            "type": "mobile_events",
            "base_url": "https://m.example.com",
            "api_key": "k",
            "app_id": "a",
            "platform": "server",
        },
    ]
    for sink, url_key in zip(sinks, ("endpoint", "base_url"), strict=True):
        parse({"sinks": [sink]})
        with pytest.raises(ConfigError) as caught:
            parse({"sinks": [{**sink, "retries": 3}]})
        assert caught.value.path == "sinks[0].retries"
        for bad in ("ftp://h.example", f"https://u:{ACCESS_SECRET}@h.example", "https://h/?k=1"):
            with pytest.raises(ConfigError) as caught:
                parse({"sinks": [{**sink, url_key: bad}]})
            assert caught.value.path == f"sinks[0].{url_key}"
            assert ACCESS_SECRET not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [{**sinks[1], "platform": "iOS\r\nX-Evil: 1"}]})
    assert caught.value.path == "sinks[0].platform"


def test_demo_shows_records_arriving_at_the_three_stand_ins(tmp_path: Path) -> None:
    """`customer-bridge demo --rounds 1 --platforms` ends with each stand-in's events, masked."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--rounds", "1", "--platforms"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for kind in ("quick_audience", "quick_audience_openapi", "mobile_events"):
        assert re.search(
            rf"\n{kind} stand-in on 127\.0\.0\.1:\d+: \d+ request\(s\), 0 refused, "
            r"took 6 event\(s\)",
            out,
        ), out
    assert out.count("    identity ") == 4
    assert '"customerId":"来源方主键id","eventCode":"customer_delete"' in out
    assert not re.search(r"(?<!\d)1\d{10}(?!\d)", out), "a phone number in clear"
    assert "someone@example.com" not in out


# batch isolation through the delivery worker (SPEC 6: no collateral damage)


@pytest.mark.parametrize("kind", ["quick_audience", "quick_audience_openapi", "mobile_events"])
def test_a_platform_refusing_one_record_dead_letters_it_alone(
    qa: QuickAudienceStandIn,
    openapi: QuickAudienceOpenApiStandIn,
    mobile: MobileEventsStandIn,
    tmp_path: Path,
    kind: str,
) -> None:
    """A platform refusing a whole batch for one record (a blank customer id): the worker
    splits it, that record alone is a dead letter, the platform takes all the others."""
    servers = {"quick_audience": qa, "quick_audience_openapi": openapi, "mobile_events": mobile}
    builders = {
        "quick_audience": qa_sink,
        "quick_audience_openapi": lambda url: openapi_sink(url, report_identities=False),
        "mobile_events": mobile_sink,
    }
    server = servers[kind]
    sink = builders[kind](server.url)
    ids = [f"c-{n}" for n in range(9)]
    ids[5] = " "  # the platform refuses the batch that carries it
    spool = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        spool.store([event_row(sink.name, event(c, Op.EDIT, msg_id=f"m-{c}")) for c in ids], [])
        worker = Worker(
            sink.name,
            sink_sender(sink),
            spool,
            DeliveryConfig(),
            threading.Event(),
            structlog.get_logger(),
            batch_size=9,
            gave_up=lambda _rows, _reason: [],
            kind="event",
        )
        while worker.step():
            pass
        letters = spool.dead_letters()
        pending = spool.pending
    finally:
        spool.close()
        sink.close()
    assert [json.loads(d.body)["customer"]["id"] for d in letters] == [" "]
    accepted = [item.get("customerId", item.get("user")) for item in server.accepted]
    assert sorted(accepted) == sorted(c for c in ids if c != " ")
    assert pending == 0
