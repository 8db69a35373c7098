"""What an install carries: the SPDX license and its file, the commit recorded at build, and a
Docker image whose dependency layer comes before the code and leaves the embedded broker out."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_expression_with_its_text_shipped() -> None:
    """pyproject names Apache-2.0 as an SPDX string (not the deprecated table) and ships LICENSE."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_wheel_records_the_commit_and_license_without_deprecation_warnings(
    tmp_path: Path,
) -> None:
    """A wheel built here carries bridge/COMMIT and License-Expression; the build warns of
    nothing deprecated."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            "-v",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUSTOMER_BRIDGE_COMMIT": "feedfacecafe"},
        check=False,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    assert "deprecat" not in output.lower(), [
        line for line in output.splitlines() if "eprecat" in line
    ]
    (wheel,) = tmp_path.glob("customer_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("bridge/COMMIT").decode().strip() == "feedfacecafe"
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
        assert "License-Expression: Apache-2.0" in lines
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
        assert not any(
            line.startswith("Requires-Dist: amqtt") and "extra" not in line for line in lines
        )
        assert not any(
            n.endswith("entry_points.txt") and b"\nbridge =" in archive.read(n)
            for n in archive.namelist()
        )


def test_dockerfile_installs_dependencies_before_the_code_and_no_embedded_broker() -> None:
    """The dependency layer is built from pyproject.toml alone; the code comes after; no amqtt."""
    lines = [
        line.strip() for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    ]
    copies = [
        i for i, line in enumerate(lines) if line.startswith("COPY ") and "--from" not in line
    ]
    first, code = copies[0], next(i for i in copies if "bridge" in lines[i].split()[1:-1])
    assert lines[first] == "COPY pyproject.toml ./"
    requirements = next(
        i for i, line in enumerate(lines) if "requirements.txt" in line and "pip install" in line
    )
    assert first < requirements < code
    assert "--no-deps" in " ".join(lines[code:])
    assert "embedded" not in " ".join(line for line in lines if "pip install" in line)
    assert 'ENTRYPOINT ["customer-bridge"]' in lines
