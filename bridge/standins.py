"""Local stand-ins of the platforms the platform sinks report to, for tests and the demo.

Each stand-in is an HTTP server on a free loopback port that checks a request the way its
platform's document describes (signature or Authorization, required headers, the batch
limit, the shape of each list field), refuses what breaks the contract, records every
request, and keeps what it took. `answer_next` makes it answer the next good requests
with a given status and body (a platform that throttles, fails or refuses).

Shipped in the package, as structlog ships `structlog.testing`, so that the tests and
`bridge demo --platforms` use the same stand-ins. Where a document names no error code
the stand-in uses its own readable one (`INVALID_PARAMETER`, `BATCH_TOO_LARGE`); the
gateway codes of the RPC stand-in are Alibaba Cloud's (`SignatureDoesNotMatch`, ...).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, quote, urlsplit

QUICK_AUDIENCE_PATH = "/openapi/cloud/event/detail/receive"
MOBILE_PATHS = ("/users/report/events", "/v2/users/report/events")
FORM = "application/x-www-form-urlencoded"
CLOCK_SKEW = 15 * 60
"""Seconds a request's timestamp may be off the stand-in's clock."""
ID_TYPES = frozenset(
    {"oneid", "email", "mobile", "taobao_id", "taobao_nick", "imei", "idfa", "mac_org"}
    | {"weibo_id_org", "alipay_id", "open_id", "union_id"}
)
"""The user ID types the 2.0 document lists (compared without regard to case)."""
AUTH_FAILED = "ES0110000002"  # the 2.0 document's example of a refused call
JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Received:
    """One request as a stand-in saw it, and its answer; header names are lower case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    answer: JsonObject

    def form(self) -> dict[str, str]:
        """The body as a URL-encoded form."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class Refusal(Exception):
    """The contract refuses a request: answer `status` with `answer`."""

    def __init__(self, status: int, answer: JsonObject) -> None:
        super().__init__(status)
        self.status = status
        self.answer = answer


class StandIn:
    """The HTTP server, the records and the scripted answers every stand-in shares."""

    kind: ClassVar[str] = "platform"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: list[Received] = []
        self.accepted: list[JsonObject] = []
        self.duplicates = 0
        self._scripted: collections.deque[tuple[int, JsonObject]] = collections.deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stand_in = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"standin-{self.kind}",
            daemon=True,
        )
        self._running = False

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """`http://127.0.0.1:{port}`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Serve on a background thread."""
        self._thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving and free the port: later connections are refused."""
        if self._running:
            self._server.shutdown()
            self._running = False
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def answer_next(self, status: int, answer: JsonObject | None = None) -> None:
        """Answer the next request that meets the contract with this, instead of taking it."""
        with self._lock:
            self._scripted.append((status, answer or {}))

    def check(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> list[JsonObject]:
        """What a request would give the platform; Refusal if the contract refuses it."""
        raise NotImplementedError

    def taken(self, items: list[JsonObject]) -> JsonObject:
        """Keep what a request gave and say so; a second record of a business id is dropped."""
        for item in items:
            key = _business_id(item)
            if key is not None and any(_business_id(kept) == key for kept in self.accepted):
                self.duplicates += 1
                continue
            self.accepted.append(item)
        return {}

    def _serve(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, JsonObject]:
        parts = urlsplit(target)
        query: dict[str, str] = {}
        with self._lock:
            try:
                query = _pairs(parts.query)
                items = self.check(method, parts.path, query, headers, body)
                if self._scripted:
                    status, answer = self._scripted.popleft()
                else:
                    status, answer = 200, self.taken(items)
            except Refusal as refusal:
                status, answer = refusal.status, refusal.answer
            self.requests.append(Received(method, parts.path, query, headers, body, status, answer))
        return status, answer


def _business_id(item: JsonObject) -> Any:
    attributes = item.get("extendAttributes")
    return attributes.get("outBizId") if isinstance(attributes, dict) else None


def _pairs(text: str) -> dict[str, str]:
    """A query or form as a dict; Refusal if it repeats a key or is not UTF-8."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, {"code": "INVALID_PARAMETER", "message": "bad encoding"}) from None
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise Refusal(400, {"code": "INVALID_PARAMETER", "message": f"{key} twice"})
        found[key] = value
    return found


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: StandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up is expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, answer = self.server.stand_in._serve(self.command, self.path, headers, body)
        payload = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET = do_PUT = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the records say what arrived."""


# Checks of the list fields, shared by the two Quick Audience stand-ins.


def _text(model: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    """Why `model[key]` is not a usable string, or None when it is."""
    value = model.get(key)
    if value is None:
        return f"{key} is required" if required else None
    if not isinstance(value, str) or not value.strip():
        return f"{key} must be a non-empty string"
    return None


def _identities(value: Any, id_types: Collection[str] | None, *, required: bool) -> str | None:
    if value is None:
        return "customerIdList is required" if required else None
    if not isinstance(value, list) or (required and not value):
        return "customerIdList must be a " + ("non-empty list" if required else "list")
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"customerId", "idMapping"}:
            return "each customerIdList entry holds exactly customerId and idMapping"
        problem = _text(entry, "customerId", required=True) or _text(
            entry, "idMapping", required=True
        )
        if problem:
            return f"customerIdList: {problem}"
        if id_types is not None and entry["idMapping"].lower() not in id_types:
            return "customerIdList: unknown idMapping"
    return None


def _event(
    model: Any,
    *,
    keys: Collection[str],
    organization_id: str | None,
    out_biz_id: bool,
    id_types: Collection[str] | None,
) -> str | None:
    """Why an event message model is refused, or None."""
    if not isinstance(model, dict):
        return "each model must be an object"
    unknown = set(model) - set(keys)
    if unknown:
        return f"unknown field(s) {sorted(unknown)}"
    for key in ("organizationId", "customerId", "eventCode"):
        problem = _text(model, key, required=True)
        if problem:
            return problem
    for key in ("workspaceId", "entityId", "eventSourceCode"):
        problem = _text(model, key, required=False)
        if problem:
            return problem
    if organization_id is not None and model["organizationId"] != organization_id:
        return "organizationId is not this organization"
    when = model.get("eventTime")
    if isinstance(when, bool) or not isinstance(when, int) or when <= 0:
        return "eventTime must be a positive integer (epoch milliseconds)"
    attributes = model.get("extendAttributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        return "extendAttributes must map strings to strings"
    if out_biz_id and not attributes.get("outBizId"):
        return "extendAttributes.outBizId is required"
    if "isOrder" in model and model["isOrder"] not in {"0", "1"}:
        return "isOrder must be '0' or '1'"
    if "v" in model and (isinstance(model["v"], bool) or not isinstance(model["v"], int)):
        return "v must be an integer"
    return _identities(model.get("customerIdList"), id_types, required=False)


def _model_list(text: str | None, name: str, limit: int) -> list[Any]:
    """The JSON list a form field holds; ValueError naming what is wrong."""
    if text is None:
        raise ValueError(f"{name} is required")
    try:
        models = json.loads(text)
    except ValueError:
        raise ValueError(f"{name} is not JSON") from None
    if not isinstance(models, list) or not models:
        raise ValueError(f"{name} must be a non-empty JSON list")
    if len(models) > limit:
        raise OverflowError(f"{name} holds {len(models)} models, over {limit}")
    return models


class QuickAudienceStandIn(StandIn):
    """Quick Audience event reporting API 3.0 (`/openapi/cloud/event/detail/receive`).

    Checks the query (`appId`, `accessKey`, a millisecond `timestamp` near its clock), the
    `Authorization` MD5, a URL-encoded form with `accessId` and `eventMessageModelListJson`,
    and each ClientEventMessageModel. A refusal is `success: false` with an `errorCode`.
    """

    kind = "quick_audience"
    EVENT_KEYS = frozenset(
        {"organizationId", "workspaceId", "customerId", "entityId", "eventCode", "eventTime"}
        | {"extendAttributes", "customerIdList", "isOrder"}
    )

    def __init__(
        self,
        *,
        app_id: str,
        access_key: str,
        access_secret: str,
        access_id: str,
        organization_id: str | None = None,
        max_batch: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.app_id = app_id
        self.access_key = access_key
        self.access_secret = access_secret
        self.access_id = access_id
        self.organization_id = organization_id
        self.max_batch = max_batch

    @staticmethod
    def refusal(status: int, code: str, description: str) -> Refusal:
        """The platform's answer to a refused call."""
        return Refusal(
            status,
            {
                "data": False,
                "errorCode": code,
                "errorDesc": description,
                "success": False,
                "traceId": str(uuid.uuid4()),
            },
        )

    def check(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> list[JsonObject]:
        """Apply API 3.0's contract."""
        if path != QUICK_AUDIENCE_PATH:
            raise self.refusal(404, "NOT_FOUND", "no such API")
        if method != "POST":
            raise self.refusal(405, "METHOD_NOT_ALLOWED", "POST only")
        for name in ("appId", "accessKey", "timestamp"):
            if not query.get(name):
                raise self.refusal(400, "MISSING_PARAMETER", f"query parameter {name} is missing")
        stamp = query["timestamp"]
        if not stamp.isdigit() or abs(int(stamp) / 1000 - self.clock()) > CLOCK_SKEW:
            raise self.refusal(200, "TIMESTAMP_EXPIRED", "timestamp is not near the server time")
        pairs = {
            "accessKey": query["accessKey"],
            "accessSecret": self.access_secret,
            "appId": query["appId"],
            "timestamp": stamp,
        }
        plain = "&".join(f"{key}={pairs[key]}" for key in sorted(pairs))
        expected = hashlib.md5(plain.encode(), usedforsecurity=False).hexdigest()
        known = query["appId"] == self.app_id and query["accessKey"] == self.access_key
        given = headers.get("authorization", "")
        if not known or not hmac.compare_digest(given.encode(), expected.encode()):
            raise self.refusal(200, AUTH_FAILED, "Authentication failed!")
        if headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
            raise self.refusal(415, "UNSUPPORTED_MEDIA_TYPE", "a URL-encoded form is expected")
        form = _pairs(body.decode("utf-8", "replace"))
        if form.get("accessId") != self.access_id:
            raise self.refusal(200, AUTH_FAILED, "Authentication failed!")
        try:
            models = _model_list(
                form.get("eventMessageModelListJson"), "eventMessageModelListJson", self.max_batch
            )
        except OverflowError as exc:
            raise self.refusal(200, "BATCH_TOO_LARGE", str(exc)) from None
        except ValueError as exc:
            raise self.refusal(400, "INVALID_PARAMETER", str(exc)) from None
        for index, model in enumerate(models):
            problem = _event(
                model,
                keys=self.EVENT_KEYS,
                organization_id=self.organization_id,
                out_biz_id=False,
                id_types=None,
            )
            if problem:
                raise self.refusal(200, "INVALID_PARAMETER", f"model {index}: {problem}")
        return models

    def taken(self, items: list[JsonObject]) -> JsonObject:
        """Keep the events and answer as the document's example does."""
        super().taken(items)
        return {
            "data": True,
            "errorCode": None,
            "errorDesc": None,
            "success": True,
            "traceId": str(uuid.uuid4()),
        }


def rpc_encode(text: str) -> str:
    """The RPC signature's percent-encoding (the stand-in's own, to check the sink's)."""
    return quote(text.encode("utf-8"), safe="-_.~")


class QuickAudienceOpenApiStandIn(StandIn):
    """Quick Audience 2.0 OpenAPI: `RecieveUserMessage` and `RecieveEventMessage` over RPC.

    Takes parameters from the query and a URL-encoded form; checks the common parameters,
    the HMAC-SHA1 signature (version 1.0), the timestamp, a nonce used once, `AccessId`,
    `OrganizationId`, at most `max_batch` models per call, and each model. Gateway
    refusals carry `Code` / `Message`; the API's own `Success: false` / `ErrorCode`.
    `accepted` holds the events taken, `identities` the user identity models.
    """

    kind = "quick_audience_openapi"
    ACTIONS: ClassVar[dict[str, str]] = {
        "RecieveUserMessage": "CustomerMessageModelListStr",
        "RecieveEventMessage": "EventMessageModelListStr",
    }
    EVENT_KEYS = frozenset(
        {"organizationId", "workspaceId", "customerId", "eventSourceCode", "eventCode"}
        | {"eventTime", "extendAttributes", "customerIdList", "v"}
    )
    USER_KEYS = frozenset({"organizationId", "customerId", "customerIdList", "v"})
    COMMON = (
        "Action",
        "Version",
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "Signature",
    )

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        access_id: str,
        organization_id: str,
        max_batch: int = 100,
        id_types: Collection[str] = ID_TYPES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.access_id = access_id
        self.organization_id = organization_id
        self.max_batch = max_batch
        self.id_types = frozenset(code.lower() for code in id_types)
        self.identities: list[JsonObject] = []
        self.actions: list[str] = []
        """The action of each call taken, in order."""
        self._nonces: set[str] = set()
        self._action = ""

    @staticmethod
    def gateway(status: int, code: str, message: str) -> Refusal:
        """A refusal of the RPC gateway."""
        return Refusal(
            status,
            {
                "RequestId": str(uuid.uuid4()).upper(),
                "HostId": "quicka-public.stand-in",
                "Code": code,
                "Message": message,
            },
        )

    @staticmethod
    def refused(code: str, description: str) -> Refusal:
        """A refusal of the API itself (HTTP 200)."""
        return Refusal(
            200,
            {
                "RequestId": str(uuid.uuid4()).upper(),
                "Success": False,
                "ErrorCode": code,
                "ErrorDesc": description,
                "TraceId": str(uuid.uuid4()),
            },
        )

    def string_to_sign(self, method: str, params: Mapping[str, str]) -> str:
        """What the signature covers: every parameter but `Signature`, sorted and encoded."""
        pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
        canonical = "&".join(f"{rpc_encode(k)}={rpc_encode(v)}" for k, v in pairs)
        return "&".join((method, rpc_encode("/"), rpc_encode(canonical)))

    def check(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> list[JsonObject]:
        """Apply the RPC gateway's contract, then the action's."""
        params = self._gateway_check(method, path, query, headers, body)
        action = params["Action"]
        for name in ("AccessId", "OrganizationId", self.ACTIONS[action]):
            if not params.get(name):
                raise self.gateway(400, f"Missing{name}", f"{name} is mandatory for this action.")
        if params["AccessId"] != self.access_id:
            raise self.refused(AUTH_FAILED, "Authentication failed!")
        if params["OrganizationId"] != self.organization_id:
            raise self.refused(AUTH_FAILED, "Authentication failed!")
        field = self.ACTIONS[action]
        try:
            models = _model_list(params[field], field, self.max_batch)
        except OverflowError as exc:
            raise self.refused("BATCH_TOO_LARGE", str(exc)) from None
        except ValueError as exc:
            raise self.refused("INVALID_PARAMETER", str(exc)) from None
        for index, model in enumerate(models):
            problem = self._model_problem(action, model)
            if problem:
                raise self.refused("INVALID_PARAMETER", f"model {index}: {problem}")
        self._action = action
        return models

    def _gateway_check(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        """The request's parameters, once the gateway's checks pass."""
        if path not in {"", "/"}:
            raise self.gateway(404, "InvalidApi.NotFound", "the API lives at /")
        if method != "POST":
            raise self.gateway(405, "UnsupportedHTTPMethod", "POST only")
        params = dict(query)
        if body:
            if headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
                raise self.gateway(415, "UnsupportedContentType", "a URL-encoded form is expected")
            for name, value in _pairs(body.decode("utf-8", "replace")).items():
                if name in params:
                    raise self.gateway(400, "InvalidParameter", f"{name} given twice")
                params[name] = value
        for name in self.COMMON:
            if not params.get(name):
                raise self.gateway(400, f"Missing{name}", f"{name} is mandatory for this action.")
        if params["Action"] not in self.ACTIONS:
            raise self.gateway(404, "InvalidAction.NotFound", "no such action")
        if params["Version"] != "2020-05-15":
            raise self.gateway(400, "InvalidVersion", "Specified parameter Version is not valid.")
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            raise self.gateway(400, "InvalidSignatureMethod", "HMAC-SHA1, version 1.0 only")
        if params["AccessKeyId"] != self.access_key_id:
            raise self.gateway(404, "InvalidAccessKeyId.NotFound", "the access key is not found")
        try:
            when = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise self.gateway(400, "InvalidTimeStamp.Format", "not UTC ISO 8601") from None
        if abs(when.replace(tzinfo=UTC).timestamp() - self.clock()) > CLOCK_SKEW:
            raise self.gateway(400, "InvalidTimeStamp.Expired", "the timestamp is too far off")
        text = self.string_to_sign(method, params)
        secret = (self.access_key_secret + "&").encode()
        digest = hmac.new(secret, text.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(params["Signature"].encode(), base64.b64encode(digest)):
            # The real gateway quotes the string it signed; sinks must not log it as is.
            raise self.gateway(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. "
                f"server string to sign is:{text}",
            )
        if params["SignatureNonce"] in self._nonces:
            raise self.gateway(400, "SignatureNonceUsed", "Specified signature nonce was used.")
        self._nonces.add(params["SignatureNonce"])
        return params

    def _model_problem(self, action: str, model: Any) -> str | None:
        if action == "RecieveEventMessage":
            return _event(
                model,
                keys=self.EVENT_KEYS,
                organization_id=self.organization_id,
                out_biz_id=True,
                id_types=self.id_types,
            )
        if not isinstance(model, dict):
            return "each model must be an object"
        unknown = set(model) - self.USER_KEYS
        if unknown:
            return f"unknown field(s) {sorted(unknown)}"
        if "organizationId" in model and model["organizationId"] != self.organization_id:
            return "organizationId is not this organization"
        problem = _text(model, "customerId", required=True)
        return problem or _identities(model.get("customerIdList"), self.id_types, required=True)

    def taken(self, items: list[JsonObject]) -> JsonObject:
        """Keep the identities or events of a call."""
        self.actions.append(self._action)
        if self._action == "RecieveUserMessage":
            self.identities.extend(items)
        else:
            super().taken(items)
        return {
            "RequestId": str(uuid.uuid4()).upper(),
            "Success": True,
            "Data": True,
            "ErrorCode": None,
            "ErrorDesc": None,
            "TraceId": str(uuid.uuid4()),
        }


class MobileEventsStandIn(StandIn):
    """The mobile event reporting API (`/v2/users/report/events`, and the v1 path).

    Checks the required headers (`MISSING_REQUIRED_HEADER`), the API key (401
    `INVALID_API_KEY`), a JSON body `{"events": [...]}` and each event's `name`, `user`,
    `sessionId` (the `*_REQUIRED` codes) and `extra`. `paths` lists the paths used.
    """

    kind = "mobile_events"
    HEADERS = (
        "X-API-KEY",
        "X-USER-ID",
        "User-Agent",
        "X-APP-ID",
        "X-PLATFORM",
        "X-VERSION",
        "Content-Type",
        "Accept",
    )
    EVENT_KEYS = frozenset({"name", "user", "sessionId", "extra"})

    def __init__(
        self,
        *,
        api_key: str,
        max_batch: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.api_key = api_key
        self.max_batch = max_batch

    @staticmethod
    def error(status: int, code: str, message: str) -> Refusal:
        """The document's error answer."""
        return Refusal(status, {"status": "error", "code": code, "message": message})

    def check(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> list[JsonObject]:
        """Apply the event reporting contract."""
        if path not in MOBILE_PATHS:
            raise self.error(404, "NOT_FOUND", "no such path")
        if method != "POST":
            raise self.error(405, "METHOD_NOT_ALLOWED", "POST only")
        for name in self.HEADERS:
            if not headers.get(name.lower(), "").strip():
                raise self.error(400, "MISSING_REQUIRED_HEADER", f"{name} is required")
        given = headers["x-api-key"].encode()
        if not hmac.compare_digest(given, self.api_key.encode()):
            raise self.error(401, "INVALID_API_KEY", "the API key is not valid")
        if headers["content-type"].split(";")[0].strip().lower() != "application/json":
            raise self.error(400, "INVALID_PARAMETER", "Content-Type must be application/json")
        if "application/json" not in headers["accept"] and "*/*" not in headers["accept"]:
            raise self.error(400, "INVALID_PARAMETER", "Accept must allow application/json")
        try:
            document = json.loads(body)
        except ValueError:
            raise self.error(400, "INVALID_PARAMETER", "the body is not JSON") from None
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list) or not events or set(document) != {"events"}:
            raise self.error(400, "INVALID_PARAMETER", "events must be a non-empty list")
        if self.max_batch is not None and len(events) > self.max_batch:
            raise self.error(400, "INVALID_PARAMETER", f"more than {self.max_batch} events")
        for event in events:
            if not isinstance(event, dict) or set(event) - self.EVENT_KEYS:
                raise self.error(400, "INVALID_PARAMETER", "an event has unknown fields")
            for key, code in (
                ("name", "EVENT_NAME_REQUIRED"),
                ("user", "USER_REQUIRED"),
                ("sessionId", "SESSION_ID_REQUIRED"),
            ):
                value = event.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise self.error(400, code, f"{key} is required")
            if not isinstance(event.get("extra", {}), dict):
                raise self.error(400, "INVALID_PARAMETER", "extra must be an object")
        return events

    def taken(self, items: list[JsonObject]) -> JsonObject:
        """Keep the events."""
        self.accepted.extend(items)
        return {"status": "success", "message": "Events reported successfully"}
