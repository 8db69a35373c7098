"""The jsonl sink's three ways in: events, encoded JSON, and a block of lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.core.events import DownstreamEvent
from bridge.errors import SinkError
from bridge.sinks import LinesSink
from bridge.sinks.jsonl import JsonlSink

BODIES = [
    '{"op":"add","tenant":"acme","projectId":"42","version":"v1","vendor":null,"msgId":"m1",'
    '"reportTs":1,"eventTs":2,"customer":{"id":"c1","name":"张三","note":"a \\"q\\""}}',
    '{"op":"delete","tenant":"acme","projectId":"42","version":"v1","vendor":null,"msgId":"m2",'
    '"reportTs":1,"eventTs":2,"customer":{"id":"c2"}}',
]


def test_events_json_and_lines_write_the_same_bytes(tmp_path: Path) -> None:
    """`send`, `send_json` and `send_lines` of the same events give the same file."""
    events = [DownstreamEvent.from_dict(json.loads(body)) for body in BODIES]
    written = []
    for way in ("send", "send_json", "send_lines"):
        sink = JsonlSink(way, tmp_path / f"{way}.jsonl")
        assert isinstance(sink, LinesSink)
        if way == "send":
            sink.send(events)
        elif way == "send_json":
            sink.send_json(BODIES)
        else:
            sink.send_lines("".join(b + "\n" for b in BODIES).encode())
        sink.close()
        written.append((tmp_path / f"{way}.jsonl").read_bytes())
    assert written[0] == written[1] == written[2]
    assert [json.loads(line) for line in written[0].splitlines()] == [json.loads(b) for b in BODIES]


def test_a_block_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    """A file ending mid-line (a kill during a write) gets a newline before the next block."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"op":"add","tena')
    sink = JsonlSink("file", path)
    sink.send_lines(BODIES[0].encode() + b"\n")
    sink.close()
    assert path.read_bytes().split(b"\n")[1:] == [BODIES[0].encode(), b""]


def test_a_write_that_fails_is_a_sink_error_without_the_records(tmp_path: Path) -> None:
    """The path is a directory: the error names the file, never a record."""
    (tmp_path / "out.jsonl").mkdir()
    sink = JsonlSink("file", tmp_path / "out.jsonl")
    with pytest.raises(SinkError, match="cannot write") as caught:
        sink.send_lines(BODIES[0].encode() + b"\n")
    assert "张三" not in str(caught.value)
