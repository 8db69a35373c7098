"""The plain path gives the general path's digest, byte for byte, wherever it answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from factories import CUSTOM_TOPIC, LENIENT, PROFILE, STANDARD_TOPIC, STRICT, customer, pipeline
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_properties import documents, record_of

from bridge.core.digest import Digest, digest
from bridge.core.plain import plain_digest
from bridge.core.records import FIELDS, Op
from bridge.core.validate import Rules

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULES = st.sampled_from([LENIENT, STRICT, Rules(max_batch=3, max_depth=6), Rules(max_depth=4)])
TOPICS = st.sampled_from([STANDARD_TOPIC, CUSTOM_TOPIC])


def compact(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# Ways a producer's text differs from the compact form, each of which the plain path must
# either see through or leave to the general path.
MUTATIONS: list[Callable[[str], str]] = [
    lambda text: text,
    lambda text: text.replace('{"id":', '{"id":"dup","id":', 1),
    lambda text: text.replace('"meta":{"', '"meta":{"a":0,"a":1,"', 1),
    lambda text: text.replace('"name":', '"name":"x","name":', 1),
    lambda text: text.replace('"msgId":', '"msgId":"a","msgId":', 1),
    lambda text: text.replace('"events":{', '"events":{"add":{},', 1),
    lambda text: text.replace(",", ", ", 1),
    lambda text: text.replace(":", ": ", 1),
    lambda text: text.replace("[", "[\n", 1),
    lambda text: text.replace(":0", ":-0", 1),
    lambda text: text.replace('"', '"\\u0041', 3),
    lambda text: "\ufeff" + text,
]


def _clean(value: Any) -> Any:
    """The value with no character a compact JSON text would escape, and no unknown field."""
    if isinstance(value, str):
        return "".join(
            "x" if c in '"\\' or c < " " or "\ud800" <= c <= "\udfff" else c for c in value
        )
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k != "unknownExtra"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def plain_records(op: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Valid records of `op`, mostly with nothing the plain path declines."""
    table = FIELDS[Op(op)]
    record = record_of(0).map(lambda r: {k: v for k, v in _clean(r).items() if k in table})
    return st.lists(record, min_size=1, max_size=4)


plain_documents = st.fixed_dictionaries(
    {
        "msgId": st.text(min_size=1, max_size=64).map(_clean),
        "reportTs": st.sampled_from([1661154622, 1661154622000]),
        "profile": st.just(PROFILE),
        "events": st.sampled_from(["add", "edit", "delete"]).flatmap(
            lambda op: st.fixed_dictionaries(
                {
                    op: st.fixed_dictionaries(
                        {
                            "eventTs": st.integers(1, 10**13),
                            "eventType": st.just(1),
                            "customerList": plain_records(op),
                        }
                    )
                }
            )
        ),
    }
)


def general(topic: str, payload: bytes, rules: Rules) -> Digest:
    return digest(pipeline(rules).process(topic, payload), payload)


def plain(topic: str, payload: bytes, rules: Rules) -> Digest | None:
    inbound = pipeline(rules).inbound(topic)
    assert inbound is not None
    return plain_digest(inbound, payload, rules)


@SETTINGS
@given(
    document=st.one_of(plain_documents, plain_documents, documents),
    mutation=st.sampled_from(MUTATIONS) | st.just(MUTATIONS[0]),
    ascii_only=st.sampled_from([False, False, False, True]),
    topic=TOPICS,
    rules=RULES,
)
def test_where_the_plain_path_answers_it_gives_the_general_digest(
    document: Any, mutation: Callable[[str], str], ascii_only: bool, topic: str, rules: Rules
) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":"))
    payload = mutation(text).encode("utf-8", "surrogatepass")
    fast = plain(topic, payload, rules)
    event("answered" if fast is not None else "declined")
    if fast is not None:
        assert fast == general(topic, payload, rules)


def envelope(op: str, records: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "msgId": "m-1",
        "reportTs": 1661154622,
        "profile": PROFILE,
        "events": {op: {"eventTs": 1661154622000, "eventType": 1, "customerList": records}},
        **top,
    }


@pytest.mark.parametrize("topic", [STANDARD_TOPIC, CUSTOM_TOPIC])
def test_a_compact_valid_envelope_takes_the_plain_path(topic: str) -> None:
    """Long ids sent as numbers, a `meta` that repeats a long id's name, nulls, lists, text
    outside ASCII: answered, and equal to the general path's digest."""
    records = [
        customer(projectId=1117745722292428800, customerTypeId=3, roleId=None, spaceIds=["s"]),
        customer(id="c-2", name="张三", meta={"customerTypeId": 1, "n": [1, {"k": "v"}]}),
        customer(id="c-3", customerGradeId=-7),
    ]
    payload = compact(envelope("add", records))
    fast = plain(topic, payload, LENIENT)
    assert fast is not None
    assert fast == general(topic, payload, LENIENT)
    first = json.loads(fast.forward[0].body)
    assert first["customer"]["projectId"] == "1117745722292428800"
    assert first["customer"]["customerTypeId"] == "3"


@pytest.mark.parametrize(
    ("why", "payload", "rules"),
    [
        ("strict mode", compact(envelope("add", [customer()])), STRICT),
        ("a float", compact(envelope("add", [customer(age=30.0)])), LENIENT),
        ("an unknown field", compact(envelope("add", [customer(extra=1)])), LENIENT),
        ("a numeric string", compact(envelope("add", [customer(age="30")])), LENIENT),
        ("a blank name", compact(envelope("add", [customer(name=" ")])), LENIENT),
        ("no msgId", compact(envelope("add", [customer()], msgId=None)), LENIENT),
        ("a backslash", compact(envelope("add", [customer(name='a"b')])), LENIENT),
        ("whitespace", json.dumps(envelope("add", [customer()])).encode(), LENIENT),
        (
            "a date string",
            compact(envelope("add", [customer()])).replace(
                b"1661154622000", b'"2022-08-22 15:50:22"'
            ),
            LENIENT,
        ),
        ("a batch too large", compact(envelope("add", [customer()] * 4)), Rules(max_batch=3)),
        ("too deep", compact(envelope("add", [customer(meta={"a": {"b": [[1]]}})])), LENIENT),
    ],
)
def test_anything_else_is_left_to_the_general_path(why: str, payload: bytes, rules: Rules) -> None:
    """Each of these needs a reason named or a conversion made: the plain path declines."""
    if why == "too deep":
        rules = Rules(max_depth=8)
    assert plain(CUSTOM_TOPIC, payload, rules) is None, why


def test_two_operations_are_left_to_the_general_path() -> None:
    """The general path keeps the operations in payload order; the plain path takes one."""
    document = envelope("add", [customer()])
    document["events"]["delete"] = {"eventTs": 1, "eventType": 1, "customerList": [{"id": "x"}]}
    assert plain(STANDARD_TOPIC, compact(document), LENIENT) is None
