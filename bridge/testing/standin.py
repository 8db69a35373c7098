"""What every platform stand-in shares: a recorder that applies a platform's contract.

A stand-in checks a request the way its platform's document describes, refuses what breaks
the contract, records every request and keeps what it took. `answer_next` makes it answer
the next good requests with a given status and body (a platform that throttles, fails or
refuses). Where a document names no error code a stand-in uses a readable one of its own
(`INVALID_PARAMETER`, `BATCH_TOO_LARGE`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from bridge.testing.recorder import Answer, Recorder, Request

CLOCK_SKEW = 15 * 60
"""Seconds a request's timestamp may be off the stand-in's clock."""
JsonObject = dict[str, Any]


class Refusal(Exception):
    """The contract refuses a request: answer `status` with `answer`."""

    def __init__(self, status: int, answer: JsonObject) -> None:
        super().__init__(status)
        self.status = status
        self.answer = answer


class StandIn(Recorder):
    """A platform on a free loopback port: `check` is its contract, `taken` its answer."""

    kind: ClassVar[str] = "platform"
    content_type: ClassVar[str] = "application/json;charset=UTF-8"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.accepted: list[JsonObject] = []
        self.duplicates = 0
        self._scripted: collections.deque[tuple[int, JsonObject]] = collections.deque()

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

    def respond(self, request: Request) -> Answer:
        """The platform's answer: a refusal, a scripted answer, or what `taken` says."""
        try:
            query = parse_pairs(urlsplit(request.target).query)
            items = self.check(request.method, request.path, query, request.headers, request.body)
            if self._scripted:
                status, answer = self._scripted.popleft()
            else:
                status, answer = 200, self.taken(items)
        except Refusal as refusal:
            status, answer = refusal.status, refusal.answer
        return Answer(status, answer)


def _business_id(item: JsonObject) -> Any:
    attributes = item.get("extendAttributes")
    return attributes.get("outBizId") if isinstance(attributes, dict) else None


def parse_pairs(text: str) -> dict[str, str]:
    """A query or form as a dict; Refusal if it repeats a key or is not UTF-8."""
    try:
        found_items = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, {"code": "INVALID_PARAMETER", "message": "bad encoding"}) from None
    found: dict[str, str] = {}
    for key, value in found_items:
        if key in found:
            raise Refusal(400, {"code": "INVALID_PARAMETER", "message": f"{key} twice"})
        found[key] = value
    return found
