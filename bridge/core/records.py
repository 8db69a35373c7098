"""The customer record field tables of SPEC 3 and the check of one record against them (pure).

The tables are data; `check_record` is the engine that walks them. Lengths count
code points. Reasons never quote the value, so they are safe to log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)  # SPEC 3: ASCII digits and spaces
_LONG_TEXT = re.compile(r"-?[0-9]+")
REPEATED_KEY = "repeated key"
REPEATED_FIELD = "repeated field"
NUMBER_OUT_OF_RANGE = "number out of range"


class Op(StrEnum):
    """A customer operation of the inbound envelope."""

    ADD = "add"
    EDIT = "edit"
    DELETE = "delete"


class Type(Enum):
    """Wire types of the field tables."""

    STRING = "string"
    LONG = "long"  # an integer or a string; kept as a string downstream
    INT = "int"
    STRING_LIST = "string[]"
    OBJECT = "object"


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a field table."""

    type: Type
    required: bool = False
    max_len: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    customization_only: bool = False


def _s(max_len: int, *, required: bool = False) -> Field:
    return Field(Type.STRING, required=required, max_len=max_len)


def _i(minimum: int, maximum: int) -> Field:
    return Field(Type.INT, minimum=minimum, maximum=maximum)


_LONG36 = Field(Type.LONG, max_len=36)
_META = Field(Type.OBJECT, customization_only=True)

ADD_EDIT_FIELDS: Mapping[str, Field] = {
    "id": _s(36, required=True),
    "projectId": Field(Type.LONG, required=True, max_len=36),
    "name": _s(20, required=True),
    "phone": _s(15, required=True),
    "idType": _i(0, 4),
    "idNumber": _s(45),
    "sex": _i(0, 2),
    "age": _i(0, 200),
    "spaceIds": Field(Type.STRING_LIST),
    "companyIds": Field(Type.STRING_LIST),
    "customerGradeId": _LONG36,
    "customerTypeId": _LONG36,
    "roleId": _LONG36,
    "contractName": _s(50),
    "contractPhone": _s(15),
    "address": _s(50),
    "email": _s(50),
    "remark": _s(100),
    "bornDate": Field(Type.INT, minimum=INT64_MIN, maximum=INT64_MAX),
    "nativePlace": _s(20),
    "nation": _s(20),
    "profession": _s(20),
    "interest": _s(20),
    "character": _s(20),
    "postalCode": _s(20),
    "jobNum": _s(20),
    "speciality": _s(50),
    "marriage": _i(0, 4),
    "education": _i(0, 7),
    "facePhoto": _s(255),
    "meta": _META,
}

DELETE_FIELDS: Mapping[str, Field] = {
    "id": _s(36, required=True),
    "phone": _s(11),
    "meta": _META,
}

FIELDS: Mapping[Op, Mapping[str, Field]] = {
    Op.ADD: ADD_EDIT_FIELDS,
    Op.EDIT: ADD_EDIT_FIELDS,
    Op.DELETE: DELETE_FIELDS,
}

REQUIRED: Mapping[Op, tuple[str, ...]] = {
    op: tuple(name for name, spec in table.items() if spec.required) for op, table in FIELDS.items()
}


class Repeated(dict[str, Any]):
    """A JSON object that gave a key more than once: `pairs` holds every one, in payload order.

    As a dict it keeps the last value of each key (json's rule); only `events` reads `pairs`.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


class OutOfRange(str):
    """A JSON number no float can hold (`1e400`), as its text: never forwarded.

    A record holding one fails; its alarm shows the number's text as a string, since
    JSON has no way to write it back as a number any program could read.
    """

    __slots__ = ()


# A whole-number float is converted for int fields in lenient mode (SPEC 3); the exact
# integer comes from the text, so 1e20 is 10**20 and 4503599627370497.5 is no integer.


class WholeFloat(float):
    """A JSON number with no fractional part written as a float (`30.0`, `1e2`)."""

    __slots__ = ("exact",)
    exact: int

    def __new__(cls, value: float, exact: int) -> WholeFloat:
        self = super().__new__(cls, value)
        self.exact = exact
        return self


def repeated_keys(node: Repeated) -> list[str]:
    """The keys an object gave more than once, in the order they first repeated."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for key, _ in node.pairs:
        if key in seen:
            repeated[key] = None
        seen.add(key)
    return list(repeated)


def flaw_in(node: object) -> str | None:
    """Why a parsed value may not go downstream as it is: a repeated key, a number out of range."""
    stack = [node]
    while stack:
        item = stack.pop()
        kind = item.__class__
        if kind is Repeated:
            return REPEATED_KEY
        if kind is OutOfRange:
            return NUMBER_OUT_OF_RANGE
        if kind is dict:
            stack.extend(item.values())  # type: ignore[attr-defined]
        elif kind is list:
            stack.extend(item)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one field of one record was refused; `field` is a path inside the record."""

    field: str
    reason: str


class InvalidValue(Exception):
    """A value that does not fit its field; `reason` says why without quoting it."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def check_record(
    raw: object, op: Op, *, strict: bool, customization: bool, flawed: bool = False
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Check one record; return the record after lenient conversions, or None and the problems.

    `flawed` says the payload held a repeated key or a number out of range somewhere.
    """
    if not isinstance(raw, dict):
        return None, [Problem("", "must be an object")]
    table = FIELDS[op]
    problems: list[Problem] = []
    out: dict[str, Any] = {}
    fields: dict[str, Any] = raw
    if flawed:
        problems = _flaws(raw)
        if problems:
            flagged = {p.field for p in problems}
            fields = {name: value for name, value in raw.items() if name not in flagged}
    for name, value in fields.items():
        spec = table.get(name)
        # The common cases in one test each: a string or an int that fits its field.
        kind = value.__class__
        if (
            kind is str
            and spec is not None
            and (spec.type is Type.STRING or (spec.type is Type.LONG and not strict))
        ):
            limit = spec.max_len
            if (limit is None or len(value) <= limit) and (
                not spec.required or (value != "" and not value.isspace())
            ):
                out[name] = value
                continue
        elif kind is int and spec is not None and spec.type is Type.INT:
            low, high = spec.minimum, spec.maximum
            if low is not None and high is not None and low <= value <= high:
                out[name] = value
                continue
        if spec is None:
            if strict:
                problems.append(Problem(name, "unknown field"))
            else:
                out[name] = value
            continue
        if value is None:
            if spec.required:
                problems.append(Problem(name, "required"))
            else:
                out[name] = None
            continue
        if spec.customization_only and not customization and strict:
            problems.append(Problem(name, "only allowed on customization topics"))
            continue
        try:
            out[name] = _convert(spec, value, strict)
        except InvalidValue as bad:
            path = f"{name}{bad.field}" if bad.field else name
            problems.append(Problem(path, bad.reason))
    for name in REQUIRED[op]:
        if name not in raw:
            problems.append(Problem(name, "required"))
    if problems:
        return None, problems
    return out, []


def _flaws(raw: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if raw.__class__ is Repeated:
        problems.extend(Problem(name, REPEATED_FIELD) for name in repeated_keys(raw))
    repeated = {p.field for p in problems}
    for name, value in raw.items():
        flaw = flaw_in(value)
        if flaw is not None and name not in repeated:
            problems.append(Problem(name, flaw))
    return problems


def _convert(spec: Field, value: object, strict: bool) -> object:
    if spec.type is Type.STRING:
        text = _as_string(value, strict)
        _check_length(spec, text)
        return text
    if spec.type is Type.LONG:
        text = _as_long(value, strict)
        _check_length(spec, text)
        return text
    if spec.type is Type.INT:
        # Lenient mode takes 30.0 and 1e2 for an int field; the integer comes from the text.
        exact = value.exact if not strict and value.__class__ is WholeFloat else value
        number = as_int(exact, strict)
        low, high = spec.minimum, spec.maximum
        if low is not None and high is not None and not low <= number <= high:
            if high - low <= 10:
                allowed = ", ".join(str(n) for n in range(low, high + 1))
                raise InvalidValue(f"must be one of {allowed}")
            raise InvalidValue(f"must be between {low} and {high}")
        return number
    if spec.type is Type.STRING_LIST:
        if not isinstance(value, list):
            raise InvalidValue("must be a list of strings")
        items: list[str] = []
        for index, item in enumerate(value):
            try:
                items.append(_as_string(item, strict))
            except InvalidValue as bad:
                raise InvalidValue(bad.reason, f"[{index}]") from None
        return items
    if not isinstance(value, dict):
        raise InvalidValue("must be an object")
    return value


def _as_string(value: object, strict: bool) -> str:
    if isinstance(value, str):
        return value
    if not strict and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidValue("must be a string")


def _as_long(value: object, strict: bool) -> str:
    if isinstance(value, bool):
        raise InvalidValue("must be an integer or a string of digits")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValue("out of the 64-bit range")
        return str(value)
    if isinstance(value, str):
        if strict and not _LONG_TEXT.fullmatch(value):
            raise InvalidValue("must be an integer or a string of digits")
        return value
    raise InvalidValue("must be an integer or a string of digits")


def as_int(value: object, strict: bool) -> int:
    """An integer: an int, or in lenient mode a string of digits."""
    if isinstance(value, bool):
        raise InvalidValue("must be an integer")
    if isinstance(value, int):
        number = value
    elif strict:
        raise InvalidValue("must be an integer")
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        text = value.strip()
        # Past 19 significant digits it cannot fit; int() of a long text would be slow.
        if len(text.lstrip("+-").lstrip("0")) > 19:
            raise InvalidValue("out of the 64-bit range")
        number = int(text)
    else:
        raise InvalidValue("must be an integer")
    if not INT64_MIN <= number <= INT64_MAX:
        raise InvalidValue("out of the 64-bit range")
    return number


def _check_length(spec: Field, text: str) -> None:
    if spec.required and not text:
        raise InvalidValue("must not be empty")
    if spec.required and text.isspace():
        raise InvalidValue("must hold a character other than whitespace")
    if spec.max_len is not None and len(text) > spec.max_len:
        raise InvalidValue(f"longer than {spec.max_len} characters")
