"""Structured logging: JSON lines for journald, console output on a terminal, personal data masked.

Log to stdout and let journald (or the container runtime) do the rest. Under systemd each line
starts with the syslog priority `<N>` that journald takes as the entry's PRIORITY.
"""

from __future__ import annotations

import contextlib
import logging
import os
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


# structlog level name -> syslog priority (RFC 5424), the numbers `journalctl -p` filters on.
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "error": 3,
    "critical": 2,
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
        processors.append(redact_processor)
    render: Any
    if console:
        # Plain tracebacks: rich's would print local variables, personal data among them.
        render = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
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
