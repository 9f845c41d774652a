"""``run_doctor``: every check in order, each line handed to ``on_check`` as soon as it is known."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from ct_tune._errors import InputError
from ct_tune.doctor._report import CHECK_GROUPS, FAILED, Check, DoctorReport

__all__ = ["run_doctor"]

logger = logging.getLogger(__name__)


def run_doctor(
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    spec: str | None = None,
    only: Iterable[str] | None = None,
    on_check: Callable[[Check], None] | None = None,
) -> DoctorReport:
    """Check this machine for ct-tune: versions, GPUs, the fused kernels, reduced precision, the stores, and a
    smoke test of steering on every device (20-50 s on a 2-core CPU, most of it the kernels' first compile).

    Args:
        storage, tracking_uri: the stores to try, as ``--storage`` / ``--tracking-uri`` give them (default:
            the environment, then ``spec``'s, then ct-tune's defaults).
        spec: a study spec file whose ``storage`` / ``tracking_uri`` to try.
        only: the groups to run, from ``CHECK_GROUPS`` (default: all).
        on_check: called with each line as soon as it is known (the CLI prints it then).

    Returns the ``DoctorReport``; ``report.ok`` is False when any check failed (skipped ones do not count).
    """
    groups = _groups(only)
    study_spec = None
    if spec is not None:  # read first: a wrong path is one line, before the slow checks
        from ct_tune.search import load_spec

        study_spec = load_spec(spec)
    report = DoctorReport()
    start = time.perf_counter()
    from ct_tune.doctor._devices import check_gpus, check_precision, cuda_devices
    from ct_tune.doctor._kernel import kernel_line
    from ct_tune.doctor._smoke import smoke_test
    from ct_tune.doctor._stores import check_stores
    from ct_tune.doctor._versions import check_versions

    cuda = cuda_devices()
    devices = ["cpu", *cuda]
    fused: dict[str, bool] = {}  # device -> its kernels passed (the smoke test then runs them too)

    def kernels() -> Iterator[Check]:
        for device in devices:
            check = kernel_line(device)
            fused[device] = not check.failed
            yield check

    steps: dict[str, Callable[[], Iterable[Check]]] = {
        "versions": check_versions,
        "gpus": check_gpus,
        "kernel": kernels,
        "precision": lambda: check_precision(cuda),
        "stores": lambda: check_stores(storage=storage, tracking_uri=tracking_uri, spec=study_spec),
        "smoke": lambda: smoke_test(devices, fused=fused),
    }
    for group in CHECK_GROUPS:
        if group in groups:
            for check in _guarded(group, steps[group]):
                report.checks.append(check)
                if on_check is not None:
                    on_check(check)
    report.seconds = time.perf_counter() - start
    logger.debug("doctor: %d line(s), %d failed", len(report.checks), sum(c.status == FAILED for c in report.checks))
    return report


def _guarded(group: str, step: Callable[[], Iterable[Check]]) -> Iterator[Check]:
    """The step's lines; a check that crashes is a failed line of its own, not the end of the run."""
    try:
        yield from step()
    except InputError:
        raise
    except Exception as error:
        logger.debug("doctor: the %s check failed", group, exc_info=True)
        first = (str(error).strip().splitlines() or [""])[0][:200]
        yield Check(
            group,
            group,
            FAILED,
            f"the check itself failed: {type(error).__name__}: {first}",
            "report this line as a ct-tune bug (ct-tune doctor -v shows the traceback)",
        )


def _groups(only: Iterable[str] | None) -> set[str]:
    if only is None:
        return set(CHECK_GROUPS)
    groups = {name.strip() for name in only if name.strip()}
    unknown = sorted(groups - set(CHECK_GROUPS))
    if unknown or not groups:
        raise InputError(
            f"unknown check group(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(CHECK_GROUPS)}"
        )
    return groups
