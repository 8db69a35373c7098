"""The platform sinks' pure parts: signatures against independent vectors, encoding, mapping."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.errors import ConfigError, SinkError
from bridge.sinks.http import safe_code, scrub
from bridge.sinks.mapping import (
    IdentitySettings,
    MappingSettings,
    RecordMapping,
    event_time,
    message_key,
    record_digest,
    text_of,
)
from bridge.sinks.mobile_events import DEFAULT_EVENTS as MOBILE_EVENTS
from bridge.sinks.quick_audience import DEFAULT_EVENTS as QA_EVENTS
from bridge.sinks.quick_audience import authorization
from bridge.sinks.quick_audience_openapi import (
    canonical_query,
    hmac_sha1_base64,
    percent_encode,
    signature,
    string_to_sign,
    timestamp,
)

# The worked example of Alibaba Cloud's RPC signature documentation (a GET of ECS).
ECS_EXAMPLE = {
    "Format": "XML",
    "AccessKeyId": "testid",
    "Action": "DescribeRegions",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "SignatureVersion": "1.0",
    "Version": "2014-05-26",
    "Timestamp": "2016-02-23T12:46:24Z",
}
# A POST of this API with a list parameter holding a space, `*`, `~` and Chinese; the string
# to sign was derived by hand and its signature computed with `openssl dgst -sha1 -hmac`.
USER_CALL = {
    "Action": "RecieveUserMessage",
    "AccessKeyId": "testid",
    "Format": "JSON",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "n-1",
    "SignatureVersion": "1.0",
    "Timestamp": "2024-01-02T03:04:05Z",
    "Version": "2020-05-15",
    "CustomerMessageModelListStr": '[{"customerId":"a b*~张"}]',
}
USER_CALL_TO_SIGN = (
    "POST&%2F&AccessKeyId%3Dtestid%26Action%3DRecieveUserMessage"
    "%26CustomerMessageModelListStr%3D%255B%257B%2522customerId%2522%253A%2522a%2520b%252A~"
    "%25E5%25BC%25A0%2522%257D%255D%26Format%3DJSON%26SignatureMethod%3DHMAC-SHA1"
    "%26SignatureNonce%3Dn-1%26SignatureVersion%3D1.0%26Timestamp%3D2024-01-02T03%253A04%253A05Z"
    "%26Version%3D2020-05-15"
)


def event(
    op: Op = Op.ADD,
    customer: dict[str, Any] | None = None,
    *,
    msg_id: str | None = "msg-1",
    event_ts: int | None = 1661154622000,
    report_ts: int | None = 1661154622,
    vendor: str | None = None,
) -> DownstreamEvent:
    """A downstream event of tenant acme, project 42."""
    return DownstreamEvent(
        op=op,
        kind=TopicKind.STANDARD if vendor is None else TopicKind.CUSTOMIZATION,
        tenant="acme",
        project_id="42",
        version=None if vendor is None else "v2",
        vendor=vendor,
        msg_id=msg_id,
        report_ts=report_ts,
        event_ts=event_ts,
        customer=customer or {"id": "c-1", "phone": "13800138000", "email": "a@example.com"},
    )


def mapping(**settings: Any) -> RecordMapping:
    """The Quick Audience mapping with `settings` applied."""
    identity = {k: settings.pop(k) for k in ("identities", "identity_ops") if k in settings}
    return RecordMapping.of(QA_EVENTS, MappingSettings(**settings), IdentitySettings(**identity))


def test_hmac_sha1_known_vector() -> None:
    """HMAC-SHA1 of `source` under key `secret` is the independently known Base64 value."""
    assert hmac_sha1_base64("secret", "source") == "Jv4yi8SobFhg5t1C7nWLbhBSFZQ="


def test_signature_matches_the_documented_example() -> None:
    """The signature of the documentation's worked GET example is the one it publishes."""
    assert signature(ECS_EXAMPLE, "testsecret", method="GET") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_post_string_to_sign_and_signature() -> None:
    """A POST with a list parameter signs the hand-derived string and gives openssl's value."""
    assert string_to_sign("POST", USER_CALL) == USER_CALL_TO_SIGN
    assert signature(USER_CALL, "testsecret") == "4zNVQVhH5ZpJ2mhMQdG88P+U2ls="


def test_signature_ignores_an_existing_signature_parameter() -> None:
    """The canonical query leaves out `Signature`, so signing a signed request is stable."""
    signed = {**USER_CALL, "Signature": "anything"}
    assert canonical_query(signed) == canonical_query(USER_CALL)
    assert signature(signed, "testsecret") == signature(USER_CALL, "testsecret")


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("a b", "a%20b"),
        ("a*b", "a%2Ab"),
        ("a~b-_.", "a~b-_."),
        ("a+b", "a%2Bb"),
        ("a/b", "a%2Fb"),
        ("=&%", "%3D%26%25"),
        ("张", "%E5%BC%A0"),
        ("AZaz09", "AZaz09"),
    ],
)
def test_percent_encoding_is_rfc3986(text: str, encoded: str) -> None:
    """Space is %20, `*` is %2A, `~ - _ .` stay, everything else is UTF-8 percent-encoded."""
    assert percent_encode(text) == encoded


def test_canonical_query_sorts_by_key() -> None:
    """Pairs are sorted by parameter name (upper case before lower) and joined by `&`."""
    assert canonical_query({"b": "2", "a": "1 1", "B": "x"}) == "B=x&a=1%201&b=2"


def test_timestamp_is_utc_iso8601_to_the_second() -> None:
    """The `Timestamp` parameter is UTC, second precision, with a `Z`."""
    assert timestamp(1704164645.9) == "2024-01-02T03:04:05Z"


def test_open_api_authorization_against_md5sum() -> None:
    """Authorization is the lower-case hex MD5 that `md5sum` gives for the sorted pairs."""
    # printf 'accessKey=ak-123&accessSecret=s3cr3t&appId=app-9&timestamp=1700000000123' | md5sum
    expected = "3d08e8d84b159c2fe2c4247f6e57a21d"
    assert authorization("ak-123", "s3cr3t", "app-9", "1700000000123") == expected


def test_identities_by_default_phone_and_email_on_add_and_edit() -> None:
    """Phone goes as MOBILE, email as EMAIL, on add and edit; delete reports none."""
    mapped = mapping()
    expected = [
        {"customerId": "13800138000", "idMapping": "MOBILE"},
        {"customerId": "a@example.com", "idMapping": "EMAIL"},
    ]
    assert mapped.identity_list(event(Op.ADD)) == expected
    assert mapped.identity_list(event(Op.EDIT)) == expected
    assert mapped.identity_list(event(Op.DELETE)) == []


def test_identity_codes_and_fields_are_configurable() -> None:
    """Lower-case codes (the old document's) and other fields can be chosen; empties skipped."""
    mapped = mapping(identities={"phone": "mobile", "jobNum": "oneid", "email": "email"})
    record = {"id": "c-1", "phone": " 13800138000 ", "jobNum": 42, "email": ""}
    assert mapped.identity_list(event(customer=record)) == [
        {"customerId": "13800138000", "idMapping": "mobile"},
        {"customerId": "42", "idMapping": "oneid"},
    ]


def test_attributes_are_strings_with_out_biz_id() -> None:
    """Attributes render as strings (numbers as written, lists as JSON) plus outBizId."""
    mapped = mapping(
        attributes={"tenant": "@tenant", "age": "age", "vip": "vip", "tags": "spaceIds"}
        | {"missing": "remark", "vendor": "@vendor"}
    )
    record = {"id": "c-1", "age": 30, "vip": True, "spaceIds": ["s1", "张"], "remark": None}
    assert mapped.attribute_values(event(customer=record), as_text=True) == {
        "tenant": "acme",
        "age": "30",
        "vip": "true",
        "tags": '["s1","张"]',
        "outBizId": "msg-1:add:c-1",
    }
    raw = mapped.attribute_values(event(customer=record), as_text=False)
    assert raw["age"] == 30
    assert raw["tags"] == ["s1", "张"]


def test_text_of_json_values() -> None:
    """Floats keep their JSON form and objects are sorted, compact JSON."""
    assert text_of(9.99) == "9.99"
    assert text_of({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_out_biz_id_is_stable_and_differs_per_record() -> None:
    """Same record, same id; another record or operation of the message, another id."""
    mapped = mapping()
    assert mapped.out_biz_id_of(event()) == mapped.out_biz_id_of(event())
    other = event(customer={"id": "c-2"})
    assert mapped.out_biz_id_of(other) == "msg-1:add:c-2"
    assert mapped.out_biz_id_of(event(Op.EDIT)) == "msg-1:edit:c-1"


def test_without_msg_id_a_message_digest_stands_in() -> None:
    """Without msgId, `{msgId}` is a digest shared by the message's records and stable."""
    first = event(msg_id=None)
    second = event(msg_id=None, customer={"id": "c-2"})
    assert message_key(first) == message_key(second)
    assert message_key(first).startswith("h")
    assert message_key(first) != message_key(event(msg_id=None, report_ts=1661154623))
    assert mapping().out_biz_id_of(first) == f"{message_key(first)}:add:c-1"


def test_digest_placeholder_follows_the_record() -> None:
    """`{digest}` changes with the record's content and stays for the same content."""
    mapped = mapping(out_biz_id="{tenant}-{digest}")
    assert mapped.out_biz_id_of(event()) == f"acme-{record_digest(event())}"
    assert mapped.out_biz_id_of(event()) != mapped.out_biz_id_of(event(customer={"id": "c-1"}))


def test_event_codes_default_and_override() -> None:
    """Each operation has its default code; `events` overrides only the ones it names."""
    mapped = mapping(events={"delete": "customer_removed"})
    assert [mapped.event_name(event(op)) for op in Op] == [
        "customer_add",
        "customer_edit",
        "customer_removed",
    ]
    mobile = RecordMapping.of(MOBILE_EVENTS, MappingSettings())
    assert [mobile.event_name(event(op)) for op in Op] == [
        "customer_added",
        "customer_updated",
        "customer_deleted",
    ]


def test_event_time_in_milliseconds() -> None:
    """eventTs is taken as is; seconds are scaled; reportTs stands in for a missing eventTs."""
    assert event_time(event()) == 1661154622000
    assert event_time(event(event_ts=148813512323)) == 148813512323  # the document's 12 digits
    assert event_time(event(event_ts=1661154622)) == 1661154622000
    assert event_time(event(event_ts=None)) == 1661154622000
    with pytest.raises(SinkError) as caught:
        event_time(event(event_ts=None, report_ts=None))
    assert caught.value.permanent


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"out_biz_id": "{msgId}:{op}"}, "out_biz_id"),
        ({"out_biz_id": "{msgId}-{name}"}, "out_biz_id"),
        ({"out_biz_id": "{id"}, "out_biz_id"),
        ({"attributes": {"outBizId": "id"}}, "attributes"),
        ({"attributes": {"x": "@nothing"}}, "attributes"),
        ({"events": {"add": " "}}, "events"),
        ({"events": {"upsert": "x"}}, "events.upsert"),
        ({"identities": {"phone": ""}}, "identities"),
    ],
)
def test_mapping_settings_are_checked(settings: dict[str, Any], path: str) -> None:
    """A template without the record, unknown sources or placeholders, empty codes: refused."""
    sink = {
        "type": "quick_audience",
        "endpoint": "https://qa.example.com",
        "access_id": "a",
        "organization_id": "o",
        "app_id": "app",
        "access_key": "k",
        "access_secret": "s",
    }
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [{**sink, **settings}]})
    assert caught.value.path.startswith(f"sinks[0].{path}")


def test_mobile_event_names_are_lower_snake_case() -> None:
    """The mobile sink refuses an event name that breaks the document's naming rule."""
    sink = {
        "type": "mobile_events",
        "base_url": "https://m.example.com",
        "api_key": "k",
        "app_id": "a",
        "platform": "server",
    }
    parse({"sinks": [{**sink, "events": {"add": "customer_created"}}]})
    for bad in ("CustomerCreated", "customer-created", "customerCreated"):
        with pytest.raises(ConfigError) as caught:
            parse({"sinks": [{**sink, "events": {"add": bad}}]})
        assert caught.value.path == "sinks[0].events"


def test_scrub_hides_secrets_digits_and_emails() -> None:
    """A platform's error text loses secrets, long digit runs and addresses, and is cut short."""
    text = "bad phone 13800138000 for a@example.com with key s3cr3t, code 42\n" + "x" * 500
    cleaned = scrub(text, ("s3cr3t",))
    assert cleaned is not None
    for hidden in ("13800138000", "a@example.com", "s3cr3t", "\n"):
        assert hidden not in cleaned
    assert "code 42" in cleaned
    assert len(cleaned) == 200
    assert scrub(None) is None


def test_safe_code_keeps_tokens_only() -> None:
    """An error code is kept when it is a short token, else replaced by `?`."""
    assert safe_code("InvalidTimeStamp.Expired") == "InvalidTimeStamp.Expired"
    assert safe_code("ES0110000002") == "ES0110000002"
    assert safe_code("no spaces allowed") == "?"
    assert safe_code(None) == "?"
    assert safe_code("x" * 65) == "?"
