"""The MLflow tracking URI: chosen explicitly, never MLflow's plain file store, never printed with a password.

Order: the ``--tracking-uri`` value > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlruns/mlflow.db`` (relative to
the working directory; MLflow then keeps artifacts under ``./mlruns`` too). MLflow 3 refuses the file store
unless ``MLFLOW_ALLOW_FILE_STORE`` is set, and Lightning's logger falls back to it when given no URI.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ct_tune._errors import InputError

__all__ = ["DEFAULT_TRACKING_URI", "redact", "resolve_tracking_uri"]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
_SERVERS = ("http", "https", "databricks")


def resolve_tracking_uri(value: str | None = None, *, create: bool = True) -> str:
    """The URI to use (``create``: make the directory of a SQLite file). InputError for a file store."""
    uri = value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    if scheme not in _DATABASES + _SERVERS:
        raise InputError(
            f"tracking URI {redact(uri)!r} is not a database or tracking server (MLflow's file store is not "
            f"supported); use e.g. {DEFAULT_TRACKING_URI} or postgresql+psycopg://user@host/db"
        )
    if scheme == "sqlite":
        database = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not database or database == ":memory:":
            raise InputError(f"tracking URI {uri!r} names no database file; use e.g. {DEFAULT_TRACKING_URI}")
        if create:
            Path(database.split("?", 1)[0]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return uri


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (safe to print and log)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
