"""Versions that matter: Python, torch (and its CUDA), torchvision, Lightning, Optuna, MLflow, SQLAlchemy, and
the rest of ct-tune's requirements, against the ranges ct-tune declares.

The ranges are ct-tune's own requirements: ``pyproject.toml`` beside the package when it runs from a source
tree (the pins of the code that runs), else the installed distribution's metadata. An import that fails is a
failed line with its error, even for a version in range (torchvision built for another torch fails that way).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ct_tune.doctor._report import FAILED, OK, SKIPPED, Check

__all__ = ["check_versions", "outside"]

# Distribution -> module, in the order of the lines; the other requirements share one line.
MAIN_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "lightning": "lightning",
    "optuna": "optuna",
    "mlflow": "mlflow",
    "sqlalchemy": "sqlalchemy",
}
TORCH_FIX = " (the build for your CUDA: https://pytorch.org/get-started/locally/)"


def check_versions() -> Iterator[Check]:
    """One line for ct-tune, Python and each main package (each as soon as it is imported), one for the other
    requirements."""
    requirements, python_range, origin = _requirements()
    yield _ct_tune_line(origin)
    yield _python_line(python_range)
    for dist, module in MAIN_PACKAGES.items():
        yield _package_line(dist, module, requirements.pop(dist, None))
    yield _others_line(requirements)


def outside(version: str, requirement: str) -> bool:
    """Whether ``version`` falls outside ``requirement``'s range (``'optuna>=5.0,<6'``; pre-releases count)."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    try:
        return not Requirement(requirement).specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False  # a version packaging cannot read: nothing to say about it


def _range(requirement: str) -> str:
    from packaging.requirements import Requirement

    return ",".join(sorted(str(spec) for spec in Requirement(requirement).specifier)[::-1])


def _requirements() -> tuple[dict[str, str], str | None, str]:
    """Unconditional requirements {distribution: requirement}, the Python range, and where they came from."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return {}, None, "packaging is not installed: ranges not checked"
    lines, python_range, origin = _declared()
    found: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found[canonicalize_name(requirement.name)] = str(requirement)
    return found, python_range, origin


def _declared() -> tuple[list[str], str | None, str]:
    import tomllib

    import ct_tune

    pyproject = Path(ct_tune.__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "ct-tune":
            return list(project.get("dependencies", [])), project.get("requires-python"), f"ranges of {pyproject}"
    try:
        meta = metadata.metadata("ct-tune")
    except metadata.PackageNotFoundError:
        return [], None, "ct-tune's metadata is not installed: ranges not checked"
    return list(meta.get_all("Requires-Dist") or []), meta.get("Requires-Python"), "ranges of the installed ct-tune"


def _ct_tune_line(origin: str) -> Check:
    import ct_tune

    where = Path(ct_tune.__file__).resolve().parent
    return Check("versions", "ct-tune", OK, f"{ct_tune.__version__} from {where} ({origin})")


def _python_line(python_range: str | None) -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if python_range and outside(version, f"python{python_range}"):
        return Check(
            "versions", "python", FAILED, f"{version} (ct-tune needs {python_range})", f"use Python {python_range}"
        )
    return Check("versions", "python", OK, f"{version}" + (f" (ct-tune needs {python_range})" if python_range else ""))


def _package_line(dist: str, module: str, requirement: str | None) -> Check:
    needs = _range(requirement) if requirement else ""
    wanted = f" (ct-tune needs {needs})" if needs else ""
    fix_install = f"pip install '{requirement or dist}'" + (TORCH_FIX if dist in ("torch", "torchvision") else "")
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return Check("versions", dist, FAILED, f"not installed{wanted}", fix_install)
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # a broken or mismatched build fails here, not at pip install
        first = (str(error).strip().splitlines() or [""])[0][:200]
        detail = f"{version} is installed but does not import: {type(error).__name__}: {first}"
        return Check("versions", dist, FAILED, detail, f"reinstall it: {fix_install}")
    extra = f", {_torch_build(imported)}" if dist == "torch" else ""
    if requirement and outside(version, requirement):
        return Check("versions", dist, FAILED, f"{version}{extra}{wanted}", fix_install)
    return Check("versions", dist, OK, f"{version}{extra}{wanted}")


def _torch_build(torch: Any) -> str:
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return f"CUDA {torch.version.cuda}" if torch.version.cuda else "cpu build"


def _others_line(requirements: dict[str, str]) -> Check:
    """The remaining requirements by installed version (not imported: importing all of them takes long)."""
    if not requirements:
        return Check("versions", "other packages", SKIPPED, "no ranges to check against")
    problems, fixes = [], []
    for dist, requirement in sorted(requirements.items()):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f"{dist} not installed")
            fixes.append(f"'{requirement}'")
            continue
        if outside(version, requirement):
            problems.append(f"{dist} {version} (needs {_range(requirement)})")
            fixes.append(f"'{requirement}'")
    if problems:
        return Check("versions", "other packages", FAILED, "; ".join(problems), "pip install " + " ".join(fixes))
    return Check("versions", "other packages", OK, f"{len(requirements)} more requirements installed and in range")
