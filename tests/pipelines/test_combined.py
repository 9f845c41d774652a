"""The report over seeds of a replicate set, from each seed's pipeline result (``_combined.combine``)."""

from __future__ import annotations

from ct_tune.evidence import BASELINE, CHOSEN, ReportRow
from ct_tune.pipelines import PipelineResult
from ct_tune.pipelines._combined import combine

import pytest


def _row(role: str, stage: str, granularity: str, test: dict[str, float], val: dict[str, float]) -> ReportRow:
    return ReportRow(
        number=0,
        role=role,
        val=val,
        test=test,
        test_ci={},
        vs_relu=None,  # no paired comparison: the gain is the difference of the test values
        vs_global=None,
        val_test_gap={},
        test_details={},
        betas={},
        c=0.5,
        stage=stage,
        granularity=granularity,
    )


def _seed(pgd: float, clean: float, trained_clean: float) -> PipelineResult:
    """A constrained robustness pipeline's result: the searched stage optimises adversarial with accuracy held
    (scored, not optimised); the trained stage scores accuracy only."""
    rows = [
        _row(BASELINE, "block", "block", {"adversarial": 0.50, "accuracy": 0.96}, {"adversarial": 0.5}),
        _row(CHOSEN, "block", "block", {"adversarial": pgd, "accuracy": clean}, {"adversarial": pgd}),
        _row(CHOSEN, "trained", "trained block", {"accuracy": trained_clean}, {"accuracy": trained_clean}),
    ]
    return PipelineResult("p", [], rows, None, "", ["adversarial"], directions={"adversarial": "maximize"})


def test_a_constrained_objective_and_a_trained_stage_scored_on_it_get_rows_over_seeds() -> None:
    results = {0: _seed(0.55, 0.955, 0.97), 1: _seed(0.52, 0.958, 0.965)}
    assert results[0].reported_objectives == ["adversarial", "accuracy"]
    rows = {(row.profile, row.stage, row.objective): row for row in combine(results)}
    assert set(rows) == {
        ("ReLU baseline", "block", "adversarial"),
        ("ReLU baseline", "block", "accuracy"),
        ("best block", "block", "adversarial"),
        ("best block", "block", "accuracy"),
        ("best trained block", "trained", "accuracy"),
    }
    pgd = rows[("best block", "block", "adversarial")].gain
    assert pgd.gains == pytest.approx([0.05, 0.02]) and pgd.positive == 2
    clean = rows[("best block", "block", "accuracy")].gain
    assert clean.gains == pytest.approx([-0.005, -0.002]) and clean.positive == 0
    trained = rows[("best trained block", "trained", "accuracy")]
    assert trained.gain.gains == pytest.approx([0.01, 0.005]) and trained.test_mean == pytest.approx(0.9675)
