"""The package's exceptions: one root, one subclass per failing concept."""


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; `path` names the YAML location."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


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
    """A sink could not take a batch. `permanent` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Rejected(BridgeError):
    """A sink took every event of a batch but those at `indexes`, which it refuses for good.

    Raised by sinks that apply a batch record by record (the mirror's savepoints), so that
    only the refused records go to the dead letters and the rest count as delivered.
    """

    def __init__(self, indexes: list[int], cause: SinkError) -> None:
        super().__init__(f"{len(indexes)} refused: {cause}")
        self.indexes = indexes
        self.cause = cause
