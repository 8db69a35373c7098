"""Structured logging: JSON lines for journald, console output on a terminal, personal data masked.

Log to stdout and let journald (or the container runtime) do the rest.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from bridge.masking import DROPPED_FIELDS, MASKED_FIELDS, mask, redact, redact_event

__all__ = ["DROPPED_KEYS", "MASKED_KEYS", "configure", "get_logger", "mask", "redact"]

MASKED_KEYS = MASKED_FIELDS
DROPPED_KEYS = DROPPED_FIELDS
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor masking personal data in every field of an event (SPEC 8)."""
    return redact_event(event_dict)


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
        # The traceback as text first, so that what an exception quotes is masked too.
        processors += [structlog.processors.format_exc_info, redact_processor]
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
