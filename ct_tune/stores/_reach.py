"""Is a store there, and does it let us in? One connection (a database) or one request (a tracking
server), no retries, a short timeout.

MLflow's client retries an unreachable store for minutes with dozens of warnings (a PostgreSQL store
about 100 s; ``study create`` on an unreachable tracking server took 266 s here). Checked first, before a
model is loaded or anything created, a wrong host or password costs seconds and one line.
"""

from __future__ import annotations

import os
import re

from ct_tune._errors import InputError
from ct_tune.stores._optuna import database_fix, database_reason
from ct_tune.stores._urls import is_tracking_server, redact

__all__ = ["check_reachable", "check_writable"]

TIMEOUT_SECONDS = 10
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"  # any MLflow server answers it (and checks the login)
SERVER_LOGIN_HINT = (
    "; give the login in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
)


def check_reachable(url: str, *, what: str) -> None:
    """Raise a one-line ``InputError`` naming ``what`` when the store at ``url`` cannot be reached or
    refuses the login. SQLite files (created on first use) and Databricks workspaces are not checked."""
    if url.startswith("sqlite") or url.split(":", 1)[0] == "databricks":
        return
    reason = _server_reason(url) if is_tracking_server(url) else _database_reason(url)
    if reason is not None:
        raise InputError(f"cannot open the {what} {redact(url)}: {_hide_password(reason, url)}")


# A write that changes nothing, in a transaction that is rolled back: both stores have this table (their
# schema version), and the database checks the right to write at the statement, whatever rows it matches.
WRITE_PROBE = "UPDATE alembic_version SET version_num = version_num WHERE 1 = 0"
NO_SCHEMA_YET = ("no such table", "does not exist")  # an empty store: it is created (written) when opened


def check_writable(url: str, *, what: str) -> None:
    """Raise a one-line ``InputError`` naming ``what`` and the fix when the database at ``url`` answers but
    refuses a write (a read-only SQLite file, a PostgreSQL role without the right): checked before a launch,
    as reading alone passed and the first write failed mid-run, blamed on the wrong store. Tracking servers
    and Databricks workspaces are not checked (their own server writes)."""
    if is_tracking_server(url) or url.split(":", 1)[0] == "databricks":
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args=_connect_args(url))
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.exec_driver_sql(WRITE_PROBE)
            transaction.rollback()
    except Exception as error:
        reason = database_reason(error)
        if any(words in reason for words in NO_SCHEMA_YET):
            return
        fix = database_fix(error) or "check that the database accepts writes"
        raise InputError(f"cannot write to the {what} {redact(url)}: {_hide_password(reason, url)}; {fix}") from None
    finally:
        engine.dispose()


def _connect_args(url: str) -> dict[str, int]:
    if url.startswith("postgresql"):
        return {"connect_timeout": TIMEOUT_SECONDS}
    return {"timeout": TIMEOUT_SECONDS} if url.startswith("sqlite") else {}


def _hide_password(reason: str, url: str) -> str:
    password = _password(url)
    return reason.replace(password, "***") if password else reason


def _database_reason(url: str) -> str | None:
    import sqlalchemy

    try:
        connect_args = {"connect_timeout": TIMEOUT_SECONDS} if url.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except Exception as error:  # a driver that is not installed, a malformed URL
        return database_reason(error)
    try:
        with engine.connect():
            return None
    except Exception as error:
        return database_reason(error)
    finally:
        engine.dispose()


def _server_reason(uri: str) -> str | None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as open_mlflow_client: nothing phones home
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request_safe

    try:
        http_request_safe(
            get_default_host_creds(uri),
            PROBE_ENDPOINT,
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=TIMEOUT_SECONDS,
        )
    except Exception as error:
        status = error.get_http_status_code() if isinstance(error, MlflowException) else None
        if status in (401, 403):
            return f"the server refused the login (HTTP {status})" + SERVER_LOGIN_HINT
        text = str(error).strip()
        cause = re.search(r"(?:Failed to establish a new connection|Caused by \w+\(): ?([^'\"]+)", text)
        return (cause.group(1) if cause else (text.splitlines() or [type(error).__name__])[0])[:300]
    return None


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None
