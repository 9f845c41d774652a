"""The worker protocol: events as prefixed JSON lines on stdout, settings as one JSON object on stdin."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ct_tune.workers import EVENT_PREFIX, emit_event, parse_event, read_settings

import pytest


def test_emit_parse_round_trip(capsys):
    emit_event("trial", number=3, values={"accuracy": 0.91}, betas={"stem": 0.8}, ended=1.5)
    emit_event("ready", device="cpu", path=Path("/tmp/x"))  # what JSON cannot hold is written as text
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(EVENT_PREFIX) for line in lines)
    assert parse_event(lines[0]) == {
        "event": "trial",
        "number": 3,
        "values": {"accuracy": 0.91},
        "betas": {"stem": 0.8},
        "ended": 1.5,
    }
    assert parse_event(lines[1] + "\n") == {"event": "ready", "device": "cpu", "path": "/tmp/x"}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Epoch 1: 100%|##########| 12/12\n",
        '{"event": "trial"}\n',  # JSON without the prefix: a library's print, not an event
        " " + EVENT_PREFIX + '{"event": "trial"}',
        EVENT_PREFIX.strip() + '{"event": "x"}',
    ],
)
def test_other_lines_are_not_events(line):
    assert parse_event(line) is None


def test_a_prefixed_line_that_is_not_json_is_an_error():
    with pytest.raises(json.JSONDecodeError):
        parse_event(EVENT_PREFIX + "{not json")


def test_read_settings(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"study": "s", "worker": 1})))
    assert read_settings() == {"study": "s", "worker": 1}
    for text in ("", "   \n", "[1, 2]", '"a string"', "null"):
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
        with pytest.raises(SystemExit) as exit_:
            read_settings()
        assert exit_.value.code == "ct-tune worker: expected one JSON object with its settings on stdin"
