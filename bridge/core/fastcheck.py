"""A one-pass check of a whole customerList against the field tables, in msgspec (pure).

The common case is a batch of records that are already right: strings that fit, ints in
range, no lenient conversion needed but long ids sent as numbers. For that case this module
answers "all accepted" from one `msgspec.convert` call, several times faster than
`records.check_record` per record. Anything else (a record out of the tables, a numeric string,
strict mode) gets None, and validation takes the record-by-record path, which alone says why.
Both paths accept exactly the same output for a batch the fast one accepts (tests/unit).

The schema is derived from `records.FIELDS`, the one SPEC 3 table: nothing here restates a
limit. msgspec converts strictly (no bool for an int, no float for an int, no int for a
string) and ignores the fields the table does not name, which lenient mode keeps as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from bridge.core.records import FIELDS, INT64_MAX, INT64_MIN, Field, Op, Type

_INT64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]


def _text(spec: Field) -> Any:
    # A required string must not be empty; whitespace-only is tested after (see accept_all).
    shortest = 1 if spec.required else 0
    return Annotated[str, msgspec.Meta(min_length=shortest, max_length=spec.max_len)]


def annotation(spec: Field) -> Any:
    """The msgspec type of one row of the table."""
    kind: Any
    if spec.type is Type.STRING:
        kind = _text(spec)
    elif spec.type is Type.LONG:
        kind = _text(spec) | _INT64
    elif spec.type is Type.INT:
        kind = Annotated[int, msgspec.Meta(ge=spec.minimum, le=spec.maximum)]
    elif spec.type is Type.STRING_LIST:
        kind = list[str]
    else:
        kind = dict[str, Any]
    return kind if spec.required else kind | None


def _schema(op: Op) -> Any:
    """`list[Struct]` of `op`'s table: required fields without a default, the others None."""
    table = FIELDS[op]
    required = [(name, annotation(f)) for name, f in table.items() if f.required]
    optional = [(name, annotation(f), None) for name, f in table.items() if not f.required]
    record = msgspec.defstruct(f"_{op.name.title()}Record", [*required, *optional])
    return list[record]  # type: ignore[valid-type]


_BATCHES: Mapping[Op, Any] = {op: _schema(op) for op in Op}
_REQUIRED_TEXT: Mapping[Op, tuple[str, ...]] = {
    op: tuple(n for n, f in table.items() if f.required) for op, table in FIELDS.items()
}
_LONG_FIELDS: Mapping[Op, tuple[str, ...]] = {
    op: tuple(n for n, f in table.items() if f.type is Type.LONG) for op, table in FIELDS.items()
}


def accept_all(records: list[Any], op: Op) -> list[dict[str, Any]] | None:
    """The records after lenient validation if every one passes as it is, else None.

    Lenient mode only. The accepted records are the received dicts themselves (key order
    kept), with long ids sent as numbers turned into strings, as `check_record` does.
    """
    try:
        msgspec.convert(records, _BATCHES[op])
    except msgspec.ValidationError:
        return None
    longs = _LONG_FIELDS[op]
    required = _REQUIRED_TEXT[op]
    # The blank test (str.isspace, as check_record has it) runs over every record before
    # any is changed.
    for record in records:
        for name in required:
            value = record[name]
            if value.__class__ is str and value.isspace():
                return None
    for record in records:
        for name in longs:
            value = record.get(name)
            if value.__class__ is int:
                record[name] = str(value)
    return records
