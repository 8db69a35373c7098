"""Real MQTT servers and a test client for the tests: mosquitto in a subprocess, a paho probe.

Servers listen on free loopback ports only. The embedded amqtt broker lives in `bridge.broker`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.testing import mosquitto as testing_mosquitto
from bridge.testing.mosquitto import free_port, wait_for_port
from bridge.testing.recorder import LOOPBACK

__all__ = ["LOOPBACK", "Mosquitto", "MqttProbe", "free_port", "in_ci", "wait_for_port"]


def in_ci() -> bool:
    """Whether the CI environment variable is set (to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def mosquitto_binary() -> str:
    """The mosquitto executable: skips the test when it is absent, fails it when CI is set."""
    try:
        return testing_mosquitto.mosquitto_binary()
    except testing_mosquitto.MosquittoMissing as missing:
        if in_ci():
            pytest.fail(f"{missing}; CI is set, so it must be installed", pytrace=False)
        pytest.skip(str(missing))


class Mosquitto(testing_mosquitto.Mosquitto):
    """`bridge.testing.mosquitto.Mosquitto`, skipping the test when mosquitto is absent."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        mosquitto_binary()
        super().__init__(workdir, **settings)


class MqttProbe:
    """A paho-mqtt 2.x client for tests: every call waits for the broker's answer."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        clean_session: bool = True,
        mqtt5: bool = False,
        session_expiry: int = 3600,
        keepalive: int = 30,
    ) -> None:
        """MQTT 3.1.1 unless `mqtt5`; `session_expiry` (seconds) is sent with MQTT 5 only."""
        self.host = host
        self.port = port
        self.client_id = client_id
        self.clean_session = clean_session
        self.mqtt5 = mqtt5
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.session_present: bool | None = None
        self._cond = threading.Condition()
        self._messages: list[tuple[str, bytes]] = []
        self._connack: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._connected = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if mqtt5 else clean_session,
            protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def client(self) -> mqtt.Client:
        """The paho client, for what the probe does not wrap."""
        return self._client

    @property
    def connected(self) -> bool:
        """Whether the last CONNACK accepted us and no disconnect followed."""
        with self._cond:
            return self._connected

    @property
    def messages(self) -> list[tuple[str, bytes]]:
        """A copy of the (topic, payload) pairs received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def connect(self, timeout: float = 5.0) -> None:
        """Connect and wait for a successful CONNACK; `session_present` is set from it."""
        with self._cond:
            self._connack = None
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry
            self._client.connect(
                self.host,
                self.port,
                self.keepalive,
                clean_start=self.clean_session,
                properties=properties,
            )
        else:
            self._client.connect(self.host, self.port, self.keepalive)
        self._client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack is not None, timeout):
                self._abort()
                raise AssertionError(f"no CONNACK from {self.host}:{self.port} in {timeout}s")
            connack = self._connack
        if connack is not None and connack.is_failure:
            self._abort()
            raise AssertionError(f"{self.host}:{self.port} refused the connection: {connack}")

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> int:
        """Subscribe, wait for the SUBACK and return the granted QoS."""
        rc, mid = self._client.subscribe(topic_filter, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"subscribe {topic_filter!r} failed: {mqtt.error_string(rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise AssertionError(f"no SUBACK for {topic_filter!r} in {timeout}s")
            (code,) = self._subacks.pop(mid)
        if code.is_failure:
            raise AssertionError(f"broker refused subscription {topic_filter!r}: {code}")
        return int(code.value)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        *,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> None:
        """Publish and wait until the broker acknowledged it (PUBACK/PUBCOMP; sent, for QoS 0)."""
        data = payload.encode() if isinstance(payload, str) else payload
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"publish to {topic!r} not acknowledged in {timeout}s")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Wait until at least `count` messages arrived; return all received so far."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(
                    f"expected {count} messages in {timeout}s, got {len(self._messages)}: "
                    f"{self._messages!r}"
                )
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self._messages.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the broker keeps a persistent session) and stop the network loop."""
        if self.connected:
            self._client.disconnect()
            with self._cond:
                self._cond.wait_for(lambda: not self._connected, timeout)
        self._client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _abort(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connack = reason_code
            self._connected = not reason_code.is_failure
            self.session_present = flags.session_present
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()
