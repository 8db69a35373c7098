"""SPEC 3's field tables, re-stated here from the SPEC alone, against the whole pipeline.

Nothing of `bridge.core.records` or `bridge.core.fastcheck` is imported: the model below is written
from SPEC sections 2 and 3, and hypothesis generates for every field values at its limit,
one over, of the wrong type, `null`, whitespace only, big integers, whole-number floats and
repeated keys. The forwarded record and the alarm must be what the model says.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from factories import CUSTOM_TOPIC, EVENT_TS, PROFILE, REPORT_TS, STANDARD_TOPIC, pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.validate import Mode, Rules

# --- the model: SPEC 3, in its own words ----------------------------------------------------

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Row:
    """One row of a SPEC 3 table."""

    kind: str  # "string", "long", "int", "strings", "object"
    required: bool = False
    limit: int | None = None  # characters, for strings and longs
    low: int = INT64[0]
    high: int = INT64[1]


def text(limit: int, required: bool = False) -> Row:
    return Row("string", required, limit)


def number(low: int, high: int) -> Row:
    return Row("int", low=low, high=high)


ADD_EDIT = {
    "id": text(36, True),
    "projectId": Row("long", True, 36),
    "name": text(20, True),
    "phone": text(15, True),
    "idType": number(0, 4),
    "idNumber": text(45),
    "sex": number(0, 2),
    "age": number(0, 200),
    "spaceIds": Row("strings"),
    "companyIds": Row("strings"),
    "customerGradeId": Row("long", limit=36),
    "customerTypeId": Row("long", limit=36),
    "roleId": Row("long", limit=36),
    "contractName": text(50),
    "contractPhone": text(15),
    "address": text(50),
    "email": text(50),
    "remark": text(100),
    "bornDate": Row("int"),
    "nativePlace": text(20),
    "nation": text(20),
    "profession": text(20),
    "interest": text(20),
    "character": text(20),
    "postalCode": text(20),
    "jobNum": text(20),
    "speciality": text(50),
    "marriage": number(0, 4),
    "education": number(0, 7),
    "facePhoto": text(255),
    "meta": Row("object"),
}
DELETE = {"id": text(36, True), "phone": text(11), "meta": Row("object")}
TABLES = {"add": ADD_EDIT, "edit": ADD_EDIT, "delete": DELETE}
VALID = {
    "add": {"id": "c-1", "projectId": "42", "name": "n", "phone": "1"},
    "delete": {"id": "c-1"},
}
_NUMERIC_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_STRICT_LONG = re.compile(r"-?[0-9]+", re.ASCII)


class Fails(Exception):
    """The model's verdict: this value fails its field."""


@dataclass(frozen=True)
class Raw:
    """A JSON number written exactly as `text` (`1e2`, `30.0`, 40 digits)."""

    text: str

    def value(self) -> Any:
        """The number as a JSON reader sees it."""
        return json.loads(self.text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected(row: Row, value: Any, strict: bool, customization: bool) -> Any:
    """What SPEC 3 forwards for `value` in a field of `row`; Fails when the field fails."""
    if isinstance(value, Raw) and row.kind != "int":
        value = value.value()  # a float: never a string, a long, a list or an object
    if value is None:
        if row.required:
            raise Fails
        return None
    if row.kind == "string":
        return _string(row, value, strict)
    if row.kind == "long":
        if _is_int(value):
            if not INT64[0] <= value <= INT64[1]:
                raise Fails
            return str(value)
        if not isinstance(value, str) or len(value) > (row.limit or 0):
            raise Fails
        if strict and not _STRICT_LONG.fullmatch(value):
            raise Fails
        if row.required and value.strip() == "":
            raise Fails
        return value
    if row.kind == "int":
        return _integer(row, value, strict)
    if row.kind == "strings":
        if not isinstance(value, list):
            raise Fails
        return [_string(Row("string"), item, strict) for item in value]
    if not isinstance(value, dict) or (strict and not customization):
        raise Fails
    return value


def _string(row: Row, value: Any, strict: bool) -> str:
    if _is_int(value) and not strict:
        value = str(value)
    if not isinstance(value, str):
        raise Fails
    if row.limit is not None and len(value) > row.limit:
        raise Fails
    if row.required and value.strip() == "":
        raise Fails
    return value


def _integer(row: Row, value: Any, strict: bool) -> int:
    if isinstance(value, Raw):
        exact = Decimal(value.text)
        if strict or exact != exact.to_integral_value():
            raise Fails
        value = int(exact)
    elif isinstance(value, str) and not strict and _NUMERIC_TEXT.fullmatch(value):
        value = int(value.strip())
    if not _is_int(value) or not max(row.low, INT64[0]) <= value <= min(row.high, INT64[1]):
        raise Fails
    return value


# --- building payloads whose numbers are written exactly ------------------------------------


def dump(value: Any, raws: list[str]) -> str:
    """JSON text of `value`, each Raw written as its own text."""
    if isinstance(value, Raw):
        raws.append(value.text)
        return f'"\x00raw{len(raws) - 1}\x00"'
    return json.dumps(value, ensure_ascii=False)


def payload(op: str, record_text: str) -> bytes:
    body = f'{{"eventTs": {EVENT_TS}, "eventType": 1, "customerList": [{record_text}]}}'
    head = json.dumps({"msgId": "m-1", "reportTs": REPORT_TS, "profile": PROFILE})
    return f'{head[:-1]}, "events": {{"{op}": {body}}}}}'.encode()


def record_text(base: dict[str, Any], name: str, values: list[Any]) -> str:
    """A record with `name` given once per item of `values` (twice or more: a repeated key)."""
    raws: list[str] = []
    parts = [f"{json.dumps(k)}: {dump(v, raws)}" for k, v in base.items() if k != name]
    parts += [f"{json.dumps(name)}: {dump(v, raws)}" for v in values]
    joined = "{" + ", ".join(parts) + "}"
    for index, raw in enumerate(raws):
        joined = joined.replace(f'"\x00raw{index}\x00"', raw)
    return joined


# --- generated values -----------------------------------------------------------------------

WHITESPACE = st.text(st.sampled_from(" \t\n\u3000\u00a0"), min_size=1, max_size=4)


def near_limit(limit: int) -> st.SearchStrategy[str]:
    """Strings at the limit, one over, and around it, of any script."""
    letters = st.characters(codec="utf-8", exclude_categories=("Cs",))
    return st.one_of(
        st.text(letters, min_size=limit, max_size=limit),
        st.text(letters, min_size=limit + 1, max_size=limit + 1),
        st.text(letters, min_size=0, max_size=min(limit, 8)),
        WHITESPACE.map(lambda s: s + "x"),
        st.just(" padded "),
    )


BIG = st.integers(min_value=19, max_value=4300).map(lambda digits: 10 ** (digits - 1))
INTEGERS = st.one_of(
    st.integers(-3, 210),
    st.sampled_from([INT64[0], INT64[1], INT64[0] - 1, INT64[1] + 1]),
    BIG,
    BIG.map(lambda n: -n),
)
RAW_NUMBERS = st.one_of(
    st.sampled_from(["30.0", "1e2", "1E1", "0.0", "-0.0", "2.5", "1e400", "4503599627370497.5"]),
    st.integers(-3, 250).map(lambda n: f"{n}.0"),
    st.integers(0, 40).map(lambda e: f"1e{e}"),
).map(Raw)
OTHERS = st.one_of(
    st.none(),
    st.booleans(),
    WHITESPACE,
    st.just(""),
    st.integers(-3, 250).map(str),
    st.integers(-3, 250).map(lambda n: f" {n} "),
    st.sampled_from(["年龄", "\uff13\uff10", "1e2", "0x10", "+7"]),
    st.lists(st.one_of(st.text(max_size=5), st.integers(-5, 10**20), st.booleans()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=2),
)


def values_for(row: Row) -> st.SearchStrategy[Any]:
    """Values around this row's own limits first, then anything."""
    limit = row.limit if row.limit is not None else 40
    edges = [row.low - 1, row.low, row.high, row.high + 1]
    at_edges = st.one_of(
        st.sampled_from(edges),
        st.sampled_from(edges).map(lambda n: Raw(f"{n}.0")),
        st.sampled_from(edges).map(str),
        st.sampled_from(["7" * limit, "7" * (limit + 1), "-" + "7" * (limit - 1)]),
    )
    return st.one_of(at_edges, near_limit(limit), INTEGERS, RAW_NUMBERS, OTHERS)


def _number_or_text(text: str) -> Any:
    # A number no float holds (1e400) shows in the alarm as its text (docs/contract.md).
    value = float(text)
    return value if math.isfinite(value) else text


def model_value(value: Any) -> Any:
    """A generated value as the JSON reader sees it (Raw becomes its number)."""
    return value.value() if isinstance(value, Raw) else value


FIELDS = [(op, name) for op in ("add", "delete") for name in TABLES[op]]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode", [Mode.LENIENT, Mode.STRICT])
@pytest.mark.parametrize(("op", "name"), FIELDS, ids=[f"{o}.{n}" for o, n in FIELDS])
@SETTINGS
@given(data=st.data(), customization=st.booleans(), repeats=st.sampled_from([1, 1, 1, 2]))
def test_every_field_follows_the_spec_table(
    op: str, name: str, mode: Mode, data: st.DataObject, customization: bool, repeats: int
) -> None:
    """Each generated value is forwarded as the model says, or fails its record with an alarm."""
    table_op = data.draw(st.sampled_from(["add", "edit"])) if op == "add" else op
    row = TABLES[op][name]
    values = [data.draw(values_for(row), label=name) for _ in range(repeats)]
    strict = mode is Mode.STRICT
    text_of_record = record_text(VALID[op], name, values)
    topic = CUSTOM_TOPIC if customization else STANDARD_TOPIC
    outcome = pipeline(Rules(mode=mode)).process(topic, payload(table_op, text_of_record))

    as_received = json.loads(text_of_record, parse_float=_number_or_text)
    try:
        if repeats > 1:
            raise Fails  # SPEC 2: a field given twice fails its record
        forwarded = expected(row, values[0], strict, customization)
    except Fails:
        assert outcome.forward == ()
        assert len(outcome.alarms) == 1
        alarm = outcome.alarms[0].payload
        body = alarm["events"][f"{table_op}_error"]
        assert body["code"] == 400
        assert body["customerList"] == [as_received]
        assert any(
            e["index"] == 0 and (e["field"] == name or e["field"].startswith(f"{name}["))
            for e in alarm["errors"]
        )
        if repeats > 1:
            assert {"index": 0, "field": name, "reason": "repeated field"} in alarm["errors"]
        return
    assert outcome.alarms == ()
    assert len(outcome.forward) == 1
    customer = outcome.forward[0].customer
    assert customer[name] == forwarded
    assert type(customer[name]) is type(forwarded)
    for other, value in VALID[op].items():
        if other != name:
            assert customer[other] == value


@pytest.mark.parametrize("op", ["add", "delete"])
@SETTINGS
@given(value=st.one_of(INTEGERS, RAW_NUMBERS, OTHERS, near_limit(10)))
def test_unknown_fields_are_kept_exactly_in_lenient_and_fail_in_strict(op: str, value: Any) -> None:
    """An unknown field is forwarded exactly (big integers digit for digit) or fails in strict."""
    text_of_record = record_text(VALID[op], "extraField", [value])
    received = model_value(value)
    finite = not (isinstance(value, Raw) and Decimal(value.text).adjusted() > 308)
    for mode in (Mode.LENIENT, Mode.STRICT):
        outcome = pipeline(Rules(mode=mode)).process(STANDARD_TOPIC, payload(op, text_of_record))
        if mode is Mode.LENIENT and finite:
            assert outcome.alarms == ()
            assert outcome.forward[0].customer["extraField"] == received
            line = json.dumps(outcome.forward[0].to_dict())
            if isinstance(received, int) and not isinstance(received, bool):
                assert str(received) in line
        else:
            assert outcome.forward == ()
            errors = outcome.alarms[0].payload["errors"]
            assert errors[0]["index"] == 0 and errors[0]["field"] == "extraField"
