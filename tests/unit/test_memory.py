"""The allocator setting: freed large buffers leave the process, even after a large one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.memory import ENVIRONMENT, fix_mmap_threshold

# Free an 8 MiB block (glibc would raise its threshold to that), then allocate 64 blocks of
# 1 MiB and free all but the last: what stays resident is what the heap kept.
RETAINED = """
import sys
from bridge.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

big = bytearray(8 << 20)
del big
before = rss()
blocks = [bytearray(1 << 20) for _ in range(64)]
del blocks[:-1]
print(rss() - before)
"""


def retained_mb(mode: str) -> float:
    """MiB still resident after the blocks were freed, in a fresh interpreter."""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", RETAINED, mode], capture_output=True, text=True, env=env, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_are_given_back_once_the_threshold_is_fixed() -> None:
    """With glibc's adjustment, 63 freed MiB stay resident; with the threshold held, none."""
    assert retained_mb("plain") > 48
    assert retained_mb("fixed") < 8


def test_an_operators_own_threshold_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """MALLOC_MMAP_THRESHOLD_ in the environment: the bridge leaves the allocator alone."""
    monkeypatch.setenv(ENVIRONMENT, "65536")
    assert fix_mmap_threshold() is False
