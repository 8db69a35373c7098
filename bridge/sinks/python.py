"""The Python handler sink: an operator's own class, loaded by `package.module:Class`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_serializer

from bridge.core.events import DownstreamEvent
from bridge.errors import ConfigError, SinkError
from bridge.secrets import masked_options
from bridge.sinks.base import Partial, Refused, SendResult, SinkConfigBase, SinkContext

_IMPORT_PATH = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"


class PythonConfig(SinkConfigBase):
    """`type: python`: `handler` is `package.module:Class`; `options` go to its constructor.

    The class needs `send(events)`, taking a list of `DownstreamEvent` (each has
    `to_dict()`); `close()` is optional. Raise `bridge.errors.SinkError` with
    `permanent=True` for a batch that can never be taken (the bridge then splits it to
    find the records refused on their own), or return `bridge.sinks.Refused` naming them
    by position; any other exception is retried.
    """

    type: Literal["python"]
    handler: str = Field(pattern=_IMPORT_PATH)
    options: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_serializer("options")
    def _shown(self, value: dict[str, Any]) -> dict[str, Any]:
        # The handler takes plain values, so a credential among them is masked by its name.
        return masked_options(value)

    def build(self, context: SinkContext) -> PythonSink:
        """Import the class and instantiate it with `options`."""
        module_name, _, class_name = self.handler.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, class_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the config's fault
            raise ConfigError(
                "handler", f"cannot import {self.handler}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            handler = factory(**self.options)
        except Exception as exc:  # noqa: BLE001 - e.g. options the class does not take
            raise ConfigError(
                "options", f"{self.handler} refused its options: {type(exc).__name__}: {exc}"
            ) from None
        if not callable(getattr(handler, "send", None)):
            raise ConfigError("handler", f"{self.handler} has no send(events) method")
        return PythonSink(self.name or self.handler, handler)


class PythonSink:
    """Calls the operator's handler; its exceptions become transient SinkErrors."""

    direct = False
    concurrent = False  # the operator's handler need not be thread-safe

    def __init__(self, name: str, handler: Any) -> None:
        self.name = name
        self._handler = handler

    def send(self, events: Sequence[DownstreamEvent]) -> SendResult:
        """Pass the batch to the handler; what it refused by position, if it says."""
        try:
            answer = self._handler.send(list(events))
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - the operator's code may raise anything
            raise SinkError(f"handler raised {type(exc).__name__}") from None
        if isinstance(answer, Partial):
            if not (isinstance(answer.taken, int) and 0 <= answer.taken < len(events)):
                raise SinkError(f"handler took a part outside the batch: {answer.taken!r}")
            self._check_positions(answer.refused, answer.taken)
            return answer
        if not isinstance(answer, Refused):
            return None  # a handler that returns anything else took the batch whole
        self._check_positions(answer.records, len(events))
        return answer

    @staticmethod
    def _check_positions(refused: Mapping[int, str], size: int) -> None:
        wrong = [i for i in refused if not (isinstance(i, int) and 0 <= i < size)]
        if wrong:
            # Trusting a wrong position would drop or deliver the wrong record: retry instead.
            raise SinkError(f"handler refused positions outside the batch: {wrong[:5]}")

    def close(self) -> None:
        """Call the handler's close() if it has one."""
        close = getattr(self._handler, "close", None)
        if callable(close):
            close()
