"""A test that waits on a child which never answers fails within its time limit instead of stalling the run:
the reader of a child's output gives up at its deadline, and a test that reads with no deadline at all is
failed by pytest-timeout (the per-test limit in pyproject.toml), in one process and under pytest-xdist."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import SOURCE_ROOT
from tests.helpers import read_until, spawn


def shell(script: str) -> subprocess.Popen:
    return spawn(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    "script",
    ["exec sleep 3600", "printf 'half a line'; exec sleep 3600"],
    ids=["silent", "stops-mid-line"],
)
def test_read_until_gives_up_on_a_child_that_never_answers(script):
    child = shell(script)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"'ready' not printed within 1 s; stdout so far:"):
        read_until(child, "ready", seen, timeout=1, stream="stdout")
    assert time.monotonic() - started < 5
    assert child.poll() is None  # the child still runs: the reader stopped waiting, nothing else
    assert "".join(seen) == ("half a line" if "printf" in script else "")


def test_read_until_stops_at_the_matching_line_and_leaves_the_rest():
    child = shell("echo one; echo 'worker 1 ready (pid 42)'; echo three; echo err >&2")
    seen: list[str] = []
    match = read_until(child, r"worker (\d) ready \(pid (\d+)\)", seen, timeout=60, stream="stdout")
    assert match.groups() == ("1", "42") and seen == ["one\n", "worker 1 ready (pid 42)\n"]
    out, err = child.communicate(timeout=60)
    assert (out, err) == ("three\n", "err\n")


def test_read_until_says_when_the_child_ended_without_the_line():
    child = shell("echo one >&2")
    with pytest.raises(AssertionError, match=r"'ready' never printed \(stderr ended\); stderr:\none"):
        read_until(child, "ready", [], timeout=60)


# Reads a silent child's output with no deadline of its own, as a test that forgot one would.
HANGS = """
import subprocess
from pathlib import Path


def test_reads_a_child_that_never_answers():
    child = subprocess.Popen(["sleep", "3600"], stdout=subprocess.PIPE, text=True)
    Path({pid_file!r}).write_text(str(child.pid))
    for line in child.stdout:
        pass
"""


@pytest.mark.parametrize("processes", [["-p", "no:xdist"], ["-n", "1"]], ids=["one-process", "xdist-worker"])
def test_a_test_blocked_on_a_silent_child_fails_at_its_timeout(tmp_path, processes):
    pid_file = tmp_path / "child.pid"
    (tmp_path / "test_hangs.py").write_text(HANGS.format(pid_file=str(pid_file)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    command = [
        sys.executable, "-m", "pytest", "test_hangs.py", "-c", str(SOURCE_ROOT / "pyproject.toml"),
        "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "--timeout", "2", *processes,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        inner = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    elapsed = time.monotonic() - started
    report = inner.stdout + inner.stderr
    assert inner.returncode == 1, report
    # the test itself failed at its limit, in the main thread (a "thread" timeout would kill the worker)
    assert "Failed: Timeout (>2.0s) from pytest-timeout" in report and "1 failed" in report, report
    assert "timeout method: signal" in report, report
    assert "crashed" not in report and "Traceback" not in inner.stderr, report
    assert pid_file.exists() and elapsed < 60, (elapsed, report)
