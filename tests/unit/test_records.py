"""SPEC 3: the customer record field tables, and the strict/lenient rows about records."""

from __future__ import annotations

from typing import Any

import pytest
from factories import ABSENT, customer, delete_record
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.records import ADD_EDIT_FIELDS, DELETE_FIELDS, Op, Problem, check_record

# The SPEC 3 tables, written out again from the SPEC rather than imported from the code.
ADD_EDIT_STRINGS: dict[str, tuple[int, bool]] = {  # field: (max length, required)
    "id": (36, True),
    "name": (20, True),
    "phone": (15, True),
    "idNumber": (45, False),
    "contractName": (50, False),
    "contractPhone": (15, False),
    "address": (50, False),
    "email": (50, False),
    "remark": (100, False),
    "nativePlace": (20, False),
    "nation": (20, False),
    "profession": (20, False),
    "interest": (20, False),
    "character": (20, False),
    "postalCode": (20, False),
    "jobNum": (20, False),
    "speciality": (50, False),
    "facePhoto": (255, False),
}
ADD_EDIT_LONGS: dict[str, bool] = {  # field: required; all <= 36
    "projectId": True,
    "customerGradeId": False,
    "customerTypeId": False,
    "roleId": False,
}
ADD_EDIT_ENUMS: dict[str, tuple[int, int]] = {
    "idType": (0, 4),
    "sex": (0, 2),
    "age": (0, 200),
    "marriage": (0, 4),
    "education": (0, 7),
}
ADD_EDIT_INTS = [*ADD_EDIT_ENUMS, "bornDate"]
STRING_LISTS = ["spaceIds", "companyIds"]
ADD_EDIT_REQUIRED = [name for name, (_, req) in ADD_EDIT_STRINGS.items() if req] + ["projectId"]

ADD_EDIT = [Op.ADD, Op.EDIT]
MODES = pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
OPS = pytest.mark.parametrize("op", ADD_EDIT, ids=str)
KINDS = pytest.mark.parametrize("customization", [False, True], ids=["standard", "custom"])

CJK = "测"


def check(
    record: Any, op: Op = Op.ADD, *, strict: bool = False, customization: bool = False
) -> tuple[dict[str, Any] | None, list[Problem]]:
    return check_record(record, op, strict=strict, customization=customization)


def assert_ok(
    record: Any, op: Op = Op.ADD, *, strict: bool = False, customization: bool = False
) -> dict[str, Any]:
    out, problems = check(record, op, strict=strict, customization=customization)
    assert problems == []
    assert out is not None
    return out


def assert_fails_on(
    field: str,
    record: Any,
    op: Op = Op.ADD,
    *,
    strict: bool = False,
    customization: bool = False,
) -> Problem:
    out, problems = check(record, op, strict=strict, customization=customization)
    assert out is None
    assert [p.field for p in problems] == [field], problems
    assert problems[0].reason
    return problems[0]


def base_for(op: Op) -> dict[str, Any]:
    return delete_record() if op is Op.DELETE else customer()


# --- the tables themselves -------------------------------------------------------------------


def test_add_edit_table_has_exactly_the_spec_fields() -> None:
    """The code's add/edit table names exactly the fields of SPEC 3."""
    spec = {*ADD_EDIT_STRINGS, *ADD_EDIT_LONGS, *ADD_EDIT_INTS, *STRING_LISTS, "meta"}
    assert set(ADD_EDIT_FIELDS) == spec


def test_delete_table_has_exactly_the_spec_fields() -> None:
    """The code's delete table is id, phone and meta."""
    assert set(DELETE_FIELDS) == {"id", "phone", "meta"}


@MODES
@OPS
@KINDS
def test_minimal_record_passes(strict: bool, op: Op, customization: bool) -> None:
    """A record of only the required fields is valid in both modes, on both topic kinds."""
    assert assert_ok(customer(), op, strict=strict, customization=customization) == customer()


@MODES
@OPS
def test_full_record_passes_unchanged(strict: bool, op: Op) -> None:
    """A record filling every field with a well-typed value comes back unchanged."""
    record = customer(
        projectId="123",
        idType=1,
        idNumber="110101199003070000",
        sex=2,
        age=30,
        spaceIds=["s1", "s2"],
        companyIds=["1117745722292428800"],
        customerGradeId="7",
        customerTypeId="8",
        roleId="9",
        contractName="李四",
        contractPhone="13900139000",
        address="北京市",
        email="a@example.com",
        remark="备注",
        bornDate=631152000000,
        nativePlace="籍贯",
        nation="汉",
        profession="工程师",
        interest="读书",
        character="开朗",
        postalCode="100000",
        jobNum="E001",
        speciality="特长",
        marriage=1,
        education=5,
        facePhoto="https://example.com/f.jpg",
        meta={"k": "v"},
    )
    assert assert_ok(record, op, strict=strict, customization=True) == record


# --- string fields ---------------------------------------------------------------------------


@MODES
@OPS
@pytest.mark.parametrize(("field", "limit"), [(f, v[0]) for f, v in ADD_EDIT_STRINGS.items()])
def test_string_at_its_limit_in_code_points_passes(
    strict: bool, op: Op, field: str, limit: int
) -> None:
    """A string of exactly max length (in CJK code points, 3 bytes each) is accepted."""
    out = assert_ok(customer(**{field: CJK * limit}), op, strict=strict)
    assert out[field] == CJK * limit


@MODES
@OPS
@pytest.mark.parametrize(("field", "limit"), [(f, v[0]) for f, v in ADD_EDIT_STRINGS.items()])
def test_string_one_over_its_limit_fails(strict: bool, op: Op, field: str, limit: int) -> None:
    """A string one code point over max length is refused, naming the field."""
    problem = assert_fails_on(field, customer(**{field: CJK * (limit + 1)}), op, strict=strict)
    assert str(limit) in problem.reason


@MODES
@pytest.mark.parametrize("field", list(ADD_EDIT_STRINGS))
@pytest.mark.parametrize("value", [True, False, 1.5, [], ["x"], {}, {"a": "b"}], ids=repr)
def test_string_field_refuses_other_types(strict: bool, field: str, value: Any) -> None:
    """bool, float, list and object are not strings, in either mode."""
    assert_fails_on(field, customer(**{field: value}), strict=strict)


@pytest.mark.parametrize("field", list(ADD_EDIT_STRINGS))
def test_string_field_refuses_an_integer_in_strict(field: str) -> None:
    """Strict mode takes only JSON strings for string fields."""
    assert_fails_on(field, customer(**{field: 12345}), strict=True)


@MODES
@OPS
@pytest.mark.parametrize("field", ADD_EDIT_REQUIRED)
@pytest.mark.parametrize("how", ["missing", "null", "empty"])
def test_required_field_missing_null_or_empty_fails(
    strict: bool, op: Op, field: str, how: str
) -> None:
    """id, projectId, name and phone must be present, not null and not empty."""
    value = {"missing": ABSENT, "null": None, "empty": ""}[how]
    assert_fails_on(field, customer(**{field: value}), op, strict=strict)


OPTIONAL_ADD_EDIT = [
    *(name for name, (_, req) in ADD_EDIT_STRINGS.items() if not req),
    *(name for name, req in ADD_EDIT_LONGS.items() if not req),
    *ADD_EDIT_INTS,
    *STRING_LISTS,
    "meta",
]


@MODES
@OPS
@pytest.mark.parametrize("field", OPTIONAL_ADD_EDIT)
def test_optional_field_may_be_null_or_absent(strict: bool, op: Op, field: str) -> None:
    """Every optional field may be null (kept as null) or absent."""
    out = assert_ok(customer(**{field: None}), op, strict=strict, customization=True)
    assert out[field] is None
    assert field not in assert_ok(customer(), op, strict=strict, customization=True)


@MODES
@pytest.mark.parametrize("field", [n for n, (_, req) in ADD_EDIT_STRINGS.items() if not req])
def test_optional_string_may_be_empty(strict: bool, field: str) -> None:
    """Only required strings must be non-empty; an optional one may be ""."""
    assert assert_ok(customer(**{field: ""}), strict=strict)[field] == ""


# --- long fields (integer or string, kept as a string) ---------------------------------------


@MODES
@OPS
@pytest.mark.parametrize("field", list(ADD_EDIT_LONGS))
@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (1117745722292428800, "1117745722292428800"),
        (0, "0"),
        (-5, "-5"),
        (2**63 - 1, str(2**63 - 1)),
        ("1117745722292428800", "1117745722292428800"),
    ],
)
def test_long_integer_is_kept_as_a_string(
    strict: bool, op: Op, field: str, value: Any, kept: str
) -> None:
    """An integer long comes out as its decimal string; a string of digits is kept as is."""
    assert assert_ok(customer(**{field: value}), op, strict=strict)[field] == kept


@MODES
@pytest.mark.parametrize("field", list(ADD_EDIT_LONGS))
def test_long_of_36_digits_passes_and_37_fails(strict: bool, field: str) -> None:
    """A long is at most 36 characters."""
    assert assert_ok(customer(**{field: "9" * 36}), strict=strict)[field] == "9" * 36
    assert_fails_on(field, customer(**{field: "9" * 37}), strict=strict)


@pytest.mark.parametrize("field", list(ADD_EDIT_LONGS))
def test_lenient_long_length_counts_code_points(field: str) -> None:
    """In lenient mode a non-numeric long string is kept; its 36-character limit counts CJK."""
    assert assert_ok(customer(**{field: CJK * 36}))[field] == CJK * 36
    assert_fails_on(field, customer(**{field: CJK * 37}))


@pytest.mark.parametrize("field", list(ADD_EDIT_LONGS))
@pytest.mark.parametrize("value", ["项目id", "12a", "1.5", " 12", ""])
def test_strict_long_refuses_a_non_numeric_string(field: str, value: str) -> None:
    """Strict mode takes only digits in a long string (the sample's "项目id" breaks the table)."""
    assert_fails_on(field, customer(**{field: value}), strict=True)


@MODES
@pytest.mark.parametrize("field", list(ADD_EDIT_LONGS))
@pytest.mark.parametrize("value", [True, False, 1.0, [1], {"a": 1}, 2**63, -(2**63) - 1], ids=repr)
def test_long_refuses_bool_float_containers_and_out_of_range(
    strict: bool, field: str, value: Any
) -> None:
    """A long is never a bool, a float, a container, or beyond 64 bits."""
    assert_fails_on(field, customer(**{field: value}), strict=strict)


# --- int fields ------------------------------------------------------------------------------


@MODES
@OPS
@pytest.mark.parametrize(("field", "bounds"), list(ADD_EDIT_ENUMS.items()))
def test_int_at_its_bounds_passes(
    strict: bool, op: Op, field: str, bounds: tuple[int, int]
) -> None:
    """The lowest and highest documented value of each enum/range is accepted."""
    for value in bounds:
        assert assert_ok(customer(**{field: value}), op, strict=strict)[field] == value


@MODES
@OPS
@pytest.mark.parametrize(("field", "bounds"), list(ADD_EDIT_ENUMS.items()))
def test_int_just_outside_its_bounds_fails(
    strict: bool, op: Op, field: str, bounds: tuple[int, int]
) -> None:
    """One below the lowest and one above the highest documented value are refused."""
    low, high = bounds
    assert_fails_on(field, customer(**{field: low - 1}), op, strict=strict)
    assert_fails_on(field, customer(**{field: high + 1}), op, strict=strict)


@MODES
@pytest.mark.parametrize("field", ADD_EDIT_INTS)
@pytest.mark.parametrize("value", [True, False], ids=repr)
def test_bool_is_never_an_int(strict: bool, field: str, value: bool) -> None:
    """true/false are not 1/0 for any int field, in either mode."""
    assert_fails_on(field, customer(**{field: value}), strict=strict)


@MODES
@pytest.mark.parametrize("field", ADD_EDIT_INTS)
@pytest.mark.parametrize("value", [1.0, 1.5, [1], {"v": 1}], ids=repr)
def test_int_field_refuses_floats_and_containers(strict: bool, field: str, value: Any) -> None:
    """A float (even 1.0) or a container is not an int."""
    assert_fails_on(field, customer(**{field: value}), strict=strict)


@MODES
def test_born_date_takes_any_epoch_ms_integer(strict: bool) -> None:
    """bornDate is an int (epoch ms) without a documented range; negatives are pre-1970."""
    for value in (0, 1661154622000, -631152000000):
        assert assert_ok(customer(bornDate=value), strict=strict)["bornDate"] == value


# --- strict and lenient: int fields ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "text", "number"),
    [
        ("age", "30", 30),
        ("age", "0", 0),
        ("age", "200", 200),
        ("sex", "2", 2),
        ("idType", "4", 4),
        ("marriage", "0", 0),
        ("education", "7", 7),
        ("bornDate", "1661154622000", 1661154622000),
    ],
)
def test_lenient_converts_a_numeric_string_for_an_int_field(
    field: str, text: str, number: int
) -> None:
    """Lenient: `"age": "30"` becomes the integer 30."""
    out = assert_ok(customer(**{field: text}))
    assert out[field] == number
    assert type(out[field]) is int


@pytest.mark.parametrize("field", ADD_EDIT_INTS)
def test_strict_refuses_a_numeric_string_for_an_int_field(field: str) -> None:
    """Strict: `"age": "30"` is an error."""
    assert_fails_on(field, customer(**{field: "1"}), strict=True)


@MODES
@pytest.mark.parametrize("field", ADD_EDIT_INTS)
@pytest.mark.parametrize("text", ["年龄", "thirty", "", "3O", "1.5", "0x1F"])
def test_non_numeric_string_for_an_int_field_fails_in_both_modes(
    strict: bool, field: str, text: str
) -> None:
    """`"age": "年龄"` is an error in lenient and strict mode alike."""
    assert_fails_on(field, customer(**{field: text}), strict=strict)


@pytest.mark.parametrize(("field", "text"), [("age", "201"), ("sex", "3"), ("idType", "-1")])
def test_lenient_converted_string_is_range_checked(field: str, text: str) -> None:
    """A converted numeric string must still lie within the field's documented range."""
    assert_fails_on(field, customer(**{field: text}))


# --- string lists ----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("field", STRING_LISTS)
@pytest.mark.parametrize("value", [[], ["a"], ["1117745722292428800", "项目"]])
def test_string_list_passes(strict: bool, field: str, value: list[str]) -> None:
    """spaceIds and companyIds take lists of strings, empty included."""
    assert assert_ok(customer(**{field: value}), strict=strict)[field] == value


@MODES
@pytest.mark.parametrize("field", STRING_LISTS)
@pytest.mark.parametrize("value", ["a", {"a": 1}, 1, True], ids=repr)
def test_string_list_refuses_a_non_list(strict: bool, field: str, value: Any) -> None:
    """A bare string, object, number or bool is not a list of strings."""
    assert_fails_on(field, customer(**{field: value}), strict=strict)


@MODES
@pytest.mark.parametrize("field", STRING_LISTS)
@pytest.mark.parametrize("item", [None, True, 1.5, ["x"], {"x": 1}], ids=repr)
def test_string_list_refuses_a_non_string_item_naming_its_index(
    strict: bool, field: str, item: Any
) -> None:
    """A bad item is reported at its path, e.g. spaceIds[1]."""
    assert_fails_on(f"{field}[1]", customer(**{field: ["ok", item]}), strict=strict)


@pytest.mark.parametrize("field", STRING_LISTS)
def test_strict_string_list_refuses_an_integer_item(field: str) -> None:
    """In strict mode an integer inside a string list is an error."""
    assert_fails_on(f"{field}[0]", customer(**{field: [1117745722292428800]}), strict=True)


# --- meta ------------------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
def test_meta_object_passes_on_customization_topics(strict: bool, op: Op) -> None:
    """meta is an object allowed on customization topics, kept as is."""
    meta = {"key1": "value1", "nested": {"k": [1, 2]}}
    record = {**base_for(op), "meta": meta}
    assert assert_ok(record, op, strict=strict, customization=True)["meta"] == meta


@MODES
@KINDS
@pytest.mark.parametrize("value", ["x", ["k"], 1, True], ids=repr)
def test_meta_must_be_an_object(strict: bool, customization: bool, value: Any) -> None:
    """A meta that is not an object is refused (where meta is allowed or kept at all)."""
    assert_fails_on("meta", customer(meta=value), strict=strict, customization=customization)


@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
def test_lenient_keeps_meta_on_a_standard_topic(op: Op) -> None:
    """Lenient: meta on a standard topic is kept and passed downstream."""
    record = {**base_for(op), "meta": {"k": "v"}}
    assert assert_ok(record, op, customization=False)["meta"] == {"k": "v"}


@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
def test_strict_refuses_meta_on_a_standard_topic(op: Op) -> None:
    """Strict: meta on a standard topic is an error."""
    assert_fails_on("meta", {**base_for(op), "meta": {"k": "v"}}, op, strict=True)


# --- unknown fields --------------------------------------------------------------------------


@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
@KINDS
def test_lenient_keeps_an_unknown_field(op: Op, customization: bool) -> None:
    """Lenient: an unknown field is kept, unchanged, and passed downstream."""
    record = {**base_for(op), "vipLevel": {"raw": ["x", 1]}}
    out = assert_ok(record, op, customization=customization)
    assert out["vipLevel"] == {"raw": ["x", 1]}


@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
@KINDS
def test_strict_refuses_an_unknown_field(op: Op, customization: bool) -> None:
    """Strict: an unknown field is an error naming it."""
    assert_fails_on(
        "vipLevel", {**base_for(op), "vipLevel": 1}, op, strict=True, customization=customization
    )


def test_strict_delete_refuses_add_only_fields() -> None:
    """The delete table has only id, phone and meta: `name` on a delete is unknown in strict."""
    assert_fails_on("name", delete_record(name="张三"), Op.DELETE, strict=True)


def test_field_names_are_case_sensitive() -> None:
    """`Phone` is not `phone`: strict reports the unknown key and the missing one."""
    record = customer(phone=ABSENT, Phone="13800138000")
    out, problems = check(record, strict=True)
    assert out is None
    assert {p.field for p in problems} == {"Phone", "phone"}


# --- delete ----------------------------------------------------------------------------------


@MODES
@KINDS
def test_delete_needs_only_an_id(strict: bool, customization: bool) -> None:
    """A delete record is valid with just its id."""
    assert assert_ok({"id": "c-1"}, Op.DELETE, strict=strict, customization=customization) == {
        "id": "c-1"
    }


@MODES
@pytest.mark.parametrize("how", ["missing", "null", "empty"])
def test_delete_id_is_required(strict: bool, how: str) -> None:
    """A delete without an id, with a null id, or an empty one, fails on `id`."""
    value = {"missing": ABSENT, "null": None, "empty": ""}[how]
    assert_fails_on("id", delete_record(id=value), Op.DELETE, strict=strict)


@MODES
def test_delete_id_length_is_36(strict: bool) -> None:
    """The delete id is at most 36 code points."""
    assert assert_ok(delete_record(id=CJK * 36), Op.DELETE, strict=strict)["id"] == CJK * 36
    assert_fails_on("id", delete_record(id=CJK * 37), Op.DELETE, strict=strict)


@MODES
def test_delete_phone_length_is_11(strict: bool) -> None:
    """The delete phone is optional and at most 11 code points (not 15 as in add/edit)."""
    assert assert_ok(delete_record(phone=CJK * 11), Op.DELETE, strict=strict)["phone"] == CJK * 11
    assert_fails_on("phone", delete_record(phone=CJK * 12), Op.DELETE, strict=strict)
    assert assert_ok(delete_record(phone=None), Op.DELETE, strict=strict)["phone"] is None
    assert "phone" not in assert_ok(delete_record(phone=ABSENT), Op.DELETE, strict=strict)


@MODES
@pytest.mark.parametrize("field", ["id", "phone"])
@pytest.mark.parametrize("value", [True, 1.5, [], {}], ids=repr)
def test_delete_strings_refuse_other_types(strict: bool, field: str, value: Any) -> None:
    """id and phone of a delete are strings."""
    assert_fails_on(field, delete_record(**{field: value}), Op.DELETE, strict=strict)


# --- whole records ---------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("op", [Op.ADD, Op.EDIT, Op.DELETE], ids=str)
@pytest.mark.parametrize("raw", ["c-1", 1, None, True, ["id"], []], ids=repr)
def test_a_record_that_is_not_an_object_fails(strict: bool, op: Op, raw: Any) -> None:
    """Each customerList item must be an object."""
    out, problems = check(raw, op, strict=strict)
    assert out is None
    assert len(problems) == 1


@MODES
def test_every_problem_of_a_record_is_reported(strict: bool) -> None:
    """All failing fields of one record are reported, not only the first."""
    record = customer(name=ABSENT, phone="1" * 16, age=201, sex=True)
    out, problems = check(record, strict=strict)
    assert out is None
    assert {p.field for p in problems} == {"name", "phone", "age", "sex"}


def test_checking_does_not_modify_the_input() -> None:
    """Lenient conversions produce a new record; the one received is left as received."""
    record = customer(age="30", customerGradeId=7, spaceIds=["a"])
    snapshot = {**record, "spaceIds": list(record["spaceIds"])}
    out = assert_ok(record)
    assert (out["age"], out["customerGradeId"]) == (30, "7")
    assert record == snapshot


# --- personal data never leaks into reasons --------------------------------------------------

# Every generated value carries a marker no reason could contain by chance.
_MARK = "\u260e"
_SECRET = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).map(
    lambda s: _MARK + s
)


@settings(max_examples=60, deadline=None)
@given(secret=_SECRET, strict=st.booleans())
def test_reasons_never_quote_the_offending_value(secret: str, strict: bool) -> None:
    """Too-long strings, non-numeric ints and unknown-field values never appear in a reason."""
    long_secret = (secret * 300)[:300]
    record = customer(
        phone=long_secret,
        idNumber=long_secret,
        email=long_secret,
        facePhoto=long_secret,
        age=secret,
        projectId=[secret],
        spaceIds=[{"v": secret}],
        unknownField=secret,
    )
    out, problems = check(record, strict=strict)
    assert out is None
    assert problems
    for problem in problems:
        assert _MARK not in problem.reason
        assert _MARK not in problem.field


@MODES
def test_a_too_long_phone_is_not_quoted(strict: bool) -> None:
    """A realistic too-long phone number does not appear in the reason."""
    phone = "+86-138-0013-8000-99"
    problem = assert_fails_on("phone", customer(phone=phone), strict=strict)
    assert phone not in problem.reason
    assert "13800138000" not in problem.reason
