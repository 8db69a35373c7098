"""A one-pass check of a whole customerList against the field tables, in pydantic-core (pure).

The common case is a batch of records that are already right: strings that fit, ints in
range, no lenient conversion needed but long ids sent as numbers. For that case this module
answers "all accepted" from one call into pydantic's Rust core, about three times faster than
`records.check_record` per record. Anything else (a record out of the tables, a numeric string,
strict mode) gets None, and validation takes the record-by-record path, which alone says why.
Both paths accept exactly the same output for a batch the fast one accepts (tests/unit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Required

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic wants this one before Python 3.12

from bridge.core.records import ADD_EDIT_FIELDS, FIELDS, INT64_MAX, INT64_MIN, Op, Type

_Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
_Id = Annotated[str, StringConstraints(min_length=1, max_length=36)]
_Long = Annotated[str, StringConstraints(max_length=36)] | _Int64
_RequiredLong = Annotated[str, StringConstraints(min_length=1, max_length=36)] | _Int64
_S11 = Annotated[str, StringConstraints(max_length=11)] | None
_S15 = Annotated[str, StringConstraints(max_length=15)] | None
_S20 = Annotated[str, StringConstraints(max_length=20)] | None
_S45 = Annotated[str, StringConstraints(max_length=45)] | None
_S50 = Annotated[str, StringConstraints(max_length=50)] | None
_S100 = Annotated[str, StringConstraints(max_length=100)] | None
_S255 = Annotated[str, StringConstraints(max_length=255)] | None
_Int0to2 = Annotated[int, Field(ge=0, le=2)] | None
_Int0to4 = Annotated[int, Field(ge=0, le=4)] | None
_Int0to7 = Annotated[int, Field(ge=0, le=7)] | None
_Int0to200 = Annotated[int, Field(ge=0, le=200)] | None
_CONFIG = ConfigDict(extra="allow", strict=True)


class _AddEdit(TypedDict, total=False):
    """SPEC 3's add/edit table as pydantic reads it (kept in step by tests/unit)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]  # pydantic reads it off the class

    id: Required[_Id]
    projectId: Required[_RequiredLong]
    name: Required[Annotated[str, StringConstraints(min_length=1, max_length=20)]]
    phone: Required[Annotated[str, StringConstraints(min_length=1, max_length=15)]]
    idType: _Int0to4
    idNumber: _S45
    sex: _Int0to2
    age: _Int0to200
    spaceIds: list[str] | None
    companyIds: list[str] | None
    customerGradeId: _Long | None
    customerTypeId: _Long | None
    roleId: _Long | None
    contractName: _S50
    contractPhone: _S15
    address: _S50
    email: _S50
    remark: _S100
    bornDate: _Int64 | None
    nativePlace: _S20
    nation: _S20
    profession: _S20
    interest: _S20
    character: _S20
    postalCode: _S20
    jobNum: _S20
    speciality: _S50
    marriage: _Int0to4
    education: _Int0to7
    facePhoto: _S255
    meta: dict[str, Any] | None


class _Delete(TypedDict, total=False):
    """SPEC 3's delete table."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    id: Required[_Id]
    phone: _S11
    meta: dict[str, Any] | None


_BATCHES: Mapping[Op, TypeAdapter[Any]] = {
    Op.ADD: TypeAdapter(list[_AddEdit]),
    Op.EDIT: TypeAdapter(list[_AddEdit]),
    Op.DELETE: TypeAdapter(list[_Delete]),
}
_REQUIRED_TEXT: Mapping[Op, tuple[str, ...]] = {
    op: tuple(n for n, f in table.items() if f.required) for op, table in FIELDS.items()
}
_LONG_FIELDS: Mapping[Op, tuple[str, ...]] = {
    Op.ADD: tuple(n for n, f in ADD_EDIT_FIELDS.items() if f.type is Type.LONG),
    Op.EDIT: tuple(n for n, f in ADD_EDIT_FIELDS.items() if f.type is Type.LONG),
    Op.DELETE: (),
}


def accept_all(records: list[Any], op: Op) -> list[dict[str, Any]] | None:
    """The records after lenient validation if every one passes as it is, else None.

    Lenient mode only. The accepted records are the received dicts themselves (key order
    kept), with long ids sent as numbers turned into strings, as `check_record` does.
    """
    try:
        _BATCHES[op].validate_python(records)
    except ValidationError:
        return None
    longs = _LONG_FIELDS[op]
    required = _REQUIRED_TEXT[op]
    # pydantic's idea of whitespace is not str.isspace(): the blank test stays here, and
    # runs over every record before any is changed.
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
