"""The MLflow side of a study: one experiment per study, a parent run, a child run per trial.

``Tracker`` writes on the MLflow client (optuna-integration's ``MLflowCallback`` is deprecated and has
no parent run); ``_keys`` is the one table of tag and attribute names linking MLflow and Optuna;
``_datasets`` says which data a run's numbers came from; ``_plots`` draws what people would rather look
at than read; ``start_ui`` serves the MLflow UI.
"""

from ct_tune.tracking._datasets import SplitDataset, split_datasets
from ct_tune.tracking._plots import (
    beta_distribution_figure,
    beta_profile_figure,
    gains_per_seed_figure,
    study_figures,
)
from ct_tune.tracking._tracker import (
    RUN_STATUS,
    Tracker,
    default_artifact_location,
    experiment_name,
    metric_value,
    mlflow_key,
)
from ct_tune.tracking._ui import UIServer, start_ui

__all__ = [
    "RUN_STATUS",
    "SplitDataset",
    "Tracker",
    "UIServer",
    "beta_distribution_figure",
    "beta_profile_figure",
    "default_artifact_location",
    "experiment_name",
    "gains_per_seed_figure",
    "metric_value",
    "mlflow_key",
    "split_datasets",
    "start_ui",
    "study_figures",
]
