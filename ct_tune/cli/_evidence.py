"""Rendering a report's evidence (shared by ``study report`` and ``pipeline run``): value [interval] and
val-test gap cells for the main table, a table of the paired comparisons, and plain lines saying how the
intervals were made, which differences the test samples cannot tell from noise, and which val differences
(what the search chose on) fall outside their test interval."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ct_tune.cli._common import print_table

VERSUS = (("vs_relu", "ReLU baseline"), ("vs_global", "best global"))
Label = Callable[[Mapping[str, Any]], str]


def evidence_columns(names: Sequence[str]) -> list[str]:
    return [f"test {n} [95% CI]" for n in names] + [f"val-test gap {n}" for n in names]


def evidence_cells(row: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    cells = []
    for name in names:
        ci, value = row.get("test_ci", {}).get(name), row["test"].get(name)
        if value is None:
            cells.append("")
        else:
            cells.append(f"{value:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]" if ci else f"{value:.4f}")
    for name in names:
        gap = row.get("val_test_gap", {}).get(name)
        cells.append("" if gap is None else f"{gap:+.4f}")
    return cells


def print_evidence(report: Mapping[str, Any], names: Sequence[str], label: Label) -> None:
    """The paired comparisons as a table, then what it all means in words."""
    rows, within, total = [], 0, 0
    for row in report["trials"]:
        for key, against in VERSUS:
            for name in names:
                found = (row.get(key) or {}).get(name)
                if not found:
                    continue
                total += 1
                within += found["within_noise"]
                rows.append(
                    [
                        label(row),
                        name,
                        against,
                        f"{found['diff']:+.4f}",
                        f"[{found['ci_low']:+.4f}, {found['ci_high']:+.4f}]",
                        f"{found['p_value']:.3g}",
                        "within noise" if found["within_noise"] else "real at 95%",
                    ]
                )
    if rows:
        columns = ["profile", "objective", "against", "diff", "95% CI", "p (McNemar)", "verdict"]
        print_table("paired comparisons on the same test samples", columns, rows)
    for line in evidence_lines(report, names, label, within=within, total=total):
        print(line)


def evidence_lines(
    report: Mapping[str, Any], names: Sequence[str], label: Label, *, within: int, total: int
) -> list[str]:
    evidence = report.get("evidence", {})
    lines = [
        f"intervals: {evidence.get('confidence', 0.95):.0%} percentile bootstrap over test samples "
        f"({evidence.get('resamples')} resamples, seed {evidence.get('seed')}); p: exact McNemar test on the "
        "samples one profile gets right and the other wrong"
    ]
    note = (report.get("global_reference") or {}).get("note")
    if note:
        lines.append(f"best global: {note}")
    relu = (report.get("relu_reference") or {}).get("note")
    if relu:
        lines.append(f"ReLU baseline: {relu}")
    if total:
        lines.append(
            f"{within} of {total} differences are within noise (their interval holds 0 or p >= 0.05): "
            "those profiles are not told apart by these test samples"
            if within
            else f"all {total} differences are real at 95% (intervals exclude 0, p < 0.05)"
        )
    for row in report["trials"]:
        for key, against in VERSUS:
            for name in names:
                found = (row.get(key) or {}).get(name)
                if found and "val_diff" in found and not found["ci_low"] <= found["val_diff"] <= found["ci_high"]:
                    lines.append(
                        f"{label(row)} {name}: {found['val_diff']:+.4f} over the {against} on val, "
                        f"{found['diff']:+.4f} [{found['ci_low']:+.4f}, {found['ci_high']:+.4f}] on test: the val "
                        "difference does not hold on test (chosen on val: val overfit)"
                    )
    return lines
