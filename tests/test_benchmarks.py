"""The benchmarks' own logic: search_quality's pipeline (a stage per method, run as a replicate set) and its
table, and data_scale's summaries. The benchmarks themselves run for minutes to hours; search_quality runs
once here at a tiny budget."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import time

from ct_tune.pipelines import pipeline_from_dict

import numpy as np
import pytest

from tests.conftest import SOURCE_ROOT

SEARCH_QUALITY = str(SOURCE_ROOT / "benchmarks" / "search_quality.py")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SOURCE_ROOT / "benchmarks"))
    try:
        yield importlib.import_module("search_quality")
    finally:
        sys.path.remove(str(SOURCE_ROOT / "benchmarks"))


@pytest.fixture
def root(tmp_path, digits_checkpoint):
    """A benchmark root holding the session's digits checkpoint (where search_quality caches it)."""
    shutil.copy(digits_checkpoint, tmp_path / "digits.pt")
    return tmp_path


def test_each_method_is_a_stage_and_a_method_brings_the_stage_it_builds_on(bench, root) -> None:
    spec = bench.pipeline("digits-mnist5k", ["grid-block", "trained-block-search"], bench.FULL, root, "relu")
    pipeline = pipeline_from_dict(spec)
    assert [s.name for s in pipeline.stages] == ["grid", "grid-block", "trained-block", "trained-block-search"]
    grid, grid_block, trained, searched = pipeline.stages
    assert grid.search == {"granularity": "global", "enqueue_baseline": True, "enqueue_paper_grid": True}
    assert grid.budget == {"n_trials": 31} and grid_block.budget == {"n_trials": 62}
    assert grid_block.warm_start.from_stage == "grid" and searched.warm_start.from_stage == "trained-block"
    assert trained.kind == "train" and trained.train == {"granularity": "block", "epochs": 8, "lr_step": 5}
    assert pipeline.base["data"] == {"name": "mnist5k", "train_size": 2000}
    assert pipeline.name == "search-quality-digits-mnist5k"


def test_the_robust_task_is_the_constrained_form_with_a_checkpoint_per_seed(bench, root) -> None:
    spec = bench.pipeline("mnist5k-robust", ["tpe-stage", "trained-channel"], bench.ROBUST, root, "relu")
    assert spec["base"]["model"]["checkpoint"] == str(root / "mnist5k-seed{seed}.pt")
    assert spec["base"]["constraints"] == [{"name": "accuracy", "max_drop": 0.01}]
    assert [o["name"] for o in spec["base"]["objectives"]] == ["accuracy", "adversarial"]
    tpe, trained = spec["stages"]
    assert tpe["budget"] == {"n_trials": 20} and trained["objectives"] == [{"name": "accuracy"}]


@pytest.mark.slow
def test_a_quick_replicate_set_prints_the_table_and_resumes(root) -> None:
    """Two seeds at the quick budget, through run_pipeline(seeds=...); run again on the same root, every stage
    is reused and the same table comes out."""
    command = [sys.executable, SEARCH_QUALITY, "--quick", "--seeds", "0,1", "--methods", "tpe-global,trained-block"]
    command += ["--root", str(root), "--json", str(root / "out.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    found = json.loads((root / "out.json").read_text())
    assert found["replicates"]["seeds"] == [0, 1]
    rows = {row["stage"]: row for row in found["replicates"]["replicates"] if row["profile"] != "ReLU baseline"}
    assert set(rows) == {"tpe-global", "trained-block"}
    assert set(rows["tpe-global"]["test"]) == {"0", "1"} and len(rows["tpe-global"]["gain"]["gains"]) == 2
    assert found["cost"]["tpe-global"]["evaluations"] == 12 and found["cost"]["trained-block"]["evaluations"] == 2
    assert found["cost"]["tpe-global"]["seconds"] > 0
    table = first.stdout[first.stdout.index("probe on test") :].splitlines()
    assert table[2].startswith("baseline (ReLU)") and table[3].startswith("tpe-global ")
    assert table[4].startswith("trained-block ") and "/2 " in table[4]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing it" in again.stdout and "created study" not in again.stdout
    assert again.stdout[again.stdout.index("probe on test") :].splitlines()[:5] == table[:5]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--activation", "gelu", "--task", "mnist5k-robust"], "--activation gelu runs --task digits-mnist5k only"),
        (["--seeds", "1,1"], "--seeds names seed 1 twice"),
        (["--methods", "trained-block"], "--methods needs grid or a tpe- method"),
        (["--methods", "grid,best"], "unknown method(s) best"),
    ],
)
def test_bad_arguments_are_one_line_before_anything_runs(tmp_path, arguments, message) -> None:
    done = subprocess.run(
        [sys.executable, SEARCH_QUALITY, *arguments, "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ benchmarks/data_scale.py
@pytest.fixture(scope="module")
def data_scale():
    sys.path.insert(0, str(SOURCE_ROOT / "benchmarks"))
    try:
        yield importlib.import_module("data_scale")
    finally:
        sys.path.remove(str(SOURCE_ROOT / "benchmarks"))


def _measured(data_scale, size: str, workers: int, variant: str, pss: float, seconds: float, decodes: int):
    return data_scale.Measurement(
        size,
        workers,
        variant,
        pss_worker_mb=pss,
        pss_sum_mb=pss * workers,
        rss_worker_mb=pss * 1.2,
        seconds_per_trial=seconds,
        cpu_s_per_trial=2 * seconds,
        first_trial_s={0: 10.0, 1: 12.0} if workers > 1 else {0: 10.0},
        decodes={"train": decodes, "val": decodes},
        batch_size="256" if variant == "today" else "auto (33)",
    )


def test_data_scale_help_names_its_command_and_measures() -> None:
    done = subprocess.run(
        [sys.executable, str(SOURCE_ROOT / "benchmarks" / "data_scale.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "python benchmarks/data_scale.py" in done.stdout
    for flag in ("--sizes", "--workers", "--trials", "--keep-data", "--json"):
        assert flag in done.stdout


def test_data_scale_writes_a_class_patterned_imagefolder_once(data_scale, tmp_path) -> None:
    from PIL import Image

    root = data_scale.make_imagefolder(tmp_path / "images", 20, 10, test=10)
    for split, count in {"train": 20, "val": 10, "test": 10}.items():
        files = sorted((root / split).glob("c*/*.png"))
        assert len(files) == count
        assert {f.parent.name for f in files} == {f"c{k}" for k in range(data_scale.CLASSES)}
    with Image.open(next((root / "train" / "c3").iterdir())) as image:
        assert (image.size, image.mode) == ((224, 224), "RGB")
    first = next((root / "val" / "c0").iterdir()).stat().st_mtime_ns
    data_scale.make_imagefolder(tmp_path / "images", 20, 10, test=10)  # reused, not written again
    assert next((root / "val" / "c0").iterdir()).stat().st_mtime_ns == first
    # the class sets the stripes' orientation and frequency (the spectrum's peak); the image, phase and noise
    rng = np.random.default_rng(0)
    same, other, third = (data_scale.pattern(k, rng).astype(float) for k in (0, 0, 5))

    def peak(image: np.ndarray) -> tuple[int, int]:
        spectrum = sum(np.abs(np.fft.fft2(image[..., c] - image[..., c].mean())) for c in range(3))
        return np.unravel_index(spectrum.argmax(), spectrum.shape)

    assert peak(same) == peak(other) != peak(third)
    assert np.abs(same - other).mean() > 5


def test_data_scale_reads_pss_and_counts_decodes(data_scale, tmp_path) -> None:
    pss, rss = data_scale.memory_kb(os.getpid())
    assert 0 < pss <= rss
    sampler = data_scale.MemorySampler(os.getpid(), in_process=True)
    sampler.sample()
    assert sampler.peaks.pss_kb[os.getpid()] > 0 and sampler.peaks.sum_pss_kb > 0
    log = tmp_path / "worker-0.log"
    log.write_text(
        "cached imagefolder-val-2deddb8cc3d406ce500d: [20, 3, 224, 224] u8*1/255 (3 MB) in 0.7 s\n"
        "imagefolder val: 20 images 3x224x224 as u8*1/255 (3 MB, mapped from the cache) in 0.7 s\n"
        "imagefolder train: 40 images 3x224x224 as u8*1/255 (6 MB, mapped from the cache) in 0.0 s\n"
        "imagefolder train: 40 images 3x224x224 as float32 (23 MB, in memory) in 1.6 s\n"
    )
    decodes, seconds = data_scale.read_logs([log, tmp_path / "missing.log"])
    assert decodes == {"train": 1, "val": 1}
    assert seconds == {"train": 1.6, "val": 0.7}


def test_data_scale_stops_a_launch_and_its_children(data_scale) -> None:
    from tests.helpers import descendants, process_table

    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    data_scale._CHILDREN.append(process)
    deadline = time.monotonic() + 10
    while not descendants(process.pid, process_table()) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = descendants(process.pid, process_table())
    assert children
    data_scale.stop_children()
    assert process.poll() is not None and not data_scale._CHILDREN
    time.sleep(0.2)
    table = process_table()
    assert not [pid for pid in children if pid in table and table[pid][2] != "Z"]


def test_data_scale_targets_and_tables(data_scale, capsys) -> None:
    rows = [
        _measured(data_scale, "2000x500", 2, "today", 6000, 100, 2),
        _measured(data_scale, "2000x500", 2, "new", 1200, 105, 1),
        _measured(data_scale, "2000x500", 2, "warm", 1100, 104, 0),
        _measured(data_scale, "4000x1000", 2, "today", 11000, 200, 2),
        _measured(data_scale, "4000x1000", 2, "new", 1500, 260, 1),
    ]
    met = {what: ok for what, ok, _ in data_scale.targets(rows)}
    assert met["PSS per worker <= 1.5 GB (2000x500, 2 worker(s))"] is True  # 1200 MiB = 1.26 GB
    assert met["PSS per worker <= 1.5 GB (4000x1000, 2 worker(s))"] is False  # 1500 MiB = 1.57 GB
    assert met["PSS per worker <= 1/3 of today's (2000x500, 2 worker(s))"] is True
    assert met["s/trial within 10% of today's or faster (2000x500, 2 worker(s))"] is True
    assert met["s/trial within 10% of today's or faster (4000x1000, 2 worker(s))"] is False
    assert met["PSS per worker grows < 15% when the data doubles (2000x500 -> 4000x1000, 2 worker(s))"] is False
    decoded = [ok for what, ok, _ in data_scale.targets(rows) if "does not decode again" in what]
    assert decoded == [True, True, True]
    again = data_scale.from_dict(json.loads(json.dumps(dataclasses.asdict(rows[1]))))  # --from-json
    assert (again.first_trial_s, again.decodes, again.pss_worker_mb) == ({0: 10.0, 1: 12.0}, rows[1].decodes, 1200)
    data_scale.report(rows)
    out = capsys.readouterr().out
    assert "| 2000x500 | 2 | new | auto (33) | 1,200 | 2,400 |" in out
    assert "| 2000x500 | 2 | 0.20 | 0.20 | 0.20 | 1.05 | 1.05 | 1.00 | 1.00 |" in out
    assert met["CPU s/trial within 10% of today's or less (4000x1000, 2 worker(s))"] is False  # 520 vs 400
    assert "| no |" in out and "| yes |" in out


@pytest.mark.slow
def test_data_scale_measures_a_real_study_end_to_end(tmp_path) -> None:
    """The smallest real run (one worker, one trial on 10 + 10 images, the cache only): the numbers come
    from the processes, the stores and the logs as they are written today."""
    out = tmp_path / "out.json"
    args = ["--sizes", "10x10", "--workers", "1", "--trials", "1", "--warm-trials", "0", "--variants", "new"]
    done = subprocess.run(
        [sys.executable, str(SOURCE_ROOT / "benchmarks" / "data_scale.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["returncode"] == 0 and row["samples"] > 0
    assert 100 < row["pss_worker_mb"] <= row["rss_worker_mb"]
    assert row["decodes"] == {"train": 1, "val": 1}  # the worker built both cache entries
    assert len(row["trial_seconds"]) == 1 and row["seconds_per_trial"] > 0
    assert 0 <= row["cpu_s_per_trial"] < 2 * row["seconds_per_trial"] * (os.cpu_count() or 1)  # from /proc (not nan)
    assert 0 < row["first_trial_s"]["0"] < row["wall_s"]
    assert "| 10x10 | 1 | new | auto (" in done.stdout


def test_data_scale_skips_a_run_the_machine_has_no_memory_for(data_scale, capsys) -> None:
    """On a shared machine a run that cannot fit is not started (the OOM killer picks any process)."""
    today, new = (data_scale.needed_mb(v, 2, 2000, 500) / 1024 for v in ("today", "new"))
    assert 12 < today < 15 and 3 < new < 4  # measured: ~6.6 GB a worker today, ~1.4 GB with the cache
    assert data_scale.available_mb() > 0
    rows = [
        data_scale.Measurement("2000x500", 2, "today", skipped="needs ~13.3 GiB, 2.4 GiB available"),
        data_scale.Measurement("2000x500", 2, "new", returncode=1, error="ct-tune: error: worker 0 was killed"),
    ]
    data_scale.report(rows)
    out = capsys.readouterr().out
    assert "| 2000x500 | 2 | today | skipped: needs ~13.3 GiB, 2.4 GiB available |" in out
    assert "| 2000x500 | 2 | new (failed) |" in out and "ct-tune: error: worker 0 was killed" in out


# ------------------------------------------------------------------------------ benchmarks/postgres_capacity.py
@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_capacity_runs_a_light_worker_on_two_connections(tmp_path) -> None:
    """The benchmark's own server has PostgreSQL's default connection limit, and a light worker holds its two
    connections (docs/postgres_scale.md; it held four before the pools were made lean). A sample may catch
    MLflow's overflow connection in the middle of a call, so the median is what is checked."""
    from tests.postgres import PASSWORD, find_bin_dir

    if find_bin_dir() is None:
        if os.environ.get("CT_TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (CT_TUNE_REQUIRE_POSTGRES=1) but its binaries were not found")
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    done = subprocess.run(
        [sys.executable, str(SOURCE_ROOT / "benchmarks" / "postgres_capacity.py"), "--workers", "1", "--seconds", "5"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "PostgreSQL max_connections = 100; MLflow: direct", done.stdout
    workers, per_second, _, per_worker, _, _, failed = lines[-1].split()
    assert (workers, failed) == ("1", "0") and float(per_second) > 0, done.stdout
    assert float(per_worker) <= 2.5, done.stdout
    assert PASSWORD not in done.stdout + done.stderr


# ------------------------------------------------------------------- benchmarks/gpu_check.py and its wheels
GPU_CHECK = SOURCE_ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SOURCE_ROOT / "benchmarks"))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SOURCE_ROOT / "benchmarks"))


def _requirement_lines(path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _pins(path) -> dict[str, str]:
    return {_norm(name): version for name, version in (line.split("==") for line in _requirement_lines(path))}


def test_gpu_check_help_names_its_command_and_sections() -> None:
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "python3 benchmarks/gpu_check.py" in done.stdout
    for word in ("--out", "--sections", "--quick", "--budget", "numerics", "fused", "study", "batched", "pytest"):
        assert word in done.stdout
    assert "--section-child" not in done.stdout  # internal


def test_gpu_check_without_cuda_says_skipped_and_writes_its_report(tmp_path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, also on a machine that has one
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no CUDA GPU: skipped\n"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["status"] == "skipped" and report["sections"] == []
    assert report["reason"].startswith("no CUDA GPU") and report["environment"]["torch"]
    assert "skipped" in (out / "gpu_check.md").read_text()


def test_gpu_check_runs_a_section_on_the_cpu_and_reports_it(tmp_path) -> None:
    """``--device cpu`` runs the same code with tiny sizes: here the numerics, end to end through a section
    process, its result file, the Markdown and the JSON."""
    out = tmp_path / "report"
    command = [sys.executable, str(GPU_CHECK), "--device", "cpu", "--sections", "numerics", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    (section,) = report["sections"]
    assert report["status"] == section["status"] == "pass"
    checks = {row["check"]: row for row in section["rows"]}
    assert checks["CT bf16 on cpu: max relative error, value / gradient"]["status"] == "pass"
    assert all(row["status"] == "pass" for row in section["rows"]) and len(section["rows"]) == 6
    assert float(checks["CT fp32 on cpu: max relative error, value / gradient"]["data"]["device"][0]) < 2e-5
    table = (out / "gpu_check.md").read_text()
    assert "| numerics (" in table and "| beta = 1 is ReLU on cpu, fp16 | bit-identical value and gradient |" in table


@pytest.mark.slow
def test_gpu_check_data_and_batched_sections_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "report"
    command = [sys.executable, str(GPU_CHECK), "--device", "cpu", "--sections", "batched,data", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in report["sections"]] == ["batched", "data"]
    rows = [row for section in report["sections"] for row in section["rows"]]
    assert {row["status"] for row in rows} == {"pass"}, rows
    assert any(row["check"] == "decoded pixels, resident vs streamed" for row in rows)


def test_gpu_check_budgets_leave_room_for_the_sections_after(gpu_check) -> None:
    budgets = dict(gpu_check.budgets(["numerics", "study", "pytest"], quick=False, total=300))
    assert budgets["numerics"](0) == 45  # its own cap
    assert budgets["study"](200) == 300 - 200 - gpu_check.MIN_SECTION_S  # what the pytest section needs stays
    assert budgets["pytest"](290) == 10  # below MIN_SECTION_S: not started
    full = sum(gpu_check.BUDGET_S[name][0] for name in gpu_check.SECTIONS)
    assert gpu_check.TOTAL_S[0] <= 8 * 60 - 30 < full  # the check fits 8 minutes; each section's cap is a cap
    with pytest.raises(Exception, match="choose from"):
        gpu_check.parse_sections("numerics,gpu")
    assert gpu_check.parse_sections("pytest, numerics") == ["numerics", "pytest"]


def test_gpu_check_report_marks_failures_goals_and_sections_not_run(gpu_check, tmp_path) -> None:
    rows = [
        gpu_check.Row("CT fp32 on cuda:0", "1.2e-06 / 2.0e-06", "<= 2e-05"),
        gpu_check.Row("resnet50, bf16, inference: steered/plain", "fused 0.93", "fused >= 0.95", "missed"),
        gpu_check.Row("|x| too big", "a|b", status="FAIL"),
    ]
    sections = [
        gpu_check.SectionResult("numerics", "n", "fail", 12.0, 45.0, rows),
        gpu_check.SectionResult("pytest", "p", "skipped", 0.0, 0.0, [], "no time left in the check's budget"),
    ]
    report = {
        "status": "fail",
        "started": "now",
        "seconds": 12.0,
        "options": {"quick": True},
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130"},
        "sections": [dataclasses.asdict(s) for s in sections],
    }
    gpu_check.write_report(tmp_path, report)
    page = (tmp_path / "gpu_check.md").read_text()
    assert page.startswith("# ct-tune GPU check: fail\n") and "gpu NVIDIA H200, torch 2.11.0+cu130" in page
    assert "| numerics (12 of 45 s) | CT fp32 on cuda:0 | 1.2e-06 / 2.0e-06 | <= 2e-05 | pass |" in page
    assert r"| \|x\| too big | a\|b |  | FAIL |" in page  # a cell's | cannot break the table
    assert "| pytest (0 of 0 s) | - | no time left in the check's budget |  | skipped |" in page
    assert "Sections failed: numerics. Goals missed: 1." in page
    again = json.loads((tmp_path / "gpu_check.json").read_text())
    assert gpu_check.SectionResult.from_dict(again["sections"][0]).rows[1].status == "missed"


def test_gpu_check_reads_pytest_junit(gpu_check, tmp_path) -> None:
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="tests.gpu.a" name="t1"/>'
        '<testcase classname="tests.gpu.a" name="t2"><skipped message="needs a CUDA GPU: none"/></testcase>'
        '<testcase classname="tests.gpu.b" name="t3"><failure message="assert 1 == 2"/></testcase>'
        '<testcase classname="tests.gpu.b" name="t4"><error message="fixture broke"/></testcase>'
        "</testsuite></testsuites>"
    )
    found = gpu_check.read_junit(junit)
    assert (found["passed"], found["skipped"], found["failed"], found["errors"]) == (1, 1, 1, 1)
    assert found["failed_tests"] == ["tests.gpu.b::t3: assert 1 == 2", "tests.gpu.b::t4: fixture broke"]
    assert found["skipped_tests"] == ["tests.gpu.a::t2: needs a CUDA GPU: none"]


def test_gpu_wheels_pin_what_constraints_pin() -> None:
    """The wheels carried to the GPU machine are the versions this project installs: constraints.txt's, and for
    the packages it does not pin, the ones installed with it."""
    from importlib import metadata

    wheels = _pins(SOURCE_ROOT / "benchmarks" / "gpu_wheels.txt")
    constraints = _pins(SOURCE_ROOT / "constraints.txt")
    assert len(wheels) == len(_requirement_lines(SOURCE_ROOT / "benchmarks" / "gpu_wheels.txt"))  # each once
    assert {"optuna", "mlflow", "sqlalchemy", "alembic", "pydantic"} <= set(wheels)
    disagree = {
        name: (version, constraints[name])
        for name, version in wheels.items()
        if constraints.get(name, version) != version
    }
    assert not disagree, f"gpu_wheels.txt vs constraints.txt: {disagree}"
    installed = {}
    for name, version in wheels.items():
        if name not in constraints:
            try:
                installed[name] = (version, metadata.version(name))
            except metadata.PackageNotFoundError:
                continue
    assert {name: pair for name, pair in installed.items() if pair[0] != pair[1]} == {}


def test_gpu_wheels_hold_every_dependency_the_gpu_machine_lacks() -> None:
    """Every dependency (for Python 3.12 on Linux, extras left out) of every carried wheel is carried or on the
    machine: they are installed with --no-deps there. Read from the installed copies of the same versions."""
    from importlib import metadata

    from packaging.requirements import Requirement

    wheels = _pins(SOURCE_ROOT / "benchmarks" / "gpu_wheels.txt")
    machine = {_norm(name) for name in _requirement_lines(SOURCE_ROOT / "benchmarks" / "gpu_machine_packages.txt")}
    assert {"torch", "torchvision", "triton", "lightning", "numpy", "scikit-learn", "pytest"} <= machine
    assert not machine & set(wheels) - {"typing-extensions"}  # carried only when the machine lacks it
    device = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
    missing = []
    for name in wheels:
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here: install with -c constraints.txt")
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(device):
                continue
            if _norm(requirement.name) not in wheels and _norm(requirement.name) not in machine:
                missing.append(f"{name} needs {line}")
    assert not missing, missing


def test_gpu_wheels_fetcher_and_the_ignored_folder() -> None:
    script = (SOURCE_ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    assert "--python-version 3.12 --implementation cp" in script and "-d .whl" in script
    assert subprocess.run(["bash", "-n", str(SOURCE_ROOT / "benchmarks" / "gpu_wheels.sh")], timeout=30).returncode == 0
    assert "/.whl/" in (SOURCE_ROOT / ".gitignore").read_text().splitlines()


def _device_call() -> dict:
    import re

    doc = (SOURCE_ROOT / "docs" / "gpu_check.md").read_text()
    blocks = re.findall(r"<!-- the run call -->\s*```json\n(.*?)```", doc, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/gpu_check.md holds one run call, after <!-- the run call -->"
    return json.loads(blocks[0])


def test_the_gpu_check_device_command_in_the_docs_fits_the_run_tool(gpu_check) -> None:
    call = _device_call()
    command = call["command"]
    assert len(command) <= 2000 and call["carry"] == [".whl"] and set(call) == {"command", "carry", "timeout_s"}
    assert gpu_check.TOTAL_S[0] + 60 <= call["timeout_s"] <= 600  # the check, the install, and a margin
    install = "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
    assert command.count("pip install") == 1 and f"{install} .whl/*.whl" in command  # nothing from an index
    assert "PYTHONUNBUFFERED=1" in command and "MLFLOW_DISABLE_TELEMETRY=true" in command
    assert "python3 benchmarks/gpu_check.py --out $OUT" in command and "| tee $OUT/gpu_check.log" in command
    assert command.startswith("set -o pipefail;")  # the check's exit status, not tee's
    assert subprocess.run(["bash", "-n", "-c", command], timeout=30).returncode == 0


# A subprocess that can import only what the GPU machine has and what is carried to it (modules of any other
# installed distribution raise ModuleNotFoundError, as they would there; modules of no distribution, such as
# this source tree's, import as usual), then runs what the GPU check runs, on the CPU.
ONLY_THE_GPU_MACHINE = """
import importlib.metadata as metadata, re, sys
allowed = set(sys.argv[1].split(","))
owners = metadata.packages_distributions()
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
class Absent:
    def find_spec(self, name, path=None, target=None):
        if "." in name or name in sys.stdlib_module_names:
            return None
        dists = owners.get(name) or []
        if dists and not any(norm(d) in allowed for d in dists):
            raise ModuleNotFoundError(f"{name} ({', '.join(dists)}): neither on the GPU machine nor carried", name=name)
sys.meta_path.insert(0, Absent())
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/benchmarks"]
import os, tempfile
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
import ct_tune
from ct_tune.bench import evaluate_profile
from ct_tune.stores import open_mlflow_client
from ct_tune.training import PretrainConfig, pretrain
root = tempfile.mkdtemp()
checkpoint = pretrain(PretrainConfig(data="digits", epochs=1, out=f"{root}/d.pt", accelerator="cpu",
                                     tracking_uri=f"sqlite:///{root}/p.db", progress=False))["checkpoint"]
objectives = [{"name": "probe"}, {"name": "adversarial", "eps": 0.1, "steps": 2, "n": 40, "random_start": False}]
spec = {"model": {"checkpoint": checkpoint}, "data": {"name": "digits", "seed": 0}, "objectives": objectives,
        "search": {"granularity": "block", "enqueue_baseline": True}, "sampler": {"name": "tpe", "seed": 0},
        "budget": {"n_trials": 2}, "run": {"device": "cpu", "batch_size": 128}}
study = ct_tune.create_study(spec, name="only", storage=f"sqlite:///{root}/o.db", tracking_uri=f"sqlite:///{root}/m.db")
study.run(workers=1, devices="cpu", progress=False)
assert study.baseline() is not None and study.counts()["COMPLETE"] == 2
evaluate_profile(model={"checkpoint": checkpoint}, data={"name": "digits"}, beta=1.0, objectives=objectives)
open_mlflow_client(f"sqlite:///{root}/m.db").search_runs([study.experiment_id])
import gpu_check, steering_speed, batched_trials, data_scale, torchvision.models, PIL.Image, pytest, tests.helpers
print("imports ok")
"""


@pytest.mark.slow
def test_what_the_gpu_check_runs_imports_only_the_machines_packages_and_the_wheels(tmp_path) -> None:
    allowed = set(_pins(SOURCE_ROOT / "benchmarks" / "gpu_wheels.txt"))
    allowed |= {_norm(n) for n in _requirement_lines(SOURCE_ROOT / "benchmarks" / "gpu_machine_packages.txt")}
    allowed.add("ct-tune")  # this source tree (the run tool carries it; an editable install names it so)
    done = subprocess.run(
        [sys.executable, "-c", ONLY_THE_GPU_MACHINE, ",".join(sorted(allowed)), str(SOURCE_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("imports ok"), done.stdout[-2000:]
