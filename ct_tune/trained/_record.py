"""The record of a training: ``ct-tune train-ct`` end to end (train, write the profile, log to MLflow), the
MLflow run of one training, and a trained profile scored once on the test split (a pipeline's report)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.bench import Bench
from ct_tune.stores import redact, resolve_tracking_uri
from ct_tune.tracking import Tracker, beta_distribution_figure
from ct_tune.tracking.keys import TAG_COMMAND, TAG_OBJECTIVE, TAG_STRATEGY
from ct_tune.trained._loop import TrainedCT
from ct_tune.trained._spec import TrainCTSpec

if TYPE_CHECKING:
    from ct_tune.objectives import ObjectiveResult
    from ct_tune.steering import BetaProfile

__all__ = ["log_trained_ct", "run_train_ct", "score_trained_on_test"]


def run_train_ct(
    spec: TrainCTSpec,
    *,
    out: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """What ``ct-tune train-ct`` does: train, write the profile to ``out``, log the run to MLflow.

    The MLflow store is opened before training (an unreachable one fails in seconds, not after it);
    the profile is written atomically, after training, so a failed run leaves no file behind.
    """
    tracker = Tracker(resolve_tracking_uri(tracking_uri, spec.tracking_uri)) if track else None
    result = spec.train(on_epoch=on_epoch)
    payload = result.to_dict()
    if out is not None:
        payload["profile_path"] = str(result.profile.save(out))
    if tracker is not None:
        payload["mlflow"] = {
            **log_trained_ct(result, name=spec.name, tracker=tracker),
            "tracking_uri": redact(tracker.tracking_uri),
        }
    return payload


def log_trained_ct(result: TrainedCT, *, name: str, tracker: Tracker) -> dict[str, str]:
    """Log a training as its own MLflow run (experiment ``ct-tune/<name>``): settings as params, the loss
    and val curves as per-epoch metrics, the profile as an artifact, the betas per unit as a figure."""
    experiment_id = tracker.experiment_id(name, create=True)
    assert experiment_id is not None
    run = tracker.client.create_run(
        experiment_id,
        run_name=f"trained-{result.settings.granularity}",
        tags={TAG_COMMAND: "train-ct", TAG_STRATEGY: "trained", TAG_OBJECTIVE: result.objective},
    )
    run_id = run.info.run_id
    history = [(key, row[key], int(row["epoch"])) for row in result.history for key in row if key != "epoch"]
    tracker.log(
        run_id,
        params={**result.settings.model_dump(), "objective": result.objective, "units": result.units},
        metrics={
            result.objective: result.value,
            "baseline": result.baseline,
            "gain": result.value - result.baseline,
            "best_epoch": result.best_epoch,
            "parameters": result.parameters,
            "seconds": result.seconds,
        },
        history=history,
    )
    tracker.client.log_dict(run_id, result.profile.to_dict(), "profile.json")
    channels = result.profile.channels or {unit: {"beta": [beta]} for unit, beta in result.profile.betas.items()}
    title = f"trained betas ({result.settings.granularity}), val {result.objective} {result.value:.4f}"
    figure = beta_distribution_figure({unit: entry["beta"] for unit, entry in channels.items()}, title=title)
    tracker.log_figure(run_id, figure, "beta_distribution.png")
    tracker.client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "experiment_id": experiment_id}


def score_trained_on_test(spec: TrainCTSpec, profile: BetaProfile) -> Mapping[str, ObjectiveResult]:
    """A trained profile scored once on the test split (a pipeline's final report), with its objective."""
    with Bench.open(spec.bench, granularity=profile.unit_granularity) as bench:
        assert bench.handle is not None
        if profile.fingerprint and profile.fingerprint != bench.trace.fingerprint:
            raise InputError(f"the trained profile was made on a model with other ReLU calls ({profile.model})")
        bench.handle.update(profile.steering_values())
        return dict(bench.evaluator("test").evaluate())
