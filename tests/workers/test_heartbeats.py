"""Heartbeats for trials ``study.optimize`` does not run (batched trials), on a real RDBStorage study."""

from __future__ import annotations

import logging
import threading
import time

from ct_tune.stores import open_optuna_storage
from ct_tune.workers import Heartbeats, heartbeat_interval

import optuna
import pytest
from sqlalchemy import text

# trials asked with study.ask() on a heartbeat storage: exactly the case Heartbeats exists for
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def heartbeats(storage: optuna.storages.RDBStorage) -> dict[int, object]:
    with storage.engine.connect() as connection:
        return dict(connection.execute(text("SELECT trial_id, heartbeat FROM trial_heartbeats")).all())


def test_heartbeat_interval_of_storages(tmp_path):
    assert heartbeat_interval(optuna.storages.InMemoryStorage()) is None
    assert heartbeat_interval(open_optuna_storage(f"sqlite:///{tmp_path}/a.db")) is None
    assert heartbeat_interval(open_optuna_storage(f"sqlite:///{tmp_path}/b.db", heartbeat_interval=3)) == 3


def test_without_heartbeats_nothing_runs(tmp_path):
    storage = open_optuna_storage(f"sqlite:///{tmp_path}/o.db")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    threads = threading.active_count()
    with Heartbeats(storage, [trial._trial_id]) as beats:
        assert beats._thread is None and threading.active_count() == threads
    assert heartbeats(storage) == {}


@pytest.mark.slow
def test_listed_trials_stay_alive_and_stop_on_exit(tmp_path):
    storage = open_optuna_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    kept = [study.ask()._trial_id for _ in range(3)]
    other = study.ask()._trial_id
    storage.record_heartbeat(other)  # one beat, then silence: what a dead worker leaves
    with Heartbeats(storage, kept) as beats:
        assert beats._thread is not None and beats._thread.name == "ct-tune-heartbeats"
        time.sleep(3.5)
        assert storage._get_stale_trial_ids(study._study_id) == [other]
        assert set(heartbeats(storage)) == {*kept, other}
    assert not beats._thread.is_alive()  # __exit__ stopped and joined it
    last = heartbeats(storage)
    time.sleep(3.5)
    assert heartbeats(storage) == last  # nothing beats any more
    assert sorted(storage._get_stale_trial_ids(study._study_id)) == sorted([*kept, other])


@pytest.mark.slow
def test_a_database_that_blinks_is_tried_again_quietly(tmp_path, caplog):
    folder = tmp_path / "studies"
    storage = open_optuna_storage(f"sqlite:///{folder}/o.db", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    trial_id = study.ask()._trial_id
    folder.rename(tmp_path / "away")  # the database goes away ...
    storage.engine.dispose()
    with caplog.at_level(logging.DEBUG, logger="ct_tune.workers._heartbeats"), Heartbeats(storage, [trial_id]) as b:
        time.sleep(2.5)  # beats fail
        assert b._thread.is_alive()
        (tmp_path / "away").rename(folder)  # ... and comes back
        time.sleep(2.5)
        assert trial_id in heartbeats(storage)  # beating again
    assert not b._thread.is_alive()  # and it stops with the block
    records = [r for r in caplog.records if r.name == "ct_tune.workers._heartbeats"]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG  # a lost database is the main loop's line
    assert records[0].getMessage().startswith("could not record heartbeats (trying again): ")
