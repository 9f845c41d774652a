"""The MLflow side of a study, written on the MLflow client (optuna-integration's MLflowCallback is
deprecated and has no parent run).

Layout: one experiment per study (``ct-tune/<study>``), one parent run for the study, one child run
per trial (``trial-0007``). A child run carries the betas as params, the objective values, running
values with their steps and the trial duration as metrics, and the trial's state, worker, device and
host as tags; the Optuna trial stores the run id as a user attribute and the run the trial number as a
tag; both carry the val split they were scored on as an MLflow dataset (``_datasets``). Writes are
batched: a trial costs a handful of calls, whatever its number of units.

Trials that fail or are pruned are logged with their state; a trial whose worker died is closed as
FAILED by whichever worker notices it (see ``close_run``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ct_tune.stores import database_reason, open_mlflow_client, sqlite_path
from ct_tune.tracking._datasets import SplitDataset
from ct_tune.tracking.keys import (
    TAG_EXPERIMENT_KIND,
    TAG_FAILURE,
    TAG_HOST,
    TAG_NOTE,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
)

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "ct-tune/"
MAX_KEY = 250  # MLflow's longest param or metric key
_UNSAFE_IN_KEY = re.compile(r"[^A-Za-z0-9_.\- ]")
# MLflow statuses for Optuna trial states; a pruned trial finished normally, just early.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def mlflow_key(name: str) -> str:
    """The MLflow key of a param or metric named after units: valid, stable and unique per name.

    MLflow takes letters, digits, ``_ - . /`` and spaces (and ``:`` off Windows), 250 characters at most,
    and no ``/`` segments that a path would normalise away. Unit names are module paths: ``relu()`` (a
    functional call site) and ``#k`` (the k-th call of a reused module) get readable stand-ins; any other
    character (``@`` or ``+`` in a ``ModuleDict`` key, ``/``) becomes ``_``, and a name that needed that or
    is too long ends in ``_`` and 8 hex digits of its hash, so two names never share a key. Studies log
    the mapping of the names they changed (``unit_keys.json`` on the parent run)."""
    key = name.replace("relu()", "relu_inline").replace("#", "-")
    if len(key) <= MAX_KEY and not _UNSAFE_IN_KEY.search(key):
        return key
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{_UNSAFE_IN_KEY.sub('_', key)[: MAX_KEY - 9]}_{digest}"


def metric_value(value: Any) -> float:
    """A value that is exactly a float32 (a tensor's mean, a float32 loss) as the shortest decimal that
    float32 reads back as the same number: 0.886, not 0.8859999775886536. Other floats are kept."""
    number = float(value)
    if not math.isfinite(number) or abs(number) > 3.4e38:  # beyond float32: kept as it is
        return number
    single = np.float32(number)
    if float(single) == number:
        return float(str(single))  # numpy prints a float32 as its shortest round-tripping decimal
    return number


def experiment_name(study_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}{study_name}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts next to a SQLite store (``mlruns/artifacts``); elsewhere MLflow's own default."""
    path = sqlite_path(tracking_uri)
    return str((path.parent / "artifacts").resolve()) if path is not None else None


class Tracker:
    """A connection to one MLflow backend store."""

    def __init__(self, tracking_uri: str, *, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location or default_artifact_location(tracking_uri)
        # Figures are drawn and written off the trial's critical path (matplotlib text layout costs
        # 0.1-0.4 s a figure); ``flush`` waits for them. One thread: pyplot is not thread-safe.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ct-tune-figures")
        self._pending: list[Future[None]] = []
        self.client: MlflowClient = open_mlflow_client(tracking_uri)

    # ----------------------------------------------------------------------------------------------
    # Experiment and parent run
    def experiment_id(self, study_name: str, *, create: bool) -> str | None:
        """The study's experiment (created if asked); a deleted experiment of that name is restored."""
        name = experiment_name(study_name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted" and create:
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        if not create:
            return None
        # MLflow 3's UI opens an experiment without this tag as a GenAI one (traces first): ct-tune's are runs.
        tags = {TAG_EXPERIMENT_KIND: "custom_model_development"}
        return self.client.create_experiment(name, artifact_location=self.artifact_location, tags=tags)

    def create_study_run(
        self,
        experiment_id: str,
        study_name: str,
        params: Mapping[str, Any],
        spec: Mapping[str, Any],
        *,
        datasets: Sequence[SplitDataset] = (),
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"study-{study_name}",
            tags={TAG_STUDY: study_name, TAG_ROLE: "study", TAG_NOTE: _study_note(study_name, spec)},
        )
        run_id = run.info.run_id
        self.log(run_id, params=params)
        self.log_datasets(run_id, datasets)
        self.client.log_dict(run_id, dict(spec), "spec.json")
        # Created, not yet run: no end time until a launch ends (``set_status``), so the run spans the study.
        self.client.update_run(run_id, status="SCHEDULED")
        return run_id

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING while a launch runs; FINISHED, KILLED or FAILED with the end time when it ends (MLflow
        cannot clear an end time: while a later launch runs, the run shows the previous launch's end)."""
        try:
            if status in ("RUNNING", "SCHEDULED"):
                self.client.update_run(run_id, status=status)
            else:
                self.client.set_terminated(run_id, status, end_time=int(time.time() * 1000))
        except Exception as error:  # the study goes on without the status
            logger.warning("could not set MLflow run %s to %s: %s", run_id, status, database_reason(error))

    def delete_experiment(self, study_name: str) -> str | None:
        """Soft-delete the study's experiment, renamed so that the name can be used again."""
        experiment_id = self.experiment_id(study_name, create=False)
        if experiment_id is None:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.client.rename_experiment(experiment_id, f"{experiment_name(study_name)} (deleted {stamp})")
        self.client.delete_experiment(experiment_id)
        return experiment_id

    # ----------------------------------------------------------------------------------------------
    # Trial runs
    def start_trial_run(
        self,
        experiment_id: str,
        parent_run_id: str,
        *,
        study_name: str,
        trial_number: int,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        datasets: Sequence[SplitDataset] = (),
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"trial-{trial_number:04d}",
            tags={
                TAG_PARENT_RUN: parent_run_id,
                TAG_STUDY: study_name,
                TAG_TRIAL: str(trial_number),
                TAG_STATE: "RUNNING",
                TAG_HOST: socket.gethostname(),
                **tags,
            },
        )
        self.log(run.info.run_id, params=params)
        self.log_datasets(run.info.run_id, datasets)
        return run.info.run_id

    def finish_trial_run(
        self,
        run_id: str,
        *,
        state: str,
        metrics: Mapping[str, float],
        history: Sequence[tuple[str, float, int]] = (),
        tags: Mapping[str, str] | None = None,
        record: Mapping[str, Any] | None = None,
        figure: Callable[[], Figure] | None = None,
    ) -> None:
        """Metrics, running values, state and the record in as few calls as MLflow allows; the
        figure (built by ``figure()``) is drawn in the background."""
        self.log(run_id, metrics=metrics, history=history, tags={TAG_STATE: state, **(tags or {})})
        if record is not None:
            self.client.log_dict(run_id, dict(record), "trial.json")
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))
        if figure is not None:
            self.log_figures_later(run_id, lambda: {"beta_profile.png": figure()})

    def close_run(
        self, run_id: str, *, state: str = "FAIL", reason: str = "", metrics: Mapping[str, float] | None = None
    ) -> None:
        """Close a run left RUNNING (its worker died or was interrupted) with the state Optuna holds."""
        try:
            tags = {TAG_STATE: state}
            if reason:
                tags[TAG_FAILURE] = reason[:500]
            self.log(run_id, tags=tags, metrics=metrics)
            self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))
        except Exception as error:
            logger.warning("could not close MLflow run %s: %s", run_id, database_reason(error))

    # ----------------------------------------------------------------------------------------------
    # Low level
    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        history: Iterable[tuple[str, float, int]] = (),
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        """``log_batch`` split to MLflow's limits (100 params/tags, 1000 entities per call)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        param_items = [Param(mlflow_key(k), _param_value(v)) for k, v in (params or {}).items()]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        metric_items = [Metric(mlflow_key(k), metric_value(v), now, step) for k, v in (metrics or {}).items()]
        metric_items += [Metric(mlflow_key(k), metric_value(v), now, int(s)) for k, v, s in history]
        while param_items or tag_items or metric_items:
            batch_params, param_items = param_items[:100], param_items[100:]
            batch_tags, tag_items = tag_items[:100], tag_items[100:]
            room = 1000 - len(batch_params) - len(batch_tags)
            batch_metrics, metric_items = metric_items[:room], metric_items[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)

    def log_datasets(self, run_id: str, datasets: Sequence[SplitDataset]) -> None:
        """The data the run's numbers came from, in one call (none: no call); logged again, nothing changes."""
        if datasets:
            self.client.log_inputs(run_id, datasets=[dataset.to_input() for dataset in datasets])

    def log_figure(self, run_id: str, figure: Figure, artifact_file: str) -> None:
        try:
            self.client.log_figure(run_id, figure, artifact_file)
        finally:
            from ct_tune.tracking._plots import close

            close(figure)

    def log_figures_later(self, run_id: str, build: Callable[[], Mapping[str, Figure]]) -> None:
        """Build figures and log them as artifacts of ``run_id`` in the background thread."""

        def work() -> None:
            for artifact_file, figure in build().items():
                self.log_figure(run_id, figure, artifact_file)

        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._background.submit(work))

    def flush(self) -> None:
        """Wait for background figures; a failed one is a warning (plots never fail a study)."""
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.result()
            except Exception as error:
                logger.warning("could not log a figure to MLflow: %s", error)

    def plot_files(self, run_id: str) -> list[str]:
        """Local paths of a run's ``plots/*.png`` (where the artifact store is a local directory; else the
        folder's URI)."""
        uri = self.client.get_run(run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            return [f"{uri}/plots/"]
        folder = Path(parsed.path) / "plots"
        return sorted(str(path) for path in folder.glob("*.png")) if folder.is_dir() else []

    def runs(self, experiment_id: str, filter_string: str = "") -> list[Any]:
        """All runs of an experiment matching an MLflow filter (pages through the results)."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _study_note(study_name: str, spec: Mapping[str, Any]) -> str:
    search = spec.get("search", {})
    objectives = ", ".join(o.get("name", "?") for o in spec.get("objectives", []))
    return (
        f"ct-tune study **{study_name}**: {search.get('granularity', '?')} betas, objectives: {objectives}. "
        "Child runs are trials; plots/ holds the best beta profile, history, Pareto front and importances."
    )
