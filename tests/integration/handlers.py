"""Sink handlers the integration tests load into a bridge subprocess (`type: python`).

The bridge imports them as `handlers:<Class>`, with tests/integration on its PYTHONPATH.
They talk to the test through files, since the test and the bridge share no memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bridge.core.events import DownstreamEvent
from bridge.errors import SinkError


def _msg_ids(events: Sequence[Any]) -> list[str | None]:
    return [event.to_dict()["msgId"] for event in events]


class Blocking:
    """Never takes a batch: touches `entered`, then waits for `release` (which tests never create).

    The bridge thus holds the message unacknowledged for as long as the test likes. `limit`
    bounds the wait so that an orphaned bridge cannot hang forever; reaching it raises, which
    the bridge treats as a transient failure.
    """

    def __init__(self, entered: str, release: str, limit: float = 60.0) -> None:
        self._entered = Path(entered)
        self._release = Path(release)
        self._limit = limit

    def send(self, events: Sequence[Any]) -> None:
        """Record the batch's msgIds in `entered`, then block until released."""
        with self._entered.open("a", encoding="utf-8") as out:
            out.write(json.dumps(_msg_ids(events)) + "\n")
        deadline = time.monotonic() + self._limit
        while not self._release.exists():
            if time.monotonic() >= deadline:
                raise TimeoutError("never released")
            time.sleep(0.02)


class Slow:
    """Takes every batch after `delay` seconds, appending its msgIds to `record` if given."""

    def __init__(self, delay: float = 0.3, record: str | None = None) -> None:
        self._delay = delay
        self._record = Path(record) if record else None

    def send(self, events: Sequence[Any]) -> None:
        """Sleep, then note the batch as taken."""
        time.sleep(self._delay)
        if self._record is not None:
            with self._record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(_msg_ids(events)) + "\n")


class Refusing:
    """Refuses every batch for good, as a downstream system answering 4xx would."""

    def send(self, events: Sequence[Any]) -> None:
        """Raise a permanent SinkError."""
        raise SinkError("downstream refused the batch", permanent=True)


class Flaky:
    """Fails its first `failures` calls, and any call while the file `healthy` (if named) is absent.

    Each failure is transient (a plain exception), so the bridge retries with backoff.
    """

    def __init__(self, failures: int = 0, healthy: str | None = None) -> None:
        self._failures = failures
        self._healthy = Path(healthy) if healthy else None
        self.calls = 0

    def send(self, events: Sequence[Any]) -> None:
        """Raise while unhealthy, else take the batch."""
        self.calls += 1
        if self.calls <= self._failures:
            raise ConnectionError("downstream unavailable")
        if self._healthy is not None and not self._healthy.exists():
            raise ConnectionError("downstream unavailable")


class CrmHandler:
    """The handler of docs/testing.md: posts each batch's customers to a CRM as JSON."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self._client = httpx.Client(timeout=timeout)
        self._url = url

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """One POST a batch; 4xx is permanent, anything else that is not 2xx is retried."""
        body = {"customers": [event.to_dict()["customer"] for event in events]}
        try:
            answer = self._client.post(self._url, json=body)
        except httpx.TransportError as exc:
            raise SinkError(f"crm unreachable: {type(exc).__name__}") from None
        if 400 <= answer.status_code < 500:
            raise SinkError(f"crm answered {answer.status_code}", permanent=True)
        if not answer.is_success:
            raise SinkError(f"crm answered {answer.status_code}")

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
