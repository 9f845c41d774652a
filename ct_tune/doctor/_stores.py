"""Whether the Optuna storage and the MLflow store a study would use can be reached, without creating them.

The URLs come from where every command takes them (``--storage`` / ``$CT_TUNE_STORAGE`` / the spec / the
default, and the same for the tracking URI); a server is tried once with a short timeout
(``ct_tune.stores.check_reachable``), a SQLite file is opened read-only, or, when it does not exist yet, its
folder must be one that can be created and written. Every URL shown goes through ``redact``: no password.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune.doctor._report import FAILED, OK, SKIPPED, Check
from ct_tune.stores import (
    STORAGE_ENV,
    TRACKING_ENV,
    check_reachable,
    check_two_databases,
    is_tracking_server,
    redact,
    resolve_storage,
    resolve_tracking_uri,
    sqlite_path,
)

if TYPE_CHECKING:
    from ct_tune.search import StudySpec

__all__ = ["check_stores"]

STORES = {
    "optuna storage": ("--storage", STORAGE_ENV, "storage:"),
    "mlflow store": ("--tracking-uri", TRACKING_ENV, "tracking_uri:"),
}


def check_stores(
    *, storage: str | None = None, tracking_uri: str | None = None, spec: StudySpec | None = None
) -> list[Check]:
    """One line per store, and one more when both name the same database (they cannot share one)."""
    spec_storage = spec.storage if spec is not None else None
    spec_tracking = spec.tracking_uri if spec is not None else None
    urls: dict[str, str] = {}
    checks = []
    for name, given, from_spec, resolve in (
        ("optuna storage", storage, spec_storage, resolve_storage),
        ("mlflow store", tracking_uri, spec_tracking, resolve_tracking_uri),
    ):
        origin = _origin(name, given, from_spec)
        try:
            url = urls[name] = resolve(given, from_spec)
        except InputError as error:
            checks.append(Check("stores", name, FAILED, f"{error} (from {origin})", _where(name)))
            continue
        checks.append(_store_line(name, url, origin))
    if len(urls) == 2:
        try:
            check_two_databases(urls["optuna storage"], urls["mlflow store"])
        except InputError as error:
            checks.append(Check("stores", "two databases", FAILED, str(error), _where("optuna storage")))
    return checks


def _origin(name: str, given: str | None, from_spec: str | None) -> str:
    flag, env, key = STORES[name]
    if given:
        return flag
    if os.environ.get(env):
        return f"${env}"
    return f"the spec's {key}" if from_spec else "the default"


def _where(name: str) -> str:
    flag, env, key = STORES[name]
    return f"correct {flag}, ${env} or the spec's {key}"


def _store_line(name: str, url: str, origin: str) -> Check:
    shown = f"{redact(url)} (from {origin})"
    path = sqlite_path(url)
    if path is not None:
        reason = _sqlite_reason(path)
        if reason is not None:
            fix = f"check the path and its permissions, or {_where(name)}"
            return Check("stores", name, FAILED, f"{shown}: {reason}", fix)
        state = "exists" if path.exists() else "created on first use"
        return Check("stores", name, OK, f"{shown}: {state}, writable")
    if url.split(":", 1)[0] == "databricks":
        return Check("stores", name, SKIPPED, f"{shown}: a Databricks workspace is not tried")
    try:
        check_reachable(url, what=name.replace("optuna", "Optuna").replace("mlflow", "MLflow"))
    except InputError as error:
        return Check("stores", name, FAILED, f"{error} (from {origin})", _server_fix(name, url, str(error)))
    kind = "the server answers" if is_tracking_server(url) else "the database lets us in"
    return Check("stores", name, OK, f"{shown}: {kind}")


def _server_fix(name: str, url: str, reason: str) -> str:
    if "psycopg" in reason and "module" in reason.lower():
        return "pip install 'ct-tune[pg]' (the psycopg driver)"
    if is_tracking_server(url):
        return f"start the MLflow server, or {_where(name)}"
    return (
        f"start the database, or {_where(name)}; a password goes in the URL given by flag or environment, "
        "~/.pgpass or $PGPASSWORD"
    )


def _sqlite_reason(path: Path) -> str | None:
    """None when the SQLite file can be read and written, or created; else why not."""
    path = path.expanduser()
    if path.exists():
        if path.is_dir():
            return "is a folder, not a database file"
        try:
            with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as error:
            return f"cannot be read as SQLite: {error}"
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return "is not writable (SQLite writes the file and its -wal beside it)"
        return None
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot be created: {folder} is a file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be created: {folder} is not writable"
    return None
