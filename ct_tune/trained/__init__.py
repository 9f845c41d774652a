"""Trained CT: CT's betas and c learned by gradient instead of searched, as the CT authors now do.

``train_ct`` trains one beta and one c per unit, or per channel, on the train split with the backbone
frozen, and keeps the best val epoch (``_loop``), as ``TrainCTSettings`` say (``_settings``);
``TrainCTSpec`` is a ``ct-tune train-ct`` spec (``_spec``); ``run_train_ct`` and ``log_trained_ct`` are
the command and its MLflow run (``_record``); ``tune_train_ct`` searches the training's own settings with
Optuna (``_tune``). Nothing here depends on ``ct_tune.search``: a training loads a bench
(``ct_tune.bench``), as a study's workers do.
"""

from ct_tune.trained._loop import TrainedCT, train_ct
from ct_tune.trained._record import log_trained_ct, run_train_ct, score_trained_on_test
from ct_tune.trained._settings import BETA_HIGH, BETA_LOW, TrainCTSettings, TuneSpec
from ct_tune.trained._spec import TrainCTSpec
from ct_tune.trained._tune import tune_train_ct

__all__ = [
    "BETA_HIGH",
    "BETA_LOW",
    "TrainCTSettings",
    "TrainCTSpec",
    "TrainedCT",
    "TuneSpec",
    "log_trained_ct",
    "run_train_ct",
    "score_trained_on_test",
    "train_ct",
    "tune_train_ct",
]
