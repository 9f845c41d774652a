"""What the val dataset on every trial run costs: the MLflow record of a trial with and without it, side by side.

    python benchmarks/dataset_logging.py [--trials 40] [--tracking-uri sqlite:///PATH/mlflow.db]

A trial run is opened (``start_trial_run``: create, params, and with a dataset one ``log_inputs`` call) and
closed (``finish_trial_run``: metrics, ``trial.json``, status; no figure) on one store, alternating the two
kinds so that machine noise hits both alike. Prints the medians, their difference (the dataset's cost per
trial) and the ratio of the whole record with the dataset to without. Default store: a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ct_tune.data import create_datamodule
from ct_tune.tracking import Tracker, split_datasets


def one_trial(tracker: Tracker, experiment: str, parent: str, number: int, datasets: list) -> tuple[float, float]:
    """(seconds to open, seconds to open and close) one trial run."""
    started = time.perf_counter()
    run_id = tracker.start_trial_run(
        experiment, parent, study_name="bench", trial_number=number, params={"beta.0": 0.9}, tags={}, datasets=datasets
    )
    opened = time.perf_counter() - started
    metrics = {"accuracy": 0.9, "trial_seconds": 1.0}
    tracker.finish_trial_run(run_id, state="COMPLETE", metrics=metrics, record={"trial": number})
    return opened, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="trials of each kind")
    parser.add_argument("--tracking-uri", help="an MLflow store (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tracker = Tracker(args.tracking_uri or f"sqlite:///{Path(scratch)}/mlflow.db")
        val = split_datasets(create_datamodule("digits", cache=False).describe(), ["val"])
        experiment = tracker.experiment_id(f"dataset-logging-{time.time_ns()}", create=True)
        parent = tracker.create_study_run(experiment, "bench", {}, {}, datasets=val)
        one_trial(tracker, experiment, parent, -1, val)  # warm-up: first-call costs
        times: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        for number in range(args.trials):
            for kind, datasets in (("without", []), ("with", val)):
                times[kind].append(one_trial(tracker, experiment, parent, number, datasets))
    medians = {kind: [statistics.median(t[i] for t in pairs) for i in (0, 1)] for kind, pairs in times.items()}
    print(f"{args.trials} trial runs of each kind, alternating, on {tracker.tracking_uri.split(':')[0]}")
    print(f"{'':<16} {'open ms':>9} {'open+close ms':>14}")
    for kind, (opened, whole) in medians.items():
        print(f"{kind + ' dataset':<16} {opened * 1e3:>9.1f} {whole * 1e3:>14.1f}")
    extra = (medians["with"][1] - medians["without"][1]) * 1e3
    print(
        f"the dataset costs {extra:.1f} ms a trial: the record takes {medians['with'][1] / medians['without'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
