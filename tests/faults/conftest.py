"""Fault tests keep the bridges' logs quiet unless the test failed (they are long)."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from faultkit import FAILED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note on the item whether its test body failed, for the fixtures' teardown."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report
