"""Rendering a report's evidence (shared by ``study report`` and ``pipeline run``): value [interval] and
val-test gap cells for the main table, a table of the paired comparisons, and plain lines saying how the
intervals were made, which differences the test samples cannot tell from noise, and which val differences
(what the search chose on) fall outside their test interval."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ct_tune.cli._common import print_table

if TYPE_CHECKING:
    from ct_tune.evidence import ReportRow, Versus

VERSUS = (("vs_relu", "ReLU baseline"), ("vs_global", "best global"))
Label = Callable[["ReportRow"], str]


def evidence_columns(names: Sequence[str]) -> list[str]:
    return [f"test {n} [95% CI]" for n in names] + [f"val-test gap {n}" for n in names]


def evidence_cells(row: ReportRow, names: Sequence[str]) -> list[str]:
    cells = []
    for name in names:
        ci, value = row.test_ci.get(name), row.test.get(name)
        if value is None:
            cells.append("")
        else:
            cells.append(f"{value:.4f} [{ci.low:.4f}, {ci.high:.4f}]" if ci else f"{value:.4f}")
    for name in names:
        gap = row.val_test_gap.get(name)
        cells.append("" if gap is None else f"{gap:+.4f}")
    return cells


def _comparisons(rows: Sequence[ReportRow], names: Sequence[str]) -> list[tuple[ReportRow, str, str, Versus]]:
    """(row, objective, what it is against, the comparison) for every paired comparison of the rows."""
    found = []
    for row in rows:
        for key, against in VERSUS:
            for name in names:
                versus = (getattr(row, key) or {}).get(name)
                if versus is not None:
                    found.append((row, name, against, versus))
    return found


def print_evidence(
    rows: Sequence[ReportRow],
    names: Sequence[str],
    label: Label,
    *,
    evidence: Mapping[str, Any],
    global_note: str = "",
    relu_note: str = "",
) -> None:
    """The paired comparisons as a table, then what it all means in words."""
    comparisons = _comparisons(rows, names)
    table = []
    for row, name, against, versus in comparisons:
        diff = versus.comparison.diff
        verdict = "within noise" if versus.comparison.within_noise else "real at 95%"
        cells = [f"{diff.estimate:+.4f}", f"[{diff.low:+.4f}, {diff.high:+.4f}]", f"{versus.comparison.p_value:.3g}"]
        table.append([label(row), name, against, *cells, verdict])
    if table:
        columns = ["profile", "objective", "against", "diff", "95% CI", "p (McNemar)", "verdict"]
        print_table("paired comparisons on the same test samples", columns, table)
    lines = [
        f"intervals: {evidence.get('confidence', 0.95):.0%} percentile bootstrap over test samples "
        f"({evidence.get('resamples')} resamples, seed {evidence.get('seed')}); p: exact McNemar test on the "
        "samples one profile gets right and the other wrong"
    ]
    lines += [f"best global: {global_note}"] if global_note else []
    lines += [f"ReLU baseline: {relu_note}"] if relu_note else []
    within = sum(versus.comparison.within_noise for *_, versus in comparisons)
    if comparisons:
        lines.append(
            f"{within} of {len(comparisons)} differences are within noise (their interval holds 0 or p >= 0.05): "
            "those profiles are not told apart by these test samples"
            if within
            else f"all {len(comparisons)} differences are real at 95% (intervals exclude 0, p < 0.05)"
        )
    for row, name, against, versus in comparisons:
        diff = versus.comparison.diff
        if versus.val_diff is not None and not diff.low <= versus.val_diff <= diff.high:
            lines.append(
                f"{label(row)} {name}: {versus.val_diff:+.4f} over the {against} on val, "
                f"{diff.estimate:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] on test: the val "
                "difference does not hold on test (chosen on val: val overfit)"
            )
    for line in lines:
        print(line)
