"""Worker processes for the pure core: each decodes, validates and encodes part of a group.

The intake hands a group's messages to the workers in as many slices as there are workers
(a hand-off per message would cost as much as the work), each slice one msgpack frame of
topics and payloads on the worker's stdin, and reads back one frame of `Digest`s per slice,
in order, on its stdout; it then stores and acknowledges the group itself, so per-customer
order and ack-after-commit hold exactly as in one process. A worker that dies breaks the
pool: the intake digests that group itself, nothing of it stored or acknowledged before, and
the pool starts afresh.

A worker is `python -m bridge.intake.workers`: it imports the core and nothing else (not the
config, the sinks, the spool, the logging setup, nor the program it was started from, as a
multiprocessing child would), and logs nothing: a bug in the core comes back with the
digests and the intake logs it. It ignores SIGINT (a Ctrl-C reaches the whole process group,
and the supervisor stops it in order) and dies with the bridge (PR_SET_PDEATHSIG, and the
end of its stdin).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pickle
import select
import signal
import struct
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from bridge.core.digest import Digest, digest
from bridge.core.pipeline import Disposition, Outcome, Pipeline
from bridge.core.plain import plain_digest
from bridge.memory import fix_mmap_threshold

if TYPE_CHECKING:
    import subprocess

    from bridge.config import Config

Item = tuple[str | None, bytes]
Failure = tuple[str, str, str]  # topic, exception type, file:line where it was raised

_ITEMS_OUT = msgspec.msgpack.Encoder()
_ITEMS_IN = msgspec.msgpack.Decoder(list[tuple[str | None, bytes]])
_DIGESTS_OUT = msgspec.msgpack.Encoder()
_DIGESTS_IN = msgspec.msgpack.Decoder(tuple[list[Digest], list[Failure]])
_LENGTH = struct.Struct("!I")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
F_SETPIPE_SZ = 1031  # linux/fcntl.h
F_GETPIPE_SZ = 1032
PIPE_BYTES = 1 << 20  # the default pipe-max-size: a slice of a group fits, the write returns


class BrokenProcessPool(RuntimeError):
    """A worker died (or the pool was closed) with a slice under way."""


class FailureLog(Protocol):
    """Where `digest_message` reports a bug in the core (a logger, or a worker's list)."""

    def error(self, event: str, *args: Any, **fields: Any) -> Any:
        """Report `event` with `fields`."""


def digest_message(
    pipeline: Pipeline, logger: FailureLog, topic: str | None, payload: bytes
) -> Digest:
    """The digest of one message; a bug in the core (its validation or its encoding) is logged
    and becomes `failed_in_bridge`, for that message alone."""
    if topic is None:
        return digest(Outcome("", Disposition.UNRECOGNISED), payload)
    try:
        inbound = pipeline.inbound(topic)
        if inbound is not None:
            plain = plain_digest(inbound, payload, pipeline.rules)
            if plain is not None:
                return plain
        return digest(pipeline.process(topic, payload), payload)
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
        return digest(Outcome(topic, Disposition.FAILED), payload)


class _Failures:
    """A worker's `FailureLog`: kept for the intake, which logs them."""

    def __init__(self) -> None:
        self.found: list[Failure] = []

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        self.found.append((str(fields["topic"]), str(fields["error"]), str(fields["where"])))


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def _write_frame(stream: IO[bytes], blob: bytes) -> None:
    stream.write(_LENGTH.pack(len(blob)))
    stream.write(blob)
    stream.flush()


def _die_with_parent(parent: int) -> None:
    # A bridge killed with SIGKILL must not leave its workers behind: the kernel kills each
    # worker when its parent is gone.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent went before the request was in place
        os._exit(1)


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """A worker's loop: the pipeline's settings, then slices in, digests out, until EOF."""
    first = _read_frame(source)
    if first is None:
        return
    rules, selection = pickle.loads(first)  # noqa: S301 - from our own parent, on a pipe
    pipeline = Pipeline(rules, selection)
    while (blob := _read_frame(source)) is not None:
        failures = _Failures()
        digests = [digest_message(pipeline, failures, t, p) for t, p in _ITEMS_IN.decode(blob)]
        _write_frame(sink, _DIGESTS_OUT.encode((digests, failures.found)))


def default_processes() -> int:
    """Worker processes when the config says `auto`: one fewer than the cores, none on one.

    The intake's own thread digests a share of each group (`LocalShare`) while the workers
    digest the rest: on two cores one worker and that share drained as fast as two workers
    (15,215 and 15,132 msgs/s against 15,280 and 14,536) with 19 MB less RSS and less CPU per
    message, three busy processes on two cores having slowed each other (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores - 1 if cores and cores > 1 else 0


def start_workers(config: Config) -> DigestPool | None:
    """The worker processes `validation.workers` asks for (`auto`: `default_processes`),
    started; None for none."""
    processes = config.validation.workers
    if processes == "auto":
        processes = default_processes()
    return DigestPool(processes, config) if processes else None


class LocalShare:
    """The part of each group the intake digests itself while the workers digest the rest.

    Balanced from what the intake finds when its part is done: the workers' answers already
    there means it held them up (its part shrinks), none yet means it would wait (its part
    grows). The workers start a group while the intake stores the one before, so the balance
    holds that work too. Between 0 and half the group, in steps of 2 %.
    """

    START = 0.25
    STEP = 0.02
    MOST = 0.5

    def __init__(self, start: float = START) -> None:
        self.value = start

    def local(self, size: int) -> int:
        """How many of a group of `size` the intake digests itself."""
        return int(size * self.value)

    def update(self, workers_done: bool) -> None:
        """Move toward balance after a group (`workers_done`: they had answered first)."""
        if workers_done:
            self.value = max(0.0, round(self.value - self.STEP, 4))
        else:
            self.value = min(self.MOST, round(self.value + self.STEP, 4))


class Slices(NamedTuple):
    """A group under way in the workers: the workers given a slice, and the pool's epoch."""

    workers: list[subprocess.Popen[bytes]]
    epoch: int
    broken: bool


class DigestPool:
    """`processes` workers digesting slices of a group, in order."""

    def __init__(self, processes: int, config: Config, logger: FailureLog | None = None) -> None:
        self.processes = processes
        self._log = logger
        # The core's own objects, not the config models: a worker never imports the config.
        self._settings = pickle.dumps(
            (config.validation.rules(), config.subscription.selection()),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self.restarts = 0
        self._closed = False
        self.queue_bytes = 0
        """The most a slice's frame may hold to be written while the worker is still busy with
        the slice before (the smallest of the workers' input pipes; 0 when unknown)."""
        self._workers = self._make()

    def _make(self) -> list[subprocess.Popen[bytes]]:
        import subprocess  # noqa: PLC0415 - the intake's; a worker process has no use for it

        parent = str(os.getpid())
        made = []
        for _ in range(self.processes):
            worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "bridge.intake.workers", parent],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            assert worker.stdin is not None and worker.stdout is not None
            for pipe in (worker.stdin, worker.stdout):
                # A 64 KiB pipe would hold the intake in its write until the worker has read
                # most of a slice (half a group is about 400 KB).
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
            with contextlib.suppress(OSError):
                _write_frame(worker.stdin, self._settings)
            made.append(worker)
        sizes = []
        for worker in made:
            assert worker.stdin is not None
            try:
                sizes.append(fcntl.fcntl(worker.stdin.fileno(), F_GETPIPE_SZ))
            except OSError:
                sizes.append(0)
        self.queue_bytes = min(sizes, default=0)
        return made

    def _split(self, items: Sequence[Item]) -> list[Sequence[Item]]:
        """`items` in consecutive slices, one per worker (fewer for a few items): the one rule
        of `submit` and `can_queue`."""
        size = max(-(-len(items) // self.processes), 1)
        return [items[start : start + size] for start in range(0, len(items), size)]

    def can_queue(self, items: Sequence[Item]) -> bool:
        """Whether every worker's slice of `items` fits in its input pipe at once.

        Only such a slice may be handed over while the workers still digest (or answer) the
        slice before: a worker whose answer fills its output pipe reads no more input until
        that answer is read, so a larger slice would block the intake's write while the
        intake has yet to read the answer (a bulk import's slices are megabytes)."""
        for part in self._split(items):
            # msgpack: the list and each pair's headers, a topic at most 4 bytes a character.
            frame = (
                _LENGTH.size
                + 5
                + sum(len(payload) + 4 * len(topic or "") + 16 for topic, payload in part)
            )
            if frame > self.queue_bytes:
                return False
        return True

    def warm(self) -> list[int]:
        """Wait until every worker answers (an empty slice each); their process ids."""
        with contextlib.suppress(BrokenProcessPool):
            self.collect(Slices(list(self._workers), self.restarts, False), empty=True)
        return self.pids()

    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return sorted(w.pid for w in self._workers if w.poll() is None)

    def submit(self, items: Sequence[Item]) -> Slices:
        """Start digesting `items` (in slices, one per worker); `collect` takes the result."""
        given: list[subprocess.Popen[bytes]] = []
        broken = False
        for worker, part in zip(self._workers, self._split(items), strict=False):
            assert worker.stdin is not None
            try:
                _write_frame(worker.stdin, _ITEMS_OUT.encode(part))
            except (OSError, ValueError):  # a worker died since the last group
                broken = True
                break
            given.append(worker)
        return Slices(given, self.restarts, broken)

    def ready(self, slices: Slices) -> bool:
        """Whether every worker given a slice has answered (or died): `collect` would not
        wait."""
        streams = [w.stdout for w in slices.workers if w.stdout is not None]
        try:
            readable, _, _ = select.select(streams, [], [], 0)
        except (OSError, ValueError):
            return True
        return len(readable) == len(streams)

    def collect(
        self, slices: Slices, logger: FailureLog | None = None, *, empty: bool = False
    ) -> list[Digest]:
        """The digests of a `submit`, in order; the core's bugs the workers met go to
        `logger`. `BrokenProcessPool` when a worker died (or the pool was restarted or
        closed meanwhile)."""
        if slices.broken or slices.epoch != self.restarts or self._closed:
            raise BrokenProcessPool("a worker died")
        found: list[Digest] = []
        if empty:  # ask each worker for nothing: it answers once it is up
            for worker in slices.workers:
                assert worker.stdin is not None
                with contextlib.suppress(OSError, ValueError):
                    _write_frame(worker.stdin, _ITEMS_OUT.encode([]))
        for worker in slices.workers:
            assert worker.stdout is not None
            try:
                blob = _read_frame(worker.stdout)
            except (OSError, ValueError):
                blob = None
            if blob is None:
                raise BrokenProcessPool(f"worker {worker.pid} died")
            digests, failures = _DIGESTS_IN.decode(blob)
            if logger is not None:
                for topic, error, where in failures:
                    logger.error(
                        "pipeline_failed",
                        topic=topic,
                        error=error,
                        where=where,
                        kept="dead letters",
                        worker=worker.pid,
                    )
            found.extend(digests)
        return found

    def digest(self, items: Sequence[Item]) -> list[Digest]:
        """The digests of `items`, in order. `BrokenProcessPool` when a worker died."""
        return self.collect(self.submit(items))

    def restart(self, broken: Slices | None = None) -> None:
        """Replace the workers by fresh ones; not again for another group that was under way
        in the same broken pool (`broken`), nor once closed."""
        if self._closed or (broken is not None and broken.epoch != self.restarts):
            return
        self._stop(0.0)
        self._workers = self._make()
        self.restarts += 1

    def close(self) -> None:
        """Stop the workers."""
        self._closed = True
        self._stop(5.0)

    def _stop(self, timeout: float) -> None:
        import subprocess  # noqa: PLC0415 - loaded by _make already

        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                assert worker.stdin is not None
                worker.stdin.close()  # a worker exits at the end of its input
        for worker in self._workers:
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()


def main() -> None:
    """A worker process: `python -m bridge.intake.workers PARENT_PID`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(sys.argv[1]))
    fix_mmap_threshold()
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        pass  # the bridge went away mid-answer
    except BaseException as exc:  # noqa: BLE001 - the message may quote a payload (SPEC 8)
        # Its type only; the intake redoes the group itself and meets the same error there.
        sys.stderr.write(f"bridge worker {os.getpid()}: {type(exc).__name__}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()


__all__ = [
    "BrokenProcessPool",
    "DigestPool",
    "Item",
    "LocalShare",
    "Slices",
    "default_processes",
    "digest_message",
    "serve",
    "start_workers",
]
