"""What an outbox row is, before the spool stores it (pure)."""

from __future__ import annotations

from dataclasses import dataclass

ALARMS = "@alarms"
"""The outbox target of the alarms, which the alarm worker publishes."""


@dataclass(frozen=True, slots=True)
class NewRow:
    """An outbox row to insert: which target, which ordering key, what body (text, or its
    UTF-8 bytes as a digest carries it: the spool stores both as the same text)."""

    target: str
    okey: str
    body: str | bytes


def alarm_outbox_row(body: str) -> NewRow:
    """The outbox row of an encoded alarm; alarms keep one order among themselves."""
    return NewRow(ALARMS, "", body)
