"""ct-tune: search Curvature Tuning betas per block of a trained PyTorch network.

Public API (everything else is internal and may change):

- ``ct(x, beta, c=0.5)``: the CT activation.
- ``units(model, example_input, granularity)``: ordered unit names (one beta each).
- ``steer(model, beta, *, c, granularity, example_input)``: apply CT through hooks; returns a handle.
- ``BetaProfile``, ``apply_profile``: save a found profile and deploy it on a fresh model.
"""

from ct_tune import _torchvision_compat  # noqa: F401  (must run before torchvision/lightning import)
from ct_tune._errors import InputError
from ct_tune._version import __version__
from ct_tune.activation import ct
from ct_tune.grouping import GRANULARITIES
from ct_tune.profile import BetaProfile, apply_profile
from ct_tune.steering import SteeringHandle, steer, units

__all__ = [
    "GRANULARITIES",
    "BetaProfile",
    "InputError",
    "SteeringHandle",
    "__version__",
    "apply_profile",
    "ct",
    "steer",
    "units",
]
