"""The sink registry: every built-in sink type, its config model, and how to build one.

Adding a sink: a module with a `<Name>Config(SinkConfigBase)` holding a
`type: Literal[...]` and a `build(context) -> Sink`, then one line in `SinkConfig`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from bridge.sinks.base import Route, Sink, SinkConfigBase, SinkContext
from bridge.sinks.jsonl import JsonlConfig
from bridge.sinks.log import LogConfig
from bridge.sinks.python import PythonConfig
from bridge.sinks.republish import RepublishConfig

SinkConfig = Annotated[
    JsonlConfig | LogConfig | RepublishConfig | PythonConfig,
    Field(discriminator="type"),
]

__all__ = ["Route", "Sink", "SinkConfig", "SinkConfigBase", "SinkContext", "build_sink"]


def build_sink(config: SinkConfig, context: SinkContext) -> Sink:
    """Build the sink a config entry describes."""
    return config.build(context)
