"""The package layout the design promises: one subpackage per concept in layers (each imports only from the
layers below it, and only their public names), public names re-exported from private modules, no import
circle, functions that fit on a screen, a CLI that only parses and renders, and `import ct_tune` that stays
light."""

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
# Lowest first: a package imports only from packages of a lower layer (and from the top-level ``ct_tune._*``
# modules every package shares); ``ct_tune/__init__.py`` is the facade over all of them.
LAYERS = [
    ("steering", "models", "stores", "evidence"),
    ("data", "objectives", "tracking", "workers"),
    ("bench", "training"),
    ("search", "trained"),
    ("pipelines", "doctor"),
    ("cli",),
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
SUBPACKAGES = [package for layer in LAYERS for package in layer if package != "cli"]
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path, source: str | None = None) -> set[str]:
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

    visit(ast.parse(path.read_text() if source is None else source).body)
    found.discard(module_name(path))
    return found


def package_of(module: str) -> str | None:
    """The subpackage a module belongs to (None for ``ct_tune`` itself and its top-level modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def layering_problems(module: str, targets: set[str]) -> list[str]:
    """What is wrong with ``module`` importing ``targets``: a package of its own layer or above, or a private
    module of another package."""
    source = package_of(module)
    if source is None:
        return []
    problems = []
    for target in sorted(targets):
        sink = package_of(target)
        if sink is None or sink == source:
            continue
        if RANK[sink] >= RANK[source]:
            problems.append(f"{module} imports {target}: {sink} is not in a layer below {source}")
        if any(part.startswith("_") for part in target.split(".")[2:]):
            problems.append(f"{module} imports {target}, a private module of {sink}: import its public names")
    return problems


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


def test_packages_import_only_public_names_of_lower_layers():
    problems = [problem for name, path in MODULES.items() for problem in layering_problems(name, imported(path))]
    assert not problems, "\n".join(problems)
    assert set(RANK) == {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("ct_tune.steering._evil", "from ct_tune.search import Study", "search is not in a layer below steering"),
        ("ct_tune.search._evil", "from ct_tune.trained import train_ct", "trained is not in a layer below search"),
        ("ct_tune.pipelines._evil", "from ct_tune.search._study import Study", "a private module of search"),
        ("ct_tune.cli._evil", "def f():\n    from ct_tune.bench._bench import Bench", "a private module of bench"),
    ],
)
def test_the_layer_rules_catch_a_deliberate_violation(module, source, expected):
    path = SOURCE_ROOT / Path(*module.split(".")).with_suffix(".py")
    assert any(expected in problem for problem in layering_problems(module, imported(path, source)))


def test_the_cli_only_calls_the_library():
    for name, path in MODULES.items():
        if name.startswith("ct_tune.cli"):
            source = path.read_text()
            for library in ("optuna", "mlflow", "lightning", "torch"):
                assert f"import {library}" not in source and f"from {library}" not in source, (name, library)


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_names_that_moved_out_of_search_still_resolve_there():
    import ct_tune.search

    for name, home in ct_tune.search._MOVED.items():
        assert getattr(ct_tune.search, name) is getattr(importlib.import_module(home), name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ct_tune.search.nothing  # noqa: B018


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


def test_every_test_folder_is_a_package():
    """Without ``__init__.py`` two test files of one name (tests/bench/test_spec.py, tests/pipelines/test_spec.py)
    are both imported as ``test_spec`` and the second fails to collect."""
    folders = {path.parent for path in (SOURCE_ROOT / "tests").rglob("test_*.py")}
    assert [str(f.relative_to(SOURCE_ROOT)) for f in sorted(folders) if not (f / "__init__.py").is_file()] == []


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
