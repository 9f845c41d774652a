"""One process at a time opens (and so, on first use, creates) a store's schema.

Optuna and MLflow create their tables and run their migrations when a process first opens an empty
database; several processes doing it at once race (measured: three ``study create`` on one empty SQLite
pair all failed, with "table _alembic_tmp_model_versions already exists", "duplicate column name" and
"Online migration expected to match one row"). Opening under this lock makes the first process create the
schema and the others find it made. SQLite: an advisory ``flock`` on the database's directory (released
when the process ends, however it ends). PostgreSQL: a transaction advisory lock on the database itself,
its transaction held open while the schema is made (released at its end, or when the connection drops),
taken by trying every 0.1 s rather than by waiting in the server. Both for PgBouncer in transaction mode:
a session lock stays on the server connection after the client has gone, so every later opener that lands
on another one waits forever (measured with PgBouncer 1.18: three of four concurrent openers hung), and
openers waiting in the server would each hold one of PgBouncer's few server connections while the lock's
holder needs one more to make the schema (measured: four openers on a pool of three hung).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from ct_tune.stores._urls import sqlite_path

__all__ = ["schema_lock"]

# Any fixed number: the advisory lock key every ct-tune process uses for schema work on one database.
POSTGRES_LOCK_KEY = 0x63742D74756E65  # "ct-tune"
LOCK_POLL_SECONDS = 0.1


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold the schema lock of the database at ``url`` (no lock for other kinds of store)."""
    path = sqlite_path(url)
    if path is not None:
        with _directory_lock(str(path.parent)):
            yield
    elif url.startswith("postgresql"):
        with _advisory_lock(url):
            yield
    else:
        yield


@contextlib.contextmanager
def _directory_lock(directory: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; schema creation is then as racy as Optuna and MLflow make it
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    attempt = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)")
    try:
        with engine.connect() as connection:
            while True:
                transaction = connection.begin()
                if connection.execute(attempt, {"key": POSTGRES_LOCK_KEY}).scalar():
                    break
                transaction.rollback()  # waits outside a transaction: behind PgBouncer it holds no server connection
                time.sleep(LOCK_POLL_SECONDS)
            with transaction:  # its end (a commit, or a rollback when the body raises) releases the lock
                yield
    finally:
        engine.dispose()
