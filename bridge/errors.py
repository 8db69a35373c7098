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


class SinkError(BridgeError):
    """A sink could not take a batch. `permanent` says whether a retry can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
