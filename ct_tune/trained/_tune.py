"""Trained CT's own settings searched with Optuna: one training per trial, each its own MLflow run.

The study ``<name>.tune`` (TPE, seeded) is resumable: it runs until it holds ``n_trials`` finished trials.
Both the settings and the epoch are chosen on val, so the best trial's val score is optimistic; only a
test report (``kind: train`` in a pipeline) says what it is worth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ct_tune._errors import InputError
from ct_tune.bench import Bench
from ct_tune.steering import BetaProfile
from ct_tune.stores import open_optuna_storage, redact, resolve_storage, resolve_tracking_uri
from ct_tune.tracking import Tracker
from ct_tune.tracking.keys import ATTR_BASELINE, ATTR_PROFILE, ATTR_RUN_ID, TAG_STUDY, TAG_TRIAL
from ct_tune.trained._loop import train_loaded
from ct_tune.trained._record import log_trained_ct
from ct_tune.trained._spec import TrainCTSpec

__all__ = ["tune_train_ct"]


def tune_train_ct(
    spec: TrainCTSpec,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Search trained CT's settings (``spec.tune``); the best trial's profile is written to ``out``.

    ``storage`` / ``tracking_uri`` override the spec's stores (then the environment, then the defaults, as
    for studies); ``say`` receives one line per finished trial."""
    import optuna

    if spec.tune is None:
        raise InputError("the spec has no tune: section (n_trials, and ranges for lr, init_beta, epochs, granularity)")
    tell = say or (lambda _text: None)
    tracker = Tracker(resolve_tracking_uri(tracking_uri, spec.tracking_uri))
    storage_url = resolve_storage(storage, spec.storage)
    name = f"{spec.name}.tune"
    study = optuna.create_study(
        study_name=name,
        storage=open_optuna_storage(storage_url),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.tune.seed, n_startup_trials=min(4, spec.tune.n_trials)),
        load_if_exists=True,
    )
    with Bench.open(spec.bench, steer=False) as bench:  # model and data loaded once for every trial
        while _complete(study) < spec.tune.n_trials:
            _trial(study, spec, bench, tracker, tell)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(finished, key=lambda t: (t.value, -t.number))
    payload: dict[str, Any] = {
        "study": name,
        "storage": redact(storage_url),
        "tracking_uri": redact(tracker.tracking_uri),
        "objective": spec.objective,
        "baseline": best.user_attrs[ATTR_BASELINE],
        "best": {"number": best.number, "params": dict(best.params), "value": best.value},
        "trials": [{"number": t.number, "params": dict(t.params), "value": t.value} for t in finished],
    }
    if out is not None:
        payload["profile_path"] = str(BetaProfile.from_dict(best.user_attrs[ATTR_PROFILE]).save(out))
    return payload


def _complete(study: Any) -> int:
    import optuna

    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _trial(study: Any, spec: TrainCTSpec, bench: Bench, tracker: Tracker, tell: Callable[[str], None]) -> None:
    """One training with the settings the trial suggests; Optuna is told first, MLflow holds its run."""
    import optuna

    assert spec.tune is not None
    trial = study.ask()
    settings = spec.tune.suggest(trial, spec.settings)
    try:
        result = train_loaded(bench, settings, None, time.perf_counter())
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    finally:
        bench.close()  # the trial's steering handle; the next trial attaches its own
    logged = log_trained_ct(result, name=spec.name, tracker=tracker)
    tracker.log(logged["run_id"], tags={TAG_STUDY: study.study_name, TAG_TRIAL: str(trial.number)})
    trial.set_user_attr(ATTR_RUN_ID, logged["run_id"])
    trial.set_user_attr(ATTR_PROFILE, result.profile.to_dict())
    trial.set_user_attr(ATTR_BASELINE, result.baseline)
    study.tell(trial, result.value)
    tell(f"trial {trial.number}: {dict(trial.params)} -> val {result.objective} {result.value:.4f}")
