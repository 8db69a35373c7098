"""The intake's receive-only MQTT connection: the codec of `bridge.intake.codec` on a socket.

One thread owns the socket: it reads, decodes, hands whole reads to `on_batch` as
one list, sends the PUBACKs that `ack` queued (all of one call in one `send`, in
the order given), and keeps the connection alive. Acks never touch the socket from
the caller's thread, which TLS would not allow. Publishing stays on paho
(`bridge.mqtt`): it is a few per cent of the traffic.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from bridge.errors import BrokerError
from bridge.intake import codec
from bridge.intake.message import InboundMessage

READ_SIZE = 256 * 1024
CONNACK_REASONS = {
    # MQTT 3.1.1 return codes (section 3.2.2.3)
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    # MQTT 5 reason codes (section 3.2.2.2)
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}
DISCONNECT_REASONS = {
    0x00: "normal disconnection",
    0x04: "disconnect with will message",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x9C: "use another server",
    0x9D: "server moved",
    0xA2: "wildcard subscriptions not supported",
    0x9E: "shared subscriptions not supported",
    **{k: v for k, v in CONNACK_REASONS.items() if k >= 0x80},
}


def reason_text(table: dict[int, str], code: int) -> str:
    """A reason code as `0x87 not authorized`."""
    return f"0x{code:02x} {table.get(code, 'unknown reason')}"


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    """Everything the intake connection needs to reach the broker and keep its session."""

    host: str
    port: int
    client_id: str
    version: int = codec.MQTT_5
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600
    receive_maximum: int = 1000
    max_packet_size: int | None = None
    """Told to the broker (MQTT 5) and enforced when set; None takes any size MQTT allows."""
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    min_delay: float = 1.0
    max_delay: float = 60.0
    connect_timeout: float = 10.0


class _Closed(BrokerError):
    """The connection ended; `reason` says why, for the log."""


class _Refused(BrokerError):
    """The broker answered CONNECT with a refusal."""


class IntakeClient:
    """A persistent-session, manual-ack subscriber on a thread of its own.

    `on_batch` gets every PUBLISH of one read, in receive order. `ack(generation, ids)`
    queues PUBACKs; it returns False (and sends nothing) when that connection is gone,
    since packet ids are reused across connections.
    """

    def __init__(
        self,
        settings: ConnectSettings,
        filters: Sequence[str],
        on_batch: Callable[[list[InboundMessage]], None],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._settings = settings
        self._filters = list(filters)
        self._on_batch = on_batch
        self._log = logger.bind(broker=f"{settings.host}:{settings.port}")
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._generation = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._ever_connected = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.sessions_lost = 0
        self.receive_maximum_exceeded = 0
        self._exceeded = False
        self.in_flight = 0
        self.last_failure: str | None = None

    @property
    def generation(self) -> int:
        """The number of the current connection (0 before the first)."""
        return self._generation

    def start(self) -> None:
        """Connect in the background and keep reconnecting, with capped backoff, until stop."""
        self._thread = threading.Thread(target=self._run, name="intake-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send a normal DISCONNECT (the session stays on the broker) and end the thread."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def ack(self, generation: int, packet_ids: Sequence[int]) -> bool:
        """Queue the PUBACKs of `packet_ids` (QoS 1 ids, in order) on connection `generation`."""
        with self._lock:
            if generation != self._generation or not self.connected.is_set():
                return False
            self._pending.extend(packet_ids)
        self._wake()
        return True

    # --- the socket thread ---------------------------------------------------------------

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is already pending; OSError: we are closing.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\x00")

    def _run(self) -> None:
        settings = self._settings
        delay = settings.min_delay
        while not self._stopping.is_set():
            sock: socket.socket | None = None
            try:
                sock, decoder = self._connect()
                delay = settings.min_delay
                self._serve(sock, decoder)
            except (OSError, BrokerError) as exc:
                self._failure(exc, was_connected=self.connected.is_set())
            except Exception:  # noqa: BLE001 - the thread must outlive a bug in one connection
                self._log.exception("intake_connection_failed")
            finally:
                with self._lock:
                    was_connected = self.connected.is_set()
                    self.connected.clear()
                    self._pending.clear()
                    self.in_flight = 0
                self.subscribed.clear()
                if sock is not None:
                    self._close(sock, graceful=self._stopping.is_set() and was_connected)
            jitter = random.uniform(0.5, 1.0)  # noqa: S311 - spreads reconnects, not a secret
            if self._stopping.wait(delay * jitter):
                break
            delay = min(delay * 2, settings.max_delay)

    def _failure(self, exc: Exception, *, was_connected: bool) -> None:
        # The event names an operator greps for: `connect_failed` (no MQTT session came up:
        # refused TCP, TLS, a broker closing before CONNACK), `connect_refused` (CONNACK said
        # no), `disconnected` (a working connection ended). One line per distinct failure at
        # error or warning; repeats of the same go to debug.
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Closed) else str(exc)
        if was_connected:
            event, log = "disconnected", self._log.warning
        elif isinstance(exc, _Refused):
            event, log = "connect_refused", self._log.error
        else:
            event, log = "connect_failed", self._log.error
        if reason == self.last_failure:
            log = self._log.debug
        self.last_failure = reason
        log(event, reason=reason, retry_max_delay=self._settings.max_delay)

    def _close(self, sock: socket.socket, *, graceful: bool) -> None:
        try:
            if graceful:
                sock.settimeout(1.0)
                sock.sendall(codec.encode_disconnect(version=self._settings.version))
        except OSError:
            pass
        finally:
            sock.close()

    def _connect(self) -> tuple[socket.socket, codec.Decoder]:
        s = self._settings
        raw = socket.create_connection((s.host, s.port), timeout=s.connect_timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        try:
            if s.ssl_context is not None:
                sock = s.ssl_context.wrap_socket(raw, server_hostname=s.server_hostname or s.host)
            return sock, self._handshake(sock)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, sock: socket.socket) -> codec.Decoder:
        """CONNECT, CONNACK, SUBSCRIBE, SUBACK; then what the session had queued is handed over."""
        s = self._settings
        properties: codec.Properties = {}
        if s.version == codec.MQTT_5:
            properties = {
                codec.SESSION_EXPIRY: s.session_expiry,
                codec.RECEIVE_MAXIMUM: s.receive_maximum,
            }
            if s.max_packet_size is not None:
                # A broker drops, unseen, what exceeds it (MQTT 5 3.1.2.25): opt-in only.
                properties[codec.MAXIMUM_PACKET_SIZE] = s.max_packet_size
        sock.sendall(
            codec.encode_connect(
                s.client_id,
                version=s.version,
                keepalive=s.keepalive,
                clean_start=False,
                username=s.username,
                password=s.password.encode() if s.password is not None else None,
                properties=properties,
            )
        )
        limit = s.max_packet_size or codec.MAX_REMAINING_LENGTH + 5  # 5: the fixed header
        decoder = codec.Decoder(s.version, limit)
        early: list[codec.Publish] = []
        connack = self._await(sock, decoder, codec.Connack, early)
        assert isinstance(connack, codec.Connack)
        if connack.reason:
            raise _Refused(f"connect refused: {reason_text(CONNACK_REASONS, connack.reason)}")
        self._connected(connack)
        sock.sendall(codec.encode_subscribe(1, [(f, 1) for f in self._filters], version=s.version))
        suback = self._await(sock, decoder, codec.Suback, early)
        assert isinstance(suback, codec.Suback)
        refused = [f for f, r in zip(self._filters, suback.reasons, strict=False) if r >= 0x80]
        if refused:
            self._log.error("subscribe_refused", filters=refused, reasons=list(suback.reasons))
            raise BrokerError("subscription refused")
        self._log.info("subscribed", filters=self._filters, granted_qos=list(suback.reasons))
        self.subscribed.set()
        self._deliver(early)
        return decoder

    def _connected(self, connack: codec.Connack) -> None:
        with self._lock:
            self._generation += 1
            self.connected.set()
        self._exceeded = False
        self.last_failure = None
        if self._ever_connected and not connack.session_present:
            # The broker lost our session: what it had queued for us while we were away is gone.
            self.sessions_lost += 1
            self._log.warning("session_lost", generation=self._generation)
        self._ever_connected = True
        self._log.info(
            "connected", session_present=connack.session_present, generation=self._generation
        )

    def _await(
        self,
        sock: socket.socket,
        decoder: codec.Decoder,
        kind: type[codec.Connack] | type[codec.Suback],
        early: list[codec.Publish],
    ) -> codec.Packet:
        """Read until a packet of `kind`. PUBLISHes read meanwhile (the session's queue, sent
        right after CONNACK, often in the same segment) are appended to `early`, in order."""
        deadline = time.monotonic() + self._settings.connect_timeout
        found: codec.Packet | None = None
        while found is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Closed(f"no {kind.__name__.upper()} within the connect timeout")
            sock.settimeout(remaining)
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                continue
            if not data:
                raise _Closed(f"connection closed by the broker before {kind.__name__.upper()}")
            for packet in decoder.feed(data):
                if found is None and isinstance(packet, kind):
                    found = packet
                elif isinstance(packet, codec.Publish):
                    early.append(packet)
                elif isinstance(packet, codec.Disconnect):
                    raise _Closed(
                        f"broker disconnected: {reason_text(DISCONNECT_REASONS, packet.reason)}"
                    )
                elif not isinstance(packet, codec.Pingresp):
                    raise codec.ProtocolError(
                        f"unexpected {type(packet).__name__} while connecting"
                    )
        return found

    def _deliver(self, packets: list[codec.Publish]) -> None:
        if not packets:
            return
        generation = self._generation
        now = time.monotonic_ns()
        batch = []
        for p in packets:
            if p.qos:
                self.in_flight += 1
            batch.append(InboundMessage(p.topic, p.payload, p.packet_id, p.qos, generation, now))
        if self.in_flight > self._settings.receive_maximum and not self._exceeded:
            # MQTT 5 lets a client disconnect here (0x93), but mosquitto 2.0 does exceed the
            # window when it resends a resumed session's queue: disconnecting would only bring
            # the same flood back, forever. What arrives is taken (the intake's bounded queue
            # holds the socket back) and the broker is named, once per connection.
            self._exceeded = True
            self.receive_maximum_exceeded += 1
            self._log.warning(
                "receive_maximum_exceeded",
                in_flight=self.in_flight,
                receive_maximum=self._settings.receive_maximum,
            )
        self._on_batch(batch)

    def _serve(self, sock: socket.socket, decoder: codec.Decoder) -> None:
        keepalive = float(self._settings.keepalive)
        sock.settimeout(keepalive)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, "sock")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        last_rx = last_tx = time.monotonic()
        ping_sent = False
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = max(0.0, min(last_tx + keepalive, last_rx + keepalive * 1.5) - now)
                readable = {key.data for key, _ in selector.select(timeout)}
                if "wake" in readable:
                    self._drain_wake()
                if self._flush_acks(sock):
                    last_tx = time.monotonic()
                if self._read(sock, decoder, "sock" in readable):
                    last_rx = time.monotonic()
                    ping_sent = False
                now = time.monotonic()
                if now - last_rx >= keepalive * 1.5:
                    raise _Closed(f"no packet from the broker for {keepalive * 1.5:.0f}s")
                if now - last_tx >= keepalive or (not ping_sent and now - last_rx >= keepalive):
                    sock.sendall(codec.PINGREQ_BYTES)
                    last_tx = now
                    ping_sent = True
        except codec.ProtocolError as exc:
            if self._settings.version == codec.MQTT_5:
                with contextlib.suppress(OSError):
                    sock.sendall(codec.encode_disconnect(exc.reason))
            raise
        finally:
            selector.close()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _flush_acks(self, sock: socket.socket) -> bool:
        """Send the queued PUBACKs in one write; whether anything was sent."""
        with self._lock:
            acks, self._pending = self._pending, []
        if not acks:
            return False
        sock.sendall(codec.encode_pubacks(acks))
        self.in_flight -= len(acks)
        return True

    def _read(self, sock: socket.socket, decoder: codec.Decoder, readable: bool) -> bool:
        """Read once if there is something (TLS may hold decrypted bytes the selector misses)."""
        if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        try:
            data = sock.recv(READ_SIZE)
        except ssl.SSLWantReadError:
            return False
        if not data:
            raise _Closed("connection closed by the broker")
        self._handle(decoder.feed(data))
        return True

    def _handle(self, packets: list[codec.Packet]) -> None:
        publishes: list[codec.Publish] = []
        for packet in packets:
            if isinstance(packet, codec.Publish):
                publishes.append(packet)
            elif isinstance(packet, codec.Disconnect):
                self._deliver(publishes)
                text = reason_text(DISCONNECT_REASONS, packet.reason)
                reason = packet.properties.get(codec.REASON_STRING)
                detail = f" ({reason})" if isinstance(reason, str) and reason else ""
                raise _Closed(f"broker disconnected: {text}{detail}")
            elif isinstance(packet, codec.Pingresp | codec.Suback | codec.Unsuback):
                continue
            else:
                raise codec.ProtocolError(f"unexpected {type(packet).__name__}")
        self._deliver(publishes)
