"""The only module that imports paho: the publishing connection (alarms, republished records).

The subscribing connection is our own receive-only client (`bridge.intake.client`): paho's
per-message cost on receipt was most of a message's budget. Publishing is a few per cent of
the traffic and needs paho's outgoing flow control, so it stays here. paho runs its network
loop on its own thread; nothing raised by our code may reach it, so every callback catches
everything. Return codes become `BrokerError`s here.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import structlog
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    ConnectFlags,
    DisconnectFlags,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import BrokerConfig
from bridge.errors import BrokerError, ConfigError, PublishRefused


def _no_delay(_client: Client, _userdata: Any, sock: Any) -> None:
    # Without TCP_NODELAY an ack or publish can wait ~40 ms for Nagle and delayed ACKs.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Publisher:
    """A clean-session MQTT client (MQTT 5 or 3.1.1) that publishes and waits for the ack.

    It connects as `{client_id}-pub`: on the subscribing connection the acknowledgements of
    our publishes would queue behind every message the broker is pushing to us, which during
    a backlog took longer than `publish_timeout`.
    """

    def __init__(self, config: BrokerConfig, logger: structlog.typing.FilteringBoundLogger) -> None:
        self._config = config
        self._log = logger.bind(broker=f"{config.host}:{config.port}")
        self._v5 = config.protocol == "5"
        self._puback_reasons: dict[int, ReasonCode] = {}
        self._refused: str | None = None
        self.connected = threading.Event()
        self._client = self._make_client(f"{config.client_id}-pub")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    def _make_client(self, client_id: str) -> Client:
        config = self._config
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else True,
            reconnect_on_failure=True,
        )
        client.reconnect_delay_set(config.reconnect.min_delay, config.reconnect.max_delay)
        client.max_queued_messages_set(0)
        username, password = config.credentials()
        if username is not None:
            client.username_pw_set(username, password)
        if config.tls is not None:
            tls = config.tls
            try:
                client.tls_set(
                    ca_certs=str(tls.ca_file) if tls.ca_file else None,
                    certfile=str(tls.cert_file) if tls.cert_file else None,
                    keyfile=str(tls.key_file) if tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError("broker.tls", f"cannot load the TLS files: {exc}") from None
            client.tls_insecure_set(not tls.verify_hostname)
        client.on_socket_open = _no_delay
        return client

    def start(self) -> None:
        """Connect in the background; paho retries with the configured backoff."""
        config = self._config
        if self._v5:
            self._client.connect_async(config.host, config.port, config.keepalive, clean_start=True)
        else:
            self._client.connect_async(config.host, config.port, config.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network loop."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement; BrokerError if it did not take it."""
        if not self.connected.is_set():
            # paho would queue it and send it after reconnecting, while our caller retries it
            # too: the message would go out twice.
            raise BrokerError("not connected to the broker")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            if info.rc != MQTT_ERR_SUCCESS:
                raise BrokerError(f"publish failed (rc={info.rc})")
            return
        try:
            info.wait_for_publish(self._config.publish_timeout)
        except (ValueError, RuntimeError) as exc:
            raise BrokerError(f"publish failed: {exc}") from None
        if not info.is_published():
            self._puback_reasons.pop(info.mid, None)
            raise BrokerError(f"no acknowledgement within {self._config.publish_timeout}s")
        reason = self._puback_reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise PublishRefused(f"broker refused the publish: {reason}")

    # paho callbacks: run on paho's thread, never raise.

    def _on_connect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                # Usually the intake connection is refused the same way and says so; a broker
                # that takes it but refuses this one (an ACL on client ids) is said once here.
                text = str(reason)
                if text != self._refused:
                    self._refused = text
                    self._log.warning("publisher_connect_refused", reason=text)
                return
            self._refused = None
            self.connected.set()
            self._log.debug("publisher_connected")
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_connect")

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connected.clear()

    def _on_publish(
        self,
        _client: Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties,
    ) -> None:
        # Only refusals are kept (QoS 0 publishes report success here too, and nobody pops them).
        try:
            if self._v5 and reason.is_failure:
                self._puback_reasons[mid] = reason
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_publish")
