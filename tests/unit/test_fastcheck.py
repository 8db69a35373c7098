"""SPEC 3: the one-pass batch check agrees with the record-by-record one wherever it answers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import FIELDS, REQUIRED, junk

from bridge.core import fastcheck
from bridge.core.records import ADD_EDIT_FIELDS, DELETE_FIELDS, Op, check_record

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Each field's value from either column of test_properties.FIELDS: valid or near the limits.
mixed_record = st.fixed_dictionaries(
    {k: FIELDS[k][0] | FIELDS[k][1] for k in REQUIRED},
    optional={k: v[0] | v[1] for k, v in FIELDS.items() if k not in REQUIRED},
)
delete_record = st.fixed_dictionaries(
    {"id": FIELDS["id"][0] | FIELDS["id"][1]},
    optional={
        "phone": st.none() | st.text(max_size=13) | st.integers(0, 10**12),
        "meta": FIELDS["meta"][0] | FIELDS["meta"][1],
        "name": st.text(max_size=3),
    },
)


def slow_path(records: list[Any], op: Op) -> list[tuple[Any, list[Any]]]:
    return [check_record(r, op, strict=False, customization=True) for r in records]


@SETTINGS
@given(
    op=st.sampled_from([Op.ADD, Op.EDIT, Op.DELETE]),
    records=st.lists(mixed_record | delete_record | junk, min_size=1, max_size=4),
)
def test_fast_acceptance_implies_the_same_records_from_the_slow_path(
    op: Op, records: list[Any]
) -> None:
    """Whenever the batch check accepts, every record passes check_record with the very same
    output, keys in the same order; when it declines, check_record decides alone."""
    fast = fastcheck.accept_all(copy.deepcopy(records), op)
    if fast is None:
        return
    slow = slow_path(copy.deepcopy(records), op)
    assert all(problems == [] for _, problems in slow)
    assert [list(r.items()) for r in fast] == [list(r.items()) for r, _ in slow]  # type: ignore[union-attr]


def test_a_clean_batch_takes_the_fast_path_with_long_ids_as_strings() -> None:
    """A valid batch, long ids sent as numbers, is accepted whole and the ids become strings."""
    records = [
        {
            "id": "c-1",
            "projectId": 1117745722292428800,
            "name": "张三",
            "phone": "13800138000",
            "customerTypeId": 1,
            "age": 30,
            "spaceIds": ["s-1"],
            "remark": None,
            "extra": {"a": 1},
        },
        {"id": "c-2", "projectId": "42", "name": "李四", "phone": "13900139000"},
    ]
    fast = fastcheck.accept_all(copy.deepcopy(records), Op.ADD)
    assert fast is not None
    assert fast[0]["projectId"] == "1117745722292428800" and fast[0]["customerTypeId"] == "1"
    assert fast == [r for r, _ in slow_path(records, Op.ADD)]


@pytest.mark.parametrize(
    "record",
    [
        {"id": "c-1", "projectId": "42", "name": "张三", "phone": "13800138000", "age": "30"},
        {"id": "c-1", "projectId": "42", "name": "", "phone": "13800138000"},
        {"id": "c-1", "projectId": "42", "name": " \u3000", "phone": "13800138000"},
        {"id": "\x1c", "projectId": "42", "name": "张三", "phone": "13800138000"},
        {"id": "c-1", "projectId": "\t", "name": "张三", "phone": "13800138000"},
        {"id": "c-1", "projectId": "42", "name": "张三", "phone": "13800138000", "age": 30.0},
        {"id": "c-1", "projectId": "42", "name": "张三", "phone": 13800138000},
        {"id": "c-1", "projectId": "42", "name": "张三", "phone": "13800138000", "sex": True},
        {"id": "c-1", "projectId": "42", "name": "张三"},
    ],
)
def test_anything_needing_a_conversion_or_a_reason_is_left_to_the_slow_path(
    record: dict[str, Any],
) -> None:
    """Numeric strings, ints for strings, floats, bools, empty, blank or missing required: None."""
    assert fastcheck.accept_all([record], Op.ADD) is None


BASE: dict[Op, dict[str, Any]] = {
    Op.ADD: {"id": "c-1", "projectId": "42", "name": "张三", "phone": "13800138000"},
    Op.DELETE: {"id": "c-1"},
}
LIMITED = [
    (op, name, spec)
    for op, table in ((Op.ADD, ADD_EDIT_FIELDS), (Op.DELETE, DELETE_FIELDS))
    for name, spec in table.items()
    if spec.max_len is not None or spec.maximum is not None
]


@pytest.mark.parametrize(("op", "name", "spec"), LIMITED, ids=[f"{o}-{n}" for o, n, _ in LIMITED])
def test_every_limit_of_the_table_holds_on_the_fast_path(op: Op, name: str, spec: Any) -> None:
    """Each field at its limit passes the batch check; one over (a character longer, one
    more, one less) is left to the slow path."""
    if spec.max_len is not None:
        at, over = ["字" * spec.max_len], ["字" * (spec.max_len + 1)]
    else:
        at, over = [spec.maximum, spec.minimum], [spec.maximum + 1, spec.minimum - 1]
    for value in at:
        assert fastcheck.accept_all([{**BASE[op], name: value}], op) is not None, value
    for value in over:
        assert fastcheck.accept_all([{**BASE[op], name: value}], op) is None, value
