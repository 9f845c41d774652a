"""Replicates: a pipeline run once per seed, then one report over the seeds (``run_pipeline(seeds=...)``).

Seed s runs the pipeline as ``<name>-s<s>`` (studies ``<name>-s<s>.<stage>``, trained profiles
``<name>-s<s>.<stage>.json``) with the data split, every sampler and every trained stage seeded with s; a
checkpoint path holding ``{seed}`` names one pretrained checkpoint per seed (a model pretrained on the
searched data must not have seen a seed's test images). Seeds run one after the other, each resumable
stage by stage like any pipeline. Each seed's studies (the ``ct_tune.pipeline`` attribute) and trained
profiles record the set: its name, the seed and a fingerprint of the pipeline, as a trained profile records
the settings it was made with; a resumed set whose pipeline file (or ``--trials``) changed is refused
before anything runs. The report over seeds (``_combined``) is returned and logged to one MLflow run of the
set (experiment ``ct-tune/<name> replicates``): metrics, ``report.json``, a table and a plot of the gains
per seed; each seed's stage runs point at it with the ``ct_tune.replicate_set`` and ``ct_tune.seed`` tags.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.pipelines._combined import ReplicateRow, combine
from ct_tune.pipelines._result import PipelineResult
from ct_tune.pipelines._spec import PipelineSpec, pipeline_data, pipeline_from_dict, stage_spec
from ct_tune.search import study_exists
from ct_tune.steering import BetaProfile
from ct_tune.stores import open_optuna_storage, redact, resolve_storage, resolve_tracking_uri, sqlite_path
from ct_tune.tracking import Tracker, gains_per_seed_figure
from ct_tune.tracking.keys import (
    ATTR_PIPELINE,
    TAG_FINGERPRINT,
    TAG_PIPELINE,
    TAG_REPLICATE_SET,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEEDS,
)

__all__ = ["ReplicateResult", "check_seeds", "parse_seeds", "replicate_record", "run_replicates", "seed_pipeline"]

SEEDS_HINT = "give distinct seeds >= 0 separated by commas, like 0,1,2"


@dataclass
class ReplicateResult:
    """A replicate set: each seed's pipeline result and the rows over seeds."""

    name: str
    seeds: list[int]
    fingerprint: str
    runs: dict[int, PipelineResult]
    rows: list[ReplicateRow]
    objective_names: list[str]
    run_id: str  # the MLflow run of the set
    tracking_uri: str  # redacted
    plots: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.name,
            "seeds": self.seeds,
            "fingerprint": self.fingerprint,
            "replicates": [row.to_dict() for row in self.rows],
            "runs": {str(seed): result.to_dict() for seed, result in self.runs.items()},
            "mlflow_run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "plots": self.plots,
        }

    def table(self) -> dict[str, list[Any]]:
        """The rows over seeds as MLflow's table artifact lays them out (column -> values)."""
        columns: dict[str, list[Any]] = {"profile": [], "stage": [], "objective": [], "test_mean": []}
        columns.update({f"test_s{seed}": [] for seed in self.seeds})
        columns.update({"gain_mean": [], "t_low": [], "t_high": [], "positive_seeds": [], "verdict": []})
        columns.update({f"gain_s{seed}": [] for seed in self.seeds})
        for row in self.rows:
            tests = {value.seed: value.test for value in row.values}
            gains = {value.seed: value.gain for value in row.values}
            gain = row.gain
            for key, value in (("profile", row.profile), ("stage", row.stage), ("objective", row.objective)):
                columns[key].append(value)
            columns["test_mean"].append(row.test_mean)
            columns["gain_mean"].append(None if gain is None else gain.mean)
            columns["t_low"].append(None if gain is None else gain.low)
            columns["t_high"].append(None if gain is None else gain.high)
            columns["positive_seeds"].append(None if gain is None else gain.positive)
            columns["verdict"].append("" if gain is None else gain.verdict)
            for seed in self.seeds:
                columns[f"test_s{seed}"].append(tests.get(seed))
                columns[f"gain_s{seed}"].append(gains.get(seed))
        return columns


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as a checked list."""
    if not text.strip():
        raise InputError(f"--seeds is empty: {SEEDS_HINT}")
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--seeds {text!r} is not a list of whole numbers: {SEEDS_HINT}") from None
    return check_seeds(seeds)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds of a replicate set: at least one, whole numbers, none negative, none twice."""
    found = list(seeds)
    if not found:
        raise InputError(f"--seeds is empty: {SEEDS_HINT}")
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in found):
        raise InputError(f"--seeds {found} holds something other than whole numbers: {SEEDS_HINT}")
    negative = [seed for seed in found if seed < 0]
    if negative:
        raise InputError(f"--seeds holds the negative seed {negative[0]}: {SEEDS_HINT}")
    twice = sorted({seed for seed in found if found.count(seed) > 1})
    if twice:
        raise InputError(f"--seeds names seed {twice[0]} twice: {SEEDS_HINT}")
    return found


def seed_pipeline(spec: PipelineSpec, seed: int) -> PipelineSpec:
    """The pipeline of one seed: named ``<name>-s<seed>``, split, samplers and trained stages seeded with it."""
    data = pipeline_data(spec)
    data["name"] = f"{spec.name}-s{seed}"
    base = data["base"]
    base["data"] = {**(base.get("data") or {}), "seed": seed}
    model = base.get("model") or {}
    if isinstance(model.get("checkpoint"), str):
        model["checkpoint"] = model["checkpoint"].replace("{seed}", str(seed))
    for stage in data["stages"]:
        if stage.get("kind", "search") == "train":
            stage["train"] = {**(stage.get("train") or {}), "seed": seed}
            continue
        sampler = stage.get("sampler") or "tpe"
        stage["sampler"] = {**({"name": sampler} if isinstance(sampler, str) else sampler), "seed": seed}
    return pipeline_from_dict(data, source=f"pipeline {spec.name} at seed {seed}")


def fingerprint(spec: PipelineSpec) -> str:
    """What the set replicates, in 16 hex digits: the pipeline as validated (with ``--trials`` applied)."""
    text = json.dumps(pipeline_data(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def replicate_record(spec: PipelineSpec, seed: int) -> dict[str, Any]:
    """What each seed's studies and trained profiles record of the set they belong to."""
    return {"of": spec.name, "seed": seed, "fingerprint": fingerprint(spec)}


def run_replicates(
    spec: PipelineSpec,
    *,
    seeds: Sequence[int],
    prepare: Callable[[PipelineSpec, dict[str, Any]], Callable[[], PipelineResult]],
    storage: str | None,
    tracking_uri: str | None,
    profile_dir: Path,
    tell: Callable[[str], None],
) -> ReplicateResult:
    """Run ``spec`` once per seed (``prepare`` checks one seed's pipeline and returns what runs it), then
    report over the seeds. Every seed's pipeline and options, and the resumed set's fingerprint, are checked
    before the first seed creates anything."""
    seeds = check_seeds(seeds)
    ones = {seed: seed_pipeline(spec, seed) for seed in seeds}
    made = fingerprint(spec)
    storages: dict[str, Any] = {}
    for seed, one in ones.items():
        _check_resume(one, seed, made, storage=storage, profile_dir=profile_dir, storages=storages)
    runs = {seed: prepare(one, replicate_record(spec, seed)) for seed, one in ones.items()}
    uri = resolve_tracking_uri(tracking_uri, spec.base.get("tracking_uri"))
    tracker = Tracker(uri, artifact_location=spec.base.get("artifact_location"))
    run_id = _set_run(tracker, spec, made)
    results: dict[int, PipelineResult] = {}
    try:
        for index, seed in enumerate(seeds):
            tell(f"seed {seed} ({index + 1}/{len(seeds)}): pipeline {ones[seed].name}")
            results[seed] = runs[seed]()
            for outcome in results[seed].stages:  # each stage's run points at the set's run
                tracker.log(outcome.parent_run_id, tags={TAG_REPLICATE_SET: run_id, TAG_SEED: str(seed)})
    except BaseException:
        tracker.set_status(run_id, "KILLED")
        raise
    objectives = list(dict.fromkeys(name for result in results.values() for name in result.reported_objectives))
    result = ReplicateResult(
        spec.name, seeds, made, results, combine(results), objectives, run_id, redact(tracker.tracking_uri), []
    )
    _log_set(tracker, result)
    tracker.set_status(run_id, "FINISHED")
    result.plots = tracker.plot_files(run_id)
    return result


def _check_resume(
    one: PipelineSpec, seed: int, made: str, *, storage: str | None, profile_dir: Path, storages: dict[str, Any]
) -> None:
    """Refuse a seed's existing study or trained profile that another version of the pipeline made."""
    for stage in one.stages:
        if stage.kind == "train":
            path = profile_dir / f"{one.study_name(stage.name)}.json"
            what = f"trained profile {path}"
            recorded = _replicates_of(BetaProfile.load(path).metadata) if path.is_file() else None
        else:
            what = f"study {one.study_name(stage.name)}"
            recorded = _study_record(one, stage.name, storage, storages)
        if recorded is not None and recorded.get("fingerprint") != made:
            was = f"fingerprint {recorded['fingerprint']}" if recorded else "not made as a replicate"
            raise InputError(
                f"the pipeline changed since seed {seed}'s {what} was made ({was}, now {made}): run the pipeline "
                "file and --trials it was made with, or rename the pipeline to start a new replicate set"
            )


def _study_record(one: PipelineSpec, stage: str, storage: str | None, storages: dict[str, Any]) -> dict | None:
    """The replicate record of a stage's study (empty without one); None when the study does not exist
    (a SQLite file that does not exist is not created to find out)."""
    url = resolve_storage(storage, stage_spec(one, stage).storage)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return None
    if url not in storages:
        storages[url] = open_optuna_storage(url)
    optuna_storage, name = storages[url], one.study_name(stage)
    if not study_exists(name, storage=optuna_storage):
        return None
    attrs = optuna_storage.get_study_user_attrs(optuna_storage.get_study_id_from_name(name))
    return _replicates_of(attrs.get(ATTR_PIPELINE) or {})


def _replicates_of(found: Mapping[str, Any]) -> dict[str, Any]:
    record = found.get("replicates")
    return dict(record) if isinstance(record, Mapping) else {}


def _set_run(tracker: Tracker, spec: PipelineSpec, made: str) -> str:
    """The set's MLflow run: the one an earlier, interrupted run of this set made, else a new one."""
    experiment = tracker.experiment_id(f"{spec.name} replicates", create=True)
    assert experiment is not None
    found = tracker.runs(experiment, f"tags.`{TAG_ROLE}` = 'replicates' AND tags.`{TAG_FINGERPRINT}` = '{made}'")
    if found:
        run_id = found[0].info.run_id
        tracker.set_status(run_id, "RUNNING")
        return run_id
    tags = {TAG_ROLE: "replicates", TAG_PIPELINE: spec.name, TAG_FINGERPRINT: made}
    return tracker.client.create_run(experiment, run_name=f"replicates-{spec.name}", tags=tags).info.run_id


def _log_set(tracker: Tracker, result: ReplicateResult) -> None:
    """Metrics, ``report.json``, the table and the plot of gains per seed on the set's run."""
    metrics: dict[str, float] = {}
    for row in result.rows:
        metrics.update(row.metrics())
    tracker.log(result.run_id, metrics=metrics, tags={TAG_SEEDS: ",".join(map(str, result.seeds))})
    tracker.client.log_dict(result.run_id, result.to_dict(), "report.json")
    table = result.table()
    rows = [list(values) for values in zip(*table.values(), strict=True)]
    tracker.client.log_dict(result.run_id, {"columns": list(table), "data": rows}, "replicates_table.json")
    several = len(result.objective_names) > 1  # a point per stage (and objective): stage names are unique
    gains = {f"{row.stage} {row.objective}" if several else row.stage: row.gain for row in result.rows if row.gain}
    if gains:
        title = f"{result.name}: seeds {', '.join(map(str, result.seeds))}"
        tracker.log_figure(result.run_id, gains_per_seed_figure(gains, title=title), "plots/gains_per_seed.png")
