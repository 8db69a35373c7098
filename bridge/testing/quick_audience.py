"""A stand-in of Quick Audience event reporting API 3.0; the model checks the 2.0 one shares."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from bridge.testing.standin import CLOCK_SKEW, JsonObject, Refusal, StandIn, parse_pairs

QUICK_AUDIENCE_PATH = "/openapi/cloud/event/detail/receive"
FORM = "application/x-www-form-urlencoded"
AUTH_FAILED = "ES0110000002"  # the 2.0 document's example of a refused call


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
        form = parse_pairs(body.decode("utf-8", "replace"))
        if form.get("accessId") != self.access_id:
            raise self.refusal(200, AUTH_FAILED, "Authentication failed!")
        try:
            models = model_list(
                form.get("eventMessageModelListJson"), "eventMessageModelListJson", self.max_batch
            )
        except OverflowError as exc:
            raise self.refusal(200, "BATCH_TOO_LARGE", str(exc)) from None
        except ValueError as exc:
            raise self.refusal(400, "INVALID_PARAMETER", str(exc)) from None
        for index, model in enumerate(models):
            problem = event_problem(
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


# Checks of the list fields, shared with the 2.0 stand-in.


def text_problem(model: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    """Why `model[key]` is not a usable string, or None when it is."""
    value = model.get(key)
    if value is None:
        return f"{key} is required" if required else None
    if not isinstance(value, str) or not value.strip():
        return f"{key} must be a non-empty string"
    return None


def identities_problem(
    value: Any, id_types: Collection[str] | None, *, required: bool
) -> str | None:
    if value is None:
        return "customerIdList is required" if required else None
    if not isinstance(value, list) or (required and not value):
        return "customerIdList must be a " + ("non-empty list" if required else "list")
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"customerId", "idMapping"}:
            return "each customerIdList entry holds exactly customerId and idMapping"
        problem = text_problem(entry, "customerId", required=True) or text_problem(
            entry, "idMapping", required=True
        )
        if problem:
            return f"customerIdList: {problem}"
        if id_types is not None and entry["idMapping"].lower() not in id_types:
            return "customerIdList: unknown idMapping"
    return None


def event_problem(
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
        problem = text_problem(model, key, required=True)
        if problem:
            return problem
    for key in ("workspaceId", "entityId", "eventSourceCode"):
        problem = text_problem(model, key, required=False)
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
    return identities_problem(model.get("customerIdList"), id_types, required=False)


def model_list(text: str | None, name: str, limit: int) -> list[Any]:
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
