"""Rejected records -> the `*_error` alarm envelope and its topic (pure; SPEC 5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.core.validate import PROFILE, FieldError

UNKNOWN = "unknown"
MESSAGE_STATUS = "CUSTOMER_MESSAGE_ERROR"
CODE_INVALID = 400
CODE_SINK_GAVE_UP = 502
MSG_MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm ready to publish: QoS 1, not retained, on `topic`."""

    topic: str
    op: str
    status: str
    code: int
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The `{"topic", "payload"}` pair printed by `bridge validate`."""
        return {"topic": self.topic, "payload": self.payload}


def status_of(op: str) -> str:
    """The alarm status of an operation: CUSTOMER_ADD_ERROR, ..., CUSTOMER_MESSAGE_ERROR."""
    return MESSAGE_STATUS if op == UNKNOWN else f"CUSTOMER_{op.upper()}_ERROR"


def describe(errors: Iterable[FieldError]) -> str:
    """The alarm's `msg`: every field path with its reason, capped in length."""
    parts: list[str] = []
    for error in errors:
        where = error.field
        if error.index is not None:
            where = f"customerList[{error.index}]" + (f".{error.field}" if error.field else "")
        parts.append(f"{where}: {error.reason}" if where else error.reason)
    text = "; ".join(parts)
    if len(text) > MSG_MAX_CHARS:
        text = text[: MSG_MAX_CHARS - 1] + "…"
    return text


def build(
    *,
    error_topic: str,
    op: str,
    code: int,
    msg: str,
    records: Sequence[Any],
    errors: Sequence[FieldError],
    source_msg_id: str | None,
    now_ms: int,
    alarm_id: str,
) -> Alarm:
    """Build one alarm envelope; the clock and the id come from the caller."""
    status = status_of(op)
    payload: dict[str, Any] = {
        "msgId": alarm_id,
        "reportTs": now_ms,
        "profile": dict(PROFILE),
        "events": {
            f"{op}_error": {
                "eventTs": now_ms,
                "eventType": 2,
                "msg": msg,
                "status": status,
                "code": code,
                "customerList": list(records),
            }
        },
    }
    if source_msg_id is not None:
        payload["sourceMsgId"] = source_msg_id
    payload["errors"] = [error.to_dict() for error in errors]
    return Alarm(error_topic, op, status, code, payload)
