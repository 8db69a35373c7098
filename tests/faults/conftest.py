"""The fault scenarios' fixtures: mosquitto, bridge processes, the alarm probe, the receiver.

Bridges' logs stay quiet unless the test failed (they are long).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from brokers import Mosquitto
from faultkit import FAILED, AlarmProbe, Bridges, HookServer, fault_mosquitto


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note on the item whether its test body failed, for the fixtures' teardown."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Overrides the shared fixture: autosave every second, unlimited queues."""
    with fault_mosquitto(tmp_path / "mosquitto") as server:
        yield server


@pytest.fixture
def bridges(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bridges]:
    """Bridge processes; the survivors are killed at the end, the logs printed on failure."""
    made = Bridges(tmp_path)
    yield made
    made.close(show_logs=request.node.stash.get(FAILED, True))


@pytest.fixture
def alarms(mosquitto: Mosquitto) -> Iterator[AlarmProbe]:
    """A probe on the error topic with a persistent session, connected before any bridge."""
    probe = AlarmProbe(mosquitto).open()
    yield probe
    probe.close()


@pytest.fixture
def hook() -> Iterator[HookServer]:
    """A webhook receiver, not listening until the test starts it."""
    server = HookServer()
    yield server
    server.stop()
