"""The budget of a study as one worker sees it: a total over every worker, on any machine.

A worker runs a trial only while fewer trials than the target are finished or running, and waits when
the last ones are running elsewhere (one of them may die, and its retry must be picked up). Two workers
can still start a trial at the same instant; the later one notices it is surplus at start and is
discarded (ended FAIL with a ``ct_tune.discarded`` attribute, no MLflow run), so exactly the target
completes.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from ct_tune._errors import CTTuneError, StorageLost, StoreFailed
from ct_tune.stores import count_states, database_cause, database_fault, database_reason, is_database_error, redact
from ct_tune.tracking.keys import ATTR_DISCARDED

if TYPE_CHECKING:
    import optuna

__all__ = ["Budget", "DatabaseGone", "storage_failure"]


class DatabaseGone(Exception):
    """The Optuna storage stopped answering during a run."""


def storage_failure(error: BaseException, *, study: str, storage_url: str, who: str = "") -> CTTuneError:
    """The one-line error of a database failure during a run. A server that went away is ``StorageLost``
    (exit 3: run again once it is back, the study resumes); a damaged file, a store that refuses writes or
    a full disk is ``StoreFailed`` (exit 2) with what to do, as waiting for it would be waiting for ever."""
    cause = database_cause(error)
    reason = database_reason(cause)
    fault = database_fault(cause)
    store = f"the Optuna storage {redact(storage_url)}"
    if fault is not None:
        happened, fix = fault
        return StoreFailed(f"{store} {happened} ({reason}){who}: {fix}")
    return StorageLost(
        f"the Optuna storage stopped answering ({reason}){who}. "
        f"Run 'ct-tune study run {study}' again once {redact(storage_url)} is back: the study resumes"
    )


class Budget:
    def __init__(
        self, study: optuna.Study, storage: Any, study_id: int, *, target_total: int | None, deadline: float | None
    ) -> None:
        self.study = study
        self.storage = storage
        self.study_id = study_id
        self.target_total = target_total  # finished (COMPLETE + PRUNED) trials the study should reach
        self.deadline = deadline  # time.time() after which no new trial starts

    def counts(self) -> tuple[int, int]:
        """(finished, running) trials of the study, over all workers."""
        try:
            states = count_states(self.storage, self.study_id)
        except Exception as error:
            if is_database_error(error):
                raise DatabaseGone(database_reason(error)) from error
            raise
        return states["COMPLETE"] + states["PRUNED"], states["RUNNING"]

    def stop_reason(self) -> str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return "timeout"
        if self.target_total is not None and self.counts()[0] >= self.target_total:
            return "budget reached"
        return None

    def room(self) -> int | None:
        """Trials that may still start (None: no trial target)."""
        if self.target_total is None:
            return None
        finished, running = self.counts()
        return self.target_total - finished - running

    def must_wait(self) -> bool:
        """The last trials of the budget are running elsewhere: wait (failing any whose worker died)."""
        room = self.room()
        if room is None or room > 0:
            return False
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        return True

    def is_surplus(self, trial_number: int) -> bool:
        """Another worker started the last trial of the budget at the same time as this one."""
        room = self.room()
        if room is None or room >= 0:
            return False
        from optuna.trial import TrialState

        earlier = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        ahead = sum(1 for t in earlier if t.number < trial_number and ATTR_DISCARDED not in t.user_attrs)
        return ahead >= self.target_total  # type: ignore[operator]

    def discard(self, trial: optuna.Trial) -> None:
        trial.set_user_attr(ATTR_DISCARDED, "the budget was reached by other workers")
