"""A stand-in of the mobile event reporting API (`/v2/users/report/events`, and the v1 path)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable

from bridge.testing.standin import JsonObject, Refusal, StandIn

MOBILE_PATHS = ("/users/report/events", "/v2/users/report/events")


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
