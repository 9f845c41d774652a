"""The one table of MLflow tag and Optuna attribute keys: strings, unique within each namespace, and what
the README tells users to filter on."""

from __future__ import annotations

import re
from pathlib import Path

from ct_tune.tracking import keys as _keys

KEYS = {name: value for name, value in vars(_keys).items() if name.isupper()}


def section(title: str) -> dict[str, str]:
    """The keys defined under one of the module's section comments (a namespace each)."""
    source = Path(_keys.__file__).read_text()
    body = source.split(f"# {title}", 1)[1].split("\n# ", 1)[0]
    return {name: KEYS[name] for name in re.findall(r"^([A-Z_]+) = ", body, flags=re.MULTILINE)}


TAGS = section("MLflow run tags")
STUDY_ATTRS = section("Optuna study user attributes")
TRIAL_ATTRS = section("Optuna trial user attributes")


def test_every_key_is_a_nonempty_string_in_one_namespace():
    assert KEYS and all(isinstance(value, str) and value and value.strip() == value for value in KEYS.values())
    assert set(KEYS) == set(TAGS) | set(STUDY_ATTRS) | set(TRIAL_ATTRS)  # each key under one section
    assert all(name.startswith("TAG_") for name in TAGS)
    assert all(name.startswith("ATTR_") for name in (*STUDY_ATTRS, *TRIAL_ATTRS))
    assert {"ATTR_SPEC", "ATTR_UNITS", "ATTR_MLFLOW"} <= set(STUDY_ATTRS) and "ATTR_RUN_ID" in TRIAL_ATTRS


def test_keys_are_unique_where_they_share_a_namespace():
    for namespace in (TAGS, STUDY_ATTRS, TRIAL_ATTRS):
        values = list(namespace.values())
        assert len(set(values)) == len(values), namespace


def test_tags_are_valid_mlflow_keys_and_only_the_intended_ones_are_mlflows_own():
    from mlflow.utils.validation import _validate_tag_name

    for value in TAGS.values():
        _validate_tag_name(value)
    assert sorted(v for v in TAGS.values() if v.startswith("mlflow.")) == [
        "mlflow.experimentKind",  # on the experiment: MLflow's UI opens its runs table, not GenAI traces
        "mlflow.note.content",
        "mlflow.parentRunId",
    ]
    ours = [v for v in TAGS.values() if not v.startswith(("mlflow.", "optuna."))]
    assert all(v.startswith("ct_tune.") for v in ours)


def test_the_names_users_filter_on():
    """Renaming one breaks saved MLflow views and `optuna trials` scripts (README, MLflow section)."""
    assert (_keys.TAG_STATE, _keys.TAG_TRIAL) == ("ct_tune.state", "optuna.trial_number")
    assert _keys.TAG_ROLE == "ct_tune.role"
    assert (_keys.TAG_PARENT_RUN, _keys.ATTR_RUN_ID) == ("mlflow.parentRunId", "mlflow_run_id")
    assert (_keys.TAG_PIPELINE, _keys.TAG_STAGE, _keys.TAG_PREVIOUS_STAGE_RUN) == (
        "ct_tune.pipeline",
        "ct_tune.stage",
        "ct_tune.previous_stage_run",
    )


def test_no_key_is_spelled_out_anywhere_else():
    """Each key is written once, here: a string literal equal to one of them elsewhere in the package is a
    second definition that a rename would miss. (Keys without a namespace dot, such as ``mlflow_run_id``, are
    plain words that JSON payloads use too.)"""
    import ast

    package = Path(_keys.__file__).parents[1]
    values = {value for value in KEYS.values() if "." in value}
    found = []
    for path in package.rglob("*.py"):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in values:
                found.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
    assert not found, found
