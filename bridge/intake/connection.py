"""The intake's view of the broker: batches in, acks out, a connection generation.

`BrokerConnection` is all the intake needs; `connect` builds the real one (our own
receive-only client) from the config. `bridge.testing.FakeConnection` is the in-memory one
the tests drive.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from bridge.config import BrokerConfig
from bridge.errors import ConfigError
from bridge.intake import codec
from bridge.intake.client import ConnectSettings, IntakeClient
from bridge.intake.message import InboundMessage

OnBatch = Callable[[list[InboundMessage]], None]


class BrokerConnection(Protocol):
    """A subscribing connection that hands over batches and takes acks by generation."""

    subscribed: threading.Event

    @property
    def generation(self) -> int:
        """The number of the current connection; acks of an older one are refused."""

    def start(self) -> None:
        """Connect in the background; keep reconnecting until `stop`."""

    def stop(self) -> None:
        """Disconnect (the session stays on the broker)."""

    def ack(self, generation: int, packet_ids: Sequence[int]) -> bool:
        """Acknowledge `packet_ids`, in order, on connection `generation`; False if gone."""


def settings_for(config: BrokerConfig) -> ConnectSettings:
    """The intake connection's settings from the broker section of the config."""
    username, password = config.credentials()
    context = None
    if config.tls is not None:
        tls = config.tls
        try:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file is not None and tls.key_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError("broker.tls", f"cannot load the TLS files: {exc}") from None
        context.check_hostname = tls.verify_hostname
    return ConnectSettings(
        host=config.host,
        port=config.port,
        client_id=config.client_id,
        version=codec.MQTT_5 if config.protocol == "5" else codec.MQTT_311,
        keepalive=config.keepalive,
        session_expiry=config.session_expiry,
        receive_maximum=config.receive_maximum,
        max_packet_size=config.max_packet_size,
        username=username,
        password=password,
        ssl_context=context,
        min_delay=float(config.reconnect.min_delay),
        max_delay=float(config.reconnect.max_delay),
    )


def connect(
    config: BrokerConfig,
    filters: Sequence[str],
    on_batch: OnBatch,
    logger: structlog.typing.FilteringBoundLogger,
) -> IntakeClient:
    """The real intake connection (not started)."""
    return IntakeClient(settings_for(config), filters, on_batch, logger)
