"""Every path ct-tune derives from a study name stays inside its folder, for a name given today and for one
a study got before names were checked (a plain Optuna study, an older ct-tune)."""

from __future__ import annotations

from pathlib import Path

from ct_tune import InputError
from ct_tune._names import MAX_NAME, default_log_dir, name_problem, profile_path

import pytest

BAD = ["../../tmp/evil", "..", ".", "a/b", "/abs", "-x", "a b", "x" * (MAX_NAME + 1), "", "é"]


@pytest.mark.parametrize("name", ["tiny", "A_1.2-b", "_x", "x" * MAX_NAME])
def test_good_names_pass_and_stay_inside(name):
    assert name_problem(name) is None
    assert default_log_dir(None, name) == Path("logs") / name
    assert profile_path(name, 3) == Path("profiles") / f"{name}-trial3.json"


@pytest.mark.parametrize("name", BAD)
def test_every_derived_path_refuses_a_name_that_leaves_its_folder(name):
    with pytest.raises(InputError, match="pass --log-dir"):
        default_log_dir(None, name)
    with pytest.raises(InputError, match="pass --out"):
        profile_path(name, 0)


def test_a_log_dir_given_wins_over_the_name():
    assert default_log_dir("elsewhere", "../x") == Path("elsewhere")
