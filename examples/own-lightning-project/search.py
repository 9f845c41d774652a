"""The same study from Python, as in a notebook: create, run with 2 workers, inspect, export, report."""

from __future__ import annotations

import ct_tune


def main() -> None:
    study = ct_tune.create_study("study.yaml", name="litcnn-mnist-api", resume_if_exists=True)
    summary = study.run(workers=2, devices="cpu")
    print(f"{summary.finished} trials finished ({summary.reason}); seconds per kind: {summary.seconds}")
    for trial in study.best():  # the Pareto front: clean accuracy against robust accuracy
        print(trial.number, trial.values, {unit: round(beta, 3) for unit, beta in trial.betas.items()})
    chosen = max(study.best(), key=lambda trial: trial.values["adversarial"])
    study.export("profiles/litcnn-robust.json", trial=chosen.number)
    report = study.report(trials=[chosen.number])  # the only place the test split is read
    for row in report.trials:
        print("test" if not row.is_baseline else "test (ReLU)", row.test)


if __name__ == "__main__":
    main()
