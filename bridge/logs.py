"""Structured logging: JSON lines for journald, console output on a terminal, personal data masked.

Log to stdout and let journald (or the container runtime) do the rest. Under systemd each line
starts with the syslog priority `<N>` that journald takes as the entry's PRIORITY.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from bridge.core.masking import DROPPED_FIELDS, MASKED_FIELDS, mask, redact, redact_event

__all__ = ["DROPPED_KEYS", "MASKED_KEYS", "configure", "get_logger", "mask", "redact"]

MASKED_KEYS = MASKED_FIELDS
DROPPED_KEYS = DROPPED_FIELDS
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# structlog level name -> syslog priority (RFC 5424), the numbers `journalctl -p` filters on.
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "error": 3,
    "critical": 2,
}


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor masking personal data in every field of an event (SPEC 8)."""
    return redact_event(event_dict)


def connected_to_journald(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd gave us (it sets JOURNAL_STREAM)."""
    # systemd sets JOURNAL_STREAM=<device>:<inode> of the socket; stdout redirected to a file or
    # a pipe under the same unit no longer matches, and gets no prefix.
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        found = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{found.st_dev}:{found.st_ino}"


class PriorityPrefix:
    """Wraps a renderer: every line gets the `<N>` prefix journald reads as the priority."""

    def __init__(self, render: Any) -> None:
        self._render = render

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        # Read before rendering: the console renderer takes keys out of the event.
        priority = PRIORITIES.get(str(event_dict.get("level", "info")), PRIORITIES["info"])
        text = str(self._render(logger, method, event_dict))
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def configure(
    level: str = "info",
    fmt: str = "auto",
    *,
    redact_personal: bool = True,
    stream: TextIO | None = None,
    journald: bool | None = None,
) -> None:
    """Configure structlog once for the process; `journald` None: find out from JOURNAL_STREAM."""
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
    render: Any
    if console:
        # Plain tracebacks: rich's would print local variables, personal data among them.
        render = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        if not redact_personal:
            processors.append(structlog.processors.format_exc_info)
        render = structlog.processors.JSONRenderer(ensure_ascii=False)
    if connected_to_journald(out) if journald is None else journald:
        render = PriorityPrefix(render)
    processors.append(render)
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
