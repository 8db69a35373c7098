"""The package's exceptions: one root, one subclass per failing concept."""

from __future__ import annotations

from collections.abc import Mapping


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; `path` names the YAML location of the first problem and
    `problems` holds every (path, message) found, in file order."""

    def __init__(self, path: str, message: str, *, more: tuple[tuple[str, str], ...] = ()) -> None:
        self.path = path
        self.message = message
        self.problems = ((path, message), *more)
        lines = [f"{where}: {what}" if where else what for where, what in self.problems]
        if more:
            super().__init__(f"{len(lines)} problems:\n  " + "\n  ".join(lines))
        else:
            super().__init__(lines[0])

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> ConfigError:
        """One error holding every problem of a non-empty list."""
        (path, message), *more = problems
        return cls(path, message, more=tuple(more))


class UnavailableError(BridgeError):
    """Something the bridge needs at start is taken by another process (the health port)."""


class BrokerError(BridgeError):
    """The broker could not be reached, or refused us."""


class PublishRefused(BrokerError):
    """The broker answered a publish with a failure reason code: sending it again will not help."""


class Partial(BridgeError):
    """A sink took the first `taken` events of a batch, then failed with `cause`.

    Raised by sinks that hand events over one at a time (MQTT publishes), so that a retry
    sends only what was not taken. `refused` names the positions among the first `taken`
    that were refused for good (with the reason) rather than taken.
    """

    def __init__(
        self, taken: int, cause: Exception, refused: Mapping[int, str] | None = None
    ) -> None:
        super().__init__(f"{taken} taken, then: {cause}")
        self.taken = taken
        self.cause = cause
        self.refused: Mapping[int, str] = refused or {}


class SinkError(BridgeError):
    """A sink could not take a batch. `permanent` says whether a retry can help.

    `retry_after` is the wait in seconds the downstream system asked for (`Retry-After`).
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
