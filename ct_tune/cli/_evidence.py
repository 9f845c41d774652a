"""Rendering a report's evidence: value [interval] cells, paired comparisons, and plain lines saying which
differences the test samples can tell from noise (shared by ``study report`` and ``pipeline run``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

VERSUS = (("vs_relu", "vs ReLU"), ("vs_global", "vs best global"))


def evidence_columns(names: Sequence[str]) -> list[str]:
    columns = [f"test {n} [95% CI]" for n in names]
    for _, label in VERSUS:
        columns += [f"{label} {n} (diff [CI], p)" for n in names]
    return columns + [f"val-test gap {n}" for n in names]


def evidence_cells(row: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    cells = []
    for name in names:
        ci = row.get("test_ci", {}).get(name)
        value = row["test"].get(name)
        cells.append(f"{value:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]" if ci else _plain(value))
    for key, _ in VERSUS:
        for name in names:
            found = (row.get(key) or {}).get(name)
            cells.append(_difference(found) if found else "")
    for name in names:
        gap = row.get("val_test_gap", {}).get(name)
        cells.append("" if gap is None else f"{gap:+.4f}")
    return cells


def evidence_lines(report: Mapping[str, Any], names: Sequence[str], label: Any = None) -> list[str]:
    """What the table means, in words: how the intervals were made, what 'best global' is, and for each
    comparison whether the difference is real or within noise; val values outside their test interval."""
    evidence = report.get("evidence", {})
    lines = [
        f"intervals: {evidence.get('confidence', 0.95):.0%} percentile bootstrap over test samples "
        f"({evidence.get('resamples')} resamples, seed {evidence.get('seed')}); p: exact McNemar test on the "
        "samples one profile gets right and the other wrong"
    ]
    note = (report.get("global_reference") or {}).get("note")
    if note:
        lines.append(f"best global: {note}")
    for row in report["trials"]:
        if row.get("role", "chosen") == "baseline":
            continue
        who = label(row) if label else f"trial {row['number']}"
        for key, versus in VERSUS:
            for name in names:
                found = (row.get(key) or {}).get(name)
                if not found:
                    continue
                verdict = (
                    "within noise (the interval holds 0 or p >= 0.05)"
                    if found["within_noise"]
                    else "a real difference at 95%"
                )
                lines.append(f"{who} {versus} on {name}: {_difference(found)}: {verdict}")
        for name in names:
            ci, val = row.get("test_ci", {}).get(name), row.get("val", {}).get(name)
            if ci and val is not None and not ci["low"] <= val <= ci["high"]:
                lines.append(
                    f"{who} {name}: val {val:.4f} lies outside its test interval "
                    f"[{ci['low']:.4f}, {ci['high']:.4f}]: the choice on val may be overfit"
                )
    return lines


def _difference(found: Mapping[str, Any]) -> str:
    return f"{found['diff']:+.4f} [{found['ci_low']:+.4f}, {found['ci_high']:+.4f}], p={found['p_value']:.3g}"


def _plain(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"
