"""A stand-in of Quick Audience 2.0 OpenAPI (RPC style, Alibaba Cloud's gateway codes).

The gateway codes are Alibaba Cloud's (`SignatureDoesNotMatch`, ...); the API's own answers
carry `Success: false` and an `ErrorCode`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

from bridge.testing.quick_audience import (
    AUTH_FAILED,
    FORM,
    event_problem,
    identities_problem,
    model_list,
    text_problem,
)
from bridge.testing.standin import CLOCK_SKEW, JsonObject, Refusal, StandIn, parse_pairs

ID_TYPES = frozenset(
    {"oneid", "email", "mobile", "taobao_id", "taobao_nick", "imei", "idfa", "mac_org"}
    | {"weibo_id_org", "alipay_id", "open_id", "union_id"}
)
"""The user ID types the 2.0 document lists (compared without regard to case)."""


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
            models = model_list(params[field], field, self.max_batch)
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
            for name, value in parse_pairs(body.decode("utf-8", "replace")).items():
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
            return event_problem(
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
        problem = text_problem(model, "customerId", required=True)
        return problem or identities_problem(
            model.get("customerIdList"), self.id_types, required=True
        )

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
