"""Store URLs: where each comes from (argument > environment > spec > record > default), how it is checked,
shown and stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ct_tune import InputError
from ct_tune.stores import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    STORAGE_ENV,
    TRACKING_ENV,
    check_two_databases,
    engine_kwargs,
    normalize_url,
    prepare_sqlite,
    redact,
    resolve_storage,
    resolve_tracking_uri,
    sqlite_path,
    without_password,
)

import pytest

SECRET = "s3cret-Pw-1729"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.delenv(TRACKING_ENV, raising=False)
    for name in ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # the user's own ~/.pgpass stays out
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------------------------------
# Precedence
def test_storage_precedence_argument_environment_spec_default(clean_env, tmp_path):
    argument, environment, spec = (f"sqlite:///{tmp_path}/{name}.db" for name in ("arg", "env", "spec"))
    clean_env.setenv(STORAGE_ENV, environment)
    assert resolve_storage(argument, spec) == argument
    assert resolve_storage(None, spec) == environment
    clean_env.delenv(STORAGE_ENV)
    assert resolve_storage(None, spec) == spec
    assert resolve_storage(None) == f"sqlite:///{tmp_path}/studies/optuna.db"  # the default, made absolute
    assert DEFAULT_STORAGE.endswith("studies/optuna.db")
    clean_env.setenv(STORAGE_ENV, "")  # an empty variable is no choice
    assert resolve_storage(None, spec) == spec


def test_tracking_precedence_argument_environment_spec_default(clean_env, tmp_path):
    argument, environment, spec = (f"sqlite:///{tmp_path}/{name}.db" for name in ("arg", "env", "spec"))
    clean_env.setenv(TRACKING_ENV, environment)
    assert resolve_tracking_uri(argument, spec) == argument
    assert resolve_tracking_uri(None, spec) == environment
    clean_env.delenv(TRACKING_ENV)
    assert resolve_tracking_uri(None, spec) == spec
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert DEFAULT_TRACKING_URI.endswith("mlruns/mlflow.db")


def test_tracking_servers_pass_unchanged_and_the_file_store_is_refused(clean_env):
    for server in ("http://127.0.0.1:5000", f"https://user:{SECRET}@mlflow.example.org"):
        assert resolve_tracking_uri(server) == server
    for file_store in ("file:///tmp/mlruns", "/tmp/mlruns", "mlruns"):
        with pytest.raises(InputError) as error:
            resolve_tracking_uri(file_store)
        assert "MLflow's file store, which ct-tune does not use" in one_line(error)
    with pytest.raises(InputError) as error:
        resolve_tracking_uri(f"file://user:{SECRET}@host/mlruns")
    assert SECRET not in one_line(error)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:abc", "https://h:70000", "http://h:0"])
def test_a_tracking_server_with_a_bad_port_is_one_line(clean_env, uri):
    with pytest.raises(InputError) as error:
        resolve_tracking_uri(uri)
    assert "has a port that is not a number in 1-65535; write e.g. http://host:5000" in one_line(error)


def test_databricks_tracking_uri_is_a_server(clean_env):
    assert resolve_tracking_uri("databricks") == "databricks"


# --------------------------------------------------------------------------------------------------
# A recorded tracking URI: stored without its password, used after flag, environment and spec
def test_recorded_uri_comes_after_argument_environment_and_spec(clean_env, tmp_path):
    recorded = "postgresql+psycopg://ctune@db.example.org:5432/mlflow"
    argument, environment, spec = (f"sqlite:///{tmp_path}/{name}.db" for name in ("arg", "env", "spec"))
    assert resolve_tracking_uri(None, recorded=recorded) == recorded
    assert resolve_tracking_uri(None, spec, recorded=recorded) == spec
    clean_env.setenv(TRACKING_ENV, environment)
    assert resolve_tracking_uri(None, spec, recorded=recorded) == environment
    assert resolve_tracking_uri(argument, spec, recorded=recorded) == argument
    clean_env.delenv(TRACKING_ENV)
    assert resolve_tracking_uri(None, recorded=None) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"


def test_a_recorded_placeholder_is_never_a_password(clean_env):
    """An older ct-tune recorded ``user:***@``: logging in with the password ``***`` is what must not happen;
    libpq then takes the password from ~/.pgpass or PGPASSWORD, MLflow's client from its variables."""
    for recorded, used in (
        (
            "postgresql+psycopg://ctune:***@db.example.org:5432/mlflow",
            "postgresql+psycopg://ctune@db.example.org:5432/mlflow",
        ),
        ("https://user:***@mlflow.example.org", "https://user@mlflow.example.org"),
    ):
        assert resolve_tracking_uri(None, recorded=recorded) == used
    explicit = f"postgresql://ctune:{SECRET}@db.example.org:5432/mlflow"  # the password comes from the flag
    assert resolve_tracking_uri(explicit, recorded="postgresql+psycopg://ctune:***@db.example.org:5432/mlflow") == (
        f"postgresql+psycopg://ctune:{SECRET}@db.example.org:5432/mlflow"
    )


def test_without_password_keeps_the_user_and_drops_any_password():
    assert without_password(f"postgresql+psycopg://ctune:{SECRET}@127.0.0.1:5432/optuna") == (
        "postgresql+psycopg://ctune@127.0.0.1:5432/optuna"
    )
    assert (
        without_password(f"https://user:{SECRET}@mlflow.example.org/path?x=1")
        == "https://user@mlflow.example.org/path?x=1"
    )
    assert without_password(f"postgresql://:{SECRET}@h/db") == "postgresql://h/db"
    assert without_password("postgresql://u:p%40ss@[::1]:5432/db") == "postgresql://u@[::1]:5432/db"
    assert (
        without_password(f"postgresql://u@h/db?password={SECRET}&sslmode=require")
        == "postgresql://u@h/db?sslmode=require"
    )
    for unchanged in ("postgresql+psycopg://ctune@h/db", "sqlite:////tmp/o.db", "http://127.0.0.1:5000", "databricks"):
        assert without_password(unchanged) == unchanged


# --------------------------------------------------------------------------------------------------
# normalize_url
def test_postgresql_gets_the_psycopg_driver():
    url = f"postgresql://ctune:{SECRET}@127.0.0.1:5432/optuna"
    assert normalize_url(url, what="storage") == f"postgresql+psycopg://ctune:{SECRET}@127.0.0.1:5432/optuna"
    explicit = "postgresql+psycopg://ctune@127.0.0.1/optuna"
    assert normalize_url(explicit, what="storage") == explicit
    quoted = "postgresql://ctune:p%40ss@127.0.0.1/optuna"  # a password with '@', percent-encoded, stays encoded
    assert normalize_url(quoted, what="storage") == "postgresql+psycopg://ctune:p%40ss@127.0.0.1/optuna"


def test_postgres_scheme_alias_gets_the_psycopg_driver():
    assert normalize_url("postgres://ctune@127.0.0.1/optuna", what="storage") == (
        "postgresql+psycopg://ctune@127.0.0.1/optuna"
    )


def test_sqlite_paths_become_absolute(clean_env, tmp_path):
    assert normalize_url("sqlite:///rel/optuna.db", what="storage") == f"sqlite:///{tmp_path}/rel/optuna.db"
    assert normalize_url(f"sqlite:///{tmp_path}/abs.db", what="storage") == f"sqlite:///{tmp_path}/abs.db"
    home = normalize_url("sqlite:///~/x.db", what="storage")
    assert home == f"sqlite:///{Path('~/x.db').expanduser()}" and "~" not in home


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "storage 'not a url' is not a database URL"),
        ("mongodb://127.0.0.1/optuna", "unsupported database 'mongodb'; use sqlite or postgresql"),
        ("http://127.0.0.1:5000", "unsupported database 'http'"),
        ("sqlite://", "names no database file"),
        ("sqlite:///:memory:", "names no database file"),
        (f"mongodb://u:{SECRET}@h/db", "unsupported database 'mongodb'"),
        (f"postgresql://u:{SECRET}@localhost:abc/db", "has a port that is not a number; write e.g. host:5432"),
        ("postgresql://u@localhost:99999/db", "port 99999 is not in 1-65535"),
    ],
)
def test_bad_urls_are_one_line(url, message):
    with pytest.raises(InputError) as error:
        normalize_url(url, what="storage")
    text = one_line(error)
    assert message in text and SECRET not in text


# --------------------------------------------------------------------------------------------------
# redact
def test_redact_hides_passwords_of_databases_and_servers():
    assert redact(f"postgresql+psycopg://ctune:{SECRET}@127.0.0.1:5432/optuna") == (
        "postgresql+psycopg://ctune:***@127.0.0.1:5432/optuna"
    )
    assert (
        redact(f"https://user:{SECRET}@mlflow.example.org/path?x=1") == "https://user:***@mlflow.example.org/path?x=1"
    )
    assert redact(f"postgresql://:{SECRET}@h/db") == "postgresql://:***@h/db"
    for plain in ("postgresql+psycopg://ctune@127.0.0.1/optuna", "sqlite:////tmp/optuna.db", "http://h:5000"):
        assert redact(plain) == plain


def test_redact_hides_a_password_with_an_at_sign():
    redacted = redact("postgresql://ctune:p@ss@127.0.0.1/optuna")
    assert "p@ss" not in redacted and redacted.endswith("@127.0.0.1/optuna")


def test_redact_keeps_an_ipv6_host():
    assert redact(f"postgresql+psycopg://ctune:{SECRET}@[::1]:5432/optuna") == (
        "postgresql+psycopg://ctune:***@[::1]:5432/optuna"
    )


def test_redact_hides_a_password_in_the_query():
    assert SECRET not in redact(f"postgresql+psycopg://ctune@127.0.0.1:5432/optuna?password={SECRET}")


# --------------------------------------------------------------------------------------------------
# SQLite files
def test_prepare_sqlite_creates_the_directory_and_switches_to_wal(tmp_path):
    url = f"sqlite:///{tmp_path}/deep/er/optuna.db"
    prepare_sqlite(url)
    path = tmp_path / "deep/er/optuna.db"
    assert sqlite_path(url) == path and path.is_file()
    with sqlite3.connect(path) as connection:  # WAL is a property of the file: every later connection has it
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    prepare_sqlite(url)  # again: harmless
    prepare_sqlite("postgresql+psycopg://ctune@127.0.0.1/optuna")  # other databases: nothing to do


def test_prepare_sqlite_on_an_unusable_path_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError) as error:
        prepare_sqlite(f"sqlite:///{blocker}/optuna.db")
    text = one_line(error)
    assert f"cannot open the SQLite database {blocker}/optuna.db" in text and "permissions" in text
    with pytest.raises(InputError, match="cannot open the SQLite database"):
        prepare_sqlite("sqlite:////proc/nowhere/optuna.db")  # unwritable even for root


def test_sqlite_path_and_engine_kwargs(tmp_path):
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql+psycopg://h/db") is None
    assert engine_kwargs(f"sqlite:///{tmp_path}/o.db") == {"connect_args": {"timeout": 120}}
    # one connection kept per process, one more while two are in use; no server-side prepared statements
    # (PgBouncer in transaction mode): docs/postgres_scale.md
    assert engine_kwargs("postgresql+psycopg://ctune@127.0.0.1/optuna") == {
        "pool_pre_ping": True,
        "pool_size": 1,
        "max_overflow": 1,
        "connect_args": {"prepare_threshold": None},
    }


def test_check_two_databases_sees_through_spellings(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "x")
    for storage, tracking in (
        (f"sqlite:///{tmp_path}/x/../x/o.db", f"sqlite:///{tmp_path}/x/o.db"),
        (f"sqlite:///{tmp_path}/link/o.db", f"sqlite:///{tmp_path}/x/o.db"),
        (f"postgresql+psycopg://a:{SECRET}@DB.example.org/one", "postgres://b@db.example.org:5432/one"),
    ):
        with pytest.raises(InputError) as error:
            check_two_databases(storage, tracking)
        assert "are one database" in one_line(error) and SECRET not in one_line(error)
    for storage, tracking in (
        (f"sqlite:///{tmp_path}/x/o.db", f"sqlite:///{tmp_path}/x/m.db"),
        ("postgresql+psycopg://a@h/optuna", "postgresql+psycopg://a@h/mlflow"),
        ("postgresql+psycopg://a@h:5432/one", "postgresql+psycopg://a@h:5433/one"),
        (f"sqlite:///{tmp_path}/o.db", "http://127.0.0.1:5000"),
    ):
        check_two_databases(storage, tracking)
