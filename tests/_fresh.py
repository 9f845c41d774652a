"""Fresh, real SQLite stores for the direct tests, in milliseconds.

Creating an MLflow schema costs about 5 s on 2 cores, an Optuna schema about 1 s: each kind is created
once per test process by MLflow or Optuna themselves, and every test gets a copy of that file (a real
store at the current schema, in the test's own directory).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path

from ct_tune.stores import open_mlflow_client, open_optuna_storage


@functools.cache
def _template(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"ct-tune-{kind}-template-"))
    atexit.register(shutil.rmtree, root, True)
    path = root / f"{kind}.db"
    if kind == "mlflow":
        open_mlflow_client(f"sqlite:///{path}")
    else:
        open_optuna_storage(f"sqlite:///{path}").engine.dispose()
    with sqlite3.connect(path) as connection:  # everything into the main file, which is what is copied
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def fresh_sqlite(kind: str, directory: Path) -> str:
    """The URL of a new store of ``kind`` ("mlflow" or "optuna") under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}.db"
    assert not path.exists(), path
    shutil.copyfile(_template(kind), path)
    return f"sqlite:///{path}"


def tiny_study(tmp_path: Path, checkpoint: Path | None, name: str = "tiny", **sections):
    """A real study on digits with fresh stores under ``tmp_path``; keyword arguments replace spec sections.

    ``checkpoint`` is a ct-tune checkpoint (the ``digits_checkpoint`` fixture); pass ``model=`` instead for
    another model."""
    import ct_tune

    spec = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "block", "enqueue_baseline": True},
        "objectives": ["accuracy"],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 50},
        "run": {"device": "cpu", "batch_size": 256},
        **sections,
    }
    return ct_tune.create_study(
        spec,
        name=name,
        storage=fresh_sqlite("optuna", tmp_path / "studies"),
        tracking_uri=fresh_sqlite("mlflow", tmp_path / "mlruns"),
    )
