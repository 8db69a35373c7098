"""SPEC 8: personal data under any key, in lists and in free text, never reaches the log."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from factories import CUSTOM_TOPIC, STANDARD_TOPIC, customer, encode, envelope, op_body, pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import logs
from bridge.core import masking
from bridge.core.records import ADD_EDIT_FIELDS
from bridge.sinks.log import LogSink

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The bridge's JSON log, with redaction on, written to a buffer for the test."""
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


def log_sink_lines(payload: bytes, topic: str, out: io.StringIO) -> str:
    """Run `payload` through validation and the log sink; what the log holds afterwards."""
    out.seek(0)
    out.truncate()
    outcome = pipeline().process(topic, payload)
    sink = LogSink("audit", logs.get_logger(), "info")
    sink.send(outcome.forward)
    logs.get_logger().warning("sink_failed", reason=f"refused: {payload.decode()}")
    return out.getvalue()


# --- the cases of the campaign (issue 12, observation 4) --------------------------------------

OBSERVED = {
    "mobile": "13912345678",
    "Phone": "13812345679",
    "idCard": "11010519491231002X",
    "remark": "请联系 139-1111-2222 谢谢",
    "address": "北京市海淀区中关村大街1号",
    "name": "王小明",
}


def test_the_observed_cases_are_masked_in_the_log_sink(logged: io.StringIO) -> None:
    """mobile, Phone, idCard, meta.tel, a phone in remark and in spaceIds, name, address."""
    record = customer(
        id="c-77",
        spaceIds=["s-1", "13700001111"],
        meta={"tel": "+86 136 0000 3333"},
        **OBSERVED,
    )
    document = envelope({"add": op_body([record])}, msgId="m-obs")
    text = log_sink_lines(encode(document), CUSTOM_TOPIC, logged)
    for value in [*OBSERVED.values(), "13700001111", "+86 136 0000 3333", "136 0000 3333"]:
        assert value not in text
    assert "139-1111-2222" not in text and "13911112222" not in text
    (line,) = [json.loads(x) for x in text.splitlines() if "customer_event" in x]
    # the record is still named by its id, the message by its msgId
    assert line["customer"]["id"] == "c-77"
    assert line["msgId"] == "m-obs"
    assert line["customer"]["projectId"] == "1117745722292428800"


def test_an_email_and_an_id_number_inside_free_text_are_masked() -> None:
    """E-mail addresses and 18-character ID numbers are found inside any text."""
    text = "mail li.si+crm@example.com.cn, 身份证11010519491231002x; ok"
    shown = masking.mask_text(text)
    assert "li.si+crm@example.com.cn" not in shown
    assert "11010519491231002x" not in shown
    assert shown.endswith("; ok")


def test_numbers_inside_a_record_are_masked_but_a_log_events_own_figures_are_not() -> None:
    """`"tel": 13912345678` in a record is masked; `spool_pending=1200000` is a count."""
    shown = masking.redact_event({"spool_pending": 1_200_000, "meta": {"tel": 13912345678}})
    assert shown["spool_pending"] == 1_200_000
    assert "13912345678" not in json.dumps(shown)


def test_face_photo_is_dropped_and_named_fields_are_masked_at_any_depth_and_case() -> None:
    """facePhoto goes; PHONE, id_number and a nested contractName are masked."""
    shown = masking.redact(
        {"a": [{"facePhoto": "http://x/y.jpg", "PHONE": "abc", "b": {"contractName": "赵六"}}]},
    )
    assert shown == {"a": [{"PHONE": "***", "b": {"contractName": "***"}}]}


def test_an_exception_quoting_a_phone_is_masked_in_the_log(logged: io.StringIO) -> None:
    """A traceback's text goes through the masking like any other field."""
    try:
        raise ValueError("bad record 13912345678")
    except ValueError:
        logs.get_logger().exception("intake_failed")
    assert "13912345678" not in logged.getvalue()
    assert "intake_failed" in logged.getvalue()


# --- generated records -------------------------------------------------------------------------


def _phone() -> st.SearchStrategy[str]:
    mobile = st.builds(
        lambda second, rest: f"1{second}{rest}",
        st.sampled_from("3456789"),
        st.text("0123456789", min_size=9, max_size=9),
    )
    landline = st.text("0123456789", min_size=7, max_size=8)
    plain = st.one_of(mobile, landline)

    def spaced(digits: str, sep: str, prefix: str) -> str:
        parts = [digits[:3], digits[3:7], digits[7:]]
        return prefix + sep.join(p for p in parts if p)

    return st.builds(
        spaced, plain, st.sampled_from(["", " ", "-", "."]), st.sampled_from(["", "+86", "+86 "])
    )


_ID_NUMBER = st.builds(
    lambda digits, last: digits + last,
    st.text("0123456789", min_size=17, max_size=17),
    st.sampled_from("0123456789Xx"),
)
_EMAIL = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=12).filter(
        lambda u: u[0].isalnum()
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10),
    st.sampled_from(["com", "cn", "com.cn", "org"]),
)
PERSONAL = st.one_of(_phone(), _ID_NUMBER, _EMAIL)
# Keys a producer might use; identifiers (`id`, `msgId`, ...) name a record and stay shown.
KEYS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12)
KEYS = KEYS.filter(lambda k: masking._norm(k) not in masking._IDENTIFIERS)
FILLER = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Nd"], exclude_characters="@"),
    max_size=15,
)


@st.composite
def placed(draw: st.DrawFn) -> tuple[Any, str]:
    """A personal value placed at a random spot: under a random key, in a list, in free text."""
    secret = draw(PERSONAL)
    text = draw(FILLER) + secret + draw(FILLER)
    value: Any = draw(st.sampled_from([secret, text]))
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.sampled_from([[value], {draw(KEYS): value}, ["x", value, 7]]))
    return value, secret


@given(
    spots=st.lists(st.tuples(KEYS, placed()), min_size=1, max_size=4),
    in_meta=st.booleans(),
)
@SETTINGS
def test_personal_data_under_random_keys_never_reaches_the_log(
    logged: io.StringIO, spots: list[tuple[str, tuple[Any, str]]], in_meta: bool
) -> None:
    """A generated record through validation and the log sink: no personal value in clear."""
    # Under a key of the field table (`email`, say) a list is the record's fault: the record
    # is refused, not forwarded; only keys the table does not know are free for any value.
    extra = {key: value for key, (value, _) in spots if key not in ADD_EDIT_FIELDS}
    record = customer(id="c-gen", **({"meta": extra} if in_meta else extra))
    topic = CUSTOM_TOPIC if in_meta else STANDARD_TOPIC
    text = log_sink_lines(encode(envelope({"add": op_body([record])})), topic, logged)
    assert "customer_event" in text
    for _, (_, secret) in spots:
        assert secret not in text
        assert json.dumps(secret, ensure_ascii=False)[1:-1] not in text
    for named in ("13800138000", "张三"):  # the record's own phone and name
        assert named not in text


@given(value=placed())
@SETTINGS
def test_masking_any_structure_hides_the_value_placed_in_it(value: tuple[Any, str]) -> None:
    """Whatever the nesting, the masked copy never holds the personal value."""
    shown, secret = value
    assert secret not in json.dumps(masking.redact({"field": shown}), ensure_ascii=False)


def test_mirror_show_masks_a_phone_in_remark_and_space_ids() -> None:
    """`mirror show` masks named columns and, in the others, whatever looks personal."""
    from bridge.sinks.mirror_cli import masked  # noqa: PLC0415 - the mirror's own module

    row = {
        "tenant": "acme",
        "project_id": "1117745722292428800",
        "id": "c-9",
        "name": "王小明",
        "remark": "call 13912345678",
        "space_ids": ["s-1", "13911112222"],
        "age": 30,
    }
    shown = json.dumps(masked(row), ensure_ascii=False)
    for value in ("王小明", "13912345678", "13911112222"):
        assert value not in shown
    assert masked(row)["project_id"] == "1117745722292428800"
    assert masked(row)["id"] == "c-9"
    assert masked(row)["age"] == 30
