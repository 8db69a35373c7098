"""The broker fixtures themselves: both brokers route messages, and they start and stop cleanly."""

from __future__ import annotations

import socket

import pytest
from brokers import LOOPBACK, Mosquitto, MqttProbe, free_port

from bridge.broker import EmbeddedBroker
from bridge.errors import BrokerError


def test_round_trip(broker: EmbeddedBroker | Mosquitto) -> None:
    """A QoS 1 message published on a broker reaches a subscriber of a matching filter."""
    with (
        MqttProbe(broker.host, broker.port) as subscriber,
        MqttProbe(broker.host, broker.port) as publisher,
    ):
        topic = "t1/proj_1/v1-business-model-customer"
        assert subscriber.subscribe("t1/proj_1/+", qos=1) == 1
        publisher.publish(topic, b'{"msgId": "1"}')
        assert subscriber.wait_for(1) == [(topic, b'{"msgId": "1"}')]


@pytest.mark.mosquitto
def test_mosquitto_round_trip_mqtt5(mosquitto: Mosquitto) -> None:
    """An MQTT 5 probe with a persistent session publishes and receives on mosquitto."""
    with MqttProbe(
        mosquitto.host, mosquitto.port, client_id="probe-v5", clean_session=False, mqtt5=True
    ) as probe:
        probe.subscribe("a/#")
        probe.publish("a/b", "hello")
        assert probe.wait_for(1) == [("a/b", b"hello")]


@pytest.mark.mosquitto
def test_mosquitto_restart_keeps_queued_message(mosquitto: Mosquitto) -> None:
    """A QoS 1 message queued for an offline persistent session survives a mosquitto restart."""
    host, port = mosquitto.host, mosquitto.port
    subscriber = MqttProbe(host, port, client_id="probe-kept", clean_session=False)
    subscriber.connect()
    subscriber.subscribe("kept/#", qos=1)
    subscriber.close()

    with MqttProbe(host, port) as publisher:
        publisher.publish("kept/1", b"while offline", qos=1)

    mosquitto.restart()

    again = MqttProbe(host, port, client_id="probe-kept", clean_session=False)
    again.connect()
    try:
        assert again.session_present
        assert again.wait_for(1) == [("kept/1", b"while offline")]
    finally:
        again.close()


def test_embedded_broker_restarts_on_same_port() -> None:
    """Stopping the embedded broker releases its port, so it can start on it again."""
    port = free_port()
    server = EmbeddedBroker(LOOPBACK, port)
    for _ in range(2):
        server.start()
        try:
            assert server.port == port
            with MqttProbe(server.host, server.port) as probe:
                probe.subscribe("ping")
                probe.publish("ping", b"1")
                probe.wait_for(1)
        finally:
            server.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, port), timeout=1).close()


def test_embedded_broker_port_zero_picks_free_port() -> None:
    """Port 0 binds a port the OS picks, and `port` reports it."""
    with EmbeddedBroker(LOOPBACK, 0) as server:
        assert server.port != 0
        with MqttProbe(server.host, server.port):
            pass


def test_embedded_broker_port_taken_raises(embedded_broker: EmbeddedBroker) -> None:
    """Starting on a port another listener holds raises BrokerError naming the address."""
    second = EmbeddedBroker(LOOPBACK, embedded_broker.port)
    with pytest.raises(BrokerError, match=f"{LOOPBACK}:{embedded_broker.port}.*in use"):
        second.start()
    assert not second.running
