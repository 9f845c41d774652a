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

``study_lock`` is the same idea per study name: two ``study create`` of one name at once (pipelines
started on several nodes) make the study one at a time, so the second finds it made instead of racing it
(the loser's clean-up then deleted the winner's MLflow experiment). SQLite: a POSIX byte-range lock
(``lockf``) at an offset given by the name's hash, in one file beside the database (``optuna.db.lock``),
so that other names do not wait; PostgreSQL: a transaction advisory lock keyed by the name's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator

from ct_tune.stores._urls import sqlite_path

__all__ = ["schema_lock", "study_lock"]

# Any fixed number: the advisory lock key every ct-tune process uses for schema work on one database.
POSTGRES_LOCK_KEY = 0x63742D74756E65  # "ct-tune"
LOCK_POLL_SECONDS = 0.1
STUDY_LOCK_RANGES = 2**31 - 1  # byte offsets of the SQLite lock file, one per name hash


def _name_hash(name: str) -> int:
    """A signed 64-bit number for ``name``, stable across processes and machines (``hash()`` is not)."""
    digest = hashlib.blake2b(f"ct-tune study {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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
def study_lock(url: str, name: str) -> Iterator[None]:
    """Hold the lock of study ``name`` in the Optuna storage at ``url``: the exists-check and the creation of
    a study under it are one step for every ct-tune process on every machine (no lock for other stores)."""
    key = _name_hash(name)
    path = sqlite_path(url)
    if path is not None:
        with _range_lock(f"{path}.lock", key % STUDY_LOCK_RANGES):
            yield
    elif url.startswith("postgresql"):
        with _advisory_lock(url, key):
            yield
    else:
        yield


@contextlib.contextmanager
def _range_lock(path: str, offset: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lockf; creation is then as racy as Optuna and MLflow make it
        yield
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX, 1, offset)  # released when the process ends, however it ends
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


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
def _advisory_lock(url: str, key: int = POSTGRES_LOCK_KEY) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    attempt = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)")
    try:
        with engine.connect() as connection:
            while True:
                transaction = connection.begin()
                if connection.execute(attempt, {"key": key}).scalar():
                    break
                transaction.rollback()  # waits outside a transaction: behind PgBouncer it holds no server connection
                time.sleep(LOCK_POLL_SECONDS)
            with transaction:  # its end (a commit, or a rollback when the body raises) releases the lock
                yield
    finally:
        engine.dispose()
