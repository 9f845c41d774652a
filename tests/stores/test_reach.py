"""A store that is not there or refuses the login stops a command in seconds, with one line and nothing
created (MLflow's own retries took 100-270 s and printed dozens of warnings)."""

from __future__ import annotations

import time

from ct_tune import InputError, create_study
from ct_tune.stores import check_reachable

import pytest

from tests.conftest import write_spec
from tests.postgres import PASSWORD

pytestmark = pytest.mark.slow

UNREACHABLE = {
    "postgres": f"postgresql://ctune:{PASSWORD}@127.0.0.1:9/mlflow",
    "server": f"http://ctune:{PASSWORD}@127.0.0.1:9",
}


def tracking_uri(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "wrong-password":
        server = request.getfixturevalue("postgres")
        return server.url("postgres", password=False).replace("ctune@", "ctune:not-the-password@")
    return UNREACHABLE[kind]


@pytest.mark.parametrize("kind", ["postgres", "server", pytest.param("wrong-password", marks=pytest.mark.postgres)])
def test_study_create_stops_in_seconds_before_anything_is_created(cli, tmp_path, digits_checkpoint, kind, request):
    write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s")
    started = time.monotonic()
    result = cli("study", "create", "s.yaml", "--tracking-uri", tracking_uri(kind, request), timeout=90)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ct-tune: error: cannot open the MLflow tracking store "), lines
    assert PASSWORD not in result.stdout + result.stderr and "not-the-password" not in result.stderr
    # checked before the model and data load: no Optuna storage, no MLflow store, no artifact folder
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.yaml"]
    assert seconds < 60, f"{seconds:.0f} s"  # importing torch and MLflow is most of it on a loaded 2-core box


def test_the_python_api_raises_the_same_line(tmp_path, digits_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s")
    with pytest.raises(InputError) as error:
        create_study(spec, tracking_uri=UNREACHABLE["server"])
    text = str(error.value)
    assert text == "cannot open the MLflow tracking store http://ctune:***@127.0.0.1:9: [Errno 111] Connection refused"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.yaml"]


def test_check_reachable_leaves_sqlite_alone_and_names_the_store(tmp_path):
    check_reachable(f"sqlite:///{tmp_path}/later/optuna.db", what="Optuna storage")  # created on first use
    assert not (tmp_path / "later").exists()
    with pytest.raises(InputError) as error:
        check_reachable(UNREACHABLE["postgres"].replace("postgresql:", "postgresql+psycopg:"), what="Optuna storage")
    text = str(error.value)
    assert text.startswith("cannot open the Optuna storage postgresql+psycopg://ctune:***@127.0.0.1:9/mlflow: ")
    assert "Connection refused" in text and PASSWORD not in text and "\n" not in text
