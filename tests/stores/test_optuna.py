"""The Optuna side: opening a storage (one-line errors), counting trials in one query, telling a lost
database apart from other failures, on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import shutil
import warnings

from ct_tune import InputError
from ct_tune.stores import count_states, database_cause, database_reason, is_database_error, open_optuna_storage

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from tests.postgres import PASSWORD


def every_state(study: optuna.Study, complete: int = 3) -> None:
    """Trials in each state Optuna has: COMPLETE, PRUNED, FAIL, RUNNING, WAITING."""
    for value in range(complete):
        study.tell(study.ask(), float(value))
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # left RUNNING
    study.enqueue_trial({"x": 0.5})  # WAITING


def test_open_creates_the_schema_and_is_usable(stores):
    storage = open_optuna_storage(stores.storage)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_current_version() == storage.get_head_version()
    assert storage.get_all_studies() == []


def test_open_passes_the_heartbeat_settings(tmp_path):
    def callback(study, trial):  # pragma: no cover - only stored here
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the experimental-API warning of heartbeats is silenced inside
        storage = open_optuna_storage(
            f"sqlite:///{tmp_path}/o.db", heartbeat_interval=7, grace_period=30, stale_trial_callback=callback
        )
    assert storage.heartbeat_interval == 7 and storage.grace_period == 30
    assert storage.get_heartbeat_interval() == 7 and storage.get_heartbeat_stale_trial_callback() is callback
    assert open_optuna_storage(f"sqlite:///{tmp_path}/o.db").get_heartbeat_interval() is None


@pytest.mark.postgres
def test_unreachable_and_refused_storages_are_one_line_without_the_password(postgres):
    closed = f"postgresql+psycopg://ctune:{PASSWORD}@127.0.0.1:9/optuna"
    wrong_password = postgres.url(postgres.create_database("optuna")).replace(PASSWORD, "not-the-password")
    missing_database = postgres.url("no_such_database")
    for url, reason in (
        (closed, "Connection refused"),
        (wrong_password, "password authentication failed"),
        (missing_database, 'database "no_such_database" does not exist'),
    ):
        with pytest.raises(InputError) as error:
            open_optuna_storage(url)
        text = str(error.value)
        assert "\n" not in text and text.startswith("cannot open the Optuna storage postgresql+psycopg://ctune:***@")
        assert reason in text and PASSWORD not in text and "not-the-password" not in text


def test_unusable_sqlite_file_is_one_line(tmp_path):
    not_a_database = tmp_path / "text.db"
    not_a_database.write_text("hello, I am not SQLite " * 100)
    with pytest.raises(InputError) as error:
        open_optuna_storage(f"sqlite:///{not_a_database}")
    assert "\n" not in str(error.value) and "file is not a database" in str(error.value)


def test_count_states_equals_optunas_counts(stores):
    storage = open_optuna_storage(stores.storage)
    study = optuna.create_study(storage=storage, study_name="counted")
    every_state(study)
    other = optuna.create_study(storage=storage, study_name="other")  # never counted with the first
    every_state(other, complete=5)
    for target in (study, other):
        study_id = storage.get_study_id_from_name(target.study_name)
        expected = {state.name: len(target.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
        assert count_states(storage, study_id) == expected
    assert count_states(storage, storage.get_study_id_from_name("counted")) == {
        "RUNNING": 1,
        "COMPLETE": 3,
        "PRUNED": 1,
        "FAIL": 2,
        "WAITING": 1,
    }
    empty = optuna.create_study(storage=storage, study_name="empty")
    assert set(count_states(storage, empty._study_id).values()) == {0}


def test_count_states_on_a_storage_without_sql():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    every_state(study)
    assert count_states(storage, study._study_id) == {
        "RUNNING": 1,
        "COMPLETE": 3,
        "PRUNED": 1,
        "FAIL": 2,
        "WAITING": 1,
    }


# --------------------------------------------------------------------------------------------------
# A database that goes away
def test_lost_sqlite_database_is_a_database_error(tmp_path):
    folder = tmp_path / "studies"
    storage = open_optuna_storage(f"sqlite:///{folder}/optuna.db")
    study = optuna.create_study(storage=storage, study_name="lost")
    study.tell(study.ask(), 1.0)
    shutil.rmtree(folder)
    storage.engine.dispose()  # the next query needs a new connection, to a file that is gone
    with pytest.raises(Exception) as caught:
        count_states(storage, study._study_id)
    assert is_database_error(caught.value) and isinstance(database_cause(caught.value), OperationalError)
    assert database_reason(caught.value) == "unable to open database file"
    with pytest.raises(Exception) as caught:
        study.tell(study.ask(), 2.0)
    assert is_database_error(caught.value)
    assert "unable to open database file" in database_reason(database_cause(caught.value))


@pytest.mark.postgres
def test_stopped_postgresql_server_is_a_database_error(postgres):
    storage = open_optuna_storage(postgres.url(postgres.create_database("optuna")))
    study = optuna.create_study(storage=storage, study_name="outage")
    study.tell(study.ask(), 1.0)
    postgres.stop("immediate")
    try:
        with pytest.raises(Exception) as caught:
            study.tell(study.ask(), 2.0)  # through Optuna: its own StorageInternalError, the cause chained
        error = caught.value
        assert is_database_error(error)
        cause = database_cause(error)
        assert cause is not error and isinstance(cause, OperationalError)
        reason = database_reason(cause)
        assert "\n" not in reason and len(reason) <= 300 and PASSWORD not in reason
        assert "connection" in reason.lower() or "server" in reason.lower(), reason
        with pytest.raises(Exception) as counted:
            count_states(storage, study._study_id)  # straight through SQLAlchemy
        assert is_database_error(counted.value) and PASSWORD not in database_reason(counted.value)
    finally:
        postgres.start()
    # pool_pre_ping: the same storage works again once the server is back (the test server runs with
    # synchronous_commit off, so an immediate stop may lose the last commits, the study's included)
    assert isinstance(storage.get_all_studies(), list)
    assert set(count_states(storage, study._study_id)) == {state.name for state in TrialState}


def test_is_database_error_follows_the_exception_chain():
    assert not is_database_error(ValueError("not a database problem"))
    assert not is_database_error(KeyboardInterrupt())
    database = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly\nmore"))
    assert database_reason(database) == "server closed the connection unexpectedly"
    # what optuna 5 raises when its own error handling fails after the database went away
    try:
        try:
            raise database
        except OperationalError:
            raise UnboundLocalError("cannot access local variable 'frozen_trial'")  # noqa: B904
    except UnboundLocalError as chained:
        assert is_database_error(chained) and database_cause(chained) is database
    try:
        try:
            raise database
        except OperationalError:
            raise RuntimeError("re-raised") from None
    except RuntimeError as suppressed:  # `from None` only hides the context from tracebacks
        assert is_database_error(suppressed) and database_cause(suppressed) is database
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = optuna.exceptions.StorageInternalError("commit failed")
    assert is_database_error(wrapped) and database_cause(wrapped) is wrapped  # no DBAPI error inside
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle must not hang the search
    assert not is_database_error(looped)
    assert database_reason(ValueError("")) == "ValueError"
    assert len(database_reason(ValueError("x" * 1000))) == 300


def _pop_enqueued(storage_url: str, pops: int, results) -> None:
    """One worker process: ask ``pops`` trials (each pops an enqueued one) and report their numbers."""
    study = optuna.load_study(study_name="race", storage=open_optuna_storage(storage_url))
    results.put([study.ask().number for _ in range(pops)])


@pytest.mark.slow
def test_enqueued_trials_are_popped_once_by_concurrent_processes(stores):
    """Four processes popping 80 enqueued trials at once: each trial goes to exactly one of them (on SQLite,
    Optuna's read-check-write of a WAITING trial ran outside a transaction and 20-40 were popped twice)."""
    import multiprocessing

    study = optuna.create_study(study_name="race", storage=open_optuna_storage(stores.storage))
    for value in range(80):
        study.enqueue_trial({"x": float(value)})
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_pop_enqueued, args=(stores.storage, 20, results)) for _ in range(4)]
    for process in processes:
        process.start()
    popped = [number for _ in processes for number in results.get(timeout=120)]
    for process in processes:
        process.join(timeout=60)
    assert sorted(popped) == list(range(80))
    assert count_states(study._storage, study._study_id)["RUNNING"] == 80
