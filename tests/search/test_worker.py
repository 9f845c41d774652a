"""``python -m ct_tune.search.worker`` with its settings on stdin: it runs trials of a real study to the target
and reports ready / trial / summary events; bad settings end it with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ct_tune.search._run import WorkerSettings
from ct_tune.workers import parse_event

import pytest

from tests._fresh import tiny_study
from tests.conftest import SOURCE_ROOT

pytestmark = pytest.mark.slow


def worker(stdin: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "ct_tune.search.worker"],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_a_worker_runs_the_study_to_its_target(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, name="w")
    settings = WorkerSettings(
        study="w",
        storage_url=study.storage_url,
        tracking_uri=study.tracking_uri,
        worker=1,
        threads=1,
        target_total=3,
        heartbeat=5,
        sys_path=[str(SOURCE_ROOT)],
    )
    proc = worker(json.dumps(settings.to_dict()), tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    events = [event for event in events if event is not None]
    assert [event["event"] for event in events] == ["ready", "trial", "trial", "trial", "summary"]
    ready, *trials, summary = events
    assert ready["device"].startswith("cpu") and isinstance(ready["pid"], int)
    assert [t["number"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"COMPLETE"}
    assert trials[0]["betas"] == dict.fromkeys(study.units, 1.0) and "accuracy" in trials[0]["values"]
    assert (summary["finished"], summary["failed"], summary["reason"]) == (3, 0, "budget reached")
    assert set(summary["seconds"]) == {"evaluate", "tracking", "optuna"}
    assert study.counts()["COMPLETE"] == 3 and study.counts()["RUNNING"] == 0
    runs = study.tracker.runs(study.experiment_id, filter_string="tags.`ct_tune.worker` = '1'")
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    ("stdin", "code", "message"),
    [
        ("[1, 2]", 1, "ct-tune worker: expected one JSON object with its settings on stdin"),
        (
            json.dumps({"study": "nope", "storage_url": "sqlite:///o.db", "tracking_uri": "sqlite:///m.db"}),
            2,
            "ct-tune: error: no study named 'nope' in sqlite:///",
        ),
        ('{"study": "s", "storage_url": ', 1, "ct-tune worker: expected one JSON object"),
        (json.dumps({"study": "s"}), 1, "ct-tune worker: the settings lack storage_url, tracking_uri"),
    ],
    ids=["not-an-object", "unknown-study", "not-json", "missing-keys"],
)
def test_bad_settings_end_the_worker_with_one_line(tmp_path, stdin, code, message):
    proc = worker(stdin, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and (code is None or proc.returncode == code)
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert proc.stdout == ""
