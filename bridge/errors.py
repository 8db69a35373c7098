"""The package's exceptions: one root, one subclass per failing concept."""


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; `path` names the YAML location."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class UnavailableError(BridgeError):
    """Something the bridge needs at start is taken by another process (the health port)."""


class BrokerError(BridgeError):
    """The broker could not be reached, or refused us."""


class PublishRefused(BrokerError):
    """The broker answered a publish with a failure reason code: sending it again will not help."""


class Partial(BridgeError):
    """A sink took the first `taken` events of a batch, then failed with `cause`.

    Raised by sinks that hand events over one at a time (MQTT publishes), so that a retry
    sends only what was not taken.
    """

    def __init__(self, taken: int, cause: Exception) -> None:
        super().__init__(f"{taken} taken, then: {cause}")
        self.taken = taken
        self.cause = cause


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
