"""An MLflow schema whose first creation stopped midway (a full disk, a killed process).

MLflow creates its first tables, then runs some sixty migrations, each committed on its own on SQLite. Stopped
between two (measured with a file size limit at 60-500 kB), the store holds tables without a schema version,
a migration's ``_alembic_tmp_*`` copy, or tables of a later version than the one recorded; every later
open then fails for good ("table _alembic_tmp_runs already exists", "table guardrails already exists"),
``db init`` and ``db upgrade`` included. Such a store was new: when it provably holds no data (no
experiment but MLflow's Default, no run, nothing in any other table) a SQLite file is created again, and a
database server gets one line saying to drop and create the database. A half-migrated store that holds
data is never touched: the line says to restore the backup.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune.stores._urls import is_tracking_server, prepare_sqlite, redact, sqlite_path

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["repair_half_created"]

logger = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"
LEFTOVER_PREFIX = "_alembic_tmp_"  # alembic's copy of a table while a SQLite migration rebuilds it
SEEDED = {"experiments": "experiment_id <> 0", "workspaces": "name <> 'default'"}  # rows a new store has
CREATED = re.compile(r"create_table\(\s*[\"'](\w+)[\"']")


def repair_half_created(tracking_uri: str) -> str | None:
    """Create a half-created, empty SQLite MLflow store again (and say so: the returned note, also logged);
    raise a one-line ``InputError`` with the way out for any other half-created store. A sound store, an
    empty one and a tracking server pass (None)."""
    if is_tracking_server(tracking_uri) or tracking_uri.split(":", 1)[0] == "databricks":
        return None
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            problem = half_created(connection)
            empty = problem is not None and holds_no_data(connection)
    except InputError:
        raise
    except Exception:  # cannot read it: opening it says why, in its own line
        return None
    finally:
        engine.dispose()
    if problem is None:
        return None
    store = f"the MLflow tracking store {redact(tracking_uri)}"
    path = sqlite_path(tracking_uri)
    if empty and path is not None:
        for leftover in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
        prepare_sqlite(tracking_uri)
        note = f"created again (it was half-created: {problem}; it held no data)"
        logger.warning("%s: %s", store, note)
        return note
    if empty:
        raise InputError(
            f"{store} holds a half-created schema ({problem}; its first use stopped midway, e.g. on a full disk) "
            "and no data: drop the database and create it again (it is a new, empty store), then run again"
        )
    raise InputError(
        f"{store} holds a half-migrated schema ({problem}) and data: restore it from the backup taken before "
        "the upgrade, then run 'ct-tune db upgrade' again"
    )


def half_created(connection: sqlalchemy.engine.Connection) -> str | None:
    """What shows that the schema's creation or migration stopped midway, or None."""
    import sqlalchemy

    tables = set(sqlalchemy.inspect(connection).get_table_names())
    leftovers = sorted(t for t in tables if t.startswith(LEFTOVER_PREFIX))
    if leftovers:
        return f"a migration's leftover table {leftovers[0]}"
    others = tables - {VERSION_TABLE}
    version = None
    if VERSION_TABLE in tables:
        version = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
    if not others:
        return None if version is None else "a schema version but no tables"
    if "experiments" not in others:  # not MLflow's (another program's database): opening it says so
        return None
    if version is None:
        return "tables but no schema version"
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if version == head:
        missing = sorted(set(Base.metadata.tables) - tables)
        return f"the latest version, {head}, without table {missing[0]}" if missing else None
    later = sorted(_created_after(version) & tables)
    return f"table {later[0]} of a later version than the recorded {version}" if later else None


def _created_after(version: str) -> set[str]:
    """Tables that MLflow's migrations after ``version`` create (none when this MLflow does not know it)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    scripts = ScriptDirectory.from_config(_get_alembic_config(""))
    try:
        later = list(scripts.iterate_revisions(_get_latest_schema_revision(), version))
    except Exception:  # a version this MLflow does not know (a newer MLflow made the store)
        return set()
    return {name for script in later for name in CREATED.findall(Path(script.path).read_text())}


def holds_no_data(connection: sqlalchemy.engine.Connection) -> bool:
    """True when no table holds a row but those every new store has (MLflow's Default experiment and
    workspace); a table that cannot be counted counts as data."""
    import sqlalchemy

    for table in sqlalchemy.inspect(connection).get_table_names():
        if table == VERSION_TABLE:
            continue
        where = f" WHERE {SEEDED[table]}" if table in SEEDED else ""
        try:
            if connection.exec_driver_sql(f'SELECT COUNT(*) FROM "{table}"{where}').scalar():
                return False
        except Exception:
            return False
    return True
