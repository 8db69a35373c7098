"""A real `bridge run` in a subprocess, for end-to-end tests of a config, a handler or a sink.

`BridgeProcess` writes the config to `workdir`, starts `python -m bridge run -c CONFIG`, copies
its stdout (the JSON log) and stderr to files through pipes (so that a file-size limit set on
the bridge does not reach its log) and keeps the parsed log events, which a test waits on.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Self

WAIT = 30.0
"""Seconds a wait gives the bridge by default."""
Event = dict[str, Any]


class BridgeProcess:
    """One `python -m bridge run` subprocess and what it logged."""

    wait: ClassVar[float] = WAIT
    """The default of every timeout below."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env` is the whole environment of the process (this one's when None)."""
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        # JSON is YAML: the bridge reads it as written, with no YAML writer here.
        self.config_path.write_text(
            json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.env = None if env is None else dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_ns = 0
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def start(
        self,
        *,
        wrapper: Sequence[str] = (),
        file_size_limit: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Self:
        """Start the bridge, under `wrapper` (a profiler, say) when given, with `env` added.

        With `file_size_limit` no file it writes may grow past that many bytes (RLIMIT_FSIZE on
        the running child; the hard limit stays so that `lift_limit` can take it away).
        """
        base = os.environ if self.env is None else self.env
        environment = {**base, **(env or {}), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "bridge", "run", "-c", str(self.config_path)]
        self.started_ns = time.monotonic_ns()
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter, the wrapper is the caller's
            [*wrapper, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
            env=environment,
        )
        if file_size_limit is not None:
            # Popen returns once the child has exec'd: the bridge has not opened its spool yet.
            limit = (file_size_limit, resource.RLIM_INFINITY)
            resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, limit)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._copy, args=(self.proc.stdout, self.stdout_path, True)),
            threading.Thread(target=self._copy, args=(self.proc.stderr, self.stderr_path, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def events(self, name: str | None = None, **fields: Any) -> list[Event]:
        """The log events so far (those named `name` with `fields`, if given)."""
        with self._lock:
            return [e for e in self._events if _matches(e, name, fields)]

    def count(self, name: str) -> int:
        """How many events named `name` were logged."""
        with self._lock:
            return sum(1 for e in self._events if e.get("event") == name)

    def wait_for(
        self, name: str, count: int = 1, timeout: float | None = None, **fields: Any
    ) -> list[Event]:
        """Wait until `count` events named `name` (with `fields`) were logged; return them."""
        return wait_until(  # type: ignore[no-any-return]
            lambda: found if len(found := self.events(name, **fields)) >= count else None,
            self.wait if timeout is None else timeout,
            lambda: f"{count} x {name} {fields} in the log of {self.name}",
            self,
        )

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Wait for the `subscribed` event."""
        self.wait_for("subscribed", timeout=timeout)
        return self

    def stdout(self) -> str:
        """The JSON log so far."""
        return _read(self.stdout_path)

    def stderr(self) -> str:
        """What the bridge wrote on stderr (complete once it exited)."""
        self._join_readers()
        return _read(self.stderr_path)

    def log(self, tail: int = 6000) -> str:
        """The end of stdout and stderr, for failure messages."""
        return "\n".join(
            f"--- {self.name} {path.suffix[1:]} ---\n{_read(path)[-tail:]}"
            for path in (self.stdout_path, self.stderr_path)
        )

    def lift_limit(self) -> None:
        """Let the bridge's files grow again (the disk has room once more)."""
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, unlimited)

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM and wait for the exit status (SIGKILL and fail after `timeout`)."""
        assert self.proc is not None
        timeout = self.wait if timeout is None else timeout
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.log()}"
            ) from None
        self._join_readers()
        return code

    def kill(self) -> int:
        """SIGKILL and wait."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(self.wait)
        self._join_readers()
        return code

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if the process still runs after `timeout` seconds."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join_readers()
        return code

    def _copy(self, stream: IO[bytes], path: Path, parse: bool) -> None:
        with stream, path.open("ab") as out:
            for line in iter(stream.readline, b""):
                out.write(line)
                out.flush()
                if not parse:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    with self._lock:
                        self._events.append(event)

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5.0)


def wait_until(
    probe: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    bridge: BridgeProcess | None = None,
    *,
    interval: float = 0.02,
) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`,
    or as soon as `bridge` exits (with its log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if bridge is not None and not bridge.running:
            value = probe()
            if value:
                return value
            code = bridge.proc.returncode if bridge.proc else None
            raise AssertionError(
                f"bridge exited ({code}) while waiting for {_say(what)}\n{bridge.log()}"
            )
        if time.monotonic() >= deadline:
            tail = f"\n{bridge.log()}" if bridge is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {_say(what)}{tail}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = WAIT) -> int | None:
    """SIGTERM and wait for the exit status; None if it took SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def _matches(event: Event, name: str | None, fields: Mapping[str, Any]) -> bool:
    if name is not None and event.get("event") != name:
        return False
    return all(event.get(key) == value for key, value in fields.items())


def _say(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
