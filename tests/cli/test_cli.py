"""The CLI's conventions: --help, --version, one-line errors with exit code 2."""

from __future__ import annotations

import ct_tune

import pytest


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ct-tune {ct_tune.__version__}"


def test_help_lists_usage(cli):
    result = cli("--help")
    assert result.returncode == 0
    assert "usage: ct-tune" in result.stdout


def test_unknown_option_is_one_line_exit_2(cli):
    result = cli("--no-such-option")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--no-such-option" in lines[0]
    assert result.stdout == ""


def test_no_command_shows_help_and_exits_2(cli):
    result = cli()
    assert result.returncode == 2
    assert "usage: ct-tune" in result.stderr


def one_line_error(result) -> str:
    """The single stderr line of a refused command (exit 2, no traceback, nothing on stdout)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_a_storage_url_with_a_port_that_is_not_a_number(cli_fast, tmp_path):
    line = one_line_error(cli_fast("study", "list", "--storage", "postgresql://u:pw@localhost:abc/db"))
    assert line == (
        "ct-tune: error: storage 'postgresql://u:***@localhost:abc/db' has a port that is not a number; "
        "write e.g. host:5432, or leave the port out"
    )
    assert list(tmp_path.iterdir()) == []


class _Shell:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_one_line_without_torch_warnings(cli, tmp_path):
    """A real process (pytest would catch the warnings that a user sees on stderr)."""
    import pickle

    import torch

    torch.save({"state_dict": {}, "hook": _Shell()}, tmp_path / "code.pt")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    line = one_line_error(cli("evaluate", "--checkpoint", "code.pt", "--beta", "0.9"))
    assert "code.pt holds Python objects besides tensors; ct-tune does not execute pickled code" in line
    line = one_line_error(cli("evaluate", "--checkpoint", "plain.pt", "--beta", "0.9"))
    assert line.startswith("ct-tune: error: cannot read checkpoint plain.pt: not a PyTorch file")
    assert not (tmp_path / "pwned").exists()
