"""``--executor ray`` on a real Ray instance started on this machine (loopback): two actors run a study to
its exact budget on PostgreSQL (the password reaching the actors, printed nowhere), and an actor whose
process is SIGKILLed mid-trial is restarted by Ray while the study still ends exact, one MLflow run per
trial. (A killed local worker on SQLite: tests/test_faults.py.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.helpers import (
    SLOW_OBJECTIVES,
    assert_agree,
    create_study_cli,
    read_until,
    start_launch,
    wait_until_inside_a_trial,
)
from tests.postgres import PASSWORD

pytestmark = pytest.mark.cluster


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("stores", ["postgres"], indirect=True)
def test_two_actors_run_the_exact_budget_and_a_killed_actor_is_restarted(cli_fast, tmp_path, digits_checkpoint, stores):
    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "actors", 4, objectives=SLOW_OBJECTIVES)
    proc = start_launch(
        tmp_path, "study", "run", "actors", *options, "--executor", "ray", "--workers", "2",
        "--heartbeat", "1", "--grace", "4", "--no-progress",
    )  # fmt: skip
    seen: list[str] = []
    pids: dict[int, int] = {}
    while len(pids) < 2:
        match = read_until(proc, r"worker (\d) ready .*\(pid (\d+)\)", seen, timeout=300)
        pids[int(match.group(1))] = int(match.group(2))
    wait_until_inside_a_trial(stores, "actors", worker=1)
    os.kill(pids[1], signal.SIGKILL)
    restarted = int(read_until(proc, r"worker 1 ready .*\(pid (\d+)\)", seen, timeout=300).group(1))
    assert restarted != pids[1]  # Ray started a new actor process, which joined the study again
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen) + stderr
    assert "budget reached" in stdout and "Traceback" not in stderr and PASSWORD not in stdout + stderr

    trials = assert_agree(stores, "actors")  # one MLflow run per trial, the same states, nothing RUNNING
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs]
    assert len(failed) == 1  # the killed actor's trial, failed by heartbeat ...
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE  # ... and run again
    assert retries[0].params == failed[0].params
    log = (tmp_path / "logs" / "actors" / "worker-1.log").read_text()
    assert log.count("worker 1: CT activation") == 2  # the actor's log holds both of its lives


def stand_in(settings: dict, *, emit, keep_going) -> dict:
    """A stand-in worker for the direct test: one event of each kind, or the one-line error of bad input."""
    from ct_tune import InputError

    if settings["fail"]:
        raise InputError("a bad spec, in one line")
    emit("ready", device="cpu", pid=os.getpid())
    emit("trial", number=settings["worker"], state="COMPLETE")
    return {"finished": 1, "keep_going": keep_going()}


@pytest.mark.slow
def test_launch_on_ray_relays_events_and_exit_codes(tmp_path, monkeypatch):
    from ct_tune.workers import RayOptions, WorkerPlan
    from ct_tune.workers._ray import connected, launch_on_ray

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the actors import this module
    events: list[tuple[int, str]] = []
    with connected(RayOptions(), cpus=2) as ray:
        result = launch_on_ray(
            ray,
            "tests.workers.test_ray:stand_in",
            [WorkerPlan(0, "cpu", None, 1), WorkerPlan(1, "cpu", None, 1)],
            settings=lambda plan: {"worker": plan.index, "fail": plan.index == 1},
            options=RayOptions(),
            log_dir=tmp_path / "logs",
            on_event=lambda index, event: events.append((index, event["event"])),
        )
    assert not ray.is_initialized()  # the instance started for the launch is shut down
    assert result.exit_codes == {0: 0, 1: 2}  # worker 1's bad input exits 2, as a local worker's would
    assert sorted(events) == [(0, "ready"), (0, "trial")]
    assert result.summaries[0]["keep_going"] is True and 1 not in result.summaries
    assert "ct-tune: error: a bad spec, in one line" in (tmp_path / "logs" / "worker-1.log").read_text()
