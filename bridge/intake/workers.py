"""Worker processes for the pure core: each decodes, validates and encodes part of a group.

The intake hands a group's messages to the workers in as many slices as there are workers
(a hand-off per message would cost as much as the work), each slice one msgpack blob of
topics and payloads, and gets back one blob of `Digest`s per slice, in order; it then
stores and acknowledges the group itself, so per-customer order and ack-after-commit hold
exactly as in one process. A worker that dies breaks the pool: the intake digests that
group itself, nothing of it stored or acknowledged before, and the pool starts afresh.

Workers come from a fork server that has imported the core once, so a new worker costs a
fork, not an interpreter start; they ignore SIGINT (a Ctrl-C reaches the whole process group,
and the supervisor stops them in order).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import structlog

from bridge import logs
from bridge.core.digest import Digest, decode_digests, digest, encode_digests
from bridge.core.pipeline import Disposition, Outcome, Pipeline
from bridge.core.topics import Selection
from bridge.core.validate import Rules

if TYPE_CHECKING:
    from bridge.config import Config

Item = tuple[str | None, bytes]

_ITEMS_OUT = msgspec.msgpack.Encoder()
_ITEMS_IN = msgspec.msgpack.Decoder(list[tuple[str | None, bytes]])

_pipeline: Pipeline | None = None


class Slices(NamedTuple):
    """A group under way in the workers: a future per slice, and the pool it went to."""

    futures: list[concurrent.futures.Future[bytes]]
    epoch: int


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def digest_message(
    pipeline: Pipeline,
    logger: structlog.typing.FilteringBoundLogger,
    topic: str | None,
    payload: bytes,
) -> Digest:
    """The digest of one message; a bug in the core is logged and becomes `failed_in_bridge`."""
    if topic is None:
        return digest(Outcome("", Disposition.UNRECOGNISED), payload)
    try:
        outcome = pipeline.process(topic, payload)
    except Exception as exc:  # noqa: BLE001 - a bug in validation must not crash-loop
        # The traceback's text may quote the payload (personal data): its type and place.
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
        logger.error(
            "pipeline_failed",
            topic=topic,
            error=type(exc).__name__,
            where=where,
            kept="dead letters",
        )
        outcome = Outcome(topic, Disposition.FAILED)
    return digest(outcome, payload)


def _die_with_parent() -> None:
    # A bridge killed with SIGKILL must not leave its workers behind, orphaned and waiting for
    # work forever. The fork server exits once nobody holds its "alive" pipe, but it hands each
    # child a copy (for children of children, which workers never have): closing ours lets it
    # go with the bridge, and the kernel then kills each worker when its parent is gone.
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent went before the request was in place
        os._exit(1)


def _start(rules: Rules, selection: Selection, level: str, fmt: str, redact: bool) -> None:
    global _pipeline  # noqa: PLW0603 - one pipeline per worker process, built once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    logs.configure(level, fmt, redact_personal=redact)
    _pipeline = Pipeline(rules, selection)


def _digest_slice(blob: bytes) -> bytes:
    pipeline = _pipeline
    assert pipeline is not None, "the worker was not started by DigestPool"
    logger = logs.get_logger(worker=os.getpid())
    items = _ITEMS_IN.decode(blob)
    return encode_digests([digest_message(pipeline, logger, t, p) for t, p in items])


def _pid() -> int:
    return os.getpid()


def default_processes() -> int:
    """Worker processes when the config says `auto`: one per core, none on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if cores and cores > 1 else 0


class DigestPool:
    """`processes` workers digesting slices of a group, in order."""

    def __init__(self, processes: int, config: Config) -> None:
        self.processes = processes
        settings = config.logging
        # The core's own objects, not the config models: a worker then never imports the
        # config, the sinks or the spool, and stays small.
        self._initargs = (
            config.validation.rules(),
            config.subscription.selection(),
            settings.level,
            settings.format,
            settings.redact,
        )
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["bridge.intake.workers"])
        self._executor = self._make()
        self.restarts = 0
        self._closed = False

    def _make(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.processes,
            mp_context=self._context,
            initializer=_start,
            initargs=self._initargs,
        )

    def warm(self) -> list[int]:
        """Start every worker now (not on the first group); their process ids."""
        futures = [self._executor.submit(_pid) for _ in range(self.processes)]
        for future in futures:
            future.result()  # one worker may answer both: the pool's own list says who runs
        return self.pids()

    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        processes = getattr(self._executor, "_processes", None) or {}
        return sorted(int(pid) for pid in processes)

    def submit(self, items: Sequence[Item]) -> Slices:
        """Start digesting `items` (in slices, one per worker); `collect` takes the result."""
        size = -(-len(items) // self.processes)
        futures: list[concurrent.futures.Future[bytes]] = []
        try:
            for start in range(0, len(items), size):
                blob = _ITEMS_OUT.encode(items[start : start + size])
                futures.append(self._executor.submit(_digest_slice, blob))
        except BrokenProcessPool as exc:  # a worker died since the last group
            broken: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            broken.set_exception(exc)
            futures.append(broken)
        return Slices(futures, self.restarts)

    def collect(self, slices: Slices) -> list[Digest]:
        """The digests of a `submit`, in order. `BrokenProcessPool` when a worker died (or
        the pool was closed meanwhile)."""
        try:
            return [d for future in slices.futures for d in decode_digests(future.result())]
        except concurrent.futures.CancelledError as exc:
            raise BrokenProcessPool("the pool was closed") from exc

    def digest(self, items: Sequence[Item]) -> list[Digest]:
        """The digests of `items`, in order. `BrokenProcessPool` when a worker died."""
        return self.collect(self.submit(items))

    def restart(self, broken: Slices | None = None) -> None:
        """Replace a broken pool by a fresh one; not again for another group that was
        under way in the same broken pool (`broken`), nor once closed."""
        if self._closed or (broken is not None and broken.epoch != self.restarts):
            return
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._make()
        self.restarts += 1

    def close(self) -> None:
        """Stop the workers."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)


__all__ = ["BrokenProcessPool", "DigestPool", "Slices", "default_processes", "digest_message"]
