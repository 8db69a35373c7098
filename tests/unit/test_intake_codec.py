"""The intake's sans-I/O MQTT codec: frames from paho decode to the same fields; garbage only
ever raises ProtocolError."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.intake import codec

FUZZ_EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "3000"))


def paho_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    mid: int,
    *,
    v5: bool,
    retain: bool = False,
    dup: bool = False,
    properties: Properties | None = None,
) -> bytes:
    """The bytes paho itself sends for a PUBLISH (its encoder, captured before the socket)."""
    client = Client(
        CallbackAPIVersion.VERSION2,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    captured: list[bytes] = []

    def capture(_command: int, packet: bytes | bytearray, *_args: Any, **_kw: Any) -> int:
        captured.append(bytes(packet))
        return 0

    client._sock = object()  # type: ignore[assignment]  # paho only checks that it is set
    client._packet_queue = capture  # type: ignore[method-assign]
    try:
        client._send_publish(mid, topic, payload, qos, retain, dup, None, properties)
    finally:
        client._sock = None
    return captured[0]


def test_publish_qos1_v311_decodes() -> None:
    """A QoS 1 PUBLISH of MQTT 3.1.1 gives its topic, payload and packet id."""
    frame = paho_publish(b"t/proj_1/v1-business-model-customer", b'{"a":1}', 1, 7, v5=False)
    (packet,) = codec.Decoder(codec.MQTT_311).feed(frame)
    assert packet == codec.Publish(
        "t/proj_1/v1-business-model-customer", b'{"a":1}', 1, 7, False, False, None
    )


def test_split_frames_wait_for_the_rest() -> None:
    """A frame cut at any byte is decoded once the rest arrives, and nothing before."""
    frames = [paho_publish(b"a/b", bytes(300), 1, i, v5=True) for i in range(1, 4)]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        decoder = codec.Decoder(codec.MQTT_5)
        first = decoder.feed(stream[:cut])
        second = decoder.feed(stream[cut:])
        assert [p.packet_id for p in first + second] == [1, 2, 3]  # type: ignore[union-attr]
        assert decoder.buffered == 0


def test_non_utf8_topic_is_none() -> None:
    """A topic that is not UTF-8 is handed over as None, not an error (the runtime counts it)."""
    (packet,) = codec.Decoder(codec.MQTT_311).feed(paho_publish(b"\xff\xfe", b"x", 1, 1, v5=False))
    assert isinstance(packet, codec.Publish)
    assert packet.topic is None


def test_oversized_packet_refused_before_it_is_buffered() -> None:
    """A length beyond the maximum packet size fails with reason 0x95 from its header alone."""
    decoder = codec.Decoder(codec.MQTT_5, max_packet_size=1024)
    header = b"\x32" + codec.encode_varint(10_000)
    with pytest.raises(codec.ProtocolError) as caught:
        decoder.feed(header)
    assert caught.value.reason == 0x95


def test_qos2_publish_is_a_protocol_error() -> None:
    """QoS 2 is never granted to a QoS 1 subscription: the peer broke the protocol."""
    frame = paho_publish(b"a", b"x", 2, 5, v5=True)
    with pytest.raises(codec.ProtocolError):
        codec.Decoder(codec.MQTT_5).feed(frame)


def test_connack_v5_with_properties() -> None:
    """CONNACK of MQTT 5: session present, reason and properties (receive maximum)."""
    props = codec.encode_properties({codec.RECEIVE_MAXIMUM: 100, codec.REASON_STRING: "ok"})
    frame = bytes((0x20,)) + codec.encode_varint(2 + len(props)) + b"\x01\x00" + props
    (packet,) = codec.Decoder(codec.MQTT_5).feed(frame)
    assert packet == codec.Connack(True, 0, {codec.RECEIVE_MAXIMUM: 100, codec.REASON_STRING: "ok"})


def test_connack_v311_refusal() -> None:
    """CONNACK of MQTT 3.1.1 with return code 5 (not authorised)."""
    (packet,) = codec.Decoder(codec.MQTT_311).feed(b"\x20\x02\x00\x05")
    assert packet == codec.Connack(False, 5, {})


def test_suback_and_disconnect() -> None:
    """SUBACK reason codes per filter; a server DISCONNECT with its reason string."""
    suback = b"\x90\x05\x00\x01\x00\x01\x80"
    props = codec.encode_properties({codec.REASON_STRING: "shutting down"})
    disconnect = bytes((0xE0,)) + codec.encode_varint(1 + len(props)) + b"\x8b" + props
    packets = codec.Decoder(codec.MQTT_5).feed(suback + disconnect + b"\xd0\x00")
    assert packets == [
        codec.Suback(1, (1, 0x80), {}),
        codec.Disconnect(0x8B, {codec.REASON_STRING: "shutting down"}),
        codec.Pingresp(),
    ]


def test_connect_encodes_what_mqtt5_needs() -> None:
    """CONNECT: protocol level, clean start off, keepalive, properties, credentials."""
    frame = codec.encode_connect(
        "cid",
        version=codec.MQTT_5,
        keepalive=30,
        username="u",
        password=b"p",
        properties={codec.SESSION_EXPIRY: 3600, codec.RECEIVE_MAXIMUM: 1000},
    )
    assert frame[0] == 0x10
    body = frame[2:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # username + password, clean start off
    assert struct.unpack(">H", body[8:10]) == (30,)
    props, at = codec.decode_properties(body, 10, len(body))
    assert props == {codec.SESSION_EXPIRY: 3600, codec.RECEIVE_MAXIMUM: 1000}
    assert body[at:] == b"\x00\x03cid\x00\x01u\x00\x01p"


def test_pubacks_of_a_batch_in_order() -> None:
    """The PUBACKs of one batch are one buffer, in the order given."""
    assert codec.encode_pubacks([1, 513, 2]) == b"\x40\x02\x00\x01\x40\x02\x02\x01\x40\x02\x00\x02"


def test_topic_alias_sets_and_uses() -> None:
    """A topic alias set with a topic is used by a later PUBLISH with an empty topic."""
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 3
    first = paho_publish(b"a/b", b"1", 1, 1, v5=True, properties=props)
    second = paho_publish(b"", b"2", 1, 2, v5=True, properties=props)
    decoder = codec.Decoder(codec.MQTT_5)
    decoder.topic_alias_maximum = 10
    packets = decoder.feed(first + second)
    assert [p.topic for p in packets] == ["a/b", "a/b"]  # type: ignore[union-attr]


def test_topic_alias_not_offered_is_refused() -> None:
    """A topic alias when we offered none (the default) is reason 0x94."""
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    with pytest.raises(codec.ProtocolError) as caught:
        codec.Decoder(codec.MQTT_5).feed(paho_publish(b"a", b"1", 1, 1, v5=True, properties=props))
    assert caught.value.reason == 0x94


_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@st.composite
def publish_properties(draw: st.DrawFn) -> Properties | None:
    if not draw(st.booleans()):
        return None
    props = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.ContentType = draw(_text)
    if draw(st.booleans()):
        props.ResponseTopic = draw(_text.filter(bool))
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        props.SubscriptionIdentifier = draw(st.integers(1, 268_435_455))
    for key, value in draw(st.lists(st.tuples(_text, _text), max_size=3)):
        props.UserProperty = (key, value)
    return props


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=80,
    ),
    payload=st.binary(max_size=3000),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
    v5=st.booleans(),
    properties=publish_properties(),
)
def test_paho_frames_decode_to_the_same_fields(
    topic: str,
    payload: bytes,
    qos: int,
    mid: int,
    retain: bool,
    dup: bool,
    v5: bool,
    properties: Properties | None,
) -> None:
    """Any PUBLISH paho encodes (topic, payload, QoS, id, flags, properties) decodes the same."""
    frame = paho_publish(
        topic.encode(), payload, qos, mid, v5=v5, retain=retain, dup=dup,
        properties=properties if v5 else None,
    )  # fmt: skip
    (packet,) = codec.Decoder(codec.MQTT_5 if v5 else codec.MQTT_311).feed(frame)
    assert isinstance(packet, codec.Publish)
    assert (packet.topic, packet.payload, packet.qos, packet.retain, packet.dup) == (
        topic, payload, qos, retain, dup,
    )  # fmt: skip
    assert packet.packet_id == (mid if qos else 0)
    if v5 and properties is not None:
        got = packet.properties or {}
        want = properties.json()
        if "ContentType" in want:
            assert got[0x03] == want["ContentType"]
        if "CorrelationData" in want:
            assert got[0x09] == properties.CorrelationData
        if "SubscriptionIdentifier" in want:
            assert got[0x0B] == properties.SubscriptionIdentifier
        if "UserProperty" in want:
            assert got[0x26] == [tuple(p) for p in properties.UserProperty]
        if "MessageExpiryInterval" in want:
            assert got[0x02] == properties.MessageExpiryInterval


def _valid_stream(data: st.DataObject) -> bytes:
    frames = []
    for _ in range(data.draw(st.integers(1, 4))):
        frames.append(
            paho_publish(
                data.draw(st.binary(min_size=1, max_size=20)),
                data.draw(st.binary(max_size=200)),
                data.draw(st.integers(0, 1)),
                data.draw(st.integers(1, 65535)),
                v5=True,
            )
        )
    return b"".join(frames)


def _decode_all(stream: bytes, version: int, chunks: list[int]) -> None:
    decoder = codec.Decoder(version, max_packet_size=64 * 1024)
    decoder.topic_alias_maximum = 4
    pos = 0
    for size in [*chunks, len(stream)]:
        try:
            decoder.feed(stream[pos : pos + size])
        except codec.ProtocolError:
            return
        pos += size
        if pos >= len(stream):
            return


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    version=st.sampled_from([codec.MQTT_311, codec.MQTT_5]),
    chunks=st.lists(st.integers(1, 64), max_size=8),
)
def test_fuzz_random_and_mutated_frames_raise_only_protocol_errors(
    data: st.DataObject, version: int, chunks: list[int]
) -> None:
    """Random bytes, and valid frames with bytes flipped, cut or inserted, raise nothing but
    ProtocolError and always return (the decoder has no loop that input can stall)."""
    if data.draw(st.booleans()):
        stream = data.draw(st.binary(max_size=600))
    else:
        stream = bytearray(_valid_stream(data))
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, max(0, len(stream) - 1)))
            action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            if action == "flip" and stream:
                stream[at] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                del stream[at : at + data.draw(st.integers(1, 8))]
            else:
                stream[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        stream = bytes(stream)
    _decode_all(stream, version, chunks)
