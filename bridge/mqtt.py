"""The only module that imports paho: connect, subscribe, hand over messages, ack, publish.

paho runs its network loop on its own thread. Nothing raised by our code may reach
it (an exception escaping `on_message` kills the loop, and with manual acks the
same message comes back after the restart: a crash loop), so every callback
catches everything. Return codes become `BrokerError`s here.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.config import BrokerConfig
from bridge.errors import BrokerError, ConfigError, PublishRefused
from bridge.intake.message import InboundMessage


def _no_delay(_client: Client, _userdata: Any, sock: Any) -> None:
    # Without TCP_NODELAY an ack or publish can wait ~40 ms for Nagle and delayed ACKs.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttClient:
    """A persistent-session, manual-ack MQTT client (MQTT 5 or 3.1.1) around paho."""

    def __init__(
        self,
        config: BrokerConfig,
        filters: Sequence[str],
        on_message: Callable[[InboundMessage], None],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._config = config
        self._filters = list(filters)
        self._deliver = on_message
        self._log = logger.bind(broker=f"{config.host}:{config.port}")
        self._v5 = config.protocol == "5"
        self._lock = threading.Lock()
        self._generation = 0
        self._puback_reasons: dict[int, ReasonCode] = {}
        self._last_failure: str | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.publisher_connected = threading.Event()
        self._client = self._make_client(config.client_id, persistent=True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # Alarms and republished records go out on a connection of their own: on the
        # subscribing one their acknowledgements queue behind every message the broker is
        # pushing to us, which during a backlog took longer than publish_timeout.
        self._publisher = self._make_client(f"{config.client_id}-pub", persistent=False)
        self._publisher.on_connect = self._on_publisher_connect
        self._publisher.on_disconnect = self._on_publisher_disconnect
        self._publisher.on_publish = self._on_publish

    def _make_client(self, client_id: str, *, persistent: bool) -> Client:
        config = self._config
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else not persistent,
            manual_ack=persistent,
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

    @property
    def generation(self) -> int:
        """The number of the current connection (0 before the first)."""
        return self._generation

    def start(self) -> None:
        """Connect in the background; paho retries with the configured backoff."""
        config = self._config
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = config.session_expiry
            properties.ReceiveMaximum = config.receive_maximum
            # Without clean_start=False paho's default wipes the session at every start.
            self._client.connect_async(
                config.host,
                config.port,
                config.keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            self._client.connect_async(config.host, config.port, config.keepalive)
        self._client.loop_start()
        if self._v5:
            self._publisher.connect_async(
                config.host, config.port, config.keepalive, clean_start=True
            )
        else:
            self._publisher.connect_async(config.host, config.port, config.keepalive)
        self._publisher.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (the session stays on the broker) and stop the network loop."""
        try:
            self._client.disconnect()
            self._publisher.disconnect()
        finally:
            self._client.loop_stop()
            self._publisher.loop_stop()
        self.publisher_connected.clear()
        self.connected.clear()
        self.subscribed.clear()

    def ack(self, message: InboundMessage) -> bool:
        """Acknowledge a message on the connection it came on; False if that connection is gone."""
        if message.qos == 0:
            return True
        with self._lock:
            if message.generation != self._generation or not self.connected.is_set():
                return False
            return self._client.ack(message.mid, message.qos) == MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement; BrokerError if it did not take it."""
        if not self.publisher_connected.is_set():
            # paho would queue it and send it after reconnecting, while our caller retries it
            # too: the message would go out twice.
            raise BrokerError("not connected to the broker")
        info = self._publisher.publish(topic, payload, qos=qos, retain=retain)
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
        client: Client,
        _userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                self._failure("connect_refused", str(reason))
                return
            with self._lock:
                self._generation += 1
                self.connected.set()
            self._last_failure = None
            self._log.info(
                "connected", session_present=flags.session_present, generation=self._generation
            )
            if self._v5:
                client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters])
            else:
                client.subscribe([(f, 1) for f in self._filters])
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_connect")

    def _on_publisher_connect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                return  # the subscribing connection reports the same refusal, once
            self.publisher_connected.set()
            self._log.debug("publisher_connected")
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_publisher_connect")

    def _on_publisher_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.publisher_connected.clear()

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        try:
            # paho calls this inside its `except OSError`, so the cause is still at hand.
            cause = sys.exc_info()[1]
            reason = f"{type(cause).__name__}: {cause}" if cause else "no connection"
            self._failure("connect_failed", reason)
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_connect_fail")

    def _failure(self, event: str, reason: str) -> None:
        # One clear line per distinct failure; repeats of it go to debug.
        key = f"{event}:{reason}"
        log = self._log.debug if key == self._last_failure else self._log.error
        self._last_failure = key
        log(event, reason=reason, retry_max_delay=self._config.reconnect.max_delay)

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                was_connected = self.connected.is_set()
                self.connected.clear()
            self.subscribed.clear()
            if was_connected:
                log = self._log.warning if reason.is_failure else self._log.info
                log("disconnected", reason=str(reason))
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_disconnect")

    def _on_subscribe(
        self,
        _client: Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        try:
            refused = [f for f, r in zip(self._filters, reasons, strict=False) if r.is_failure]
            if refused:
                self._log.error("subscribe_refused", filters=refused)
                return
            granted = [r.value for r in reasons]
            self._log.info("subscribed", filters=self._filters, granted_qos=granted)
            self.subscribed.set()
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_subscribe")

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        try:
            try:
                topic: str | None = message.topic
            except UnicodeDecodeError:
                topic = None
            self._deliver(
                InboundMessage(
                    topic=topic,
                    payload=bytes(message.payload),
                    mid=message.mid,
                    qos=message.qos,
                    generation=self._generation,
                    received_ns=time.monotonic_ns(),
                )
            )
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_message")

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
