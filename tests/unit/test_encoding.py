"""The one JSON encoder: byte for byte what the standard library writes, whichever path runs."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.encoding import encode_event, encode_json
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind


def standard(value: object) -> str:
    """What the bridge wrote before msgspec, and what receivers have seen."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(JSON)
def test_any_json_value_encodes_as_the_standard_library_does(value: object) -> None:
    """Strings of any code point (lone surrogates too), big integers, floats of any size."""
    assert encode_json(value) == standard(value)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_an_event_encodes_as_its_dict_does(customer: dict[str, object]) -> None:
    """Whatever its record holds, an event's JSON is the standard encoding of its dict."""
    event = DownstreamEvent(
        Op.EDIT, TopicKind.CUSTOMIZATION, "acme", "42", "v2", "海康威视", "m1", 1, 2, customer
    )
    assert encode_event(event) == standard(event.to_dict())


def test_a_lone_surrogate_is_written_as_before() -> None:
    """An escaped lone surrogate in a payload survives decoding; it is encoded as before."""
    value = json.loads('{"remark": "a\\ud800b"}')
    assert encode_json(value) == standard(value)


def test_floats_keep_the_standard_exponent_form() -> None:
    """1e16 is written `1e+16` and 1e-05 `1e-05`, as before; integers of 40 digits exactly."""
    value = {"a": 1e16, "b": 1e-5, "c": 10**40, "d": -0.0, "e": math.pi}
    assert (
        encode_json(value)
        == '{"a":1e+16,"b":1e-05,"c":' + str(10**40) + ',"d":-0.0,"e":3.141592653589793}'
    )
