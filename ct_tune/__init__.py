"""ct-tune: search Curvature Tuning betas per block of a trained PyTorch network.

Public API (everything else is internal and may change):

- ``ct(x, beta, c=0.5)``: the CT activation.
- ``units(model, example_input, granularity)``: ordered unit names (one beta each).
- ``steer(model, beta, *, c, granularity, example_input)``: apply CT through hooks; returns a handle.
- ``BetaProfile``, ``apply_profile``: save a found profile and deploy it on a fresh model.
- ``create_study``, ``load_study``, ``Study``: search betas with Optuna, tracked in MLflow, from Python
  exactly as ``ct-tune study ...`` does; ``run_pipeline`` runs several studies in order.

Subpackages, one concept each, lowest layer first: ``steering``, ``models``, ``stores``, ``evidence``;
``data``, ``objectives``, ``tracking``, ``workers``; ``bench`` (what a process loads to score profiles) and
``training`` (pretraining); ``search`` (one Optuna study) and ``trained`` (CT trained by gradient);
``pipelines`` (stages in order, the quickstart) and ``doctor`` (checks of the machine); ``cli`` only parses
and renders.
"""

import os as _os
import sys as _sys

from ct_tune._ctrl_c import note_ctrl_c as _note_ctrl_c

if _os.path.basename(_sys.argv[0]) == "ct-tune":  # the command, from before torch loads (see _ctrl_c)
    _note_ctrl_c()

try:  # importing torch takes seconds: a Ctrl-C then is the `ct-tune` command's too
    from ct_tune import _torchvision_compat  # noqa: F401  (must run before torchvision/lightning import)
    from ct_tune._errors import CTTuneError, InputError, StorageLost, StoreFailed, StudyDeleted, WorkerFailed
    from ct_tune._version import __version__
    from ct_tune.pipelines import run_pipeline
    from ct_tune.search import Study, create_study, load_study
    from ct_tune.steering import GRANULARITIES, BetaProfile, SteeringHandle, apply_profile, ct, steer, units
except KeyboardInterrupt:
    if _os.path.basename(_sys.argv[0]) == "ct-tune":  # the command: one line, not an import traceback
        print("ct-tune: interrupted (Ctrl-C) while starting: nothing was done", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__all__ = [
    "GRANULARITIES",
    "BetaProfile",
    "CTTuneError",
    "InputError",
    "SteeringHandle",
    "StorageLost",
    "StoreFailed",
    "Study",
    "StudyDeleted",
    "WorkerFailed",
    "__version__",
    "apply_profile",
    "create_study",
    "ct",
    "load_study",
    "run_pipeline",
    "steer",
    "units",
]
