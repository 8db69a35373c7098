"""A throwaway PostgreSQL cluster for the tests: initdb and pg_ctl on a free loopback port.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to
an unprivileged user (`nobody`). Its data directory is a temporary directory, removed on stop.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from brokers import LOOPBACK, free_port, in_ci, wait_for_port

USER = "bridge"
DATABASE = "mirror"


def postgres_bin() -> Path:
    """Debian's server binaries: skips the test when absent, fails it when CI is set."""
    override = os.environ.get("PG_BIN")
    candidates = [override] if override else sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    for candidate in reversed(candidates):
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so it must be installed", pytrace=False)
    pytest.skip(reason)


class Postgres:
    """One cluster, trust authentication on 127.0.0.1, database `mirror` owned by role `bridge`."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self.data = self.dir / "data"
        self._owner: pwd.struct_passwd | None = pwd.getpwnam("nobody") if os.getuid() == 0 else None

    @property
    def url(self) -> str:
        """The mirror's database URL."""
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        owner = self._owner
        return subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            cwd=self.dir,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(self.dir)},
            timeout=120,
        )

    def start(self) -> None:
        """initdb, start on the port, create the role and the database."""
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses={LOOPBACK} -c port={self.port} -c fsync=off"
            f" -c unix_socket_directories={self.dir} -c max_connections=40"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        if not wait_for_port(LOOPBACK, self.port, 30):
            raise RuntimeError(f"PostgreSQL did not listen: {self.log()}")
        self.sql(f"CREATE ROLE {USER} LOGIN")
        self.sql(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser through psql; its output."""
        return self._run(
            str(self.bin / "psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres",
            "-d", database, "-Atc", statement,
        ).stdout  # fmt: skip

    def log(self) -> str:
        """The server log."""
        try:
            return (self.dir / "log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast) and remove its directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
