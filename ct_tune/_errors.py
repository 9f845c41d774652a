"""Exceptions ct-tune raises for bad user input.

``InputError`` is a ``ValueError`` so library callers can catch the usual type; the CLI turns it into
one line on stderr and exit code 2. Its message names the problem and the fix, in one line.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (argument, file, spec, data): the message says what and how to fix."""
