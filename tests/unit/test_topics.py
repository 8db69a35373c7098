"""SPEC 1: parsing customer topics, deriving error topics, and subscription selections."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import (
    InboundTopic,
    Selection,
    TopicKind,
    TopicRole,
    error_topic,
    escape,
    parse,
    topic_of,
)

STANDARD_LEAF = "v1-business-model-customer"


def custom_leaf(vendor: str, version: str = "v1") -> str:
    return f"{version}-customization-{vendor}-customer"


# --- parse: inbound topics -------------------------------------------------------------------


def test_standard_topic_is_inbound_with_its_parts() -> None:
    """A standard topic parses to tenant, project id (without proj_), no version or vendor."""
    parsed = parse("acme/proj_42/v1-business-model-customer")
    assert parsed.role is TopicRole.INBOUND
    assert parsed.inbound == InboundTopic(
        "acme/proj_42/v1-business-model-customer", TopicKind.STANDARD, "acme", "42", None, None
    )
    assert not parsed.inbound.customization


@pytest.mark.parametrize(
    ("version", "vendor"),
    [
        ("v1", "hik"),
        ("v2", "海康威视"),
        ("v10", "hik-vision"),
        ("v007", "a-b-c-d"),
        ("v1", "-"),
        ("v1", "error-x"),
        ("v1", "x-errors"),
        ("v1", "x-error-y"),
        ("v1", "x-customer"),
        ("v1", "a-customization-b"),
        ("v1", "Ünïcødé vendor"),
        ("v3", "e\u0301"),  # a combining accent is a letter part, not a control character
    ],
)
def test_customization_topic_is_inbound_with_version_and_vendor(version: str, vendor: str) -> None:
    """A customization topic yields its version and vendor, vendors may hold '-' and non-ASCII."""
    topic = f"t-1/proj_p-9/{custom_leaf(vendor, version)}"
    parsed = parse(topic)
    assert parsed.role is TopicRole.INBOUND
    assert parsed.inbound == InboundTopic(
        topic, TopicKind.CUSTOMIZATION, "t-1", "p-9", version, vendor
    )
    assert parsed.inbound.customization


def test_project_id_keeps_everything_after_the_prefix() -> None:
    """The project id is the segment after `proj_`, including further underscores."""
    parsed = parse("租户/proj_a_b_c/v1-business-model-customer")
    assert parsed.inbound is not None
    assert (parsed.inbound.tenant, parsed.inbound.project_id) == ("租户", "a_b_c")


# --- parse: error topics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "acme/proj_42/v1-business-model-error-customer",
        "acme/proj_42/v1-customization-hik-error-customer",
        "acme/proj_42/v2-customization-海康威视-error-customer",
        "acme/proj_42/v2-customization-hik-vision-error-customer",
        "acme/proj_42/v1-customization--error-customer",
        "acme/proj_42/v1-customization-a-error-error-customer",
    ],
)
def test_error_topics_are_recognised_as_error(topic: str) -> None:
    """Standard and customization error topics have the error role and no inbound parts."""
    parsed = parse(topic)
    assert parsed.role is TopicRole.ERROR
    assert parsed.inbound is None


@pytest.mark.parametrize("vendor", ["hik-error", "海康威视-error", "-error", "a-b-error"])
def test_vendor_ending_in_dash_error_makes_an_error_topic(vendor: str) -> None:
    """A customization leaf whose vendor ends in -error is an error topic, never input."""
    assert parse(f"acme/proj_1/{custom_leaf(vendor)}").role is TopicRole.ERROR


@pytest.mark.parametrize(
    "topic",
    [
        "acme/proj_42/foo-error-customer",
        "acme/proj_42/v2-business-model-error-customer",
        "acme/proj_42/v1-customization-error-customer-error-customer",
    ],
)
def test_leaves_ending_in_error_customer_are_never_input(topic: str) -> None:
    """Whatever else it is, a topic ending in -error-customer is never taken as input."""
    parsed = parse(topic)
    assert parsed.role is not TopicRole.INBOUND
    assert parsed.inbound is None


def test_any_leaf_ending_in_error_customer_is_an_error_topic() -> None:
    """`v1-customization-error-customer` ends in -error-customer, so it is an error topic."""
    assert parse("acme/proj_1/v1-customization-error-customer").role is TopicRole.ERROR


# --- parse: unrecognised topics --------------------------------------------------------------

_UNRECOGNISED = [
    "",
    "acme",
    "acme/proj_42",
    "acme/proj_42/v1-business-model-customer/extra",
    "acme/proj_42/v1-business-model-customer/",
    "/acme/proj_42/v1-business-model-customer",
    "x/acme/proj_42/v1-business-model-customer",
    "/proj_42/v1-business-model-customer",
    "acme//v1-business-model-customer",
    "acme/proj_42/",
    "acme/42/v1-business-model-customer",
    "acme/project_42/v1-business-model-customer",
    "acme/PROJ_42/v1-business-model-customer",
    "acme/_proj_42/v1-business-model-customer",
    "acme/proj_/v1-business-model-customer",
    "acme/proj_42/v2-business-model-customer",
    "acme/proj_42/v1-business-model-customers",
    "acme/proj_42/v1-business-model",
    "acme/proj_42/V1-customization-hik-customer",
    "acme/proj_42/v-customization-hik-customer",
    "acme/proj_42/1-customization-hik-customer",
    "acme/proj_42/va-customization-hik-customer",
    "acme/proj_42/v1-customization--customer",
    "acme/proj_42/v1-customization-hik",
    "acme/proj_42/v1-customization-hik-customers",
    "acme/proj_42/v1-customisation-hik-customer",
    "acme/proj_42/v1customization-hik-customer",
    "$SYS/broker/load",
]


@pytest.mark.parametrize("topic", _UNRECOGNISED)
def test_malformed_topics_are_unrecognised(topic: str) -> None:
    """Wrong segment counts, missing proj_, empty project id or unknown leaves are unrecognised."""
    parsed = parse(topic)
    assert parsed.role is TopicRole.UNRECOGNISED
    assert parsed.inbound is None


_WILDCARDS = ["+", "#"]
_REFUSED_CHARS = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f", "\n", "\t", "\ufdd0", "\ufffe"]
_REFUSED_CHARS += ["\U0001fffe", "\U0010ffff"]
# Format, private-use and (in today's Unicode tables) unassigned code points are all input.
_ACCEPTED_CHARS = ["\u00ad", "\u200b", "\u200d", "\ue000", "\U000f0000", "\U0001fae9", "\U0003fffd"]
_TEMPLATES = [
    "ac{x}me/proj_42/v1-business-model-customer",
    "acme/proj_4{x}2/v1-business-model-customer",
    "acme/proj_42/v1-customization-hi{x}k-customer",
]


@pytest.mark.parametrize("bad", _WILDCARDS, ids=repr)
@pytest.mark.parametrize(
    "template", [*_TEMPLATES, "acme/proj_42/v1-customization-hik{x}-error-customer"]
)
def test_wildcards_make_a_topic_unrecognised(bad: str, template: str) -> None:
    """'+' and '#' are outside the topic grammar: unrecognised, never input."""
    parsed = parse(template.format(x=bad))
    assert parsed.role is TopicRole.UNRECOGNISED
    assert parsed.inbound is None


@pytest.mark.parametrize("bad", _REFUSED_CHARS, ids=repr)
@pytest.mark.parametrize("template", _TEMPLATES)
def test_control_characters_and_noncharacters_make_an_inbound_topic_refused(
    bad: str, template: str
) -> None:
    """C0/C1 controls and noncharacters: REFUSED, with the parts kept for the selection."""
    parsed = parse(template.format(x=bad))
    assert parsed.role is TopicRole.REFUSED
    assert parsed.inbound is not None
    with pytest.raises(ValueError):
        error_topic(template.format(x=bad))


@pytest.mark.parametrize("bad", _REFUSED_CHARS, ids=repr)
def test_an_error_topic_with_a_control_character_stays_an_error_topic(bad: str) -> None:
    """An error topic is never input, whatever it holds."""
    assert parse(f"acme/proj_42/v1-customization-hik{bad}-error-customer").role is TopicRole.ERROR


@pytest.mark.parametrize("char", _ACCEPTED_CHARS, ids=repr)
@pytest.mark.parametrize("template", _TEMPLATES)
def test_format_private_use_and_unassigned_characters_are_input(char: str, template: str) -> None:
    """Soft hyphen, joiners, private-use and unassigned code points are inbound (SPEC 1)."""
    topic = template.format(x=char)
    parsed = parse(topic)
    assert parsed.role is TopicRole.INBOUND
    assert parsed.inbound is not None
    assert char in error_topic(topic)


def test_an_emoji_zwj_sequence_vendor_is_input() -> None:
    """A vendor named `acme` plus a family emoji (ZWJ sequence) is an inbound topic."""
    vendor = "acme\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    parsed = parse(f"t/proj_1/{custom_leaf(vendor)}")
    assert parsed.inbound is not None
    assert parsed.role is TopicRole.INBOUND
    assert parsed.inbound.vendor == vendor


def test_escape_writes_refused_characters_as_escapes() -> None:
    """A refused topic logs as ASCII escapes of its refused characters, the rest as is."""
    assert escape("t\x00/proj_1/v1-customization-\u00e9\x85\ufffe-customer") == (
        "t\\x00/proj_1/v1-customization-\u00e9\\x85\\ufffe-customer"
    )


# --- error topic derivation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inbound", "expected"),
    [
        (
            "acme/proj_42/v1-business-model-customer",
            "acme/proj_42/v1-business-model-error-customer",
        ),
        (
            "acme/proj_42/v2-customization-海康威视-customer",
            "acme/proj_42/v2-customization-海康威视-error-customer",
        ),
        (
            "租户/proj_x_1/v10-customization-hik-vision-customer",
            "租户/proj_x_1/v10-customization-hik-vision-error-customer",
        ),
        (
            "acme/proj_1/v1-customization-x-customer-customer",
            "acme/proj_1/v1-customization-x-customer-error-customer",
        ),
    ],
)
def test_error_topic_inserts_error_before_the_final_customer(inbound: str, expected: str) -> None:
    """The error topic inserts `error-` before the final `customer`; it parses as an error topic."""
    assert error_topic(inbound) == expected
    parsed = parse(inbound)
    assert parsed.inbound is not None
    assert parsed.inbound.error_topic == expected
    assert parse(expected).role is TopicRole.ERROR


_SEGMENT_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs"), blacklist_characters="/+#"
).filter(lambda c: not (0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE))
_SEGMENT = st.text(_SEGMENT_CHARS, min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    tenant=_SEGMENT,
    project=_SEGMENT,
    version=st.from_regex(r"v[0-9]{1,4}", fullmatch=True),
    vendor=_SEGMENT,
)
def test_error_topic_copies_segments_byte_for_byte(
    tenant: str, project: str, version: str, vendor: str
) -> None:
    """Tenant, project, version and vendor are copied into the error topic byte for byte."""
    # A leaf ending in -error-customer is an error topic itself (SPEC 1).
    assume(vendor != "error" and not vendor.endswith("-error"))
    topic = f"{tenant}/proj_{project}/{custom_leaf(vendor, version)}"
    parsed = parse(topic)
    assert parsed.inbound is not None
    assert (parsed.inbound.tenant, parsed.inbound.project_id) == (tenant, project)
    assert (parsed.inbound.version, parsed.inbound.vendor) == (version, vendor)
    derived = error_topic(topic)
    want = f"{tenant}/proj_{project}/{version}-customization-{vendor}-error-customer"
    assert derived.encode("utf-8") == want.encode("utf-8")
    assert parse(derived).role is TopicRole.ERROR


@settings(max_examples=150, deadline=None)
@given(
    tenant=_SEGMENT,
    project=_SEGMENT,
    version=st.from_regex(r"v[0-9]{1,4}", fullmatch=True),
    vendor=st.none() | _SEGMENT,
)
def test_a_topic_its_parts_and_its_events_name_one_error_topic(
    tenant: str, project: str, version: str, vendor: str | None
) -> None:
    """The parts spell the topic back; the topic and its events agree on the error topic."""
    assume(vendor is None or (vendor != "error" and not vendor.endswith("-error")))
    topic = topic_of(tenant, project, None if vendor is None else version, vendor)
    parsed = parse(topic)
    assert parsed.role is TopicRole.INBOUND and parsed.inbound is not None
    inbound = parsed.inbound
    assert topic_of(inbound.tenant, inbound.project_id, inbound.version, inbound.vendor) == topic
    event = DownstreamEvent.from_topic(inbound, Op.ADD, "m", None, None, {"id": "c"})
    assert event.error_topic == inbound.error_topic == error_topic(topic)
    assert DownstreamEvent.from_dict(event.to_dict()).error_topic == inbound.error_topic
    assert parse(inbound.error_topic).role is TopicRole.ERROR


def test_error_topic_does_not_normalise_unicode() -> None:
    """A decomposed vendor name stays decomposed in its error topic (no NFC/NFKC)."""
    vendor = "cafe\u0301"
    derived = error_topic(f"t/proj_1/{custom_leaf(vendor)}")
    assert derived == f"t/proj_1/v1-customization-{vendor}-error-customer"
    assert "\u0301" in derived


@pytest.mark.parametrize(
    "topic",
    [
        "acme/proj_42/v1-business-model-error-customer",
        "acme/proj_42/v1-customization-hik-error-customer",
        "acme/proj_42/nothing",
        "",
    ],
)
def test_error_topic_of_a_non_inbound_topic_is_a_value_error(topic: str) -> None:
    """There is no error topic of an error topic or an unrecognised topic."""
    with pytest.raises(ValueError, match="not an inbound customer topic"):
        error_topic(topic)


# --- Selection validation --------------------------------------------------------------------


def test_default_selection_takes_everything_with_one_filter() -> None:
    """The default selection subscribes `+/+/+` and accepts any inbound topic."""
    selection = Selection()
    assert selection.filters() == ["+/+/+"]
    for topic in ("a/proj_1/v1-business-model-customer", "b/proj_2/v9-customization-x-customer"):
        parsed = parse(topic).inbound
        assert parsed is not None
        assert selection.accepts(parsed)


@pytest.mark.parametrize(
    "version", ["1", "V1", "v", "v1a", "version1", "v-1", "", " v1", "v\uff11"]
)
def test_selection_rejects_a_version_that_is_not_v_digits(version: str) -> None:
    """A configured version must be `v` followed by ASCII digits."""
    with pytest.raises(ValueError, match="versions"):
        Selection(versions=(version,))


@pytest.mark.parametrize("vendor", ["hik-error", "-error", "海康威视-error"])
def test_selection_rejects_a_vendor_ending_in_dash_error(vendor: str) -> None:
    """Config is rejected when a vendor ends in -error (its topics would be error topics)."""
    with pytest.raises(ValueError, match="vendors"):
        Selection(vendors=(vendor,))


@pytest.mark.parametrize("vendor", ["hik", "海康威视", "hik-vision", "error-free", "x-errors"])
def test_selection_accepts_vendors_with_dashes_and_non_ascii(vendor: str) -> None:
    """Vendors with `-`, non-ASCII letters or `error` elsewhere are valid config."""
    assert Selection(vendors=(vendor,)).vendors == (vendor,)


@pytest.mark.parametrize(
    "vendor", ["ac\u00adme", "acme\U0001f468\u200d\U0001f469", "\ue000", "x\U0003fffd"]
)
def test_selection_accepts_vendors_with_format_private_use_and_unassigned_characters(
    vendor: str,
) -> None:
    """What SPEC 1's grammar allows on the wire is valid config too."""
    assert Selection(vendors=(vendor,)).vendors == (vendor,)


@pytest.mark.parametrize("name", ["tenants", "projects", "versions", "vendors"])
def test_selection_rejects_an_empty_list(name: str) -> None:
    """Every list needs at least one value (or `+`)."""
    with pytest.raises(ValueError, match=name):
        Selection(**{name: ()})


@pytest.mark.parametrize("name", ["tenants", "projects", "vendors"])
@pytest.mark.parametrize(
    "value", ["", "a/b", "a+", "#", "x\x00", "x\x01", "x\x9f", "x\ufdd0", "x\U0010fffe"], ids=repr
)
def test_selection_rejects_unusable_segments(name: str, value: str) -> None:
    """A literal that is empty or holds `/`, wildcards, NUL or controls is rejected."""
    with pytest.raises(ValueError, match=name):
        Selection(**{name: (value,)})


def test_selection_needs_standard_or_customization() -> None:
    """Turning off both topic kinds is a config error."""
    with pytest.raises(ValueError, match="standard and customization"):
        Selection(standard=False, customization=False)


@pytest.mark.parametrize("group", ["", "a/b", "a+b", "#", "a b", "组", "$share"])
def test_selection_rejects_a_bad_share_group(group: str) -> None:
    """A share group must be a plain name usable in `$share/{group}/`."""
    with pytest.raises(ValueError, match="share_group"):
        Selection(share_group=group)


# --- Selection.filters -----------------------------------------------------------------------


def test_filters_of_literal_standard_selection() -> None:
    """Literal tenants and projects give one standard filter per pair, with `proj_` added."""
    selection = Selection(tenants=("a", "b"), projects=("1", "2"), customization=False)
    assert selection.filters() == [
        "a/proj_1/v1-business-model-customer",
        "a/proj_2/v1-business-model-customer",
        "b/proj_1/v1-business-model-customer",
        "b/proj_2/v1-business-model-customer",
    ]


def test_filters_of_literal_versions_and_vendors() -> None:
    """Literal versions and vendors give one literal leaf per pair, beside the standard leaf."""
    selection = Selection(
        tenants=("a",), projects=("1",), versions=("v1", "v2"), vendors=("hik", "海康威视")
    )
    assert selection.filters() == [
        "a/proj_1/v1-business-model-customer",
        "a/proj_1/v1-customization-hik-customer",
        "a/proj_1/v1-customization-海康威视-customer",
        "a/proj_1/v2-customization-hik-customer",
        "a/proj_1/v2-customization-海康威视-customer",
    ]


def test_filters_of_customization_only_omit_the_standard_leaf() -> None:
    """With standard off, no standard filter is subscribed."""
    selection = Selection(
        tenants=("a",), projects=("1",), standard=False, versions=("v1",), vendors=("hik",)
    )
    assert selection.filters() == ["a/proj_1/v1-customization-hik-customer"]


@pytest.mark.parametrize(
    ("versions", "vendors"),
    [(("v1",), ("+",)), (("+",), ("hik",)), (("+",), ("+",)), (("v1",), ("hik", "+"))],
)
@pytest.mark.parametrize("standard", [True, False])
def test_any_vendor_or_version_collapses_to_a_plus_leaf(
    versions: tuple[str, ...], vendors: tuple[str, ...], standard: bool
) -> None:
    """Any vendor/version subscribes `{t}/{p}/+` alone: no literal leaf overlapping it."""
    selection = Selection(
        tenants=("a",), projects=("1",), standard=standard, versions=versions, vendors=vendors
    )
    assert selection.filters() == ["a/proj_1/+"]


def test_plus_tenant_or_project_collapses_literals() -> None:
    """`+` beside literals in tenants or projects collapses the list to `+`."""
    selection = Selection(tenants=("a", "+", "b"), projects=("1", "+"), customization=False)
    assert selection.filters() == ["+/+/v1-business-model-customer"]


def test_share_group_prefixes_every_filter() -> None:
    """A share group subscribes `$share/{group}/{filter}` for every filter."""
    selection = Selection(tenants=("a", "b"), projects=("1",), share_group="bridge_1.x-y")
    assert selection.filters() == [
        "$share/bridge_1.x-y/a/proj_1/+",
        "$share/bridge_1.x-y/b/proj_1/+",
    ]


def test_filters_are_deduplicated() -> None:
    """Repeated tenants, projects, versions and vendors give each filter once."""
    selection = Selection(
        tenants=("a", "a"), projects=("1", "1"), versions=("v1", "v1"), vendors=("x", "x")
    )
    assert selection.filters() == [
        "a/proj_1/v1-business-model-customer",
        "a/proj_1/v1-customization-x-customer",
    ]


def _filter_matches(mqtt_filter: str, topic: str) -> bool:
    f_parts, t_parts = mqtt_filter.split("/"), topic.split("/")
    return len(f_parts) == len(t_parts) and all(
        f == "+" or f == t for f, t in zip(f_parts, t_parts, strict=True)
    )


_TENANTS = ["a", "b", "+"]
_PROJECTS = ["1", "2", "+"]
_VERSIONS = ["v1", "v2", "+"]
_VENDORS = ["hik", "海康威视", "x-y", "+"]


@settings(max_examples=120, deadline=None)
@given(
    tenants=st.lists(st.sampled_from(_TENANTS), min_size=1, max_size=3),
    projects=st.lists(st.sampled_from(_PROJECTS), min_size=1, max_size=3),
    versions=st.lists(st.sampled_from(_VERSIONS), min_size=1, max_size=3),
    vendors=st.lists(st.sampled_from(_VENDORS), min_size=1, max_size=3),
    kinds=st.sampled_from([(True, True), (True, False), (False, True)]),
)
def test_every_accepted_topic_matches_exactly_one_filter(
    tenants: list[str],
    projects: list[str],
    versions: list[str],
    vendors: list[str],
    kinds: tuple[bool, bool],
) -> None:
    """Filters never overlap and every topic `accepts` takes is matched by exactly one of them."""
    standard, customization = kinds
    selection = Selection(
        tenants=tuple(tenants),
        projects=tuple(projects),
        standard=standard,
        customization=customization,
        versions=tuple(versions),
        vendors=tuple(vendors),
    )
    filters = selection.filters()
    assert len(filters) == len(set(filters))
    leaves = [STANDARD_LEAF] + [
        custom_leaf(vendor, version)
        for version in ("v1", "v2", "v3")
        for vendor in ("hik", "海康威视", "x-y", "other")
    ]
    for tenant, project, leaf in itertools.product(("a", "b", "c"), ("1", "2", "3"), leaves):
        topic = f"{tenant}/proj_{project}/{leaf}"
        inbound = parse(topic).inbound
        assert inbound is not None
        matching = [f for f in filters if _filter_matches(f, topic)]
        if selection.accepts(inbound):
            assert len(matching) == 1, (topic, filters)
        else:
            assert len(matching) <= 1, (topic, filters)


# --- Selection.accepts -----------------------------------------------------------------------


def _inbound(topic: str) -> InboundTopic:
    parsed = parse(topic).inbound
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("selection", "topic", "accepted"),
    [
        (Selection(tenants=("a",)), "a/proj_1/v1-business-model-customer", True),
        (Selection(tenants=("a",)), "b/proj_1/v1-business-model-customer", False),
        (Selection(projects=("1",)), "a/proj_1/v1-business-model-customer", True),
        (Selection(projects=("1",)), "a/proj_2/v1-business-model-customer", False),
        (Selection(projects=("1",)), "a/proj_11/v1-business-model-customer", False),
        (Selection(standard=False), "a/proj_1/v1-business-model-customer", False),
        (Selection(standard=False), "a/proj_1/v1-customization-x-customer", True),
        (Selection(customization=False), "a/proj_1/v1-customization-x-customer", False),
        (Selection(customization=False), "a/proj_1/v1-business-model-customer", True),
        (Selection(versions=("v1",)), "a/proj_1/v1-customization-x-customer", True),
        (Selection(versions=("v1",)), "a/proj_1/v2-customization-x-customer", False),
        (Selection(versions=("v1",)), "a/proj_1/v1-business-model-customer", True),
        (Selection(vendors=("海康威视",)), "a/proj_1/v1-customization-海康威视-customer", True),
        (Selection(vendors=("海康威视",)), "a/proj_1/v1-customization-hik-customer", False),
        (Selection(vendors=("hik",)), "a/proj_1/v1-customization-hik-vision-customer", False),
        (Selection(vendors=("hik", "+")), "a/proj_1/v1-customization-any-customer", True),
        (Selection(tenants=("a", "+")), "z/proj_1/v1-business-model-customer", True),
    ],
)
def test_accepts_filters_locally(selection: Selection, topic: str, accepted: bool) -> None:
    """`accepts` applies tenants, projects, kinds, versions and vendors; `+` means any."""
    assert selection.accepts(_inbound(topic)) is accepted
