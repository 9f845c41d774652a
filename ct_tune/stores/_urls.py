"""Database URLs for the Optuna storage and the MLflow backend store: where they come from, how they are
checked, shown and stored.

Where each URL comes from, the same for every command and the Python API (``resolve_storage``,
``resolve_tracking_uri``):

- Optuna storage: ``--storage``, then ``$CT_TUNE_STORAGE``, then the spec's ``storage:`` (creating a study,
  or any command given the spec file instead of the study's name), then ``sqlite:///studies/optuna.db``.
- MLflow store: ``--tracking-uri``, then ``$MLFLOW_TRACKING_URI``, then the spec's ``tracking_uri:`` (the
  same), then the URL the study recorded at creation, then ``sqlite:///mlruns/mlflow.db``.
- Passwords: whatever a URL given by flag, environment or spec holds. Nothing ct-tune writes holds one:
  specs, records and run parameters keep the URL ``without_password`` (what is shown goes through
  ``redact``), so a recorded URL logs in as its user with the password of ``~/.pgpass`` or ``$PGPASSWORD``
  (a tracking server: ``$MLFLOW_TRACKING_PASSWORD`` or ``$MLFLOW_TRACKING_TOKEN``); a server that wants one
  and gets none is a one-line error saying where to put it. Workers get the launcher's URLs, passwords
  included, in their settings on stdin.

- Two databases: Optuna and MLflow both keep their schema version in a table named
  ``alembic_version``, so they cannot share one database (two SQLite files, or two databases on one
  PostgreSQL server).
- SQLite: a connect timeout (parallel writers otherwise get "database is locked") and WAL journaling
  (readers do not block the writer). Local disks only: WAL does not work on network filesystems.
- PostgreSQL: the psycopg 3 driver (``postgresql://`` is rewritten to ``postgresql+psycopg://``),
  ``pool_pre_ping`` so a dropped connection is replaced instead of failing a trial, and no server-side
  prepared statements, so the Optuna storage also works behind PgBouncer in transaction mode.
- Lean pools on a database server (``engine_kwargs``, and MLflow's in ``ct_tune.stores._mlflow``): a
  process keeps one connection per store, so a worker holds two (PostgreSQL's default ``max_connections``
  of 100 otherwise ran out at about 20 workers; docs/postgres_scale.md has the numbers). One overflow
  connection, opened when needed and closed when returned, serves what overlaps: Optuna's schema check
  nests a second connection inside its session, and the heartbeat thread writes while the trial's thread
  may be in a call. The heartbeat thread never holds a connection while it waits for another, so with two
  allowed nothing waits on anything but a call that is running.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ct_tune._errors import InputError

__all__ = [
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING_URI",
    "STORAGE_ENV",
    "TRACKING_ENV",
    "check_two_databases",
    "engine_kwargs",
    "is_tracking_server",
    "normalize_url",
    "prepare_sqlite",
    "redact",
    "resolve_storage",
    "resolve_tracking_uri",
    "sqlite_path",
    "without_password",
]

DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
STORAGE_ENV = "CT_TUNE_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
TRACKING_SERVERS = ("http", "https", "databricks")
SQLITE_TIMEOUT_SECONDS = 120
# A database server's pool: one connection kept, one more while two are in use at once (then closed).
SERVER_POOL = {"pool_size": 1, "max_overflow": 1}


def resolve_storage(cli: str | None, spec: str | None = None) -> str:
    """Where the Optuna study lives: --storage, then $CT_TUNE_STORAGE, then the spec, then the default."""
    return normalize_url(cli or os.environ.get(STORAGE_ENV) or spec or DEFAULT_STORAGE, what="storage")


def resolve_tracking_uri(cli: str | None, spec: str | None = None, *, recorded: str | None = None) -> str:
    """The MLflow store: --tracking-uri, then $MLFLOW_TRACKING_URI, then the spec, then the study's record
    (stored without its password), then the default.

    A database URL or an MLflow tracking server (http, https, databricks); never MLflow's plain file
    store (MLflow 3 refuses it, and Lightning's logger would silently fall back to ./mlruns).
    """
    # A record of an older ct-tune may hold ``user:***@``: never a password to log in with.
    uri = cli or os.environ.get(TRACKING_ENV) or spec or (recorded and without_password(recorded))
    uri = uri or DEFAULT_TRACKING_URI
    if is_tracking_server(uri):
        try:
            port = urlsplit(uri).port
        except ValueError:  # not a number, or not in 0-65535
            port = -1
        if port is not None and not 0 < port < 65536:
            raise InputError(
                f"tracking URI {redact(uri)!r} has a port that is not a number in 1-65535; write e.g. http://host:5000"
            )
        return uri
    scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    if scheme in ("", "file"):
        raise InputError(
            f"tracking URI {redact(uri)!r} is MLflow's file store, which ct-tune does not use; give a database "
            f"({DEFAULT_TRACKING_URI}, postgresql://user@host/db) or a tracking server (http://host:5000)"
        )
    return normalize_url(uri, what="tracking URI")


def is_tracking_server(uri: str) -> bool:
    """An MLflow tracking server (http, https, databricks; bare ``databricks`` is the default workspace)."""
    return urlsplit(uri).scheme.split("+", 1)[0].lower() in TRACKING_SERVERS or uri == "databricks"


def normalize_url(url: str, *, what: str) -> str:
    """Check a database URL and pick the psycopg 3 driver for PostgreSQL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(
            f"{what} {redact(url)!r} is not a database URL; use e.g. {DEFAULT_STORAGE} or "
            "postgresql://user@host:5432/dbname"
        ) from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise InputError(
            f"{what} {redact(url)!r} has a port that is not a number; write e.g. host:5432, or leave the port out"
        ) from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InputError(f"{what} {redact(url)!r}: port {parsed.port} is not in 1-65535; write e.g. host:5432")
    backend = parsed.get_backend_name()
    if backend == "postgres":  # the Heroku-style alias
        backend = "postgresql"
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql", "mysql"):
        raise InputError(f"{what} {redact(url)!r}: unsupported database {backend!r}; use sqlite or postgresql")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InputError(f"{what} {url!r} names no database file; use e.g. {DEFAULT_STORAGE}")
        # Absolute: the same URL then names the same file whatever the working directory of a later
        # command, and MLflow (which caches stores by URL string) never mixes two directories' files.
        parsed = parsed.set(database=str(Path(parsed.database).expanduser().absolute()))
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with any password replaced by ***, safe to print or log (databases and servers alike)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(key, "***" if key.lower() == "password" else value) for key, value in query]
    if parts.password is None and hidden == query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")  # the host part keeps an IPv6 address's brackets
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query_text = urlencode(hidden, safe="*") if hidden != query else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query_text, parts.fragment))


def without_password(url: str) -> str:
    """The URL as ct-tune stores it (spec, study record): the user kept, any password dropped."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if key.lower() != "password"]
    if parts.password is None and kept == query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{host}" if user else host
    query_text = urlencode(kept) if kept != query else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query_text, parts.fragment))


def check_two_databases(storage: str, tracking_uri: str) -> None:
    """Refuse one database for both stores, however the two URLs spell it (both keep ``alembic_version``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    def identity(url: str) -> tuple[Any, ...] | None:
        path = sqlite_path(url)
        if path is not None:
            return ("sqlite", os.path.realpath(path))
        if is_tracking_server(url):
            return None
        try:
            parsed = make_url(url)
        except ArgumentError:
            return None  # a tracking server
        backend = "postgresql" if parsed.get_backend_name() == "postgres" else parsed.get_backend_name()
        port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(backend)
        return (backend, (parsed.host or "localhost").lower(), port, parsed.database)

    first = identity(storage)
    if first is not None and first == identity(tracking_uri):
        raise InputError(
            f"the Optuna storage and the MLflow store are one database ({redact(storage)}); give two (both keep "
            "an alembic_version table): two SQLite files, or two databases on one PostgreSQL server"
        )


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def prepare_sqlite(url: str) -> None:
    """Create the directory of a SQLite file and switch it to WAL journaling (kept by the file)."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_SECONDS) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as error:
        raise InputError(
            f"cannot open the SQLite database {path}: {error}; check the path and its permissions"
        ) from None


def engine_kwargs(url: str) -> dict[str, Any]:
    """The SQLAlchemy engine settings of ct-tune's Optuna storage (see the module's notes)."""
    if sqlite_path(url) is not None or url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, **SERVER_POOL}
    if url.split(":", 1)[0] == "postgresql+psycopg":
        # No server-side prepared statements (psycopg makes one of a query run five times on a connection):
        # behind PgBouncer in transaction mode (before 1.21) the next transaction may run on a server
        # connection that lacks it ("prepared statement _pg3_6 does not exist", measured). Measured here
        # without them: 117-125 ms per trial of ten params (ask, suggest, tell), 103-135 ms with them.
        kwargs["connect_args"] = {"prepare_threshold": None}
    return kwargs
