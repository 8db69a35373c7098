"""Stop requests caught from the first instruction of `bridge run`, before anything is loaded.

Importing the bridge (pydantic, paho, structlog, the sinks) takes a good part of a second; a
SIGTERM in that time used to end the process by the signal (status -15). The command's entry
holds SIGTERM and SIGINT as a request from its first line on; the daemon honours one that
came before it started by taking nothing and exiting 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
requested = threading.Event()
"""Set by a SIGTERM or SIGINT caught before the daemon installed its own handlers."""


def _on_stop(_signum: int, _frame: FrameType | None) -> None:
    requested.set()


def catch_early(argv: Sequence[str]) -> None:
    """For `bridge run`, take SIGTERM and SIGINT as a stop request from now on.

    Other commands keep Python's defaults (Ctrl-C ends `demo`). The signals are unblocked
    too: one a supervisor held back across the exec arrives now, when it can be honoured.
    """
    if len(argv) < 2 or argv[1] != "run":
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
