"""One process at a time opens (and so, on first use, creates) a store's schema.

Optuna and MLflow create their tables and run their migrations when a process first opens an empty
database; several processes doing it at once race (measured: three ``study create`` on one empty SQLite
pair all failed, with "table _alembic_tmp_model_versions already exists", "duplicate column name" and
"Online migration expected to match one row"). Opening under this lock makes the first process create the
schema and the others find it made. SQLite: an advisory ``flock`` on the database's directory (released
when the process ends, however it ends). PostgreSQL: a session advisory lock on the database itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ct_tune.stores._urls import sqlite_path

__all__ = ["schema_lock"]

# Any fixed number: the advisory lock key every ct-tune process uses for schema work on one database.
POSTGRES_LOCK_KEY = 0x63742D74756E65  # "ct-tune"


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
    try:
        with engine.connect() as connection:  # closing the session releases the lock, however the body ends
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
            connection.commit()
            yield
    finally:
        engine.dispose()
