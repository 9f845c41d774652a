"""The CLI's conventions: --help, --version, one-line errors with exit code 2."""

from __future__ import annotations

import ct_tune


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
