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
import time
from collections.abc import Sequence
from typing import Any

import structlog
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessageInfo,
    mqtt_ms_wait_for_puback,
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


MAX_INFLIGHT = 100
"""Publishes paho keeps unacknowledged at once (MQTT 5: at most the broker's Receive Maximum)."""

ACK_SLICE = 0.05
"""Longest a wait for acknowledgements goes without looking whether the connection dropped."""

Message = tuple[str, bytes, int, bool]
"""A publish: topic, payload, QoS, retain."""


class Publisher:
    """A clean-session MQTT client (MQTT 5 or 3.1.1) that publishes batches and waits for the acks.

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
        client.max_inflight_messages_set(MAX_INFLIGHT)
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
        (outcome,) = self.publish_many([(topic, payload, qos, retain)])
        if outcome is not None:
            raise outcome

    def publish_many(self, messages: Sequence[Message]) -> list[BrokerError | None]:
        """Publish every message without waiting between them, then wait once for the acks.

        One outcome per message, in order: None when the broker acknowledged it (a QoS 0
        message once written), `PublishRefused` when it answered with a failure reason code,
        another `BrokerError` when its acknowledgement did not come (timeout, disconnect).
        paho keeps up to `MAX_INFLIGHT` unacknowledged and sends the rest as acks free room,
        in publish order, so the broker sees each topic's messages in order.
        """
        if not messages:
            return []
        if not self.connected.is_set():
            # paho would queue them and send them after reconnecting, while our caller retries
            # them too: each would go out twice.
            return [BrokerError("not connected to the broker")] * len(messages)
        # Only QoS 1 messages paho took have an acknowledgement to wait for; the others stay None.
        infos: list[MQTTMessageInfo | None] = []
        outcomes: list[BrokerError | None] = []
        unacked: list[int] = []
        for topic, payload, qos, retain in messages:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == MQTT_ERR_SUCCESS:
                infos.append(info if qos > 0 else None)
                outcomes.append(None)
            else:
                # paho keeps a QoS 1 message it could not write for after the reconnect;
                # it is withdrawn with the unacknowledged, since our caller retries it.
                infos.append(None)
                outcomes.append(BrokerError(f"publish failed (rc={info.rc})"))
                unacked.append(info.mid)
        self._wait_for_acks(infos)
        connected = self.connected.is_set()
        for index, sent in enumerate(infos):
            if sent is None:
                continue
            reason = self._puback_reasons.pop(sent.mid, None)
            if not sent.is_published():
                unacked.append(sent.mid)
                outcomes[index] = BrokerError(
                    f"no acknowledgement within {self._config.publish_timeout}s"
                    if connected
                    else "disconnected before the acknowledgement"
                )
            elif reason is not None and reason.is_failure:
                outcomes[index] = PublishRefused(f"broker refused the publish: {reason}")
        if unacked:
            self._withdraw(unacked)
        return outcomes

    def _wait_for_acks(self, infos: Sequence[MQTTMessageInfo | None]) -> None:
        """Wait until every message is acknowledged, the connection drops, or the deadline.

        Waited on the last message not yet acknowledged, on paho's own signal for it: the
        broker acknowledges in publish order, so that one comes last and the wait is woken
        once per batch, not once per acknowledgement (each a switch between threads).
        """
        deadline = time.monotonic() + self._config.publish_timeout
        waiting = [info for info in infos if info is not None]
        while self.connected.is_set():
            waiting = [info for info in waiting if not info.is_published()]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return
            # A slice at a time: a dropped connection says so within one.
            waiting[-1].wait_for_publish(min(remaining, ACK_SLICE))

    def _set_window(self, inflight: int) -> None:
        """Keep at most `inflight` publishes unacknowledged on this connection.

        MQTT 5 forbids more than the broker's Receive Maximum (mosquitto's default: 20), which
        CONNACK tells; paho neither follows it nor lets it be set once connected.
        """
        client: Any = self._client
        if getattr(client, "_max_inflight_messages", None) != inflight:
            client._max_inflight_messages = inflight
            self._log.debug("publisher_window", inflight=inflight)

    def _withdraw(self, mids: list[int]) -> None:
        """Drop unacknowledged publishes from paho's session: our caller retries them.

        Otherwise paho sends them again after reconnecting (or acknowledges them late), and
        each goes out once more than the caller's retry. paho has no public call for this.
        """
        client: Any = self._client
        try:
            with client._out_message_mutex:
                for mid in mids:
                    message = client._out_messages.pop(mid, None)
                    if message is not None and message.state == mqtt_ms_wait_for_puback:
                        client._inflight_messages -= 1
                    self._puback_reasons.pop(mid, None)
                # Freed room lets another caller's queued publishes go out now.
                if self.connected.is_set():
                    client._update_inflight()
        except Exception:  # noqa: BLE001 - a paho without these internals: it resends itself
            self._log.exception("publish_withdraw_failed")

    # paho callbacks: run on paho's thread, never raise.

    def _on_connect(
        self,
        _client: Client,
        _userdata: Any,
        _flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
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
            window = getattr(properties, "ReceiveMaximum", None) if self._v5 else None
            self._set_window(min(MAX_INFLIGHT, window or MAX_INFLIGHT))
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
        try:
            self.connected.clear()
        except Exception:  # noqa: BLE001 - must not reach paho's loop
            self._log.exception("callback_failed", callback="on_disconnect")

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
