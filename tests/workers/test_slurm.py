"""``--executor slurm``: the job array submitit submits, run for real through submitit's local executor
(real subprocesses), and the job script it writes for a SLURM cluster (no SLURM here: a stand-in ``sbatch``
records the script and answers with a job id, as sbatch does)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.conftest import write_spec
from tests.helpers import (
    SLOW_OBJECTIVES,
    assert_agree,
    child_runs,
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
def test_a_local_job_array_runs_the_exact_budget_and_a_killed_task_costs_one_retried_trial(
    cli, cli_fast, tmp_path, digits_checkpoint, stores
):
    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "array", 4, objectives=SLOW_OBJECTIVES)
    proc = start_launch(
        tmp_path, "study", "run", "array", *options, "--executor", "slurm", "--submitit-local",
        "--tasks-per-node", "2", "--wait", "--heartbeat", "1", "--grace", "4", "--no-progress",
    )  # fmt: skip
    seen: list[str] = []
    job = read_until(proc, r"submitted 1 job\(s\) \(2 worker\(s\)\): (\d+)", seen, timeout=300).group(1)
    log = tmp_path / "logs" / "array" / "slurm" / job / f"{job}_1_log.err"
    wait_until_inside_a_trial(stores, "array", worker=1)
    pid = int(re.search(r"worker ready on .*\(pid (\d+)", log.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen) + stderr
    assert "jobs ended (finished)" in stdout and "Traceback" not in stderr and PASSWORD not in stdout + stderr

    trials = assert_agree(stores, "array")  # one MLflow run per trial, same states, nothing RUNNING
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4  # the exact budget
    failed = [t for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs]
    assert len(failed) == 1
    # found by its trial number: the kill may land between opening the run and storing its id in Optuna
    assert [
        run.info.status
        for run in child_runs(stores, "array")
        if run.data.tags["optuna.trial_number"] == str(failed[0].number)
    ] == ["FAILED"]
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == failed[0].params
    for path in (tmp_path / "logs").rglob("*"):  # job pickles and logs: no password in any
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path

    status = cli("study", "status", "array", *options, "--json")
    assert status.returncode == 0, status.stderr
    assert [(j["job_id"], j["cluster"], j["workers"], j["state"]) for j in status.json()["jobs"]] == [
        (job, "local", [0, 1], "FINISHED")
    ]


def fake_slurm(root: Path) -> Path:
    """``sbatch`` and ``srun`` stand-ins: sbatch keeps the script it is given (and the environment it
    saw) in ``root/submitted`` and answers as SLURM does."""
    bin_dir = root / "bin"
    record = root / "submitted"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {record}/job.sh\nenv > {record}/environment\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755 | stat.S_IXUSR)
    return bin_dir


@pytest.mark.slow
@pytest.mark.postgres
def test_the_job_script_asks_for_the_nodes_and_gpus_and_holds_no_secret(
    cli, cli_fast, tmp_path, digits_checkpoint, postgres
):
    storage = postgres.url(postgres.create_database("optuna"))
    tracking = postgres.url(postgres.create_database("mlflow"))
    options = ["--storage", storage, "--tracking-uri", tracking]
    write_spec(tmp_path / "big.yaml", digits_checkpoint, name="big", budget={"n_trials": 40})
    assert cli_fast("study", "create", "big.yaml", *options).returncode == 0
    bin_dir = fake_slurm(tmp_path)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = cli(
        "study", "run", "big", *options, "--executor", "slurm", "--nodes", "2", "--gpus-per-node", "8",
        "--partition", "gpu", "--time", "4h", "--account", "lab", "--sbatch", "exclude=node7", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "submitted 2 job(s) (16 worker(s)): 4242_0, 4242_1" in result.stderr
    assert "scancel 4242" in result.stderr

    script = (tmp_path / "submitted" / "job.sh").read_text()
    flags = set(re.findall(r"^#SBATCH (\S+)$", script, flags=re.MULTILINE))
    expected = {
        "--array=0-1%2", "--nodes=1", "--gpus-per-node=8", "--ntasks-per-node=8", "--partition=gpu",
        "--time=240", "--account=lab", "--exclude=node7", "--job-name=ct-tune-big", "--signal=USR2@120",
    }  # fmt: skip
    assert expected <= flags, script
    assert f"{tmp_path}/logs/big/slurm/" in script  # logs under logs/<study>/
    seen_by_sbatch = (tmp_path / "submitted" / "environment").read_text()
    assert f"CT_TUNE_STORAGE={storage}" in seen_by_sbatch  # the job gets the URL from its environment ...
    written = [script, result.stdout, result.stderr] + [
        p.read_bytes().decode("latin-1") for p in (tmp_path / "logs").rglob("*") if p.is_file()
    ]
    assert not [text for text in written if PASSWORD in text]  # ... and from nowhere ct-tune wrote

    status = cli("study", "status", "big", *options, "--json")
    assert status.returncode == 0, status.stderr
    jobs = status.json()["jobs"]
    assert [(j["job_id"], j["cluster"], len(j["workers"])) for j in jobs] == [
        ("4242_0", "slurm", 8),
        ("4242_1", "slurm", 8),
    ]
    assert {j["state"] for j in jobs} == {"UNKNOWN"}  # no sacct on this machine


@pytest.mark.parametrize("executor", [["slurm", "--nodes", "2"], ["ray", "--address", "auto"]])
def test_a_sqlite_storage_is_refused_before_anything_is_submitted(cli_fast, tmp_path, digits_checkpoint, executor):
    write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s")
    assert cli_fast("study", "create", "s.yaml").returncode == 0
    result = cli_fast("study", "run", "s", "--executor", *executor)
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
        and "SQLite file" in result.stderr
        and "PostgreSQL" in result.stderr
    )
    assert not (tmp_path / "logs" / "s" / "slurm").exists()
    status = cli_fast("study", "status", "s", "--json")
    assert status.json()["jobs"] == [] and status.json()["trials"]["RUNNING"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "gpu"], "--partition applies to --executor slurm"),
        (["--executor", "slurm", "--workers", "4"], "--workers is for the local executor"),
        (["--executor", "slurm", "--nodes", "0"], "--nodes must be at least 1"),
        (["--executor", "slurm", "--time", "soon"], "--time:"),
        (["--executor", "slurm", "--sbatch", "exclude"], "write FLAG=VALUE"),
        (["--executor", "slurm", "--gpus-per-node", "2", "--tasks-per-node", "4"], "each worker takes one GPU"),
        (["--executor", "slurm", "--submitit-local", "--nodes", "2"], "the local executor has one node"),
        (["--address", "auto"], "--address applies to --executor ray"),
        (["--executor", "ray", "--max-restarts", "-1"], "--max-restarts must be 0 or more"),
        (["--executor", "ray", "--devices", "cuda:0"], "--devices is for the local executor"),
    ],
)
def test_bad_executor_flags_get_one_line(cli_fast, tmp_path, digits_checkpoint, args, message):
    write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s")
    assert cli_fast("study", "create", "s.yaml").returncode == 0
    result = cli_fast("study", "run", "s", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_a_missing_extra_is_named(tmp_path, digits_checkpoint, monkeypatch, cli_fast):
    write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s")
    assert cli_fast("study", "create", "s.yaml").returncode == 0
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    slurm = cli_fast("study", "run", "s", "--executor", "slurm", "--submitit-local")
    ray = cli_fast("study", "run", "s", "--executor", "ray")
    assert slurm.returncode == ray.returncode == 2
    assert "pip install -c constraints.txt 'ct-tune[slurm]'" in slurm.stderr
    assert "pip install -c constraints.txt 'ct-tune[ray]'" in ray.stderr
    status = cli_fast("study", "status", "s", "--json")
    assert status.json()["trials"]["RUNNING"] == 0 and json.dumps(status.json()["jobs"]) == "[]"


def report_environment(settings: dict) -> dict:
    """A stand-in worker for the direct test: what its task saw."""
    return {
        "settings": settings,
        "storage": os.environ.get("CT_TUNE_STORAGE"),
        "gpu": os.environ["CUDA_VISIBLE_DEVICES"],
    }


@pytest.mark.slow
def test_submit_array_hands_each_task_its_settings_its_gpu_and_the_environment(tmp_path, monkeypatch):
    from ct_tune.workers import SlurmOptions
    from ct_tune.workers._slurm import job_state, submit_array

    import submitit

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the tasks import this module
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # submitit's local executor sets the node's GPUs: "0,1"
    secret = "postgresql://u:hidden@db/optuna"
    jobs = submit_array(
        "tests.workers.test_slurm:report_environment",
        [
            {"worker": 0, "storage_url": "postgresql://u@db/optuna"},
            {"worker": 1, "storage_url": "postgresql://u@db/optuna"},
        ],
        options=SlurmOptions(cluster="local", gpus_per_node=2, time_minutes=5),
        folder=tmp_path / "slurm",
        job_name="t",
        environment={"CT_TUNE_STORAGE": secret},
    )
    assert [job.workers for job in jobs] == [[0, 1]] and "CT_TUNE_STORAGE" not in os.environ  # put back
    deadline = time.monotonic() + 120
    while job_state(jobs[0].to_dict()) == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job_state(jobs[0].to_dict()) == "FINISHED"
    results = submitit.local.local.LocalJob(tmp_path / "slurm" / "%j", jobs[0].job_id, tasks=[0, 1]).results()
    assert [(r["settings"]["worker"], r["gpu"], r["storage"]) for r in results] == [(0, "0", secret), (1, "1", secret)]
    for path in (tmp_path / "slurm").rglob("*.pkl"):
        if "result" not in path.name:
            assert b"hidden" not in path.read_bytes(), path  # what submitit pickled holds no password
