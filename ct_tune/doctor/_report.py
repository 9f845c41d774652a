"""The records a doctor run produces: one ``Check`` per line, and the ``DoctorReport`` of them all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["CHECK_GROUPS", "FAILED", "OK", "SKIPPED", "Check", "DoctorReport"]

OK: Literal["ok"] = "ok"
FAILED: Literal["failed"] = "failed"
SKIPPED: Literal["skipped"] = "skipped"
Status = Literal["ok", "failed", "skipped"]

# What ``run_doctor`` checks, in the order it checks them (``only=`` picks some).
CHECK_GROUPS = ("versions", "gpus", "kernel", "precision", "stores", "smoke")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's output.

    ``status`` is ``ok``, ``failed`` or ``skipped`` (the check does not apply here, e.g. no GPU); ``detail``
    says what was found, and ``fix``, for a failed check, what to do about it. Nothing here holds a password.
    """

    group: str
    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def line(self, name_width: int = 18) -> str:
        """The human form: status, name, what was found and, for a failure, the fix, on one line."""
        text = f"{self.status:<8} {self.name:<{name_width}} {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DoctorReport:
    """Every check of one run, in order; ``ok`` when none failed (skipped ones do not count)."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(check.failed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.failed]

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in (OK, FAILED, SKIPPED)}

    def summary(self) -> str:
        counts = self.counts()
        verdict = "ready" if self.ok else "not ready: fix the failed lines above"
        return f"{counts[OK]} ok, {counts[FAILED]} failed, {counts[SKIPPED]} skipped in {self.seconds:.0f} s: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "seconds": round(self.seconds, 1),
            "checks": [check.to_dict() for check in self.checks],
        }
