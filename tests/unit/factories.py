"""Builders of envelopes, records and pipelines shared by the unit tests (not a test module)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bridge.core.pipeline import Pipeline
from bridge.core.topics import Selection
from bridge.core.validate import Mode, Rules

PROFILE: dict[str, Any] = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
REPORT_TS = 1661154622
EVENT_TS = 1661154622000
NOW_MS = 1_700_000_000_123

TENANT = "acme"
PROJECT = "42"
VENDOR = "海康威视"
STANDARD_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-customer"
STANDARD_ERROR_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-error-customer"
CUSTOM_TOPIC = f"{TENANT}/proj_{PROJECT}/v2-customization-{VENDOR}-customer"
CUSTOM_ERROR_TOPIC = f"{TENANT}/proj_{PROJECT}/v2-customization-{VENDOR}-error-customer"

SAMPLES = Path(__file__).resolve().parents[2] / "bridge" / "samples"

LENIENT = Rules()
STRICT = Rules(mode=Mode.STRICT)

# Marks a key to drop from a built record or envelope.
ABSENT: Any = object()
_DEFAULT: Any = object()


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if value is ABSENT:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def customer(**overrides: Any) -> dict[str, Any]:
    """A valid add/edit record with only the required fields, plus overrides (ABSENT drops)."""
    base = {"id": "c-1", "projectId": "1117745722292428800", "name": "张三", "phone": "13800138000"}
    return _apply(base, overrides)


def delete_record(**overrides: Any) -> dict[str, Any]:
    """A valid delete record, plus overrides (ABSENT drops)."""
    return _apply({"id": "c-1", "phone": "13800138000"}, overrides)


def op_body(records: Any = ABSENT, **overrides: Any) -> dict[str, Any]:
    """The body of one operation: eventTs, eventType 1 and the given customerList."""
    base: dict[str, Any] = {"eventTs": EVENT_TS, "eventType": 1}
    if records is not ABSENT:
        base["customerList"] = records
    return _apply(base, overrides)


def envelope(events: Any = _DEFAULT, **overrides: Any) -> dict[str, Any]:
    """A valid inbound envelope (one add of one record unless `events` says otherwise)."""
    if events is _DEFAULT:
        events = {"add": op_body([customer()])}
    base = {"msgId": "m-1", "reportTs": REPORT_TS, "profile": dict(PROFILE)}
    return _apply(base, {"events": events, **overrides})


def encode(document: Any) -> bytes:
    """A document as the UTF-8 JSON bytes a producer would publish."""
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def sample(name: str) -> bytes:
    """The raw bytes of one documented sample envelope, e.g. `standard-add`."""
    return (SAMPLES / f"{name}.json").read_bytes()


def sequential_ids() -> Callable[[], str]:
    """An id source giving predictable uuid4 strings: ...-0001, ...-0002, ..."""
    counter: Iterator[int] = itertools.count(1)
    return lambda: str(uuid.UUID(int=next(counter), version=4))


def expected_id(n: int) -> str:
    """The n-th id `sequential_ids` hands out (1-based)."""
    return str(uuid.UUID(int=n, version=4))


def pipeline(rules: Rules = LENIENT, selection: Selection | None = None) -> Pipeline:
    """A pipeline with a frozen clock (NOW_MS) and sequential alarm ids."""
    return Pipeline(
        rules,
        selection if selection is not None else Selection(),
        now_ms=lambda: NOW_MS,
        new_id=sequential_ids(),
    )
