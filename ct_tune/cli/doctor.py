"""``ct-tune doctor``: what to run first on a new machine.

One line per check, ok / failed / skipped, and for a failure the fix on the same line:
  versions   Python, torch (and its CUDA), torchvision, Lightning, Optuna, MLflow, SQLAlchemy and the other
             requirements, against the ranges ct-tune declares; a package that does not import fails
  gpus       each CUDA GPU: name, memory, compute capability (or: no CUDA GPU, the CPU will be used)
  kernel     the fused CT kernels compile and match the plain math on each device (C++ via inductor on the
             CPU, Triton on CUDA); without them CT runs eager: correct, slower (CT_TUNE_FUSED=0)
  precision  bf16 and fp16 autocast on each CUDA GPU (run.precision; skipped without a GPU)
  stores     the Optuna storage and the MLflow store can be reached (nothing is created; no password shown)
  smoke      a tiny conv net steered at beta 0.8 on each device matches a float64 reference, and at
             beta 1 equals the plain ReLU net

Exit codes: 0 every check passed (skipped ones included), 1 a check failed, 2 bad input (an unknown --only
group, a spec that does not exist), 130 Ctrl-C. 20-50 s on a 2-core CPU, most of it the kernels' first compile.
"""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune.cli._common import CommandResult, add_command

NAME_WIDTH = 20


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "doctor", _doctor, help="check this machine: versions, GPUs, kernels, stores", description=__doc__
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage to try (default: $CT_TUNE_STORAGE, else the spec's, else sqlite:///studies/optuna.db)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store to try (default: $MLFLOW_TRACKING_URI, else the spec's, else sqlite:///mlruns/mlflow.db)",
    )
    parser.add_argument("--spec", metavar="FILE", help="a study spec whose storage: and tracking_uri: to try")
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help="comma-separated groups to check: versions, gpus, kernel, precision, stores, smoke (default: all)",
    )


def _doctor(args: argparse.Namespace) -> CommandResult:
    from ct_tune.doctor import run_doctor

    def show(check: Any) -> None:
        print(check.line(NAME_WIDTH), flush=True)

    report = run_doctor(
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        spec=args.spec,
        only=args.only.split(",") if args.only is not None else None,
        on_check=None if args.json else show,
    )
    exit_code = 0 if report.ok else 1
    if args.json:
        return CommandResult(report.to_dict(), exit_code=exit_code)
    print(report.summary())
    return CommandResult(report.to_dict(), exit_code=exit_code, emitted=True)
