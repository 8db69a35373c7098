"""Fixtures that start real MQTT servers on free loopback ports, and stop them afterwards."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from brokers import Mosquitto

from bridge.broker import EmbeddedBroker

# The `broker` fixture's parameters name the fixture that serves each broker.
_BROKER_FIXTURES = {"amqtt": "embedded_broker", "mosquitto": "mosquitto"}


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto with persistence in tmp_path; restart() keeps port and sessions."""
    with Mosquitto(tmp_path / "mosquitto", persistence=True) as server:
        yield server


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment: loopback requests go straight to the test's server."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The embedded amqtt broker, on a port the OS picks."""
    with EmbeddedBroker("127.0.0.1", 0) as server:
        yield server


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | Mosquitto:
    """Each broker in turn, for behaviour that must hold on both."""
    server: EmbeddedBroker | Mosquitto = request.getfixturevalue(_BROKER_FIXTURES[request.param])
    return server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses mosquitto, so that `-m "not mosquitto"` deselects it."""
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mosquitto)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach mosquitto's log to the report of a failed test."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Mosquitto):
                report.sections.append((f"mosquitto log (port {value.port})", value.log()))
    return report
