"""The JSON-lines file sink: one SPEC 7 object per record per line, flushed per batch."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from bridge.core.events import DownstreamEvent
from bridge.errors import SinkError
from bridge.sinks.base import SinkConfigBase, SinkContext


def _ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


class JsonlConfig(SinkConfigBase):
    """`type: jsonl`: append to `path`; `fsync: true` also forces each batch to disk."""

    type: Literal["jsonl"]
    path: Path
    fsync: bool = False

    def build(self, context: SinkContext) -> JsonlSink:
        """Open the file for appending."""
        return JsonlSink(self.name or f"jsonl:{self.path}", self.path, fsync=self.fsync)


class JsonlSink:
    """Appends events to a file, one JSON object a line."""

    direct = True
    """Local and quick: the intake may hand it events itself while none of its rows wait."""
    concurrent = False

    def __init__(self, name: str, path: Path, *, fsync: bool = False) -> None:
        self.name = name
        self.path = path
        self._fsync = fsync
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = _ends_mid_line(self.path)
            self._file = self.path.open("ab")
            if torn:
                # A kill during a write left half a line; that batch is sent again, and
                # its first record must not be glued onto the fragment.
                self._file.write(b"\n")
        return self._file

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Write and flush the batch; an OS error is transient (the disk may come back)."""
        self.send_json(
            [json.dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":")) for e in events]
        )

    def send_json(self, bodies: Sequence[str]) -> None:
        """Write events already encoded as compact JSON (the spool keeps them so)."""
        self.send_lines("".join(body + "\n" for body in bodies).encode())

    def send_lines(self, block: bytes) -> None:
        """Write encoded events, each already followed by its newline (a digest's bodies)."""
        try:
            handle = self._open()
            handle.write(block)
            handle.flush()
            if self._fsync:
                os.fsync(handle.fileno())
        except OSError as exc:
            self.close()
            raise SinkError(f"cannot write {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the file; the next batch reopens it."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
