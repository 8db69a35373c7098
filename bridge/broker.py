"""An embedded amqtt broker for the demo and development; amqtt speaks MQTT 3.1.1 only and does not
redeliver QoS 1 messages queued for offline persistent sessions, so persistence tests use mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from bridge.errors import BrokerError, ConfigError

try:
    from amqtt.broker import Broker
except ImportError:  # pragma: no cover - the lean install, without the `embedded` extra
    raise ConfigError(
        "broker.embedded",
        "the embedded broker is not installed: pip install 'customer-bridge[embedded]'",
    ) from None

# Loggers amqtt writes to: its own tree, and the state-machine library it drives sessions with.
_AMQTT_LOGGERS = ("amqtt", "transitions")

# Anonymous auth is the only plugin: with no auth plugin amqtt refuses every client, and the
# defaults add $SYS topics and packet/event loggers that only make noise.
_PLUGINS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


class _DropStartupTraceback(logging.Filter):
    """Drop amqtt's traceback for a failed start: `start` raises the same error as BrokerError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Broker startup failed"


_STARTUP_FILTER = _DropStartupTraceback()


class EmbeddedBroker:
    """An amqtt broker served from a daemon thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._crash: BaseException | None = None

    @property
    def host(self) -> str:
        """The address the listener is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The real port once started, even if 0 was asked for; a restart binds it again."""
        return self._port if self._port is not None else self._requested_port

    @property
    def running(self) -> bool:
        """Whether the broker thread is serving."""
        return self._thread is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; return once the listener accepts TCP connections."""
        if self._thread is not None:
            raise BrokerError(f"embedded broker on {self._where()} is already running")
        _quiet_amqtt()
        # The loop is made here, run in the thread: stop() can then always reach it.
        runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self._loop = runner.get_loop()
        self._stopping = asyncio.Event()
        self._crash = None
        started: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._serve,
            args=(runner, self._stopping, started),
            name=f"amqtt-broker-{self._where()}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._port = started.result(timeout)
        except TimeoutError:
            self._abandon(timeout)
            raise BrokerError(
                f"embedded broker on {self._where()} did not start within {timeout}s"
            ) from None
        except Exception as exc:
            self._abandon(timeout)
            cause = exc.__cause__ or exc
            raise BrokerError(f"embedded broker on {self._where()} did not start: {cause}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down and join its thread; a broker that is not running is left alone."""
        thread = self._thread
        if thread is None:
            return
        self._wake()
        thread.join(timeout)
        if thread.is_alive():
            raise BrokerError(f"embedded broker on {self._where()} did not stop within {timeout}s")
        where = self._where()
        crash = self._crash
        self._reset()
        if crash is not None:
            raise BrokerError(f"embedded broker on {where} failed: {crash}") from crash

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self._where()}, {state})"

    def _where(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            "plugins": dict(_PLUGINS),
        }

    def _serve(self, runner: asyncio.Runner, stopping: asyncio.Event, started: Future[int]) -> None:
        try:
            with runner:
                runner.run(self._main(stopping, started))
        except Exception as exc:  # noqa: BLE001 - reported by start() or stop(), as BrokerError
            self._crash = exc
            if not started.done():
                started.set_exception(exc)

    async def _main(self, stopping: asyncio.Event, started: Future[int]) -> None:
        try:
            broker = Broker(self._config())
            await broker.start()
        except Exception as exc:  # noqa: BLE001 - start() raises it as BrokerError
            started.set_exception(exc)
            return
        # asyncio.start_server has returned, so the socket listens: connections queue from now on.
        started.set_result(_bound_port(broker, self.port))
        await stopping.wait()
        await broker.shutdown()

    def _wake(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            return
        # RuntimeError: the loop is closed already, because the thread finished on its own.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stopping.set)

    def _abandon(self, timeout: float) -> None:
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # keep the handle, so that a later stop() can still join it
        self._reset()

    def _reset(self) -> None:
        self._thread = None
        self._loop = None
        self._stopping = None
        self._crash = None


def _bound_port(broker: Any, requested: int) -> int:
    """The port the default listener got from the OS (amqtt keeps its servers private)."""
    server = broker._servers.get("default")
    sockets = getattr(getattr(server, "instance", None), "sockets", None)
    if not sockets:
        return requested
    port: int = sockets[0].getsockname()[1]
    return port


def _quiet_amqtt() -> None:
    """Raise amqtt's loggers to WARNING, unless someone chose a level for them already."""
    for name in _AMQTT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    broker_logger = logging.getLogger("amqtt.broker")
    if _STARTUP_FILTER not in broker_logger.filters:
        broker_logger.addFilter(_STARTUP_FILTER)
