"""What every spec shares: the strict pydantic base, the YAML reader, and validation problems as one line.

Every spec section (a study's, a pipeline's, a train-ct spec's, an objective's settings) derives from
``StrictSpec``: unknown keys are errors, so a typo never silently falls back to a default. ``validated``
turns pydantic's list of problems into the one line the CLI prints: the field, the value, what is allowed.
This module sits below every package, so any of them can define a spec without an import circle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ct_tune._errors import InputError

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictSpec", "describe_validation_error", "parse_fraction", "parse_yaml", "validated"]

Spec = TypeVar("Spec", bound=BaseModel)


class StrictSpec(BaseModel):
    """Every spec section: unknown keys, changes after parsing, inf and nan are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def parse_fraction(value: Any) -> Any:
    """A ``before`` validator accepting fractions written as strings ('8/255'), as attack budgets are given."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*/\s*\d+(\.\d+)?\s*", value):
        numerator, denominator = (float(part) for part in value.split("/"))
        if denominator == 0:
            return value
        return numerator / denominator
    return value


def validated(cls: type[Spec], data: Any, *, source: str, section: str = "") -> Spec:
    """``cls`` validated from ``data``; any problem is one ``InputError`` line, prefixed with ``source`` and
    naming the field (as ``section.field`` when ``section`` is given)."""
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise InputError(f"{source}: {describe_validation_error(error, data, section=section)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently,
    so a second ``name:`` pasted below the first would win unnoticed). Keys merged with ``<<`` may be
    overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable or invalid YAML is one line naming the file, line and problem."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file") from None


def describe_validation_error(error: ValidationError, data: Any = None, *, section: str = "") -> str:
    """The most specific validation problem as 'field: got value; what is allowed' (+ how many more).

    ``data`` is what was validated: the parts of an error's location that are not keys or indices of it
    are pydantic's names for the branch of a union it tried (an objective's or sampler's ``name``, a type),
    not a user's field, and are left out."""
    problems = error.errors(include_url=False)
    # A field typed as a union (c: number | range) fails in every branch; the deepest location is the
    # branch the user meant (a mapping for c fails inside CRange, not at "is not a number").
    # At equal depth a branch's own check (low < high) says more than another branch's type error.
    first = max(problems, key=lambda problem: (len(problem["loc"]), problem["type"] == "value_error"))
    kind = first["type"]
    location = _location(first["loc"], data, keep_last=kind == "missing", section=section)
    message = first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        text = f"unknown field {location!r} (check the spelling; see studies/ for every field)"
    elif kind == "missing":
        text = f"{location}: required field is missing"
    elif kind == "union_tag_invalid":
        context = first.get("ctx", {})
        text = f"{location}.{context.get('discriminator', 'name').strip(chr(39))}: got {context.get('tag')!r}; "
        text += f"expected one of {context.get('expected_tags')}"
    elif location and kind not in ("value_error", "assertion_error"):
        text = f"{location}: got {_short(first.get('input'))}; {_lower_first(message)}"
    elif location:
        text = f"{location}: {message}"
    else:
        text = message
    # Other branches of the same union (their location is a prefix of this one) are not more problems.
    others = {
        loc
        for loc in (_location(p["loc"], data, keep_last=p["type"] == "missing", section=section) for p in problems)
        if not location.startswith(loc)
    }
    if others:
        text += f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})"
    return text


def _location(loc: Sequence[Any], data: Any, *, keep_last: bool, section: str) -> str:
    """The dotted path of the user's fields in ``loc``: the parts found in ``data`` as it is walked (and
    the last part of a missing field, which cannot be found); other parts name a union's branch."""
    parts: list[str] = [section] if section else []
    current = data
    for index, part in enumerate(loc):
        found = isinstance(current, dict) and part in current
        found |= isinstance(current, list | tuple) and isinstance(part, int) and 0 <= part < len(current)
        if not found and not (keep_last and index == len(loc) - 1):
            continue
        current = current[part] if found else None
        parts.append(str(part))
    return ".".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
