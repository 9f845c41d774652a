"""Every key ct-tune writes into MLflow tags and Optuna attributes, defined once.

MLflow runs and Optuna trials point at each other (``ATTR_RUN_ID`` on the trial, ``TAG_TRIAL`` on the
run), so either store can be read from the other. Users filter on these names in MLflow's search box
(``tags.`ct_tune.state` = 'COMPLETE'``): renaming one breaks their saved views, so they change only here.
"""

from __future__ import annotations

# MLflow run tags (a trial's child run, the study's parent run, a pretraining run)
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # on the experiment: custom_model_development (runs, not traces)
TAG_ROLE = "ct_tune.role"  # "study" on a parent run
TAG_STATE = "ct_tune.state"  # RUNNING, COMPLETE, PRUNED, FAIL: the Optuna state the run follows
TAG_FAILURE = "ct_tune.failure"  # why a trial failed, in one line
TAG_KIND = "ct_tune.kind"  # baseline, paper-grid, warm-start, sampled, retry
TAG_WORKER = "ct_tune.worker"
TAG_DEVICE = "ct_tune.device"
TAG_HOST = "ct_tune.host"
TAG_TRIALS_PER_BATCH = "ct_tune.trials_per_batch"
TAG_ATTACK = "ct_tune.attack"  # the adversarial objective's attack, e.g. "autoattack-standard (...) torchattacks 3.3.0"
TAG_PIPELINE = "ct_tune.pipeline"
TAG_STAGE = "ct_tune.stage"
TAG_STAGE_INDEX = "ct_tune.stage_index"
TAG_PREVIOUS_STAGE_RUN = "ct_tune.previous_stage_run"
TAG_REPLICATE_SET = "ct_tune.replicate_set"  # a seed's stage runs: the run of the replicate set (role replicates)
TAG_SEED = "ct_tune.seed"  # a replicate's stage runs: its seed
TAG_SEEDS = "ct_tune.seeds"  # a replicate set's run: the seeds of its latest report
TAG_FINGERPRINT = "ct_tune.fingerprint"  # a replicate set's run: the pipeline it replicates
TAG_COMMAND = "ct_tune.command"  # the command that made a run outside a study: pretrain, train-ct
TAG_MODEL = "ct_tune.model"  # pretraining runs
TAG_DATA = "ct_tune.data"
TAG_CHECKPOINT = "ct_tune.checkpoint"
TAG_DATASET_FINGERPRINT = "ct_tune.dataset_fingerprint"
TAG_STRATEGY = "ct_tune.strategy"  # trained CT runs: "trained"
TAG_OBJECTIVE = "ct_tune.objective"  # trained CT runs: what was trained on
TAG_FEASIBLE = "ct_tune.feasible"  # constrained studies: "true" when every constraint of the trial holds

# Optuna study user attributes
ATTR_SPEC = "ct_tune.spec"  # the validated spec, as JSON (what every worker rebuilds the study from)
ATTR_UNITS = "ct_tune.units"  # unit names in network order
ATTR_META = "ct_tune.meta"  # what the study was created with: ReLU-site fingerprint, model, data
ATTR_MLFLOW = "ct_tune.mlflow"  # experiment id, parent run id, tracking URI (redacted), artifact location
ATTR_REPORT = "ct_tune.report"  # test-split results per trial number (Optuna freezes finished trials)
ATTR_TEST_FINGERPRINT = "ct_tune.test_fingerprint"  # the user's test split, as first reported on
ATTR_PIPELINE = "ct_tune.pipeline"  # pipeline name, stage, index, previous stage's study
ATTR_CONSTRAINT_REFERENCE = "ct_tune.constraint_reference"  # the baseline's value of each constrained objective
ATTR_JOBS = "ct_tune.jobs"  # the SLURM jobs submitted for the study (the latest 100)

# Optuna trial user attributes
ATTR_RUN_ID = "mlflow_run_id"
ATTR_KIND = "ct_tune.kind"
ATTR_FEASIBLE = "ct_tune.feasible"  # constrained studies: whether every constraint of the trial holds
ATTR_DISCARDED = "ct_tune.discarded"  # created after other workers had reached the budget
ATTR_PROFILE = "profile"  # trained CT's tuning trials: the trained profile
ATTR_BASELINE = "baseline"  # trained CT's tuning trials: the ReLU baseline's val score
