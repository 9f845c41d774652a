"""Steering: Curvature Tuning applied to a live model through wrapped forwards and hooks, no copies.

- ``ct`` is the activation (exact ReLU at beta = 1); ``FAMILIES`` are the activations it steers (ReLU,
  SiLU, GELU: each with its own gate and its own-activation beta0, ``ct_tune.steering._families``); the
  fused kernels (``_fused``) are what steered models run once they pay for their compile.
- ``trace_sites`` finds where a model applies ReLU (modules, reused modules, inline calls);
  ``group_sites`` groups those sites into *units* (one beta each) at a granularity, following the
  architecture's own stages and blocks (``find_layout``), or the user's own groups (``custom``).
- ``steer`` attaches CT and returns a ``SteeringHandle`` (``update`` between trials, ``remove`` after);
  ``BetaProfile`` saves a found set of betas and ``apply_profile`` puts it on a fresh model;
  ``ChannelCT`` steers a unit with one beta and one c per channel (trained CT's profiles).
- ``fused_status`` / ``set_fused`` / ``fused_setting`` say and choose whether the fused kernels run;
  ``check_fused`` compiles them on a device now and says whether they match the plain math.
"""

from ct_tune.steering._activation import BetaLike, check_beta, check_c, ct
from ct_tune.steering._apply import apply_profile
from ct_tune.steering._batched import GroupedBeta, split, stack
from ct_tune.steering._channel import ChannelCT, channel_dim
from ct_tune.steering._families import FAMILIES, Family, family_named
from ct_tune.steering._fused import check_fused, fused_setting, fused_status, set_fused
from ct_tune.steering._grouping import CUSTOM, GRANULARITIES, Groups, check_granularity, group_sites, unit_families
from ct_tune.steering._handle import SteeringHandle, checked_trace, steer, steer_traced, units
from ct_tune.steering._layouts import Layout, find_layout
from ct_tune.steering._profile import BetaProfile
from ct_tune.steering._sites import Site, Trace, describe, trace_sites

__all__ = [
    "CUSTOM",
    "FAMILIES",
    "GRANULARITIES",
    "BetaLike",
    "BetaProfile",
    "ChannelCT",
    "Family",
    "GroupedBeta",
    "Groups",
    "Layout",
    "Site",
    "SteeringHandle",
    "Trace",
    "apply_profile",
    "channel_dim",
    "check_beta",
    "check_c",
    "check_fused",
    "check_granularity",
    "checked_trace",
    "ct",
    "describe",
    "family_named",
    "find_layout",
    "fused_setting",
    "fused_status",
    "group_sites",
    "set_fused",
    "split",
    "stack",
    "steer",
    "steer_traced",
    "trace_sites",
    "unit_families",
    "units",
]
