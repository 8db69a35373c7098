"""The sink registry: every built-in sink type, its config model, and how to build one.

Adding a sink: a module with a `<Name>Config(SinkConfigBase)` holding a
`type: Literal[...]` and a `build(context) -> Sink`, then one line in `SinkConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from bridge.core.routes import Route
from bridge.errors import ConfigError
from bridge.sinks.base import (
    EncodedSink,
    JsonSink,
    LinesSink,
    Partial,
    Refused,
    SendResult,
    Sink,
    SinkConfigBase,
    SinkContext,
)
from bridge.sinks.jsonl import JsonlConfig
from bridge.sinks.log import LogConfig
from bridge.sinks.mirror import MirrorConfig
from bridge.sinks.mobile_events import MobileEventsConfig
from bridge.sinks.python import PythonConfig
from bridge.sinks.quick_audience import QuickAudienceConfig
from bridge.sinks.quick_audience_openapi import QuickAudienceOpenApiConfig
from bridge.sinks.republish import RepublishConfig
from bridge.sinks.webhook import WebhookConfig

SinkConfig = Annotated[
    JsonlConfig
    | LogConfig
    | RepublishConfig
    | PythonConfig
    | WebhookConfig
    | QuickAudienceConfig
    | QuickAudienceOpenApiConfig
    | MobileEventsConfig
    | MirrorConfig,
    Field(discriminator="type"),
]

__all__ = [
    "EncodedSink",
    "JsonSink",
    "LinesSink",
    "Partial",
    "Refused",
    "Route",
    "SendResult",
    "Sink",
    "SinkConfig",
    "SinkConfigBase",
    "SinkContext",
    "build_sink",
    "build_sinks",
]


def build_sink(config: SinkConfig, context: SinkContext) -> Sink:
    """Build the sink a config entry describes."""
    return config.build(context)


def _check_unique(built: Sequence[Sink], index: int) -> None:
    # The name keys the sink's rows in the spool, so it must be unique.
    name = built[-1].name
    if any(other.name == name for other in built[:-1]):
        raise ConfigError(f"sinks[{index}]", f"a second sink named {name!r}: give it a name")


def build_sinks(configs: Sequence[SinkConfig], context: SinkContext) -> list[Sink]:
    """Build every sink; a ConfigError names the sink's place (`sinks[2].handler`)."""
    built: list[Sink] = []
    try:
        for index, config in enumerate(configs):
            try:
                sink = build_sink(config, context)
            except ConfigError as exc:
                path = f"sinks[{index}]" + (f".{exc.path}" if exc.path else "")
                raise ConfigError(path, exc.message) from None
            built.append(sink)
            _check_unique(built, index)
    except ConfigError:
        for sink in built:
            sink.close()
        raise
    return built
