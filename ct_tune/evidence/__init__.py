"""How sure a result is: bootstrap intervals over test samples, paired tests between two profiles, and the
report row that carries them (one type for a study's trials and a pipeline's trained stages).

A single test value on 1,000 images says nothing about noise; every reported value therefore comes with
its interval and every comparison of two profiles on the same samples with a paired interval and an exact
McNemar p-value (``_stats``). ``score_row`` builds a profile's report row from its scores (``_rows``).
Replicates over seeds summarise each profile's per-seed gains with a t-interval over seeds (``_seeds``).
"""

from ct_tune.evidence._rows import (
    BASELINE,
    CHOSEN,
    GLOBAL,
    Bootstrap,
    Reference,
    ReportRow,
    Versus,
    correctness,
    score_row,
)
from ct_tune.evidence._seeds import OverSeeds, over_seeds
from ct_tune.evidence._stats import (
    Comparison,
    Interval,
    Reselection,
    bootstrap_mean,
    compare,
    mcnemar,
    rank_on_resamples,
)

__all__ = [
    "BASELINE",
    "CHOSEN",
    "GLOBAL",
    "Bootstrap",
    "Comparison",
    "Interval",
    "OverSeeds",
    "Reference",
    "ReportRow",
    "Reselection",
    "Versus",
    "bootstrap_mean",
    "compare",
    "correctness",
    "mcnemar",
    "over_seeds",
    "rank_on_resamples",
    "score_row",
]
