"""The package layout the design promises: one subpackage per concept, public names re-exported from private
modules, no import circle, a CLI that only parses and renders, and `import ct_tune` that stays light."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import ct_tune

import pytest

from tests.conftest import SOURCE_ROOT

PACKAGE = SOURCE_ROOT / "ct_tune"
SUBPACKAGES = ["steering", "models", "data", "objectives", "search", "tracking", "stores", "workers", "training"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """ct_tune modules a file imports, at any depth (lazy imports in functions count), except TYPE_CHECKING."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names] or [node.module]
            else:
                names = []
            for name in names:
                while name and name not in MODULES:
                    name = name.rpartition(".")[0]
                if name.startswith("ct_tune"):
                    found.add(name)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit(children)

    visit(ast.parse(path.read_text()).body)
    found.discard(module_name(path))
    return found


def test_no_import_circle_between_modules_or_packages():
    graph = {name: imported(path) for name, path in MODULES.items()}
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        for target in targets:
            source, sink = ".".join(name.split(".")[:2]), ".".join(target.split(".")[:2])
            if source != sink:
                packages.setdefault(source, set()).add(sink)

    def circle(edges: dict[str, set[str]]) -> list[str] | None:
        state: dict[str, int] = {}

        def walk(node: str, path: list[str]) -> list[str] | None:
            state[node] = 1
            for nxt in sorted(edges.get(node, ())):
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
                if not state.get(nxt) and (found := walk(nxt, [*path, nxt])):
                    return found
            state[node] = 2
            return None

        for start in sorted(edges):
            if not state.get(start) and (found := walk(start, [start])):
                return found
        return None

    assert circle(graph) is None, circle(graph)
    assert circle(packages) is None, circle(packages)


def test_workers_know_nothing_of_studies_and_the_cli_only_calls_public_names():
    for name, path in MODULES.items():
        targets = imported(path)
        if name.startswith("ct_tune.workers"):
            assert not any(t.startswith("ct_tune.search") for t in targets), name
        if name.startswith("ct_tune.cli"):
            private = [t for t in targets if "._" in t and not t.startswith("ct_tune.cli")]
            assert not private, (name, private)
            source = path.read_text()
            for library in ("optuna", "mlflow", "lightning", "torch"):
                assert f"import {library}" not in source and f"from {library}" not in source, (name, library)


@pytest.mark.parametrize("package", ["ct_tune", *(f"ct_tune.{p}" for p in SUBPACKAGES)])
def test_public_names_resolve_and_come_from_private_modules(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        origin = getattr(value, "__module__", None)
        if origin is not None and origin.startswith("ct_tune"):
            assert origin.split(".")[-1].startswith("_") or origin == "ct_tune.search.worker", (name, origin)


def test_every_subpackage_has_direct_tests():
    for package in SUBPACKAGES:
        tests = list((SOURCE_ROOT / "tests" / package).glob("test_*.py"))
        assert tests, f"tests/{package}/ has no tests"


def test_import_ct_tune_stays_light():
    code = (
        "import sys, ct_tune; heavy = [m for m in ('optuna', 'mlflow', 'lightning', 'timm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SOURCE_ROOT)}, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"import ct_tune imported {proc.stdout.strip()}"
    assert ct_tune.create_study.__module__ == "ct_tune.search._study"
