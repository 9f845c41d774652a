"""The doctor's checks in this process, on real stores and the real torch: every line each can print here."""

from __future__ import annotations

import copy
import json

import ct_tune
from ct_tune.doctor import CHECK_GROUPS, Check, DoctorReport, run_doctor
from ct_tune.doctor._smoke import SMOKE_BETA, TOLERANCE, _net_and_input, _run, smoke_test
from ct_tune.doctor._versions import MAIN_PACKAGES, outside
from ct_tune.steering import fused_setting, fused_status

import pytest
import torch

from tests.conftest import write_spec

PASSWORD = "secret"
UNREACHABLE = f"postgresql://user:{PASSWORD}@127.0.0.1:1/db"


def by_name(report: DoctorReport) -> dict[str, Check]:
    return {check.name: check for check in report.checks}


@pytest.mark.slow  # imports lightning and mlflow: about 7 s
def test_versions_here_are_in_range():
    report = run_doctor(only=["versions"])
    assert [c.name for c in report.checks] == ["ct-tune", "python", *MAIN_PACKAGES, "other packages"]
    assert report.ok, [c.line() for c in report.failed]
    lines = by_name(report)
    assert lines["ct-tune"].detail.startswith(f"{ct_tune.__version__} from ")
    assert lines["optuna"].detail.endswith("(ct-tune needs >=5.0,<6)")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "cpu build"
    assert f"{torch.__version__}, {build}" in lines["torch"].detail


@pytest.mark.parametrize(
    ("version", "requirement", "expected"),
    [
        ("5.0.0", "optuna>=5.0,<6", False),
        ("6.1.0", "optuna>=5.0,<6", True),
        ("4.9", "optuna>=5.0,<6", True),
        ("2.13.0+cpu", "torch>=2.4", False),  # a local build tag is in range
        ("2.4.0.dev20240601", "torch>=2.3", False),  # a nightly is not refused for being a pre-release
        ("3.10.12", "python>=3.11", True),
    ],
)
def test_outside_reads_the_declared_ranges(version, requirement, expected):
    assert outside(version, requirement) is expected


def test_sqlite_stores_are_ok_and_nothing_is_created(tmp_path):
    storage, tracking = f"sqlite:///{tmp_path}/a/optuna.db", f"sqlite:///{tmp_path}/b/mlflow.db"
    report = run_doctor(only=["stores"], storage=storage, tracking_uri=tracking)
    assert [(c.name, c.status) for c in report.checks] == [("optuna storage", "ok"), ("mlflow store", "ok")]
    assert by_name(report)["optuna storage"].detail == (
        f"sqlite:///{tmp_path}/a/optuna.db (from --storage): created on first use, writable"
    )
    assert list(tmp_path.iterdir()) == []
    ct_tune.stores.init_stores(storage=storage, tracking_uri=tracking)
    report = run_doctor(only=["stores"], storage=storage, tracking_uri=tracking)
    assert report.ok and all(c.detail.endswith("(from --tracking-uri): exists, writable") for c in report.checks[1:])


def test_an_unreachable_store_is_a_failed_line_naming_it_without_the_password(cli_fast, tmp_path):
    result = cli_fast("doctor", "--only", "stores", "--json", "--storage", UNREACHABLE)
    assert result.returncode == 1
    assert PASSWORD not in result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    storage, tracking = payload["checks"]
    assert storage["status"] == "failed" and storage["name"] == "optuna storage"
    assert "cannot open the Optuna storage postgresql+psycopg://user:***@127.0.0.1:1/db" in storage["detail"]
    assert storage["fix"].startswith("start the database, or correct --storage, $CT_TUNE_STORAGE")
    assert tracking == {
        "group": "stores",
        "name": "mlflow store",
        "status": "ok",
        "detail": f"sqlite:///{tmp_path}/mlruns/mlflow.db (from the default): created on first use, writable",
        "fix": None,
    }


def test_stores_that_cannot_be_used(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "junk.db").write_text("not a database, but long enough to have a header" * 4)
    monkeypatch.setenv("CT_TUNE_STORAGE", f"sqlite:///{tmp_path}/file/optuna.db")
    report = run_doctor(only=["stores"], tracking_uri=f"sqlite:///{tmp_path}/junk.db")
    storage, tracking = report.checks
    assert storage.line() == (
        f"failed   optuna storage     sqlite:///{tmp_path}/file/optuna.db (from $CT_TUNE_STORAGE): cannot be "
        f"created: {tmp_path}/file is a file; fix: check the path and its permissions, or correct --storage, "
        "$CT_TUNE_STORAGE or the spec's storage:"
    )
    assert tracking.failed and "cannot be read as SQLite: file is not a database" in tracking.detail


def test_one_database_for_both_stores_is_a_failed_line(tmp_path):
    url = f"sqlite:///{tmp_path}/one.db"
    report = run_doctor(only=["stores"], storage=url, tracking_uri=url)
    assert [c.status for c in report.checks] == ["ok", "ok", "failed"]
    assert report.checks[2].name == "two databases" and "alembic_version" in report.checks[2].detail


def test_the_spec_names_the_stores(tmp_path, monkeypatch):
    monkeypatch.delenv("CT_TUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = write_spec(
        tmp_path / "spec.yaml",
        tmp_path / "model.pt",
        storage=f"sqlite:///{tmp_path}/s/optuna.db",
        tracking_uri="http://127.0.0.1:1",
    )
    report = run_doctor(only=["stores"], spec=str(spec))
    storage, tracking = report.checks
    assert storage.status == "ok" and "(from the spec's storage:)" in storage.detail
    assert tracking.failed and tracking.name == "mlflow store"
    assert tracking.detail.startswith("cannot open the MLflow store http://127.0.0.1:1")
    assert tracking.fix.startswith("start the MLflow server, or correct --tracking-uri")


def test_the_gpu_and_precision_lines():
    report = run_doctor(only=["gpus", "precision"])
    if not torch.cuda.is_available():
        assert [c.line() for c in report.checks] == [
            "skipped  gpu                no CUDA GPU: the CPU will be used",
            "skipped  precision          no CUDA GPU: run.precision bf16/fp16 applies on CUDA only (the CPU "
            "scores in fp32)",
        ]
        return
    count = torch.cuda.device_count()
    assert [c.name for c in report.checks] == [f"gpu cuda:{i}" for i in range(count)] + [
        f"precision cuda:{i}" for i in range(count)
    ]
    assert report.ok, [c.line() for c in report.failed]


def test_the_smoke_net_tells_a_steered_net_from_relu():
    """The steering moves the output by several times the loosest tolerance, so a device that ran plain ReLU
    (or the wrong beta) fails its smoke line."""
    net, x = _net_and_input()
    with fused_setting(False):
        steered, _ = _run(copy.deepcopy(net).double(), x.double(), beta=SMOKE_BETA, device="cpu", precision="fp32")
        plain, _ = _run(copy.deepcopy(net).double(), x.double(), beta=None, device="cpu", precision="fp32")
        other, _ = _run(copy.deepcopy(net).double(), x.double(), beta=0.85, device="cpu", precision="fp32")
    shift = ((steered - plain).abs().max() / steered.abs().max()).item()
    assert shift > 5 * max(TOLERANCE.values())
    assert ((steered - other).abs().max() / steered.abs().max()).item() > max(TOLERANCE.values())


def test_smoke_eager_on_the_cpu():
    before = fused_status("cpu")
    [check] = smoke_test(["cpu"], fused={})
    assert check.status == "ok" and check.name == "smoke cpu", check.line()
    assert "fp32 eager " in check.detail and "fused" not in check.detail and "beta 1 is exactly ReLU" in check.detail
    assert fused_status("cpu") == before


def test_a_report_as_json_and_lines():
    report = DoctorReport(
        [Check("gpus", "gpu", "skipped", "no CUDA GPU"), Check("stores", "mlflow store", "failed", "down", "start it")],
        seconds=2.4,
    )
    assert not report.ok and report.counts() == {"ok": 0, "failed": 1, "skipped": 1}
    assert report.summary() == "0 ok, 1 failed, 1 skipped in 2 s: not ready: fix the failed lines above"
    assert report.checks[1].line() == "failed   mlflow store       down; fix: start it"
    assert json.loads(json.dumps(report.to_dict()))["checks"][0] == {
        "group": "gpus",
        "name": "gpu",
        "status": "skipped",
        "detail": "no CUDA GPU",
        "fix": None,
    }
    assert CHECK_GROUPS == ("versions", "gpus", "kernel", "precision", "stores", "smoke")


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stderr
    return lines[0]


def test_bad_input_is_one_line_exit_2(cli_fast, tmp_path):
    line = one_line_error(cli_fast("doctor", "--only", "stores,nothing"))
    assert line == (
        "ct-tune: error: unknown check group(s) 'nothing'; choose from versions, gpus, kernel, precision, stores, smoke"
    )
    line = one_line_error(cli_fast("doctor", "--spec", "missing.yaml"))
    assert line == "ct-tune: error: spec file missing.yaml does not exist (see studies/ for examples)"


def test_help(cli_fast):
    result = cli_fast("doctor", "--help")
    assert result.returncode == 0
    for text in ("--storage", "--tracking-uri", "--spec", "--only", "--json", "Exit codes: 0", "CT_TUNE_FUSED=0"):
        assert text in result.stdout, text
    assert "doctor" in cli_fast("--help").stdout


def test_a_check_that_crashes_is_a_failed_line_and_the_run_goes_on():
    from ct_tune.doctor._run import _guarded

    def crashing():
        yield Check("smoke", "smoke cpu", "ok", "fine")
        raise ZeroDivisionError("division by zero\nsecond line")

    first, crash = _guarded("smoke", crashing)
    assert first.status == "ok"
    assert crash.line() == (
        "failed   smoke              the check itself failed: ZeroDivisionError: division by zero; "
        "fix: report this line as a ct-tune bug (ct-tune doctor -v shows the traceback)"
    )
