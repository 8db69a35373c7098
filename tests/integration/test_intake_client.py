"""The intake's own MQTT client against real brokers: mosquitto (MQTT 5 and 3.1.1, TLS, password,
shared subscription) and the embedded amqtt broker (3.1.1)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from brokers import LOOPBACK, Mosquitto, MqttProbe
from test_broker_security import PASSWORD, make_pki, publish_tls

from bridge.broker import EmbeddedBroker
from bridge.intake import codec
from bridge.intake.client import ConnectSettings, IntakeClient
from bridge.intake.message import InboundMessage

TOPIC = "t1/proj_1/v1-business-model-customer"


class Collector:
    """Receives batches; acks each batch at once (or not, when `auto_ack` is off)."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.batches: list[list[InboundMessage]] = []
        self.client: IntakeClient | None = None
        self._cond = threading.Condition()

    def __call__(self, batch: list[InboundMessage]) -> None:
        with self._cond:
            self.batches.append(batch)
            self._cond.notify_all()
        if self.auto_ack and self.client is not None:
            self.client.ack(batch[0].generation, [m.mid for m in batch if m.qos])

    @property
    def messages(self) -> list[InboundMessage]:
        with self._cond:
            return [m for b in self.batches for m in b]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[InboundMessage]:
        with self._cond:
            self._cond.wait_for(lambda: sum(len(b) for b in self.batches) >= count, timeout)
        return self.messages


@pytest.fixture
def intake() -> Iterator[Callable[..., tuple[IntakeClient, Collector]]]:
    started: list[IntakeClient] = []

    def make(
        settings: ConnectSettings, filters: list[str] | None = None, auto_ack: bool = True
    ) -> tuple[IntakeClient, Collector]:
        collector = Collector(auto_ack)
        client = IntakeClient(settings, filters or [TOPIC], collector, structlog.get_logger("test"))
        collector.client = client
        client.start()
        started.append(client)
        return client, collector

    yield make
    for client in started:
        client.stop()


def settings_for(host: str, port: int, **kwargs: object) -> ConnectSettings:
    return ConnectSettings(host, port, kwargs.pop("client_id", "intake-test"), **kwargs)  # type: ignore[arg-type]


def publish_many(host: str, port: int, count: int, topic: str = TOPIC) -> None:
    probe = MqttProbe(host, port, client_id="pub")
    probe.connect()
    try:
        for i in range(count):
            probe.publish(topic, f"m{i}".encode())
    finally:
        probe.close()


@pytest.mark.parametrize("version", [codec.MQTT_5, codec.MQTT_311])
def test_receives_in_order_and_acks_on_mosquitto(
    mosquitto: Mosquitto, intake: Callable[..., tuple[IntakeClient, Collector]], version: int
) -> None:
    """Every QoS 1 message arrives once, in publish order; acked, none comes back on reconnect."""
    client, got = intake(settings_for(mosquitto.host, mosquitto.port, version=version))
    assert client.subscribed.wait(10)
    publish_many(mosquitto.host, mosquitto.port, 300)
    messages = got.wait_for(300)
    assert [m.payload for m in messages] == [f"m{i}".encode() for i in range(300)]
    assert {m.qos for m in messages} == {1}
    client.stop()
    time.sleep(0.3)
    again, got2 = intake(settings_for(mosquitto.host, mosquitto.port, version=version))
    assert again.subscribed.wait(10)
    time.sleep(0.5)
    assert got2.messages == []


def test_unacked_messages_come_back_on_the_next_connection(
    mosquitto: Mosquitto, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """Messages received but never acked are redelivered after a reconnect (persistent session)."""
    client, got = intake(settings_for(mosquitto.host, mosquitto.port), auto_ack=False)
    assert client.subscribed.wait(10)
    publish_many(mosquitto.host, mosquitto.port, 20)
    assert len(got.wait_for(20)) == 20
    client.stop()
    again, got2 = intake(settings_for(mosquitto.host, mosquitto.port))
    messages = got2.wait_for(20)
    assert sorted(m.payload for m in messages) == sorted(f"m{i}".encode() for i in range(20))
    assert all(m.generation == again.generation for m in messages)


def test_ack_on_a_stale_generation_is_refused(
    mosquitto: Mosquitto, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """An ack for a message of an earlier connection sends nothing and says so."""
    client, got = intake(
        settings_for(mosquitto.host, mosquitto.port, min_delay=0.1), auto_ack=False
    )
    assert client.subscribed.wait(10)
    publish_many(mosquitto.host, mosquitto.port, 1)
    (first,) = got.wait_for(1)
    mosquitto.restart()
    deadline = time.monotonic() + 15
    while client.generation == first.generation and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.generation > first.generation
    assert client.ack(first.generation, [first.mid]) is False


def test_session_lost_is_counted(
    tmp_path: Path, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """A reconnect that finds no session on the broker (it lost its state) is counted."""
    server = Mosquitto(tmp_path / "m", persistence=False)
    server.start()
    try:
        client, _ = intake(settings_for(server.host, server.port, min_delay=0.1))
        assert client.subscribed.wait(10)
        assert client.sessions_lost == 0
        server.restart()
        deadline = time.monotonic() + 15
        while client.sessions_lost == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.sessions_lost == 1
        assert client.subscribed.wait(10)
    finally:
        server.stop()


def test_shared_subscription_splits_between_two_clients(
    mosquitto: Mosquitto, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """Two clients in one $share group receive every message exactly once between them."""
    share = f"$share/g/{TOPIC}"
    a, got_a = intake(settings_for(mosquitto.host, mosquitto.port, client_id="a"), [share])
    b, got_b = intake(settings_for(mosquitto.host, mosquitto.port, client_id="b"), [share])
    assert a.subscribed.wait(10) and b.subscribed.wait(10)
    publish_many(mosquitto.host, mosquitto.port, 100)
    deadline = time.monotonic() + 10
    while len(got_a.messages) + len(got_b.messages) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    payloads = [m.payload for m in got_a.messages + got_b.messages]
    assert sorted(payloads) == sorted(f"m{i}".encode() for i in range(100))
    assert got_a.messages and got_b.messages


def test_embedded_broker_mqtt311(intake: Callable[..., tuple[IntakeClient, Collector]]) -> None:
    """The embedded amqtt broker (3.1.1 only) delivers to the intake client in order."""
    with EmbeddedBroker("127.0.0.1", 0) as server:
        client, got = intake(settings_for(server.host, server.port, version=codec.MQTT_311))
        assert client.subscribed.wait(10)
        publish_many(server.host, server.port, 50)
        messages = got.wait_for(50)
        assert [m.payload for m in messages] == [f"m{i}".encode() for i in range(50)]
        client.stop()


def test_mutual_tls_with_password(
    tmp_path: Path, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """Mutual TLS plus a password file on mosquitto: the intake connects and receives."""
    pki = make_pki(tmp_path / "pki")
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "bridge", PASSWORD], check=True, timeout=30
    )
    passwords.chmod(0o600)
    server = Mosquitto(
        tmp_path / "mosquitto",
        extra_config=[
            f"cafile {pki['ca.crt']}",
            f"certfile {pki['server.crt']}",
            f"keyfile {pki['server.key']}",
            "require_certificate true",
            "allow_anonymous false",
            f"password_file {passwords}",
        ],
    )
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        context.load_cert_chain(str(pki["client.crt"]), str(pki["client.key"]))
        client, got = intake(
            settings_for(
                server.host, server.port, username="bridge", password=PASSWORD,
                ssl_context=context,
            )
        )  # fmt: skip
        assert client.subscribed.wait(10)
        for i in range(30):
            publish_tls(server, tmp_path / "pki", TOPIC, f"m{i}".encode())
        messages = got.wait_for(30)
        assert [m.payload for m in messages] == [f"m{i}".encode() for i in range(30)]
    finally:
        server.stop()


def test_wrong_password_is_a_clear_refusal(
    tmp_path: Path, intake: Callable[..., tuple[IntakeClient, Collector]]
) -> None:
    """A refused CONNECT is reported with the broker's reason, and retried with backoff."""
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "bridge", PASSWORD], check=True, timeout=30
    )
    passwords.chmod(0o600)
    server = Mosquitto(
        tmp_path / "m", extra_config=["allow_anonymous false", f"password_file {passwords}"]
    )
    server.start()
    try:
        client, _ = intake(
            settings_for(server.host, server.port, username="bridge", password="wrong")
        )
        deadline = time.monotonic() + 10
        while client.last_failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.last_failure is not None
        # mosquitto 2.0 answers "not authorized"; other brokers say "bad user name or password".
        assert re.search(r"connect refused: 0x8[67] ", client.last_failure)
        assert PASSWORD not in client.last_failure
        assert not client.connected.is_set()
    finally:
        server.stop()


class SilentBroker:
    """A TCP server that answers CONNECT and SUBSCRIBE, then goes quiet (no PINGRESP)."""

    def __init__(self, *, flood: int = 0, oversized: int = 0) -> None:
        self.flood = flood
        self.oversized = oversized
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.disconnect_reasons: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)  # CONNECT
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK v5, no properties
                conn.recv(4096)  # SUBSCRIBE
                conn.sendall(b"\x90\x04\x00\x01\x00\x01")
                for pid in range(1, self.flood + 1):
                    body = b"\x00\x01a" + pid.to_bytes(2, "big") + b"\x00x"
                    conn.sendall(b"\x32" + codec.encode_varint(len(body)) + body)
                if self.oversized:
                    conn.sendall(b"\x30" + codec.encode_varint(self.oversized))
                while data := conn.recv(4096):
                    if data[0] == 0xE0:
                        self.disconnect_reasons.append(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_silent_broker_is_detected_within_one_and_a_half_keepalives(
    intake: Callable[..., tuple[IntakeClient, Collector]],
) -> None:
    """A broker that stops answering (no PINGRESP) is dropped after 1.5 x keepalive, then
    reconnected."""
    server = SilentBroker()
    try:
        keepalive = 2
        client, _ = intake(settings_for(LOOPBACK, server.port, keepalive=keepalive, min_delay=0.1))
        assert client.subscribed.wait(5)
        up = time.monotonic()
        while client.connected.is_set() and time.monotonic() - up < 10:
            time.sleep(0.02)
        assert not client.connected.is_set()
        assert time.monotonic() - up <= keepalive * 1.5 + 0.5
        assert "no packet from the broker" in (client.last_failure or "")
        deadline = time.monotonic() + 5
        while server.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.connections >= 2
    finally:
        server.close()


def test_broker_exceeding_receive_maximum_is_named_and_its_messages_taken(
    intake: Callable[..., tuple[IntakeClient, Collector]],
) -> None:
    """More unacknowledged QoS 1 messages than our receive maximum (mosquitto does this when
    it resends a resumed session): every one is taken, the excess counted once, no disconnect
    (which would bring the same flood back, forever)."""
    server = SilentBroker(flood=30)
    try:
        client, collector = intake(
            settings_for(LOOPBACK, server.port, receive_maximum=10, min_delay=5), auto_ack=False
        )
        received = collector.wait_for(30)
        assert [m.mid for m in received] == list(range(1, 31))
        assert client.receive_maximum_exceeded == 1
        assert server.disconnect_reasons == []
        assert server.connections == 1
        assert client.connected.is_set()
    finally:
        server.close()


def test_oversized_packet_is_disconnected(
    intake: Callable[..., tuple[IntakeClient, Collector]],
) -> None:
    """A packet beyond our maximum packet size: DISCONNECT 0x95, before it is read."""
    server = SilentBroker(oversized=10_000_000)
    try:
        client, _ = intake(
            settings_for(LOOPBACK, server.port, max_packet_size=1_000_000, min_delay=5)
        )
        deadline = time.monotonic() + 5
        while not server.disconnect_reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.disconnect_reasons[0][:3] == b"\xe0\x01\x95"
        assert "exceeds the maximum" in (client.last_failure or "")
    finally:
        server.close()
