"""Structured logging: JSON lines for journald, console output on a terminal, personal data masked.

Log to stdout and let journald (or the container runtime) do the rest.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

MASKED_KEYS = frozenset({"phone", "idNumber", "contractPhone", "email", "address"})
DROPPED_KEYS = frozenset({"facePhoto"})
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def mask(value: object) -> str:
    """Hide a personal value, keeping at most its last two characters as a hint."""
    text = str(value)
    if len(text) <= 4:
        return "***"
    return "*" * (len(text) - 2) + text[-2:]


_PLAIN = frozenset({str, int, float, bool, type(None)})


def redact(value: Any) -> Any:
    """A copy of `value` with personal fields masked or dropped, at any depth."""
    # type() tests first: isinstance against the Mapping ABC is slow, and log fields are
    # mostly plain scalars.
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in DROPPED_KEYS:
                continue
            if key in MASKED_KEYS and item is not None:
                out[key] = mask(item)
            elif type(item) in _PLAIN:
                out[key] = item
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor applying `redact` to every field of an event."""
    return redact(event_dict)  # type: ignore[no-any-return]


def configure(
    level: str = "info",
    fmt: str = "auto",
    *,
    redact_personal: bool = True,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog once for the process."""
    out = stream or sys.stdout
    reconfigure = getattr(out, "reconfigure", None)
    if callable(reconfigure):
        # A log line must never fail to encode (a Chinese vendor under an ASCII locale).
        with contextlib.suppress(ValueError, OSError):
            reconfigure(encoding="utf-8", errors="backslashreplace")
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if redact_personal:
        processors.append(redact_processor)
    if console:
        # Plain tracebacks: rich's would print local variables, personal data among them.
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**fields: Any) -> structlog.typing.FilteringBoundLogger:
    """The bridge's logger, with `fields` bound."""
    # Bound at once: the lazy proxy structlog hands out would rebuild the logger per call.
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("bridge").bind(**fields)
    return logger
