"""The package's exceptions: one root, one subclass per failing concept."""

from __future__ import annotations


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
