"""systemd/customer-bridge.service: systemd-analyze verifies it and rates its exposure low."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "customer-bridge.service"
BINARY = "/opt/customer-bridge/bin/customer-bridge"
MAX_EXPOSURE = 1.5  # docs/operations.md records the score; raise this only with a reason there

ANALYZE = shutil.which("systemd-analyze")
# Locally a missing systemd-analyze skips; in CI (scripts/test installs it) it fails.
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


def settings(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value assigned to it, in order (a unit may repeat a key)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names a stub executable in tmp_path.

    `verify` fails when the ExecStart binary does not exist, and /opt/customer-bridge exists
    only on an installed host; everything else in the copy is the shipped unit.
    """
    stub = tmp_path / "bin" / "customer-bridge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={BINARY} ") == 1, "the test rewrites this ExecStart"
    copy = tmp_path / UNIT.name  # the name matters: verify derives the unit type from it
    copy.write_text(text.replace(f"ExecStart={BINARY} ", f"ExecStart={stub} "))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze, bounded in time, without colours or a pager."""
    assert ANALYZE is not None, "CI must install systemd (apt-get install systemd)"
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@needs_analyze
def test_unit_verifies_cleanly(unit: Path) -> None:
    """`systemd-analyze verify` passes and has nothing to say about the unit.

    verify exits 0 on unknown keys and unparsable values (it only warns), so any line naming
    the unit fails the test too.
    """
    result = analyze("verify", "--man=no", str(unit))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if unit.stem in line] == []


@needs_analyze
def test_exposure_stays_low(unit: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit at MAX_EXPOSURE or below."""
    result = analyze("security", "--offline=true", str(unit))
    if result.returncode != 0 and "--offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {result.stderr.strip()}")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_pins_the_contract_with_the_bridge() -> None:
    """The settings the bridge's code relies on: sd_notify, watchdog, SIGHUP reload, exit 78."""
    found = settings(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30s"],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.Restart": ["on-failure"],
        "Service.RestartPreventExitStatus": ["78"],
        "Service.DynamicUser": ["yes"],
        "Service.StateDirectory": ["customer-bridge"],
        "Service.ConfigurationDirectory": ["customer-bridge"],
        "Service.CapabilityBoundingSet": [""],
        "Service.RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "Service.StandardOutput": ["journal"],
        "Service.SyslogLevelPrefix": ["yes"],
    }
    assert {key: found.get(key) for key in expected} == expected
    assert found["Service.ExecStart"] == [
        f"{BINARY} run -c ${{CONFIGURATION_DIRECTORY}}/config.yaml"
    ]
    assert any(v.startswith("broker-password:") for v in found["Service.LoadCredential"])
