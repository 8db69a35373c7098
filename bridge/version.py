"""The version and the git commit the running code comes from (`--version`, build info)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from bridge import __version__

UNKNOWN = "unknown"
_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def commit() -> str:
    """The commit recorded at build time, else the checkout's HEAD, else "unknown"."""
    try:
        recorded = (_PACKAGE / "COMMIT").read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    return recorded or _checkout_head() or UNKNOWN


def describe(prog: str = "customer-bridge") -> str:
    """The `--version` line: `customer-bridge 0.1.0 (commit 0123abcd4567)`."""
    return f"{prog} {__version__} (commit {commit()})"


def _checkout_head() -> str | None:
    root = _PACKAGE.parent
    # Only our own checkout: a venv inside some other repository must not report its commit.
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        return None
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    # Edited tracked files: the code running is not exactly that commit.
    changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if changed else "")


def _git(root: Path, *args: str) -> str | None:
    command = ["git", "-C", str(root), *args]
    try:
        # A fixed argv without a shell; git is looked up on PATH like any tool the operator runs.
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
