"""``Budget`` on a real SQLite study: a total over every worker, counted in the storage."""

from __future__ import annotations

import shutil
import time
import warnings

from ct_tune.search._budget import Budget, DatabaseGone
from ct_tune.stores import open_optuna_storage
from ct_tune.tracking.keys import ATTR_DISCARDED

import optuna
import pytest
from optuna.trial import TrialState

from tests._fresh import fresh_sqlite


def study_and_budget(tmp_path, target, deadline=None, **storage_options):
    storage = open_optuna_storage(fresh_sqlite("optuna", tmp_path / "studies"), **storage_options)
    study = optuna.create_study(storage=storage, study_name="budget")
    return study, Budget(study, storage, study._study_id, target_total=target, deadline=deadline)


def test_counts_stop_reason_and_room(tmp_path):
    study, budget = study_and_budget(tmp_path, target=4)
    assert budget.counts() == (0, 0) and budget.room() == 4 and budget.stop_reason() is None
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=TrialState.PRUNED)  # finished too: pruned trials use the budget
    study.tell(study.ask(), state=TrialState.FAIL)  # failed trials do not
    running = study.ask()
    study.enqueue_trial({"x": 1.0})  # waiting trials neither
    assert budget.counts() == (2, 1) and budget.room() == 1 and budget.stop_reason() is None
    assert not budget.must_wait()
    study.tell(running, 2.0)
    study.tell(study.ask(), 3.0)
    assert budget.counts() == (4, 0) and budget.room() == 0 and budget.stop_reason() == "budget reached"
    study.tell(study.ask(), 4.0)  # past the target (a retry, another launch): room is negative, still stopped
    assert budget.room() == -1 and budget.stop_reason() == "budget reached"


def test_no_target_and_a_deadline(tmp_path):
    study, budget = study_and_budget(tmp_path, target=None, deadline=time.time() + 60)
    for _ in range(3):
        study.tell(study.ask(), 0.0)
    assert budget.room() is None and budget.stop_reason() is None and not budget.must_wait()
    assert not budget.is_surplus(2)
    budget.deadline = time.time() - 0.01
    assert budget.stop_reason() == "timeout"
    _, full = study_and_budget(tmp_path / "other", target=0, deadline=time.time() - 1)
    assert full.stop_reason() == "timeout"  # the deadline is checked first


def test_surplus_trials_of_a_race_and_discard(tmp_path):
    study, budget = study_and_budget(tmp_path, target=2)
    study.tell(study.ask(), 1.0)
    mine, theirs = study.ask(), study.ask()  # two workers started the last trial at the same instant
    assert budget.room() == -1
    assert not budget.is_surplus(mine.number)  # the earlier one runs
    assert budget.is_surplus(theirs.number)  # the later one is surplus
    budget.discard(theirs)
    study.tell(theirs, state=TrialState.FAIL)
    frozen = study.trials[theirs.number]
    assert frozen.user_attrs[ATTR_DISCARDED] == "the budget was reached by other workers"
    assert budget.room() == 0 and budget.must_wait()  # the last trial runs elsewhere: wait for it
    study.tell(mine, 2.0)
    assert budget.stop_reason() == "budget reached"


def test_a_discarded_trial_ahead_does_not_count(tmp_path):
    study, budget = study_and_budget(tmp_path, target=2)
    first = study.ask()
    first.set_user_attr(ATTR_DISCARDED, "x")  # discarded but not yet told: still RUNNING in the storage
    second, third = study.ask(), study.ask()
    assert budget.room() == -1
    assert not budget.is_surplus(second.number)  # only `first` is ahead of it, and `first` is discarded
    assert not budget.is_surplus(third.number)  # one live trial ahead: room for this one
    assert budget.is_surplus(study.ask().number)


@pytest.mark.slow
def test_must_wait_fails_trials_whose_worker_died(tmp_path):
    study, budget = study_and_budget(tmp_path, target=1, heartbeat_interval=1, grace_period=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dead = study.ask()
    budget.storage.record_heartbeat(dead._trial_id)  # one beat, then the worker is gone
    assert budget.room() == 0
    time.sleep(2.5)
    assert budget.must_wait()  # waits, and fails the stale trial on the way
    assert study.trials[dead.number].state == TrialState.FAIL
    assert budget.room() == 1 and not budget.must_wait()  # its retry may start


def test_a_lost_database_is_database_gone(tmp_path):
    _, budget = study_and_budget(tmp_path, target=3)
    shutil.rmtree(tmp_path / "studies")
    budget.storage.engine.dispose()
    with pytest.raises(DatabaseGone, match="unable to open database file"):
        budget.stop_reason()
    with pytest.raises(DatabaseGone):
        budget.room()
