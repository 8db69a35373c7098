"""Sampling profile of the bridge while it drains: py-spy attached to the running process.

py-spy (from PyPI) samples every thread without touching the bridge's code. The raw output
(collapsed stacks, one line per distinct stack with its sample count) is summarised here:
samples per thread, self time per function, inclusive time per function, self time per
module, all as shares of the samples in which a thread was busy (not idle).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    """The py-spy executable; installed with pip on first use."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if Path(found).exists():
        return found
    print("installing py-spy (first use of --profile) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy could not be installed")
    return found


class Profiler:
    """py-spy record attached to a pid until `finish()`."""

    def __init__(self, out: Path, rate: int = 200) -> None:
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = py_spy()

    def attach(self, pid: int) -> None:
        """Start sampling `pid` (non-blocking: the bridge is not paused per sample)."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)

    def finish(self) -> None:
        """Stop sampling and let py-spy write its file."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _short(path: str) -> str:
    for marker in ("site-packages/", "/bridge/", "lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "/bridge/":
                return "bridge/" + tail
            if marker == "lib/python3":
                return "stdlib/" + tail.split("/", 1)[1] if "/" in tail else tail
            return tail
    return path


def _thread_name(label: str) -> str:
    # "thread (0x7f..): bridge-intake" or "process 123:..." depending on the py-spy version
    name = label.split(":", 1)[1].strip() if ":" in label else label
    if name.startswith("deliver-"):
        return name
    if name.startswith("Thread-") or name == "":
        return "other"
    return name


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    """Shares of busy samples: per thread, per function (self and inclusive), per module."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    per_thread_self: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = _thread_name(parts[0])
        frames = []
        for part in parts[1:]:
            match = _FRAME.match(part)
            if match:
                frames.append(f"{match['func']} ({_short(match['file'])})")
            else:
                frames.append(part)
        if not frames:
            continue
        total += count
        threads[thread] += count
        leaf = frames[-1]
        self_time[leaf] += count
        per_thread_self[thread][leaf] += count
        modules[leaf.rsplit("(", 1)[-1].rstrip(")")] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return (
            [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(n)] if total else []
        )

    return {
        "busy_samples": total,
        "threads": shares(threads, 10),
        "self": shares(self_time),
        "inclusive": shares(inclusive, 40),
        "modules": shares(modules, 15),
        "per_thread_self": {
            t: [(k, round(100.0 * v / total, 1)) for k, v in c.most_common(12)]
            for t, c in per_thread_self.items()
            if threads[t] >= 0.03 * total
        },
    }


def render(summary: dict[str, Any]) -> str:
    """A readable text report of `summarise`'s result."""
    lines = [f"busy samples: {summary['busy_samples']} (shares are % of them)", "", "threads:"]
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["threads"]]
    lines += ["", "self time by function:"]
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["self"]]
    lines += ["", "self time by module:"]
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["modules"]]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["inclusive"]]
    for thread, items in summary["per_thread_self"].items():
        lines += ["", f"self time in thread {thread}:"]
        lines += [f"  {share:5.1f}%  {name}" for name, share in items]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarise(Path(sys.argv[1]))))
