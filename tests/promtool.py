"""Where promtool is: on PATH, or in the venv where scripts/test puts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def promtool() -> str | None:
    """The promtool program, or None where it is not installed."""
    beside = Path(sys.executable).parent / "promtool"
    return shutil.which("promtool") or (str(beside) if beside.is_file() else None)


def check(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `promtool ARGS` (with `text` on stdin); the caller skips when promtool is missing."""
    program = promtool()
    assert program is not None
    return subprocess.run(
        [program, *args], input=text, capture_output=True, text=True, timeout=60, check=False
    )
