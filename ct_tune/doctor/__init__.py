"""The doctor: what to run first on a new machine (``ct-tune doctor``).

``run_doctor`` checks, one ``Check`` (ok / failed / skipped, what was found, the fix) per line: the versions
ct-tune depends on against its declared ranges, the CUDA GPUs, whether the fused CT kernels compile and match
on each device, bf16 / fp16 on each GPU, whether the configured Optuna storage and MLflow store can be
reached (no password is ever shown), and a smoke test that steers a tiny net on every device against a
float64 reference. ``DoctorReport.ok`` is False when any line failed.
"""

from ct_tune.doctor._report import CHECK_GROUPS, FAILED, OK, SKIPPED, Check, DoctorReport
from ct_tune.doctor._run import run_doctor

__all__ = ["CHECK_GROUPS", "FAILED", "OK", "SKIPPED", "Check", "DoctorReport", "run_doctor"]
