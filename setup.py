"""Records the git commit in the built package, for `customer-bridge --version`.

Everything else about the build is in pyproject.toml.
"""

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        command = ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


class BuildWithCommit(build_py):
    """build_py that also writes bridge/COMMIT (from $CUSTOMER_BRIDGE_COMMIT or git)."""

    def run(self) -> None:
        super().run()
        # A Docker build has no .git: the image passes the commit in as a build argument.
        commit = os.environ.get("CUSTOMER_BRIDGE_COMMIT", "").strip() or _git_commit()
        if commit and not self.dry_run:
            Path(self.build_lib, "bridge", "COMMIT").write_text(commit + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildWithCommit})
