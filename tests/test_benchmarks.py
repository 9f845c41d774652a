"""The reference benchmark's statistics (benchmarks/search_quality.py): the interval over seeds and the
verdict it prints. The benchmark itself runs for minutes (``--quick``) to hours, so it is not run here."""

from __future__ import annotations

import importlib
import math
import sys

import pytest

from tests.conftest import SOURCE_ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SOURCE_ROOT / "benchmarks"))
    try:
        yield importlib.import_module("search_quality")
    finally:
        sys.path.remove(str(SOURCE_ROOT / "benchmarks"))


def _record(seed: int, gain: float) -> dict:
    return {
        "seed": seed,
        "val": 0.9,
        "evaluations": 10,
        "seconds": 2.0,
        "probe": {"test": 0.8 + gain, "vs_relu": {"diff": gain, "ci_low": gain - 0.02, "ci_high": gain + 0.02}},
    }


def test_t_interval_over_seeds_is_students(bench) -> None:
    mean, low, high = bench.t_interval([0.01, 0.03])
    half = 12.7062 * math.sqrt(2e-4) / math.sqrt(2)  # t(0.975, 1 dof) * sd / sqrt(n)
    assert mean == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-4)
    assert all(math.isnan(v) for v in bench.t_interval([0.01])[1:])  # one seed: no interval


def test_summary_says_within_noise_only_when_the_interval_holds_zero(bench) -> None:
    summary = bench.summarise(
        {
            "steady": [_record(s, g) for s, g in enumerate([0.010, 0.012, 0.011, 0.013, 0.012])],
            "noisy": [_record(s, g) for s, g in enumerate([0.03, -0.02, 0.01, -0.01, 0.02])],
            "alone": [_record(0, 0.05)],
        }
    )
    assert summary["steady"]["probe"]["within_noise"] is False
    assert summary["steady"]["probe"]["gain"] == pytest.approx(0.0116)
    assert summary["noisy"]["probe"]["within_noise"] is True
    assert summary["alone"]["probe"]["within_noise"] is None
    assert summary["steady"]["probe"]["paired_low"] == pytest.approx(0.0116 - 0.02)


def test_autoattack_is_summarised_over_the_seeds_it_checked(bench, capsys) -> None:
    """AutoAttack runs only where PGD showed a gain: its summary counts those seeds, and the table lists only
    the methods it checked."""

    def robust(seed: int, gain: float, checked: bool) -> dict:
        record = {**_record(seed, gain), "pgd": _record(seed, gain)["probe"]}
        del record["probe"]
        if checked:
            record["autoattack"] = {"test": 0.3, "vs_relu": {"diff": gain / 2, "ci_low": -0.05, "ci_high": 0.05}}
        return record

    rows = {
        "relu": [robust(s, 0.0, checked=s < 2) for s in range(3)],
        "tpe-block": [robust(0, 0.02, True), robust(1, 0.01, True), robust(2, -0.01, False)],
        "grid": [robust(s, -0.01, False) for s in range(3)],
    }
    summary = bench.summarise(rows)
    assert summary["tpe-block"]["pgd"]["seeds"] == 3
    assert summary["tpe-block"]["autoattack"]["seeds"] == 2
    assert summary["tpe-block"]["autoattack"]["gain"] == pytest.approx(0.0075)
    assert "autoattack" not in summary["grid"]
    bench.print_table("mnist5k-robust", summary)
    table = capsys.readouterr().out.split("\nautoattack\n")[1]
    assert "tpe-block" in table and "relu" in table and "grid" not in table
