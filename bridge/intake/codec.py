"""A sans-I/O codec for the intake's receive-only MQTT connection (MQTT 5 and 3.1.1).

Bytes in, packets out (`Decoder.feed`); packets to bytes (`encode_*`). No socket, no
clock: the loop in `bridge.intake.client` owns those. The decoder raises nothing but
`ProtocolError`, whatever it is fed, so a broken or hostile peer ends the connection
instead of the process.

Only what a subscriber receives is decoded: CONNACK, PUBLISH (QoS 0 and 1), SUBACK,
UNSUBACK, PINGRESP, DISCONNECT and AUTH. QoS 2 is never granted to our QoS 1
subscriptions, so a QoS 2 PUBLISH is a protocol error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import msgspec

from bridge.errors import BrokerError

MQTT_311: Final = 4
MQTT_5: Final = 5

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14
AUTH: Final = 15

# MQTT 5 property identifiers and how their values are encoded (section 2.2.2.2).
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES: Final[dict[int, int]] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _U32,  # message expiry interval
    0x03: _STR,  # content type
    0x08: _STR,  # response topic
    0x09: _BIN,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _U32,  # session expiry interval
    0x12: _STR,  # assigned client identifier
    0x13: _U16,  # server keep alive
    0x15: _STR,  # authentication method
    0x16: _BIN,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _U32,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _STR,  # response information
    0x1C: _STR,  # server reference
    0x1F: _STR,  # reason string
    0x21: _U16,  # receive maximum
    0x22: _U16,  # topic alias maximum
    0x23: _U16,  # topic alias
    0x24: _BYTE,  # maximum qos
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _U32,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifier available
    0x2A: _BYTE,  # shared subscription available
}
SESSION_EXPIRY: Final = 0x11
ASSIGNED_CLIENT_ID: Final = 0x12
SERVER_KEEP_ALIVE: Final = 0x13
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
TOPIC_ALIAS: Final = 0x23
MAXIMUM_PACKET_SIZE: Final = 0x27
SUBSCRIPTION_ID: Final = 0x0B
USER_PROPERTY: Final = 0x26

MAX_REMAINING_LENGTH: Final = 268_435_455
_PACKET_ID = struct.Struct(">H")

PropertyValue = int | str | bytes | tuple[str, str]
Properties = dict[int, PropertyValue | list[PropertyValue]]


class ProtocolError(BrokerError):
    """The peer broke the MQTT protocol. `reason` is the MQTT 5 reason code to disconnect with."""

    def __init__(self, message: str, reason: int = 0x82) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int
    properties: Properties = field(default_factory=dict)


class Publish(msgspec.Struct, frozen=True):
    """A received PUBLISH. `topic` is None when its bytes are not UTF-8.

    A frozen Struct, not a frozen dataclass: one is made per message, in 0.1 µs against 1.2."""

    topic: str | None
    payload: bytes
    qos: int
    packet_id: int
    dup: bool
    retain: bool
    properties: Properties | None = None


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Auth:
    reason: int
    properties: Properties = field(default_factory=dict)


Packet = Connack | Publish | Suback | Unsuback | Pingresp | Disconnect | Auth


# --- encoding -------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """The variable byte integer of MQTT (1 to 4 bytes)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return _binary(data)


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("string or binary field longer than 65535 bytes")
    return _PACKET_ID.pack(len(data)) + data


def encode_properties(properties: Properties) -> bytes:
    """MQTT 5 properties with their length prefix."""
    body = bytearray()
    for ident, value in properties.items():
        kind = PROPERTY_TYPES[ident]
        for item in value if isinstance(value, list) else [value]:
            body += encode_varint(ident)
            if kind == _BYTE:
                assert isinstance(item, int)
                body.append(item)
            elif kind == _U16:
                assert isinstance(item, int)
                body += struct.pack(">H", item)
            elif kind == _U32:
                assert isinstance(item, int)
                body += struct.pack(">I", item)
            elif kind == _VARINT:
                assert isinstance(item, int)
                body += encode_varint(item)
            elif kind == _STR:
                assert isinstance(item, str)
                body += _string(item)
            elif kind == _BIN:
                assert isinstance(item, bytes)
                body += _binary(item)
            else:
                assert isinstance(item, tuple)
                body += _string(item[0]) + _string(item[1])
    return encode_varint(len(body)) + bytes(body)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    version: int = MQTT_5,
    keepalive: int = 60,
    clean_start: bool = False,
    username: str | None = None,
    password: bytes | None = None,
    properties: Properties | None = None,
) -> bytes:
    """A CONNECT without a will (the intake connection never has one)."""
    if version not in (MQTT_311, MQTT_5):
        raise ValueError(f"unsupported MQTT protocol level {version}")
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(_string("MQTT"))
    body += bytes((version, flags)) + struct.pack(">H", keepalive)
    if version == MQTT_5:
        body += encode_properties(properties or {})
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _binary(password)
    return _packet(CONNECT << 4, bytes(body))


def encode_subscribe(
    packet_id: int, filters: list[tuple[str, int]], *, version: int = MQTT_5
) -> bytes:
    """A SUBSCRIBE of `(filter, qos)` pairs."""
    body = bytearray(_PACKET_ID.pack(packet_id))
    if version == MQTT_5:
        body += b"\x00"
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """The PUBACKs of a batch, in the given order, as one buffer for one `send`.

    Reason code 0 (success) is left out, which both protocol levels accept.
    """
    pack = _PACKET_ID.pack
    return b"".join([b"\x40\x02" + pack(pid) for pid in packet_ids])


PINGREQ_BYTES: Final = b"\xc0\x00"


def encode_disconnect(reason: int = 0, *, version: int = MQTT_5) -> bytes:
    """A client DISCONNECT; MQTT 5 carries the reason code."""
    if version == MQTT_5 and reason:
        return b"\xe0\x01" + bytes((reason,))
    return b"\xe0\x00"


# --- decoding -------------------------------------------------------------------------


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for count in range(4):
        if pos >= end:
            raise ProtocolError("truncated variable byte integer", 0x81)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if count and byte == 0:
                raise ProtocolError("variable byte integer not in its shortest form", 0x81)
            return value, pos
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes", 0x81)


def _read_u16(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise ProtocolError("truncated two byte integer", 0x81)
    return (data[pos] << 8) | data[pos + 1], pos + 2


def _read_binary(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    size, pos = _read_u16(data, pos, end)
    if pos + size > end:
        raise ProtocolError("truncated string or binary field", 0x81)
    return data[pos : pos + size], pos + size


def _read_string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _read_binary(data, pos, end)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError:
        raise ProtocolError("string field is not UTF-8", 0x81) from None


def decode_properties(data: bytes, pos: int, end: int) -> tuple[Properties, int]:
    """MQTT 5 properties at `pos`; returns them and the position after them."""
    length, pos = _read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise ProtocolError("properties longer than their packet", 0x81)
    props: Properties = {}
    while pos < stop:
        ident, pos = _read_varint(data, pos, stop)
        kind = PROPERTY_TYPES.get(ident)
        value: PropertyValue
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02x}", 0x81)
        if kind == _BYTE:
            if pos >= stop:
                raise ProtocolError("truncated property", 0x81)
            value, pos = data[pos], pos + 1
        elif kind == _U16:
            value, pos = _read_u16(data, pos, stop)
        elif kind == _U32:
            if pos + 4 > stop:
                raise ProtocolError("truncated property", 0x81)
            value, pos = int.from_bytes(data[pos : pos + 4], "big"), pos + 4
        elif kind == _VARINT:
            value, pos = _read_varint(data, pos, stop)
        elif kind == _STR:
            value, pos = _read_string(data, pos, stop)
        elif kind == _BIN:
            value, pos = _read_binary(data, pos, stop)
        else:
            key, pos = _read_string(data, pos, stop)
            text, pos = _read_string(data, pos, stop)
            value = (key, text)
        if ident in (USER_PROPERTY, SUBSCRIPTION_ID):
            # The only properties that may appear more than once.
            existing = props.setdefault(ident, [])
            assert isinstance(existing, list)
            existing.append(value)
        elif ident in props:
            raise ProtocolError(f"property 0x{ident:02x} given twice", 0x82)
        else:
            props[ident] = value
    return props, stop


class Decoder:
    """Splits a byte stream into packets. One decoder per connection (topic aliases are state)."""

    def __init__(self, version: int = MQTT_5, max_packet_size: int = MAX_REMAINING_LENGTH) -> None:
        self.version = version
        self.max_packet_size = max_packet_size
        self._buffer = b""
        self._aliases: dict[int, str] = {}
        self.topic_alias_maximum = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet a whole packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """Every whole packet in what was received so far; the rest waits for more bytes."""
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        packets: list[Packet] = []
        append = packets.append
        v5 = self.version == MQTT_5
        limit = self.max_packet_size
        while pos + 2 <= end:
            first = buf[pos]
            # The remaining length, inline: it is on the path of every message.
            byte = buf[pos + 1]
            if byte < 0x80:
                length = byte
                start = pos + 2
            else:
                try:
                    length, start = _read_varint(buf, pos + 1, end)
                except ProtocolError:
                    if end - pos - 1 < 4:
                        break  # the rest of the length has not arrived yet
                    raise
            if start - pos + length > limit:
                raise ProtocolError(
                    f"packet of {start - pos + length} bytes exceeds the maximum {limit}", 0x95
                )
            stop = start + length
            if stop > end:
                break
            kind = first >> 4
            if kind == PUBLISH:
                append(self._publish(first, buf, start, stop, v5))
            else:
                append(self._control(kind, first & 0x0F, buf, start, stop, v5))
            pos = stop
        self._buffer = buf[pos:] if pos < end else b""
        return packets

    def _publish(self, first: int, buf: bytes, pos: int, stop: int, v5: bool) -> Publish:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3", 0x81)
        if qos == 2:
            raise ProtocolError("PUBLISH with QoS 2 on a QoS 1 subscription", 0x9B)
        if pos + 2 > stop:
            raise ProtocolError("truncated PUBLISH", 0x81)
        size = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
        if pos + size > stop:
            raise ProtocolError("truncated PUBLISH topic", 0x81)
        raw_topic = buf[pos : pos + size]
        pos += size
        packet_id = 0
        if qos:
            if pos + 2 > stop:
                raise ProtocolError("truncated PUBLISH packet id", 0x81)
            packet_id = (buf[pos] << 8) | buf[pos + 1]
            if packet_id == 0:
                raise ProtocolError("PUBLISH with packet id 0", 0x81)
            pos += 2
        properties: Properties | None = None
        if v5:
            if pos < stop and buf[pos] == 0:
                pos += 1
            else:
                properties, pos = decode_properties(buf, pos, stop)
        topic: str | None
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = None
        if properties and TOPIC_ALIAS in properties:
            topic = self._alias(properties[TOPIC_ALIAS], topic, size)
        elif size == 0:
            raise ProtocolError("PUBLISH with an empty topic and no alias", 0x82)
        return Publish(
            topic,
            buf[pos:stop],
            qos,
            packet_id,
            bool(first & 0x08),
            bool(first & 0x01),
            properties,
        )

    def _alias(self, alias: object, topic: str | None, size: int) -> str | None:
        assert isinstance(alias, int)
        if not 0 < alias <= self.topic_alias_maximum:
            raise ProtocolError(f"topic alias {alias} outside what was offered", 0x94)
        if size:
            if topic is not None:
                self._aliases[alias] = topic
            return topic
        if alias not in self._aliases:
            raise ProtocolError(f"topic alias {alias} used before it was set", 0x82)
        return self._aliases[alias]

    def _control(self, kind: int, flags: int, buf: bytes, pos: int, stop: int, v5: bool) -> Packet:
        if kind == CONNACK:
            if flags or stop - pos < 2:
                raise ProtocolError("malformed CONNACK", 0x81)
            if buf[pos] & 0xFE:
                raise ProtocolError("CONNACK with reserved flags set", 0x81)
            props: Properties = {}
            if v5 and stop - pos > 2:
                props, end = decode_properties(buf, pos + 2, stop)
                if end != stop:
                    raise ProtocolError("trailing bytes in CONNACK", 0x81)
            elif stop - pos != 2 and not v5:
                raise ProtocolError("malformed CONNACK", 0x81)
            return Connack(bool(buf[pos] & 0x01), buf[pos + 1], props)
        if kind == SUBACK:
            if flags:
                raise ProtocolError("SUBACK with flags set", 0x81)
            packet_id, at = _read_u16(buf, pos, stop)
            props = {}
            if v5:
                props, at = decode_properties(buf, at, stop)
            if at >= stop:
                raise ProtocolError("SUBACK without reason codes", 0x81)
            return Suback(packet_id, tuple(buf[at:stop]), props)
        if kind == UNSUBACK:
            packet_id, _ = _read_u16(buf, pos, stop)
            return Unsuback(packet_id)
        if kind == PINGRESP:
            if flags or stop != pos:
                raise ProtocolError("malformed PINGRESP", 0x81)
            return Pingresp()
        if kind in (DISCONNECT, AUTH):
            if flags:
                raise ProtocolError("flags set on DISCONNECT or AUTH", 0x81)
            reason = buf[pos] if stop > pos else 0
            props = {}
            if v5 and stop - pos > 1:
                props, end = decode_properties(buf, pos + 1, stop)
                if end != stop:
                    raise ProtocolError("trailing bytes in DISCONNECT", 0x81)
            if kind == AUTH:
                return Auth(reason, props)
            return Disconnect(reason, props)
        raise ProtocolError(f"unexpected packet type {kind} from the server", 0x82)
